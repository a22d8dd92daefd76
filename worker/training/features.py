"""The feature cache: a frozen base's outputs, computed once per key and shared by every job.

With the base frozen (and run in inference mode) and no augmentation, the base maps each image
to the same output in every epoch of every job that shares (architecture, image size, base
weights, preprocessing, dataset). So those outputs are computed once, stored in the artifact
store, and head-only training reads them instead of pushing images through the base.

An entry is `{feature_cache_prefix}/{key}/`:
    features-<token>.npy        float32, one row per train-split image, in manifest order
    base-<token>.weights.h5     the base's weights, so that a resumed job reassembles the very
                                base the features came from (a random-init base is not
                                guaranteed to come out the same on another host)
    manifest.json               written LAST with put_bytes(if_absent=True): the commit marker
The data files carry a per-writer token, so two workers racing to build one entry never
overwrite each other's files; the loser deletes its own and uses the winner's entry.

Equivalent, not identical: a base's outputs for one image depend (in the last float32 bits) on
the batch it is computed in, since the math libraries pick their kernels by batch shape. So the
features are extracted in batches of EXTRACTION_BATCH whatever the building job's batch size
(the key names it): every job that shares an entry trains on the same numbers, whichever job
built it. Training through the base instead (the feature cache off) feeds it the job's own
batches: its numbers agree with the cached path's to within that rounding, not bit for bit
(tests/unit/test_feature_cache.py measures it on a calibrated base).

The manifest is read back from the artifact store: the file names it gives are checked
(`_file_name`) before anything is joined with them, so a hostile manifest cannot make the
worker read or write a file outside the entry.

The weights part of the key names the base's weights without building the base (which takes
seconds): "imagenet" (fixed per Keras version, which the key holds), a weights file by its
sha256, or a random init by its seed. A job that hits the entry never builds the base while
it trains: it fits the head alone and assembles the complete model once, at the end, from the
entry's base weights (a base built once per worker process and entry, see `BaseCache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from shared.errors import BadInputError, NotFoundError, PermanentError, RetryableError
from shared.jobs import JobSpec
from shared.paths import check_key, safe_join
from shared.ports import ArtifactStore
from worker.housekeeping import touch
from worker.training import data
from worker.training.stopping import ShouldStop, check
from worker.training.models import architecture, base_features, build_base, copy_head, load_weights_strictly, transfer_model

log = logging.getLogger(__name__)
ENTRY_VERSION = 3  # 3: extracted in batches of EXTRACTION_BATCH (2: in the building job's batch size)
EXTRACTION_BATCH = 32  # fixed, so an entry's numbers do not depend on which job built it
BASE_CACHE_PARAMS = 64_000_000  # bases kept in a worker process (BaseCache): ~256 MB as float32


def applies(spec: JobSpec) -> bool:
    """Head-only training on cached features gives the same result only for a frozen base
    (a train job) fed unaugmented images."""
    augmented = spec.training.augmentation is not None and spec.training.augmentation.enabled
    return (
        spec.kind == "train"
        and spec.training.feature_cache
        and not architecture(spec.model.architecture).is_benchmark
        and not augmented
    )


def weights_identity(spec: JobSpec, weights_path: Path | None) -> str:
    """What the base's weights are, for the key: without building the base."""
    if spec.model.weights is None:
        return f"random-init:seed={spec.training.seed}"
    if spec.model.weights == "imagenet":
        return "imagenet"
    if weights_path is None:
        raise PermanentError(f"weights file {spec.model.weights!r} is not available locally")
    return f"file:sha256={_sha256(weights_path)}"


