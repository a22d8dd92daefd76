"""The training loop: one `fit` call per epoch, with the job's own end-of-epoch bookkeeping.

Why one `fit` per epoch: every epoch gets its own batch order (seeded by (seed, epoch), so it is
the same after a resume) and every epoch ends with a checkpoint of the full training state.
Keras's EarlyStopping/ModelCheckpoint/CSVLogger keep their state in memory for one `fit`, which
a resumed job does not have; `state.Progress` does their work and is saved with the model.

A stop request (see stopping.py) abandons the epoch in progress: a resumed job redoes it from
the last saved state.

`best.keras` is the complete classifier of the best epoch, published once, when the job
completes: nothing reads it before the job succeeds. Until then the saved state keeps the best
epoch's model beside the last one (state.py), whatever the session trains: the classifier
itself, or a head on cached features, which is then assembled with the entry's base.
"""

from __future__ import annotations

import time

import tensorflow as tf

from worker.job import EpochReport, JobContext, JobOutcome, JobResult, StopReason
from worker.training import data, features
from worker.training.logs import EpochLogs
from worker.training.models import load_model
from worker.training.sessions import Session
from worker.training.state import Monitor, Progress, StateStore
from worker.training.stopping import StopPoller, StopRequested, check


def train(ctx: JobContext, session: Session, states: StateStore, started: float) -> JobResult:
    logs = EpochLogs.for_job(ctx)  # also the job's HParams session (logs.py)
    try:
        if session.progress.epoch:  # a worker may have died between a state commit and its CSV upload
            logs.write_csv(session.progress.history)
        reason = _fit_epochs(ctx, session, states, logs)
    finally:
        logs.close()
    if reason is not None:
        return _result(ctx, session, JobOutcome.STOPPED, reason, started)
    publish_best(ctx, session, states)
    return _result(ctx, session, JobOutcome.COMPLETED, None, started)


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
    return {name: float(values[-1]) for name, values in history.history.items()}


def _end_of_epoch(ctx: JobContext, session: Session, states: StateStore, logs: EpochLogs, report: EpochReport) -> None:
    """Order matters: the state commit comes first (the best epoch's model with it), and the
    epoch is reported right after it, before the uploads: a worker killed during the uploads
    would otherwise leave a resumed job without that epoch's metrics in the store (nothing
    re-reports it). The CSV is rewritten from the saved history when the job resumes."""
    states.save(session.progress, session.trainer)
    ctx.on_epoch(report)
    logs.write_epoch(session.progress.history)


def publish_best(ctx: JobContext, session: Session, states: StateStore) -> None:
    """Save `best.keras` from the state's best epoch: the model as it is, or, for a head trained
    on cached features, the entry's base with that head. Done by every attempt that completes
    the job, so a worker that died after the last state commit leaves a job whose next attempt
    publishes (and only publishes)."""
    progress = session.progress
    key = _best_state_key(progress)
    if key is None:
        return
    local = states.model_path(progress, key)
    if session.entry is not None:
        model = features.complete_model(session.entry, ctx.spec, load_model(local), ctx.artifacts)
        local = ctx.work_dir / "best.keras"
        model.save(local)
    ctx.artifacts.put_file(local, f"{ctx.prefix}/best.keras")


def _best_state_key(progress: Progress) -> str | None:
    """The saved model of the best epoch; None when no epoch was ever best (a monitored value
    that is NaN throughout). A state saved before the best epoch's model was kept names none:
    its worker published `best.keras` itself at every improvement, unless the best epoch is the
    last one, whose model the state holds."""
    if progress.best_model_key is None and progress.best_epoch == progress.epoch:
        return progress.model_key
    return progress.best_model_key


def _result(
    ctx: JobContext, session: Session, outcome: JobOutcome, reason: StopReason | None, started: float
) -> JobResult:
    progress = session.progress
    total, trainable = session.params()
    artifacts = {
        "log_csv": f"{ctx.prefix}/log.csv",
        "tensorboard": f"{ctx.prefix}/tensorboard",
        "state": f"{ctx.prefix}/state",
    }
    if session.entry is not None:
        artifacts["feature_cache"] = session.entry.prefix
    return progress_result(ctx, progress, outcome, reason, started, total, trainable, artifacts)


def progress_result(
    ctx: JobContext, progress: Progress, outcome: JobOutcome, reason: StopReason | None, started: float,
    total: int | None = None, trainable: int | None = None, artifacts: dict[str, str] | None = None,
) -> JobResult:
    """The JobResult that a job's saved progress stands for."""
    return JobResult(
        outcome=outcome,
        stop_reason=reason,
        epochs_run=progress.epoch,
        best_epoch=progress.best_epoch,
        metrics=progress.best_metrics(),
        seconds=time.monotonic() - started,
        total_params=total,
        trainable_params=trainable,
        checkpoint=f"{ctx.prefix}/best.keras" if progress.best_epoch is not None else None,
        artifacts=artifacts or {},
    )
