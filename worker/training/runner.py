"""The entry point the worker loop calls: `JobRunner` (one per worker process) or `run_job`."""

from __future__ import annotations

import time
from pathlib import Path

from worker.job import JobContext, JobOutcome, JobResult, StopReason
from worker.training import data
from worker.training.evaluate import evaluate
from worker.training.features import BaseCache
from worker.training.sessions import open_session
from worker.training.state import Progress, StateStore
from worker.training.stopping import StopRequested
from worker.training.train import progress_result, train


class JobRunner:
    """Runs one job after another (the loop's `RunJob`), keeping what consecutive jobs share:
    the feature-cache bases used last (see `features.BaseCache`)."""

    def __init__(self) -> None:
        self.bases = BaseCache()

    def __call__(self, ctx: JobContext) -> JobResult:
        return run_job(ctx, self.bases)


def run_job(ctx: JobContext, bases: BaseCache | None = None) -> JobResult:
    """Train, fine-tune or evaluate one job, resuming from its committed state (`ctx.state_key`)
    if it has one, and writing only under its attempt's folder.

    Raises PermanentError for what can never succeed (bad dataset, missing parent or weights)
    and lets RetryableError (transient I/O) through; a stop request returns outcome STOPPED.
    Without `bases`, a feature-cache base is built for this job alone.
    """
    started = time.monotonic()
    ctx.work_dir = Path(ctx.work_dir)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    manifest = data.load_manifest(ctx.dataset_dir)
    if ctx.spec.kind == "evaluate":
        return evaluate(ctx, manifest, started)
    states = StateStore(ctx.artifacts, ctx.attempt_prefix, ctx.work_dir, ctx.state_key, f"{ctx.prefix}/state/state.json")
    try:
        session = open_session(ctx, manifest, states, bases if bases is not None else BaseCache())
    except StopRequested as stop:  # while decoding images or computing features: nothing to save
        return _stopped_early(ctx, states, stop.reason, started)
    return train(ctx, session, states, started)


def _stopped_early(ctx: JobContext, states: StateStore, reason: StopReason, started: float) -> JobResult:
    return progress_result(ctx, states.load() or Progress(), JobOutcome.STOPPED, reason, started)
