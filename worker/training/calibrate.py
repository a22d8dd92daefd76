"""Calibrated weights: a random base that a frozen-base study can learn from, with no download.

A frozen base with random weights gives a head almost nothing to learn from: its
BatchNormalization layers normalize with their initial moving statistics (mean 0, variance 1),
which match nothing the layers actually see, so activations drift layer after layer until the
features barely depend on the image, and every head trains to chance. Setting each
BatchNormalization layer's moving statistics to those of a few hundred training images (no
labels needed: a data-dependent init) keeps the activations in range through the whole base,
and a head trained on its features learns.

ImageNet weights do far better; this is the fallback where they cannot be downloaded (an offline
machine, `make demo` here, the bench). `worker weights calibrate` writes such a file into the
artifact store, and a study names it in `weights`.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from shared.errors import BadInputError
from shared.jobs import ModelSpec
from worker.training import data
from worker.training.models import architecture, build_base, preprocess_function

CALIBRATION_IMAGES = 256  # enough for stable statistics; one batch, so memory grows with it


def calibrated_base(arch_name: str, image_size: int, images: np.ndarray, seed: int = 0,
                    sample: int = CALIBRATION_IMAGES) -> keras.Model:
    """A random-init base (seeded) whose BatchNormalization statistics are those of `sample`
    of `images` (uint8, (N, S, S, 3)), chosen by `seed`."""
    arch = architecture(arch_name)
    if arch.is_benchmark:
        raise BadInputError("the benchmark CNN has no pretrained base to calibrate", "ARCHITECTURE")
    keras.utils.set_random_seed(seed)
    base = build_base(arch, ModelSpec(architecture=arch_name, image_size=image_size), None)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # moving statistics := the statistics of the one batch below
    chosen = np.sort(np.random.default_rng(seed).permutation(len(images))[:sample])
    batch = preprocess_function(arch_name)(np.asarray(images[chosen], dtype="float32"))
    # One batch (with momentum 0 the last batch would win), as a graph: eagerly, TensorFlow
    # keeps every layer's output alive, about 30 MB per 128 px image instead of 6.
    tf.function(lambda x: base(x, training=True), autograph=False)(batch)
    return base


def write_calibrated_weights(
    dataset_dir: Path, arch_name: str, image_size: int, path: Path, cache_dir: Path,
    seed: int = 0, sample: int = CALIBRATION_IMAGES,
) -> Path:
    """Calibrate `arch_name` on the train split of the prepared dataset at `dataset_dir` and
    save the base's weights to `path` (a `.weights.h5` file). Returns `path`."""
    manifest = data.load_manifest(dataset_dir)
    images = data.load_images(dataset_dir, manifest, "train", image_size, cache_dir)
    base = calibrated_base(arch_name, image_size, images, seed, sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    base.save_weights(path)
    return path
