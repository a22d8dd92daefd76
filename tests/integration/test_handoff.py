"""Long jobs hand themselves off before the queue's visibility limit (issue 13, item 4), on the
embedded backend and on SQS (moto's server), with `max_message_age_s` shortened and time passed in.

Before: SQS's refusal to hide a message past 12 hours from its receipt (`InvalidParameterValue`)
was read as a stale receipt; the message reappeared, every other worker bounced it, and a healthy
job went to the dead-letter queue while it still ran. Now the adapter says so
(`VisibilityLimitError`), and before `max_message_age_s` the job stops like a preemption
(checkpoint, QUEUED, a fresh message) counted in `handoffs`, never as a failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.errors import VisibilityLimitError
from shared.ports import Backend
from shared.status import JobStatus
from shared.submission import submit_jobs
from tests.integration.test_heartbeat import ManualClock, worker_settings
from tests.integration.test_worker_protocol import STUDY, FakeTraining, make_jobs
from worker.job import EpochReport, JobContext, JobOutcome, JobResult, StopReason
from worker.lease import Lease
from worker.loop import Policy, Worker

MAX_AGE_S = 100.0
LEASE_S = 600.0  # longer than MAX_AGE_S: the manual clock passes the age limit, not the lease


@pytest.fixture(params=["sqlite", "moto"])
def backend(request, tmp_path: Path):
    if request.param == "sqlite":
        yield open_local(BackendConfig(home=tmp_path / "home", lease_s=30.0, max_receives=20))
        return
    from tests.aws_support import fresh_aws_backend

    yield from fresh_aws_backend(request, lease_s=30.0, max_receives=20)


def test_a_long_job_hands_itself_to_a_fresh_message_and_finishes(backend: Backend, tiny_dataset, tmp_path):
    [(job_id, spec)] = make_jobs(tiny_dataset, 1, epochs=3)
    submit_jobs(backend.store, backend.queue, STUDY, [(job_id, spec)])
    clock = ManualClock()
    seen: list[tuple[int, int, int]] = []  # (attempt, handoffs, epochs_run) as each attempt starts

    def runs_long(ctx: JobContext, call: int) -> JobResult | None:
        record = backend.store.get_job(STUDY, job_id)
        seen.append((record.attempt, record.handoffs, record.epochs_run))
        if call > 0:
            return None  # the next attempt, on a fresh message: finishes
        ctx.on_epoch(EpochReport(1, {"val_accuracy": 0.4}, 1.0, state_key=f"{ctx.attempt_prefix}/state/epoch-0001.json"))
        assert ctx.should_stop() is None
        clock.advance(MAX_AGE_S)  # the message is now as old as the setting allows
        assert ctx.should_stop() is StopReason.HANDOFF
        return JobResult(JobOutcome.STOPPED, StopReason.HANDOFF, 1, 1, {}, 1.0, None, None, None)

    settings = worker_settings(tmp_path, LEASE_S, max_message_age_s=MAX_AGE_S, max_receives=20)
    worker = Worker(backend, settings, FakeTraining(runs_long), clock=clock)
    worker.work(Policy(max_jobs=2))
    record = backend.store.get_job(STUDY, job_id)
    assert seen == [(1, 0, 0), (2, 1, 1)]  # handed off after epoch 1, resumed from its committed state
    assert (record.status, record.handoffs, record.preemptions, record.failures) == (JobStatus.SUCCEEDED, 1, 0, 0)
    assert record.enqueued_at is not None  # the fresh message went through the one enqueue path
    counts = backend.queue.counts()
    assert (counts.dead, counts.visible) == (0, 0)


@pytest.fixture
def sqs_backend(request):
    from tests.aws_support import fresh_aws_backend

    yield from fresh_aws_backend(request, lease_s=30.0, max_receives=20)


def test_sqs_refusing_to_hide_a_message_longer_is_a_handoff_not_a_stale_receipt(sqs_backend, tiny_dataset):
    backend = sqs_backend
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(backend.store, backend.queue, STUDY, [(job_id, spec)])
    [delivery] = backend.queue.receive(max_messages=1, wait_s=1)
    with pytest.raises(VisibilityLimitError, match="43200"):
        backend.queue.extend(delivery.receipt, 12 * 3600)  # beyond 12 h from the receipt: refused
    assert backend.queue.extend(delivery.receipt, 60) is True  # the receipt is still ours

    clock = ManualClock()
    record = backend.store.claim(STUDY, job_id, "w1", 12 * 3600, clock())
    with Lease(backend.queue, backend.store, record, delivery.receipt, 12 * 3600, clock=clock) as lease:
        assert lease.handoff_due and not lease.lost  # the first extension hit the limit
