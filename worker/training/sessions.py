"""A training session: the model to fit, its inputs and its progress, for a new or resumed job.

Three shapes of session, one training loop:
- train through the model (benchmark CNN, augmentation, feature cache off): fit the classifier;
- train on cached features: fit the head alone on the base's outputs; the complete classifier
  (the entry's base + the best epoch's head) is assembled once, when the job completes
  (train.publish_best);
- fine-tune: fit the parent's best model with the top of its base unfrozen.
A resumed session takes the model (with optimizer state) and progress from `state/`.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from shared.errors import PermanentError
from shared.manifest import Manifest
from shared.optimizers import OptimizerSpec
from worker.training import data, features
from worker.job import JobContext
from worker.training.finetune import unfreeze
from worker.training.inputs import fetch_weights, load_parent
from worker.training.models import architecture, build_model, count_params, head_classifier, load_model
from worker.training.optimizers import make_optimizer
from worker.training.state import Progress, StateStore, restore_rng_state


@dataclass
class Session:
    trainer: keras.Model  # compiled: what `fit` runs
    inputs: np.ndarray  # images or cached features, one row per train-split image
    labels: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    progress: Progress
    entry: features.Entry | None = None  # the feature-cache entry that the head trains on

    def params(self) -> tuple[int, int]:
        """(total, trainable) parameters of the complete classifier."""
        total, trainable = count_params(self.trainer)
        return (total + self.entry.base_params if self.entry else total), trainable


def compile_model(model: keras.Model, optimizer: OptimizerSpec) -> None:
    model.compile(optimizer=make_optimizer(optimizer), loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def open_session(ctx: JobContext, manifest: Manifest, states: StateStore, bases: features.BaseCache) -> Session:
    """The session of a new or resumed job; `bases` keeps a feature-cache base between jobs."""
    spec = ctx.spec
    progress = states.load()
    labels = data.split_files(manifest, "train").labels
    train_idx, val_idx = data.validation_split(labels, spec.validation_split, spec.training.seed)
    # Seeds the weights of a new model (and Dropout); a resumed model brings its own.
    keras.utils.set_random_seed(spec.training.seed)
    if spec.kind == "finetune":
        trainer = _finetune_model(ctx, progress, states)
        images = _images(ctx, manifest, trainer.input_shape[1])
        return Session(trainer, images, labels, train_idx, val_idx, progress or Progress())
    if progress is None:
        return _new_train(ctx, manifest, labels, train_idx, val_idx, bases)
    return _resumed_train(ctx, manifest, labels, train_idx, val_idx, progress, states, bases)


def _images(ctx: JobContext, manifest: Manifest, image_size: int) -> np.ndarray:
    return data.load_images(ctx.dataset_dir, manifest, "train", image_size, ctx.local_cache_dir, ctx.should_stop)


def _cache(ctx: JobContext, bases: features.BaseCache) -> features.FeatureCache:
    return features.FeatureCache(ctx.artifacts, ctx.feature_cache_prefix, ctx.local_cache_dir / "features", bases)


def _new_train(
    ctx: JobContext, manifest: Manifest, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
    bases: features.BaseCache,
) -> Session:
    spec = ctx.spec
    if not features.applies(spec):
        model = build_model(spec.model, len(manifest.classes), fetch_weights(ctx), spec.training.seed)
        compile_model(model, spec.optimizer)
        images = _images(ctx, manifest, spec.model.image_size)
        return Session(model, images, labels, train_idx, val_idx, Progress())
    entry = _cache(ctx, bases).get_or_build(
        spec, fetch_weights(ctx), manifest.checksum, labels,
        lambda: _images(ctx, manifest, spec.model.image_size), ctx.should_stop,
    )
    trainer = head_classifier(entry.feature_shape, spec.model.head, len(manifest.classes), spec.training.seed)
    compile_model(trainer, spec.optimizer)
    progress = Progress(feature_cache=entry.key)
    return Session(trainer, entry.features, labels, train_idx, val_idx, progress, entry)


def _resumed_train(
    ctx: JobContext, manifest: Manifest, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
    progress: Progress, states: StateStore, bases: features.BaseCache,
) -> Session:
    trainer = _load_state_model(states, progress)
    if progress.feature_cache is None:
        images = _images(ctx, manifest, ctx.spec.model.image_size)
        return Session(trainer, images, labels, train_idx, val_idx, progress)
    entry = _cache(ctx, bases).open(progress.feature_cache, labels)
    if entry is None:
        raise PermanentError(f"feature cache entry {progress.feature_cache} that this job trained on is gone")
    return Session(trainer, entry.features, labels, train_idx, val_idx, progress, entry)


def _finetune_model(ctx: JobContext, progress: Progress | None, states: StateStore) -> keras.Model:
    if progress is not None:
        return _load_state_model(states, progress)  # trainable flags and optimizer state included
    model = load_parent(ctx)
    arch = architecture(ctx.spec.model.architecture)
    unfreeze(model, ctx.spec.unfreeze_from, arch.unfreeze_from)
    compile_model(model, ctx.spec.optimizer)
    return model


def _load_state_model(states: StateStore, progress: Progress) -> keras.Model:
    model = load_model(states.model_path(progress))
    restore_rng_state(model, progress.rng)
    return model