def entry_key(spec: JobSpec, weights_id: str, dataset_checksum: str) -> str:
    arch = architecture(spec.model.architecture)
    identity = {
        "version": ENTRY_VERSION,
        "architecture": arch.name,
        "image_size": spec.model.image_size,
        "weights": weights_id,
        "preprocessing": f"keras.applications.{arch.module}.preprocess_input@keras-{keras.__version__}",
        "resize": data.RESIZE_METHOD,
        "dataset": dataset_checksum,
        "extraction_batch": EXTRACTION_BATCH,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


class BaseCache:
    """The bases of the feature-cache entries used last, by entry key. Owned by whoever runs one
    job after another (`runner.JobRunner`, one per worker process): building a base and loading
    its weights (half a second for MobileNetV2 on two idle cores, more for larger bases) once per
    entry instead of once per job is what keeps head-only jobs cheap, including a search whose
    trials alternate between entries (architectures, image sizes). Bases are large, so they are
    kept, least recently used dropped first, only while their parameters add up to at most
    `max_params` (BASE_CACHE_PARAMS: about 256 MB of float32 weights); the base used last is
    kept whatever its size."""

    def __init__(self, max_params: int = BASE_CACHE_PARAMS) -> None:
        self.max_params = max_params
        self._bases: OrderedDict[str, tuple[keras.Model, int]] = OrderedDict()  # least recently used first

    def get(self, key: str) -> keras.Model | None:
        found = self._bases.get(key)
        if found is None:
            return None
        self._bases.move_to_end(key)
        return found[0]

    def remember(self, key: str, base: keras.Model) -> keras.Model:
        self._bases[key] = (base, int(base.count_params()))
        self._bases.move_to_end(key)
        while len(self._bases) > 1 and sum(params for _, params in self._bases.values()) > self.max_params:
            self._bases.popitem(last=False)
        return base


@dataclass
class Entry:
    key: str
    prefix: str  # where the entry lives in the artifact store
    manifest: dict[str, Any]
    features: np.ndarray  # read-only, memory-mapped
    local_dir: Path  # this host's copy of the entry's files
    bases: BaseCache  # where the entry's base is kept between jobs

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    @property
    def base_params(self) -> int:
        return int(self.manifest["base_params"])

    def base_model(self, spec: JobSpec, artifacts: ArtifactStore) -> keras.Model:
        """The very base the features came from (a random-init base is not guaranteed to come
        out the same on another host), built once per `BaseCache`."""
        cached = self.bases.get(self.key)
        if cached is not None:
            return cached
        name = _file_name(self.manifest, "base_weights", self.prefix)
        local = safe_join(self.local_dir, name)
        if not local.is_file():
            artifacts.get_file(f"{self.prefix}/{name}", local)
        model_spec = spec.model.model_copy(update={"weights": None})
        base = build_base(architecture(spec.model.architecture), model_spec, None)
        load_weights_strictly(base, local, f"feature cache base weights {self.prefix}", "the job's base")
        return self.bases.remember(self.key, base)


class FeatureCache:
    def __init__(self, artifacts: ArtifactStore, prefix: str, local_dir: Path, bases: BaseCache | None = None) -> None:
        self.artifacts = artifacts
        self.prefix = prefix.rstrip("/")
        self.local_dir = Path(local_dir)
        self.bases = bases if bases is not None else BaseCache()

    def get_or_build(
        self, spec: JobSpec, weights_path: Path | None, dataset_checksum: str, labels: np.ndarray,
        images: Callable[[], np.ndarray], should_stop: ShouldStop | None = None,
    ) -> Entry:
        """The entry for this job's base on this dataset, built (from `images()`) only on a miss."""
        key = entry_key(spec, weights_identity(spec, weights_path), dataset_checksum)
        entry = self.open(key, labels)
        if entry is not None:
            log.info("feature cache hit: %s", key)
            return entry
        log.info("feature cache miss: computing %s", key)
        base = build_base(architecture(spec.model.architecture), spec.model, weights_path)
        return self._build(key, spec, base, dataset_checksum, labels, images(), should_stop)

    def open(self, key: str, labels: np.ndarray) -> Entry | None:
        """A committed entry (its features downloaded once per host), or None."""
        prefix = f"{self.prefix}/{_entry_name(key)}"
        try:
            manifest = json.loads(self.artifacts.get_bytes(f"{prefix}/manifest.json"))
        except NotFoundError:
            return None
        if manifest["labels"] != labels.tolist():
            raise PermanentError(f"feature cache entry {prefix} does not match the dataset's labels")
        name = _file_name(manifest, "features", prefix)
        local = safe_join(self._local(key), name)
        if not local.is_file():
            self._download(f"{prefix}/{name}", local, manifest["features_sha256"])
        return Entry(key, prefix, manifest, np.load(local, mmap_mode="r"), local.parent, self.bases)

    def _download(self, key: str, local: Path, sha256: str) -> None:
        temp = local.with_name(f".tmp-{uuid.uuid4().hex}-{local.name}")
        self.artifacts.get_file(key, temp)
        if _sha256(temp) != sha256:
            temp.unlink(missing_ok=True)
            raise RetryableError(f"feature cache file {key} does not match its checksum")
        os.replace(temp, local)

    def _local(self, key: str) -> Path:
        path = safe_join(self.local_dir, _entry_name(key))
        path.mkdir(parents=True, exist_ok=True)
        touch(path)  # last use of this host's copy, for the cache bound (worker.housekeeping)
        return path

    def _build(
        self, key: str, spec: JobSpec, base: keras.Model, dataset_checksum: str, labels: np.ndarray,
        images: np.ndarray, should_stop: ShouldStop | None = None,
    ) -> Entry:
        token = uuid.uuid4().hex[:12]
        prefix = f"{self.prefix}/{key}"
        features_name, weights_name = f"features-{token}.npy", f"base-{token}.weights.h5"
        extractor = base_features(spec.model, base)
        features_path = compute_features(extractor, images, EXTRACTION_BATCH, self._local(key) / features_name, should_stop)
        weights_path = self._local(key) / weights_name
        base.save_weights(weights_path)
        uploaded = [f"{prefix}/{features_name}", f"{prefix}/{weights_name}"]
        self.artifacts.put_file(features_path, uploaded[0])
        self.artifacts.put_file(weights_path, uploaded[1])
        manifest = {
            "key": key,
            "architecture": spec.model.architecture,
            "image_size": spec.model.image_size,
            "weights": spec.model.weights,
            "dataset_checksum": dataset_checksum,
            "keras_version": keras.__version__,
            "count": int(len(labels)),
            "shape": list(np.load(features_path, mmap_mode="r").shape),
            "features": features_name,
            "features_sha256": _sha256(features_path),
            "base_weights": weights_name,
            "base_params": int(base.count_params()),
            "labels": labels.tolist(),
            "created_at": time.time(),
        }
        if self.artifacts.put_bytes(f"{prefix}/manifest.json", json.dumps(manifest).encode(), if_absent=True):
            self.bases.remember(key, base)
            return Entry(key, prefix, manifest, np.load(features_path, mmap_mode="r"), features_path.parent, self.bases)
        log.info("feature cache %s: another worker committed it first; using theirs", key)
        for uploaded_key in uploaded:
            self.artifacts.delete(uploaded_key)
        features_path.unlink(missing_ok=True)
        weights_path.unlink(missing_ok=True)
        entry = self.open(key, labels)
        if entry is None:
            raise RetryableError(f"feature cache entry {prefix} vanished after it was committed")
        return entry


def complete_model(entry: Entry, spec: JobSpec, head: keras.Model, artifacts: ArtifactStore) -> keras.Model:
    """The classifier that `best.keras` holds: the entry's base with the trained `head`."""
    base = entry.base_model(spec, artifacts)
    model = transfer_model(spec.model, base, head.output_shape[-1], spec.training.seed)
    copy_head(head, model)
    return model


def compute_features(
    extractor: keras.Model, images: np.ndarray, batch_size: int, path: Path, should_stop: ShouldStop | None = None
) -> Path:
    """The extractor's outputs (preprocessing + base, inference mode) for every image, in order,
    written straight to a memory-mapped .npy so a large dataset never sits in memory twice."""
    shape = (len(images), *extractor.output_shape[1:])
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=path.parent)
    os.close(fd)
    temp = Path(name)
    try:
        out = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=shape)
        start = 0
        for x, _ in data.Batches(images, np.zeros(len(images), np.int32), batch_size).in_order():
            check(should_stop)
            batch = extractor.predict_on_batch(x)
            out[start : start + len(batch)] = batch
            start += len(batch)
            touch(temp)  # a live writer's temp file: housekeeping removes only untouched ones
        out.flush()
        del out
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _file_name(manifest: dict[str, Any], field: str, prefix: str) -> str:
    """A file name that the entry's manifest gives (see `_segment`)."""
    return _segment(manifest.get(field), f"entry {prefix}: manifest field {field!r}")


def _entry_name(key: str) -> str:
    """An entry's key, as a job's saved state names it (see `_segment`)."""
    return _segment(key, "entry key")


def _segment(value: object, what: str) -> str:
    """`value` if it is one safe path segment (no `/`, no `..`, not absolute), else
    PermanentError: what the artifact store gave back was not written by a worker."""
    try:
        if not isinstance(value, str) or "/" in check_key(value):
            raise BadInputError(f"{value!r} is not one file name")
    except BadInputError as exc:
        raise PermanentError(f"feature cache {what}: {exc}") from None
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
