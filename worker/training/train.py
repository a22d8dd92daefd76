"""The training loop: one `fit` call per epoch, with the job's own end-of-epoch bookkeeping.

Why one `fit` per epoch: every epoch gets its own batch order (seeded by (seed, epoch), so it is
the same after a resume) and every epoch ends with a checkpoint of the full training state.
Keras's EarlyStopping/ModelCheckpoint/CSVLogger keep their state in memory for one `fit`, which
a resumed job does not have; `state.Progress` does their work and is saved with the model.

A stop request (see stopping.py) abandons the epoch in progress: a resumed job redoes it from
the last committed state.

An epoch ends with its state written (state.py), then committed by the loop's fenced record
write (`on_epoch`), then what that state superseded deleted, then the logs uploaded. A worker
that lost its lease is refused at the commit and stops there: it never deletes anything.

`best.keras` is the complete classifier of the best epoch, published once, when the job
completes, under the attempt's folder; the loop's fenced finish names it (`checkpoint`) with
the metrics it scored, so the two always match. Nothing reads it before the job succeeds. Until
then the state keeps the best epoch's model beside the last one, whatever the session trains:
the classifier itself, or a head on cached features, which is then assembled with the entry's base.

Beside it the same step writes `val_correct.bin`: which validation images the best epoch's model
gets right (one predict pass over the validation split, in fit's own validation batches, so the
predictions are those its val_accuracy counted; a head predicts on the cached features, exactly
as it was validated). Every job of a study with the same seed and split has the same validation
examples, so two jobs can be compared image by image (`shared.stats`, `submit compare`).
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from shared.stats import encode_correct, examples_id
from worker.job import EpochReport, JobContext, JobOutcome, JobResult, StopReason
from worker.training import data, features
from worker.training.logs import EpochLogs
from worker.training.models import load_model
from worker.training.sessions import Session
from worker.training.state import Monitor, Progress, StateStore, recorded_metrics
from worker.training.stopping import StopPoller, StopRequested, check


def train(ctx: JobContext, session: Session, states: StateStore, started: float) -> JobResult:
    logs = EpochLogs.for_job(ctx)  # also the job's HParams session (logs.py)
    try:
        if session.progress.epoch:  # this attempt's log starts as the committed history: one continuous log
            logs.write_csv(session.progress.history)
        reason = _fit_epochs(ctx, session, states, logs)
    finally:
        logs.close()
    if reason is not None:
        return _result(ctx, session, states, JobOutcome.STOPPED, reason, started)
    published = publish_best(ctx, session, states)
    return _result(ctx, session, states, JobOutcome.COMPLETED, None, started, published)


def _fit_epochs(ctx: JobContext, session: Session, states: StateStore, logs: EpochLogs) -> StopReason | None:
    """Train until the job is done; the reason if the worker asked it to stop first."""
    spec = ctx.spec.training
    monitor = Monitor.from_spec(spec.early_stopping)
    progress = session.progress
    batches = data.Batches(session.inputs, session.labels, spec.batch_size)
    validation = batches.epoch(session.val_idx)
    poller = StopPoller(ctx.should_stop)
    while not progress.finished(spec.epochs):
        epoch_started = time.monotonic()
        try:
            check(ctx.should_stop)
            metrics = _fit_one_epoch(ctx, session, batches, validation, poller)
        except StopRequested as stop:
            return stop.reason
        seconds = time.monotonic() - epoch_started
        progress.record(monitor, metrics, seconds)
        _end_of_epoch(ctx, session, states, logs, EpochReport(progress.epoch, metrics, seconds))
    return None


def _fit_one_epoch(
    ctx: JobContext, session: Session, batches: data.Batches, validation: tf.data.Dataset, poller: StopPoller
) -> dict[str, float]:
    spec = ctx.spec.training
    epoch = session.progress.epoch  # 0-based index of the epoch about to run
    order = data.epoch_order(session.train_idx, spec.seed, epoch, spec.data_fraction)
    augment = data.augmentation_layers(spec.augmentation, data.augmentation_seed(spec.seed, epoch))
    history = session.trainer.fit(
        batches.epoch(order, augment),
        validation_data=validation,
        epochs=epoch + 1,
        initial_epoch=epoch,  # so that callbacks and TensorBoard see the true epoch number
        callbacks=[poller],
        shuffle=False,  # the order is ours (data.epoch_order)
        verbose=0,
    )
    return recorded_metrics({name: values[-1] for name, values in history.history.items()})  # loss: the cross-entropy


def _end_of_epoch(ctx: JobContext, session: Session, states: StateStore, logs: EpochLogs, report: EpochReport) -> None:
    """Order matters: the state is written first (the best epoch's model with it) and committed
    with the epoch's report right after, before the uploads: a worker killed during the uploads
    would otherwise leave a resumed job without that epoch's metrics in the store (nothing
    re-reports it). Superseded state goes only once the commit went through (a fenced-out
    worker is refused there). The CSV is rebuilt from the committed history when the job resumes."""
    saved = states.save(session.progress, session.trainer)
    report.state_key = saved.key
    report.artifacts = {"log_csv": logs.csv_key}
    ctx.on_epoch(report)  # the commit point (the loop's fenced record write); raises LeaseLostError if fenced
    states.discard(saved)
    logs.write_epoch(session.progress.history)


def publish_best(ctx: JobContext, session: Session, states: StateStore) -> dict[str, str]:
    """Save `best.keras` from the state's best epoch: the model as it is, or, for a head trained
    on cached features, the entry's base with that head; and, beside it, `val_correct.bin`.
    Done by every attempt that completes the job, so a worker that died after the last state
    commit leaves a job whose next attempt publishes (and only publishes).

    Returns:
        The record artifacts written besides the checkpoint: `val_correct` (empty when no epoch
        was ever best, so nothing is published).
    """
    progress = session.progress
    key = _best_state_key(progress)
    if key is None:
        return {}
    local = states.model_path(progress, key)
    best = load_model(local)  # the best epoch's training model: the classifier, or the head on features
    published = {"val_correct": write_val_correct(ctx, session, best)}
    if session.entry is not None:
        model = features.complete_model(session.entry, ctx.spec, best, ctx.artifacts)
        local = ctx.work_dir / "best.keras"
        model.save(local)
    ctx.artifacts.put_file(local, best_key(ctx))
    return published


def write_val_correct(ctx: JobContext, session: Session, model: keras.Model) -> str:
    """Write which validation examples `model` gets right under the attempt's folder; its key.

    The examples are named by the hash of the validation files' manifest paths in validation
    order: the same for every job of the study with this seed and validation split.
    """
    predicted = predicted_classes(model, session.inputs, session.val_idx, ctx.spec.training.batch_size)
    correct = predicted == session.labels[session.val_idx]
    paths = data.split_files(data.load_manifest(ctx.dataset_dir), "train", ctx.spec.kind).paths
    key = f"{ctx.attempt_prefix}/val_correct.bin"
    ctx.artifacts.put_bytes(key, encode_correct(correct, examples_id([paths[i] for i in session.val_idx])))
    return key


def predicted_classes(model: keras.Model, inputs: np.ndarray, order: np.ndarray, batch_size: int) -> np.ndarray:
    """`model`'s class for each row of `inputs[order]`, predicted batch by batch in that order:
    the batches of fit's validation pass (`data.Batches.epoch`), so no row's prediction depends
    on a different batch composition. Rows are gathered per batch: a memory-mapped array is
    never read whole."""
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return np.concatenate([
        np.argmax(keras.ops.convert_to_numpy(model.predict_on_batch(np.asarray(inputs[batch]))), axis=-1)
        for batch in batches
    ])


def best_key(ctx: JobContext) -> str:
    """Where an attempt publishes the job's model; the record's `checkpoint` names it once the
    attempt's fenced finish went through."""
    return f"{ctx.attempt_prefix}/best.keras"


