"""The input pipeline (decoded uint8 cache + tf.data batches) vs Keras's legacy
`ImageDataGenerator.flow_from_directory`, on the same train folder, same batch and image size.

Both are consumed fully, batch by batch, the way training uses them: set up once per job (the
generator; the decoded-image cache and `data.Batches`), then one pass per epoch. Epoch 1 of the
pipeline includes decoding every image into its (fresh, empty) cache and loading it; later
epochs draw a new seeded order and gather from memory. The legacy generator decodes every image
again in every epoch.

The dataset is 1,600 training images (flowers-102 has 8,189): an epoch of the pipeline has a
fixed cost (a tf.data iterator, ~20-40 ms here) that would dominate a few hundred images.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import Dataset, Row

IMAGE_SIZE, BATCH, LATER_EPOCHS = 96, 32, 3
CLASSES, PER_CLASS, SOURCE_SIZE = 5, 400, 128  # its own, larger dataset (see above)


def legacy_generator(train_dir: Path):
    """(the generator, its label). Falls back to a non-cached tf.data pipeline if Keras lacks it."""
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    except ImportError:
        ImageDataGenerator = None
    if ImageDataGenerator is not None:
        gen = ImageDataGenerator().flow_from_directory(
            str(train_dir), target_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH,
            class_mode="sparse", shuffle=False,
        )

        def epoch() -> int:
            seen = 0
            for _ in range(len(gen)):
                x, _y = next(gen)
                seen += len(x)
            return seen

        return epoch, "keras.src.legacy ImageDataGenerator.flow_from_directory"
    import tensorflow as tf

    ds = tf.keras.utils.image_dataset_from_directory(
        str(train_dir), image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH, shuffle=False
    )

    def epoch() -> int:
        return sum(int(x.shape[0]) for x, _y in ds)

    return epoch, "ImageDataGenerator ABSENT: image_dataset_from_directory without cache (re-decodes)"


def pipeline(dataset: Dataset, cache_dir: Path):
    from worker.training import data

    manifest = data.load_manifest(dataset.prepared)
    labels = data.split_files(manifest, "train").labels
    job: dict[str, data.Batches] = {}
    epochs = iter(range(1_000_000))

    def epoch() -> int:
        if not job:  # the first epoch sets the job up: decode into the cache, load it
            images = data.load_images(dataset.prepared, manifest, "train", IMAGE_SIZE, cache_dir)
            job["batches"] = data.Batches(images, labels, BATCH)
        order = data.epoch_order(np.arange(len(labels)), seed=0, epoch=next(epochs))
        seen = 0
        for x, _y in job["batches"].epoch(order):
            seen += int(x.shape[0])
        return seen

    return epoch


def pipeline_labels(dataset: Dataset):
    from worker.training import data

    return data.split_files(data.load_manifest(dataset.prepared), "train").labels


def measure(epoch, epochs: int) -> list[float]:
    """images/s of each epoch."""
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        n = epoch()
        rates.append(n / (time.perf_counter() - started))
    return rates


def bigger_dataset(root: Path) -> Dataset:
    from shared.datasets.prepare import prepare
    from shared.datasets.synth import synthesize

    source = synthesize(root / "synth", classes=CLASSES, per_class=PER_CLASS, size=SOURCE_SIZE, seed=1)
    prepare(source, root / "prepared", test_fraction=0.2, seed=0, name="bench-flowers-big")
    return Dataset(source, root / "prepared")


def run(workdir: Path, dataset: Dataset) -> list[Row]:
    dataset = bigger_dataset(workdir / "dataset")
    legacy_epoch, legacy_label = legacy_generator(dataset.prepared / "train")
    ours_epoch = pipeline(dataset, workdir / "decoded")
    legacy = measure(legacy_epoch, 1 + LATER_EPOCHS)
    ours = measure(ours_epoch, 1 + LATER_EPOCHS)
    first = ours[0] / legacy[0]
    later_ours, later_legacy = statistics.mean(ours[1:]), statistics.mean(legacy[1:])
    later = later_ours / later_legacy
    setup = f"{len(pipeline_labels(dataset))} train images ({CLASSES}x{PER_CLASS} PNG, 80%), {IMAGE_SIZE}px, batch {BATCH}, vs {legacy_label}"
    return [
        Row("input pipeline: epoch 1 (images/s)", ours[0], legacy[0], "img/s", first, "(info)", None, setup),
        Row(f"input pipeline: later epochs, mean of {LATER_EPOCHS} (images/s)", later_ours, later_legacy, "img/s",
            later, ">= 10x", later >= 10, setup, {"ours": ours, "legacy": legacy}),
    ]
