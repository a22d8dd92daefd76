"""The training loop: one `fit` call per epoch, with the job's own end-of-epoch bookkeeping.

Why one `fit` per epoch: every epoch gets its own batch order (seeded by (seed, epoch), so it is
the same after a resume) and every epoch ends with a checkpoint of the full training state.
Keras's EarlyStopping/ModelCheckpoint/CSVLogger keep their state in memory for one `fit`, which
a resumed job does not have; `state.Progress` does their work and is saved with the model.

A stop request (see stopping.py) abandons the epoch in progress: a resumed job redoes it from
the last saved state.

`best.keras` is the complete classifier of the best epoch. Training through the model saves it
at every improvement (the state keeps only the last epoch's model). A head trained on cached
features keeps its best epoch's (small) model in the state instead, and the complete classifier
is assembled and saved once, when the job completes: a base is seconds to build and save.
"""

from __future__ import annotations

import time

import keras

from worker.training import data, features
from worker.training.context import EpochReport, JobContext, JobResult
from worker.training.logs import EpochLogs
from worker.training.models import load_model
from worker.training.sessions import Session
from worker.training.state import Monitor, Progress, StateStore
from worker.training.stopping import StopPoller, StopRequested, check


def train(ctx: JobContext, session: Session, states: StateStore, started: float) -> JobResult:
    spec = ctx.spec.training
    monitor = Monitor.from_spec(spec.early_stopping)
    logs = EpochLogs(ctx.artifacts, ctx.prefix, ctx.work_dir)
    progress = session.progress
    _repair_after_crash(ctx, session, states, logs)
    batches = data.Batches(session.inputs, session.labels, spec.batch_size)
    validation = batches.epoch(session.val_idx)
    poller = StopPoller(ctx.should_stop)
    try:
        while not progress.finished(spec.epochs):
            epoch_started = time.monotonic()
            try:
                check(ctx.should_stop)
                metrics = _fit_one_epoch(ctx, session, batches, validation, poller)
            except StopRequested as stop:
                return _result(ctx, session, "stopped", stop.reason, started)
            seconds = time.monotonic() - epoch_started
            improved = progress.record(monitor, metrics, seconds)
            _end_of_epoch(ctx, session, states, logs, improved, EpochReport(progress.epoch, metrics, seconds))
    finally:
        logs.close()
    if session.on_features:
        _publish_assembled_best(ctx, session, states)
    return _result(ctx, session, "completed", None, started)


def _fit_one_epoch(
    ctx: JobContext, session: Session, batches: data.Batches, validation, poller: StopPoller
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


def _end_of_epoch(
    ctx: JobContext, session: Session, states: StateStore, logs: EpochLogs, improved: bool, report: EpochReport
) -> None:
    """Order matters: the state commit comes first, so that everything after it can be redone
    from the state if the worker dies halfway (see _repair_after_crash). The epoch is reported
    right after the commit, before the uploads: a worker killed during the uploads would
    otherwise leave a resumed job without that epoch's metrics in the store (nothing re-reports it)."""
    progress = session.progress
    states.save(progress, session.trainer, keep_best=session.on_features)
    ctx.on_epoch(report)
    if improved and not session.on_features:
        _publish_best(ctx, session.trainer, states, progress)
    logs.write_epoch(progress.history)


def _publish_best(ctx: JobContext, model: keras.Model, states: StateStore, progress: Progress) -> None:
    local = ctx.work_dir / "best.keras"
    local.parent.mkdir(parents=True, exist_ok=True)
    model.save(local)
    ctx.artifacts.put_file(local, f"{ctx.prefix}/best.keras")
    states.mark_published(progress.best_epoch, progress.best_metrics())


def _publish_assembled_best(ctx: JobContext, session: Session, states: StateStore) -> None:
    """The entry's base + the best epoch's head, unless an earlier attempt published it."""
    progress = session.progress
    if progress.best_epoch is None or states.published_best() == progress.best_epoch:
        return
    head = load_model(states.model_path(progress, progress.best_model_key))
    model = features.complete_model(session.entry, ctx.spec, head, ctx.artifacts)
    _publish_best(ctx, model, states, progress)


def _repair_after_crash(ctx: JobContext, session: Session, states: StateStore, logs: EpochLogs) -> None:
    """A worker may die between the state commit and the uploads that follow it. The only best
    model that can then be missing is the one of the last saved epoch, which is the model just
    loaded; and the CSV is rebuilt from the saved history. (A head on cached features publishes
    its best at the end: nothing to repair here.)"""
    progress = session.progress
    if progress.epoch == 0:
        return
    if progress.best_epoch is not None and not session.on_features and states.published_best() != progress.best_epoch:
        if progress.best_epoch == progress.epoch:
            _publish_best(ctx, session.trainer, states, progress)
    logs.write_csv(progress.history)


def _result(ctx: JobContext, session: Session, outcome: str, reason: str | None, started: float) -> JobResult:
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
    ctx: JobContext, progress: Progress, outcome: str, reason: str | None, started: float,
    total: int | None = None, trainable: int | None = None, artifacts: dict[str, str] | None = None,
) -> JobResult:
    """The JobResult that a job's saved progress stands for."""
    return JobResult(
        outcome=outcome,  # type: ignore[arg-type]
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