def _best_state_key(progress: Progress) -> str | None:
    """The saved model of the best epoch; None when no epoch was ever best (a monitored value
    that is NaN throughout). A state saved before the best epoch's model was kept names none:
    its worker published `best.keras` itself at every improvement, unless the best epoch is the
    last one, whose model the state holds."""
    if progress.best_model_key is None and progress.best_epoch == progress.epoch:
        return progress.model_key
    return progress.best_model_key


def _result(
    ctx: JobContext, session: Session, states: StateStore, outcome: JobOutcome, reason: StopReason | None,
    started: float, published: dict[str, str] | None = None,
) -> JobResult:
    progress = session.progress
    total, trainable = session.params()
    artifacts = {"log_csv": EpochLogs.csv_key_for(ctx), "tensorboard": EpochLogs.tensorboard_prefix_for(ctx)}
    artifacts.update(published or {})
    if states.committed is not None:
        artifacts["state"] = states.committed
    if session.entry is not None:
        artifacts["feature_cache"] = session.entry.prefix
    result = progress_result(ctx, progress, outcome, reason, started, total, trainable, artifacts)
    result.metrics["val_examples"] = len(session.val_idx)  # what the validation interval is over
    return result


def progress_result(
    ctx: JobContext, progress: Progress, outcome: JobOutcome, reason: StopReason | None, started: float,
    total: int | None = None, trainable: int | None = None, artifacts: dict[str, str] | None = None,
) -> JobResult:
    """The JobResult that a job's saved progress stands for; only a completed one names a
    checkpoint (a stopped job has published nothing)."""
    return JobResult(
        outcome=outcome,
        stop_reason=reason,
        epochs_run=progress.epoch,
        best_epoch=progress.best_epoch,
        metrics=progress.best_metrics(),
        seconds=time.monotonic() - started,
        total_params=total,
        trainable_params=trainable,
        checkpoint=best_key(ctx) if outcome is JobOutcome.COMPLETED and progress.best_epoch is not None else None,
        artifacts=artifacts or {},
    )
