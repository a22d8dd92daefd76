"""`run_job`: the one entry point the worker loop calls."""

from __future__ import annotations

import time
from pathlib import Path

from worker.training import data
from worker.training.context import JobContext, JobResult
from worker.training.evaluate import evaluate
from worker.training.sessions import open_session
from worker.training.state import Progress, StateStore
from worker.training.stopping import StopRequested
from worker.training.train import progress_result, train


def run_job(ctx: JobContext) -> JobResult:
    """Train, fine-tune or evaluate one job, resuming from its saved state if it has one.

    Raises PermanentError for what can never succeed (bad dataset, missing parent or weights)
    and lets RetryableError (transient I/O) through; a stop request returns outcome "stopped".
    """
    started = time.monotonic()
    ctx.work_dir = Path(ctx.work_dir)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    manifest = data.load_manifest(ctx.dataset_dir)
    if ctx.spec.kind == "evaluate":
        return evaluate(ctx, manifest, started)
    states = StateStore(ctx.artifacts, ctx.prefix, ctx.work_dir)
    try:
        session = open_session(ctx, manifest, states)
    except StopRequested as stop:  # while decoding images or computing features: nothing to save
        return _stopped_early(ctx, states, stop.reason, started)
    return train(ctx, session, states, started)


def _stopped_early(ctx: JobContext, states: StateStore, reason: str, started: float) -> JobResult:
    return progress_result(ctx, states.load() or Progress(), "stopped", reason, started)
