"""The input pipeline: manifest -> decoded, resized uint8 images cached on disk -> seeded batches.

- Images are decoded and resized ONCE per (dataset checksum, split, image size) into a `.npy`
  file in the local cache, then memory-mapped: no epoch re-decodes a JPEG, and a dataset larger
  than memory stays on disk. The file is written to a temporary name and renamed into place, so
  two workers on one host may race to build it and both end with a complete file. Every use
  touches it: the worker's cache bound evicts the least recently used (worker.housekeeping).
- Before anything is decoded, every image's header is checked (`shared.datasets.images`): a
  format TensorFlow decodes, and no more pixels than the process's limit (the worker's
  `max_image_pixels`), so that a decompression bomb in an uploaded dataset fails the job with
  one line naming the file instead of taking gigabytes of memory.
- The validation split is a seeded stratified split of the train split.
- The test split stays locked: only evaluation jobs open it. The functions that list or load a
  split take the reader's job kind (`reader`, least privilege by default) and refuse the test
  split to any other (`check_split_access`): selecting among many configurations on the test
  split would spend it, and nothing could then say how good the chosen model is.
- Each epoch takes the next slice of a stream of seeded permutations of the training images
  (`epoch_order`): the order is reproducible, identical when a job resumes on another host, and
  identical whether the model sees images or cached features (the feature cache relies on it).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from keras import layers
from pydantic import ValidationError

from shared.datasets.images import SUPPORTED_FORMATS, check_image
from shared.errors import BadInputError, PermanentError
from shared.jobs import Augmentation, JobKind
from shared.manifest import MANIFEST_NAME, Manifest, Split
from shared.paths import safe_join
from worker.housekeeping import touch
from worker.training.stopping import ShouldStop, check

RESIZE_METHOD = "bilinear-antialias"  # part of every cache key: a change invalidates the caches
CACHE_VERSION = 1
DECODE_BATCH = 128
TEST_SPLIT_READERS: frozenset[str] = frozenset({"evaluate"})  # the only job kinds that may open the test split


def load_manifest(dataset_dir: Path) -> Manifest:
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.is_file():
        raise PermanentError(f"dataset {dataset_dir} has no {MANIFEST_NAME}")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise PermanentError(f"invalid dataset manifest {path}: {exc.errors()[0]['msg']}") from None


@dataclass(frozen=True)
class SplitFiles:
    paths: list[str]  # relative POSIX paths inside the dataset, in manifest (path) order
    labels: np.ndarray  # int32 class indices into manifest.classes


def check_split_access(split: Split, reader: JobKind) -> None:
    """Refuse the test split to every job kind but evaluation (PermanentError: a train or
    finetune job that asks for it is a bug that no retry fixes)."""
    if split == "test" and reader not in TEST_SPLIT_READERS:
        raise PermanentError(
            f"a {reader} job may not read the test split: the test split stays locked, only evaluation jobs open it"
        )


def split_files(manifest: Manifest, split: Split, reader: JobKind = "train") -> SplitFiles:
    """The files of `split` with their labels, as `reader` (a job kind) may see them.

    Raises:
        PermanentError: the split is empty or names unlisted classes, or `reader` may not read it.
    """
    check_split_access(split, reader)
    files = manifest.split(split)
    if not files:
        raise PermanentError(f"dataset {manifest.name!r} has no {split} images")
    unknown = sorted({f.label for f in files} - set(manifest.classes))
    if unknown:
        raise PermanentError(f"dataset {manifest.name!r} has files of unlisted classes {unknown}")
    labels = np.array([manifest.label_index(f.label) for f in files], dtype=np.int32)
    return SplitFiles([f.path for f in files], labels)


def load_images(
    dataset_dir: Path, manifest: Manifest, split: Split, image_size: int, cache_dir: Path,
    should_stop: ShouldStop | None = None, reader: JobKind = "train",
) -> np.ndarray:
    """The split's images as a read-only (N, S, S, 3) uint8 array, memory-mapped from the cache.
    Decoding polls `should_stop` between batches (StopRequested). Every header is checked
    first: BadInputError names the first file that is not a decodable format or is too large.
    `reader` is the job kind asking: the test split is refused to all but evaluation, before
    any file (or cached array) of it is opened."""
    files = split_files(manifest, split, reader)
    shape = (len(files.paths), image_size, image_size, 3)
    name = f"images-{manifest.checksum[:24]}-{split}-{image_size}-{RESIZE_METHOD}-v{CACHE_VERSION}.npy"
    path = Path(cache_dir) / name
    cached = _open_cached(path, shape)
    if cached is not None:
        touch(path)  # last use, for the cache bound (worker.housekeeping)
        return cached
    local = [safe_join(Path(dataset_dir), key) for key in files.paths]
    missing = [str(p) for p in local if not p.is_file()]
    if missing:
        raise PermanentError(f"dataset {dataset_dir} is missing {len(missing)} files, e.g. {missing[0]}")
    for image in local:
        check_image(image)  # from the header, before TensorFlow allocates what it claims
    _decode_into(path, local, shape, should_stop)
    return np.load(path, mmap_mode="r")


def _open_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return None  # unreadable: rebuild it (the rename below replaces it atomically)
    return array if array.shape == shape and array.dtype == np.uint8 else None


def _decode_into(path: Path, files: Sequence[Path], shape: tuple[int, ...], should_stop: ShouldStop | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=path.parent)
    os.close(fd)
    temp = Path(name)
    try:
        out = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=shape)
        start = 0
        for batch in _decoded(files, shape[1]):
            check(should_stop)
            out[start : start + len(batch)] = batch
            start += len(batch)
            touch(temp)  # a live writer's temp file: housekeeping removes only untouched ones
        out.flush()
        del out
        os.replace(temp, path)  # readers see either no file or a complete one
    finally:
        temp.unlink(missing_ok=True)


def _decoded(files: Sequence[Path], size: int):
    """Parallel decode + resize with tf.data, in file order."""
    dataset = tf.data.Dataset.from_tensor_slices([str(p) for p in files])
    dataset = dataset.map(lambda p: decode_image(p, size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    iterator = iter(dataset.batch(DECODE_BATCH).prefetch(1))
    while True:
        try:
            yield next(iterator).numpy()
        except StopIteration:
            return
        except tf.errors.OpError as exc:
            raise _decode_error(files, exc) from None


def decode_image(path: tf.Tensor, size: int) -> tf.Tensor:
    """PNG, JPEG, GIF or BMP -> RGB uint8 (size, size, 3)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _decode_error(files: Sequence[Path], exc: Exception) -> PermanentError:
    """Name the file TensorFlow could not decode (its error does not say which). Every header
    passed `check_image`, so decoding each with Pillow is bounded by the pixel limit."""
    from PIL import Image

    for path in files:
        try:
            with Image.open(path, formats=SUPPORTED_FORMATS) as image:
                image.load()
        except Exception as bad:  # whatever Pillow raises for a corrupt body: name the file
            return BadInputError(f"cannot decode image {path}: {bad}")
    return PermanentError(f"cannot decode the dataset's images: {exc}")


