"""A training session: the model to fit, its inputs and its progress, for a new or resumed job.

Three shapes of session, one training loop:
- train through the model (benchmark CNN, augmentation, feature cache off, mixed precision): fit
  the classifier;
- train on cached features: fit the head alone on the base's outputs; the complete classifier
  (the entry's base + the best epoch's head) is assembled once, when the job completes
  (train.publish_best);
- fine-tune: fit the parent's best model with the top of its base unfrozen (finetune.py),
  starting from the parent's validation score (epoch 0): its weights stay the job's best model
  until an epoch beats them.
A resumed session takes the model (with optimizer state) and progress from the committed state.

Every model is compiled with the plain cross-entropy as a metric besides Keras's loss (which adds
the head's regularisation penalties): `loss`/`val_loss` are recorded as the cross-entropy
(state.recorded_metrics), the quantity evaluation's test_loss is.
"""

from __future__ import annotations

import logging
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
from worker.training.models import build_model, count_params, dtype_policy, find_base, head_classifier, load_model
from worker.training.optimizers import make_optimizer
from worker.training.state import CROSS_ENTROPY, Monitor, Progress, StateStore, recorded_metrics, restore_rng_state
from worker.training.stopping import StopPoller

log = logging.getLogger(__name__)
LOSS = "sparse_categorical_crossentropy"


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


def compile_model(model: keras.Model, optimizer: OptimizerSpec | keras.optimizers.Optimizer) -> None:
    """Compile for training: Keras's loss (cross-entropy + penalties) is what the optimizer
    minimises; the cross-entropy metric is what the job records as loss (state.recorded_metrics)."""
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = make_optimizer(optimizer)
    cross_entropy = keras.metrics.SparseCategoricalCrossentropy(name=CROSS_ENTROPY)
    model.compile(optimizer=optimizer, loss=LOSS, metrics=["accuracy", cross_entropy])


def open_session(ctx: JobContext, manifest: Manifest, states: StateStore, bases: features.BaseCache) -> Session:
    """The session of a new or resumed job; `bases` keeps a feature-cache base between jobs."""
    spec = ctx.spec
    progress = states.load()
    labels = data.split_files(manifest, "train").labels
    train_idx, val_idx = data.validation_split(labels, spec.validation_split, spec.training.seed)
    # Seeds the weights of a new model (and Dropout); a resumed model brings its own.
    keras.utils.set_random_seed(spec.training.seed)
    if spec.kind == "finetune":
        return _finetune(ctx, manifest, labels, train_idx, val_idx, progress, states)
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
    # Mixed precision trains through the model: cached features are float32 base outputs, and
    # the head alone gains nothing from float16.
    if spec.training.mixed_precision or not features.applies(spec):
        with dtype_policy(spec.training.mixed_precision):
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
    trainer = _load_state_model(states, progress)  # under the policy it was saved with
    if progress.feature_cache is None:
        images = _images(ctx, manifest, ctx.spec.model.image_size)
        return Session(trainer, images, labels, train_idx, val_idx, progress)
    entry = _cache(ctx, bases).open(progress.feature_cache, labels)
    if entry is None:
        raise PermanentError(f"feature cache entry {progress.feature_cache} that this job trained on is gone")
    return Session(trainer, entry.features, labels, train_idx, val_idx, progress, entry)


def _finetune(
    ctx: JobContext, manifest: Manifest, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
    progress: Progress | None, states: StateStore,
) -> Session:
    if progress is not None:
        trainer = _load_state_model(states, progress)  # trainable flags and optimizer state included
        return Session(trainer, _images(ctx, manifest, trainer.input_shape[1]), labels, train_idx, val_idx, progress)
    trainer, share = _finetune_model(ctx)
    images = _images(ctx, manifest, trainer.input_shape[1])
    session = Session(trainer, images, labels, train_idx, val_idx, Progress(job_metrics={"unfrozen_share": share}))
    _start_from_parent(ctx, session, states)
    return session


def _finetune_model(ctx: JobContext) -> tuple[keras.Model, float]:
    """The parent's model with the top of its base unfrozen, compiled, and the share of the
    base's parameters unfrozen (logged)."""
    model = load_parent(ctx)
    unfrozen = unfreeze(model, ctx.spec.unfreeze_from)
    wrapper = find_base(model)
    if wrapper is not None:
        layer = wrapper.base.layers[unfrozen.start]
        log.info("fine-tuning %s from layer %d (%s): %.1f%% of the base's parameters unfrozen",
                 wrapper.base.name, unfrozen.start, layer.name, 100 * unfrozen.share)
    compile_model(model, ctx.spec.optimizer)
    return model, unfrozen.share


def _start_from_parent(ctx: JobContext, session: Session, states: StateStore) -> None:
    """Epoch 0 of a fine-tuning job: the parent's model scored on the validation split, in
    fit's validation batches. The best checkpoint and early stopping start from that score, and
    the parent's model is kept as epoch 0's, published if no epoch beats it."""
    progress = session.progress
    reference = validation_metrics(session, ctx.spec.training.batch_size, StopPoller(ctx.should_stop))
    monitor = Monitor.from_spec(ctx.spec.training.early_stopping)
    progress.start_from(monitor, reference)
    log.info("fine-tuning starts from the parent's %s", ", ".join(f"{k} {v:.4f}" for k, v in sorted(reference.items())))
    if progress.best_epoch == 0:
        states.save_reference(progress, session.trainer)


def validation_metrics(session: Session, batch_size: int, poller: keras.callbacks.Callback) -> dict[str, float]:
    """The trainer's validation metrics as fit reports them (`val_loss` the cross-entropy...)."""
    inputs = np.asarray(session.inputs[session.val_idx])
    scores = session.trainer.evaluate(
        inputs, session.labels[session.val_idx], batch_size=batch_size, callbacks=[poller], return_dict=True, verbose=0
    )
    return recorded_metrics({f"val_{name}": value for name, value in scores.items()})


def _load_state_model(states: StateStore, progress: Progress) -> keras.Model:
    model = load_model(states.model_path(progress))
    restore_rng_state(model, progress.rng)
    if CROSS_ENTROPY not in str((model.get_compile_config() or {}).get("metrics")):
        compile_model(model, model.optimizer)  # saved before the metric existed: same optimizer, same state
    return model
