"""A heartbeat that survives errors (issue 13, item 3), on the embedded backend with faults
injected at the ports (tests/faults.py) and the time passed in.

Before: a failed `queue.extend` (called outside the `try`) killed the heartbeat thread; a failed
renewal was skipped silently, so a lease could run out with the job still training; a renewal
that failed also kept the job from ever seeing a cancel request.
Now: every error is retried with a short backoff until the lease expires; a lease that could not
be renewed in time is lost and training stops within one batch; cancellation still arrives.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.jobs import JobRecord, job_id_for
from shared.ports import Backend, Delivery
from shared.status import JobStatus
from shared.submission import submit_jobs
from tests.faults import INJECTED, PASSED, FaultPlan, faulty_backend, throttled, timed_out
from tests.integration.test_worker_protocol import STUDY, FakeTraining, make_jobs, settings_for
from worker.job import JobContext, StopReason
from worker.lease import Lease
from worker.loop import Policy, Worker
from worker.settings import WorkerSettings

LEASE_S = 30.0


class ManualClock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def claimed_job(backend: Backend, dataset: Path, clock: ManualClock) -> tuple[JobRecord, Delivery]:
    """One submitted job, received and claimed at `clock`'s time with a LEASE_S lease."""
    [(job_id, spec)] = make_jobs(dataset, 1)
    submit_jobs(backend.store, backend.queue, STUDY, [(job_id, spec)])
    [delivery] = backend.queue.receive(max_messages=1)
    record = backend.store.claim(STUDY, job_id, "w1", LEASE_S, clock())
    assert record is not None
    return record, delivery


def worker_settings(tmp_path: Path, lease_s: float, **more: object) -> WorkerSettings:
    fields = {"home": tmp_path / "home", "lease_s": lease_s, "poll_wait_s": 0.2, "retry_backoff_s": 0.0, **more}
    return WorkerSettings(**fields)


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    return open_local(BackendConfig(home=tmp_path / "home", lease_s=LEASE_S, max_receives=20))


def test_failed_renewals_and_extensions_are_retried_and_the_lease_survives(backend, tiny_dataset):
    clock = ManualClock()
    record, delivery = claimed_job(backend, tiny_dataset, clock)
    plan = FaultPlan()
    plan.fail("queue.extend", throttled(), times=2)
    plan.fail("store.renew", timed_out(), times=2)
    faulty = faulty_backend(backend, plan)
    lease = Lease(faulty.queue, faulty.store, record, delivery.receipt, LEASE_S, clock=clock)  # beats by hand

    waits = []
    for _ in range(3):
        waits.append(lease.beat())  # before: the first failed extend raised here, ending the thread
        assert not lease.lost
        clock.advance(5.0)
    assert waits[0] < waits[1] < LEASE_S / 3 == waits[2]  # backoff after errors, a third of the lease after success
    assert plan.outcomes("queue.extend") == plan.outcomes("store.renew") == [INJECTED, INJECTED, PASSED]
    renewed_at = clock.now - 5.0
    assert lease.expires_at == backend.store.get_job(STUDY, record.job_id).lease_expires_at == renewed_at + LEASE_S


def test_a_lease_not_renewed_in_time_is_lost_and_cancellation_still_arrives(backend, tiny_dataset):
    clock = ManualClock()
    record, delivery = claimed_job(backend, tiny_dataset, clock)
    plan = FaultPlan()
    plan.fail_forever("store.renew", throttled())
    faulty = faulty_backend(backend, plan)
    lease = Lease(faulty.queue, faulty.store, record, delivery.receipt, LEASE_S, clock=clock)
    assert backend.store.request_cancel(STUDY, record.job_id)

    lease.beat()
    assert lease.cancel_requested and not lease.lost  # read from the record while renewals fail
    clock.advance(LEASE_S - 0.1)
    lease.beat()
    assert not lease.lost
    clock.advance(0.1)  # the lease's expiry: someone else may claim the job from now on
    assert lease.lost
    assert backend.store.get_job(STUDY, record.job_id).status is JobStatus.RUNNING  # nothing written