def _rng(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % 2**32, *purpose]))


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a seeded split, stratified by class."""
    rng = _rng(seed, 0)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * fraction))
        if len(members) > 1:  # keep every class in both sides when it can be
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    train_idx, val_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise PermanentError(f"{len(labels)} training images are too few for a validation split of {fraction}")
    return train_idx, val_idx


def epoch_order(train_idx: np.ndarray, seed: int, epoch: int, fraction: float = 1.0) -> np.ndarray:
    """The indices one epoch (0-based) trains on, in order: the epoch's slice, ceil(fraction * n)
    long, of one stream of passes over the training data, pass k a permutation seeded by (seed, k).

    As in the original workflow (Keras 2 generators with fewer steps per epoch than a full pass),
    each epoch goes on where the last one stopped: every image is seen once per pass, a pass
    lasts 1/fraction epochs, and at fraction 0.5 two epochs see every image exactly once (an
    independent draw per epoch would leave a quarter unseen). An epoch that straddles two passes
    ends one and starts the next. A function of the epoch index alone, so a resumed job trains
    on the same slices.
    """
    n = len(train_idx)
    size = max(1, math.ceil(fraction * n - 1e-9))  # 1e-9: 0.3 * 10 is 3.0000000000000004
    start = epoch * size
    passes = range(start // n, (start + size - 1) // n + 1)
    stream = np.concatenate([_rng(seed, 1, k).permutation(n) for k in passes])
    offset = start - passes[0] * n
    return train_idx[stream[offset : offset + size]]


def augmentation_seed(seed: int, epoch: int) -> int:
    return int(_rng(seed, 2, epoch).integers(0, 2**31 - 1))


def augmentation_layers(spec: Augmentation | None, seed: int) -> list[layers.Layer]:
    """Keras preprocessing layers for the spec (empty when augmentation is off)."""
    if spec is None or not spec.enabled:
        return []
    chosen: list[layers.Layer] = []
    if spec.rotation:
        chosen.append(layers.RandomRotation(spec.rotation, seed=seed))
    if spec.shift:
        chosen.append(layers.RandomTranslation(spec.shift, spec.shift, seed=seed + 1))
    if spec.shear:
        chosen.append(layers.RandomShear(spec.shear, spec.shear, seed=seed + 2))
    if spec.zoom:
        chosen.append(layers.RandomZoom(spec.zoom, seed=seed + 3))
    flip = {(True, False): "horizontal", (False, True): "vertical", (True, True): "horizontal_and_vertical"}
    mode = flip.get((spec.horizontal_flip, spec.vertical_flip))
    if mode:
        chosen.append(layers.RandomFlip(mode, seed=seed + 4))
    return chosen


class Batches:
    """(x, y int32) batches of `inputs[order]` for any order, from data set up once per job.

    `inputs` is the image array or the cached feature array: both are indexed the same way. x
    keeps the array's dtype (uint8 images: a quarter of the bytes to move); Keras models cast
    their input to float32 inside their own graph. Augmentation gets float32.

    Up to IN_MEMORY_BYTES the inputs are copied ONCE into a CPU-resident variable, and every
    epoch's pipeline gathers its batches from it: an epoch costs a small dataset of indices and
    the gathers, instead of a fresh copy of the whole array (and a graph that embeds it) per
    epoch. Larger arrays stay memory-mapped on disk and are gathered batch by batch in numpy.
    """

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
        self.inputs, self.batch_size = inputs, batch_size
        self.labels = np.asarray(labels, dtype=np.int32)
        self._gather = _numpy_gather(inputs, self.labels) if inputs.nbytes > IN_MEMORY_BYTES else self._variable_gather()

    def _variable_gather(self):
        # On the CPU whatever devices there are: tf.data runs its functions on the host.
        with tf.device("/CPU:0"):
            inputs = tf.Variable(np.asarray(self.inputs), trainable=False, name="batch_inputs")
            labels = tf.Variable(self.labels, trainable=False, name="batch_labels")

        def gather(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return tf.gather(inputs, idx), tf.gather(labels, idx)

        return gather

    def epoch(self, order: np.ndarray, augment: Sequence[layers.Layer] = ()) -> tf.data.Dataset:
        """The batches of `inputs[order]`, in that order, prefetched."""
        dataset = tf.data.Dataset.from_tensor_slices(np.asarray(order, dtype=np.int64)).batch(self.batch_size)
        dataset = dataset.map(self._gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if augment:
            # Sequential on purpose: the layers draw from stateful seed generators, and a parallel
            # map would hand the draws to batches in a different order on every run.
            dataset = dataset.map(lambda x, y: (_apply(augment, tf.cast(x, tf.float32)), y), num_parallel_calls=None)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def in_order(self) -> tf.data.Dataset:
        """Every row once, in array order (prediction, feature extraction)."""
        return self.epoch(np.arange(len(self.inputs)))


# Inputs up to this size are held in memory once per job; larger arrays stay memory-mapped on
# disk and are gathered batch by batch through numpy.
IN_MEMORY_BYTES = 1 << 30


def _numpy_gather(inputs: np.ndarray, labels: np.ndarray):
    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(inputs[idx]), labels[idx]

    def to_tensors(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(gather, [idx], [tf.as_dtype(inputs.dtype), tf.int32], stateful=False)
        x.set_shape((None, *inputs.shape[1:]))
        y.set_shape((None,))
        return x, y

    return to_tensors


def _apply(augment: Sequence[layers.Layer], x: tf.Tensor) -> tf.Tensor:
    for layer in augment:
        x = layer(x, training=True)
    return x
