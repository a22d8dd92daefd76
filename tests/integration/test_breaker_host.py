"""A sick host trips the circuit breaker (issue 13, item 5), on the embedded backend and on SQS
and DynamoDB (moto's server): worker A's artifact store is a full disk (ENOSPC on every write,
injected at the port); worker B, on the same store and queue, is healthy.

Before: every job A took failed in milliseconds as an ordinary "retry", and A drained the queue
into the dead-letter queue while B sat idle. Now A stops after `breaker_threshold` failures on
different jobs, in one line, with a "fatal" reason (exit status 1) and leaves its group; the jobs
it touched are back on the queue without a failure counted against them, and B finishes them all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.ports import Backend
from shared.status import JobStatus
from shared.submission import submit_jobs
from tests.faults import FaultPlan, disk_full, faulty_backend
from tests.integration.test_heartbeat import worker_settings
from tests.integration.test_worker_protocol import STUDY, FakeTraining, make_jobs
from worker.job import JobContext
from worker.loop import Policy, Worker

JOBS = 6
THRESHOLD = 3


@pytest.fixture(params=["sqlite", "moto"])
def backend(request, tmp_path: Path):
    if request.param == "sqlite":
        yield open_local(BackendConfig(home=tmp_path / "home", lease_s=30.0))  # max_receives: the default
        return
    from tests.aws_support import fresh_aws_backend

    yield from fresh_aws_backend(request, lease_s=30.0, max_receives=20)


def writes_state(ctx: JobContext, call: int) -> None:
    """Each job writes a state file before its first epoch, as training does."""
    ctx.artifacts.put_bytes(f"{ctx.attempt_prefix}/state/epoch-0001.json", b"{}")


def test_a_disk_full_host_stops_after_threshold_jobs_and_a_healthy_one_finishes_them(backend: Backend, tiny_dataset, tmp_path):
    jobs = make_jobs(tiny_dataset, JOBS, epochs=1)
    submit_jobs(backend.store, backend.queue, STUDY, jobs)
    plan = FaultPlan()
    plan.fail_forever("artifacts.put_file", disk_full())
    plan.fail_forever("artifacts.put_bytes", disk_full())
    left: list[str] = []
    sick_training = FakeTraining(writes_state)
    # The default backoff (a failed job's message is hidden a few seconds) makes the next job the
    # sick worker's next failure; SQS would otherwise hand back the message just released.
    settings = worker_settings(tmp_path / "a", 30.0, worker_id="sick", breaker_threshold=THRESHOLD, retry_backoff_s=5.0)
    sick = Worker(faulty_backend(backend, plan), settings, sick_training, on_idle_exit=lambda: left.append("left"))
    sick.work(Policy(until_empty=True))

    touched = {job_id for job_id, _ in sick_training.calls}
    assert len(touched) == THRESHOLD  # at most N jobs touched, then it stopped
    assert sick.stop.reason.startswith("fatal: circuit breaker: ") and "on 3 different jobs" in sick.stop.reason
    assert "No space left on device" in sick.stop.reason and left == ["left"]
    for job_id in touched:  # back on the queue for a healthy worker, not counted as their failures
        record = backend.store.get_job(STUDY, job_id)
        assert (record.status, record.failures, record.lease_owner) == (JobStatus.QUEUED, 0, None)
        assert "No space left on device" in record.error

    healthy_training = FakeTraining(writes_state)
    Worker(backend, worker_settings(tmp_path / "b", 30.0, worker_id="healthy"), healthy_training).work(Policy(until_empty=True))
    records = backend.store.list_jobs(STUDY)
    assert {r.status for r in records} == {JobStatus.SUCCEEDED} and len(records) == JOBS
    assert {r.failures for r in records} == {0}
    assert sorted(job_id for job_id, _ in healthy_training.calls) == sorted(job_id for job_id, _ in jobs)
    assert backend.queue.counts().dead == 0 and backend.queue.dead_letters() == []


def test_one_job_failing_again_and_again_is_that_jobs_fault_not_the_hosts(tmp_path, tiny_dataset):
    """The breaker counts different jobs: one bad job fails its own way to FAILED (counted in
    its record) and the worker carries on with the next one."""
    backend = open_local(BackendConfig(home=tmp_path / "home", lease_s=30.0))
    jobs = make_jobs(tiny_dataset, 2, epochs=1)
    bad_id = jobs[0][0]
    submit_jobs(backend.store, backend.queue, STUDY, jobs[:1])

    def bad_job(ctx: JobContext, call: int) -> None:
        if ctx.job_id == bad_id:
            raise RuntimeError("this job's own bug")

    worker = Worker(backend, worker_settings(tmp_path, 30.0, breaker_threshold=2), FakeTraining(bad_job))
    worker.work(Policy(until_empty=True))
    submit_jobs(backend.store, backend.queue, STUDY, jobs[1:])
    worker.work(Policy(until_empty=True))
    bad, good = (backend.store.get_job(STUDY, job_id) for job_id, _ in jobs)
    assert (bad.status, bad.failures) == (JobStatus.FAILED, 3) and "gave up after 3 failures" in bad.error
    assert good.status is JobStatus.SUCCEEDED and not worker.breaker.tripped and not worker.stop.requested
    assert len(backend.queue.dead_letters()) == 1  # a job whose own errors repeat: the alarm fires