def test_a_lease_lost_error_or_a_takeover_seen_in_the_record_is_lost_at_once(backend, tiny_dataset):
    clock = ManualClock()
    record, delivery = claimed_job(backend, tiny_dataset, clock)
    lease = Lease(backend.queue, backend.store, record, delivery.receipt, LEASE_S, clock=clock)
    other = ManualClock(clock.now + LEASE_S + 1)
    assert backend.store.claim(STUDY, record.job_id, "w2", LEASE_S, other()) is not None
    lease.beat()  # LeaseLostError from the renewal
    assert lease.lost

    plan = FaultPlan()
    plan.fail_forever("store.renew", timed_out())
    faulty = faulty_backend(backend, plan)
    stale = Lease(faulty.queue, faulty.store, record, delivery.receipt, LEASE_S, clock=clock)
    stale.beat()  # the renewal fails; the record read beside it shows attempt 2
    assert stale.lost


def test_the_heartbeat_thread_outlives_failed_calls(tmp_path, tiny_dataset):
    """Issue 13 item 3 as reported: one failed `queue.extend` killed the thread. Here the first
    three extensions and renewals fail; the job runs through several beats and succeeds."""
    real = open_local(BackendConfig(home=tmp_path / "home", lease_s=3.0, max_receives=20))
    plan = FaultPlan()
    plan.fail("queue.extend", throttled(), times=3)
    plan.fail("store.renew", timed_out(), times=3)
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(real.store, real.queue, STUDY, [(job_id, spec)])
    stops: list[StopReason | None] = []

    def long_job(ctx: JobContext, call: int) -> None:
        deadline = time.monotonic() + 30
        while plan.outcomes("store.renew")[3:5] != [PASSED, PASSED] and time.monotonic() < deadline:
            stops.append(ctx.should_stop())
            time.sleep(0.05)  # polled like a batch: the beats run on their own thread meanwhile

    worker = Worker(faulty_backend(real, plan), settings_for(tmp_path / "home"), FakeTraining(long_job))
    worker.work(Policy(max_jobs=1))
    assert plan.outcomes("store.renew")[:5] == [INJECTED] * 3 + [PASSED] * 2
    assert plan.outcomes("queue.extend")[:4] == [INJECTED] * 3 + [PASSED]
    assert set(stops) == {None} and real.store.get_job(STUDY, job_id).status is JobStatus.SUCCEEDED


def test_real_training_stops_within_one_batch_of_the_lease_running_out(tmp_path, tiny_dataset):
    """Renewals fail; the clock passes the lease's expiry while epoch 1 is being committed. The
    job stops in epoch 2's first batch: nothing of epoch 2 is written, the record is untouched
    (another worker will take it), and the message is left for that worker."""
    from tests.training_support import tiny_spec
    from worker.training import JobRunner

    real = open_local(BackendConfig(home=tmp_path / "home", lease_s=LEASE_S, max_receives=20))
    spec = tiny_spec(training={"epochs": 3}).model_copy(update={"dataset": str(tiny_dataset)})
    job_id = job_id_for(STUDY, spec)
    submit_jobs(real.store, real.queue, STUDY, [(job_id, spec)])
    clock = ManualClock()
    plan = FaultPlan()
    plan.fail_forever("store.renew", throttled())
    commit = plan.hold("store.put_epoch", times=1)  # epoch 1's report: the test moves the clock meanwhile
    worker = Worker(faulty_backend(real, plan), worker_settings(tmp_path, LEASE_S), JobRunner(), clock=clock)
    thread = threading.Thread(target=worker.work, args=(Policy(max_jobs=1),))
    thread.start()
    commit.wait_entered(120)
    clock.advance(LEASE_S)
    commit.release()
    thread.join(120)
    record = real.store.get_job(STUDY, job_id)
    assert (record.status, record.attempt, record.epochs_run) == (JobStatus.RUNNING, 1, 1)
    assert [e.epoch for e in real.store.epochs(STUDY, job_id)] == [1]
    written = [o.key for o in real.artifacts.list(f"studies/{STUDY}/jobs/{job_id}/")]
    assert not any("epoch-0002" in key for key in written) and any("epoch-0001" in key for key in written)
    assert plan.count("store.finish") == 0 and real.queue.counts().in_flight == 1
