"""The fault-injecting port wrappers (tests/faults.py), on the embedded backend and on moto.

Each test checks a wrapper against the real adapter behind it: a planned failure happens on
exactly the planned call and leaves the adapter untouched, a lost response leaves the side effect
done, and every other call passes through with the adapter's own answer.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.errors import FatalError, LeaseLostError, NotFoundError, RetryableError
from shared.ports import ArtifactStore, Backend, JobQueue, JobStore
from shared.status import JobStatus
from tests.factories import job_record
from tests.faults import (
    INJECTED,
    LOST,
    PASSED,
    RAISED,
    FaultPlan,
    FaultyArtifacts,
    FaultyQueue,
    FaultyStore,
    disk_full,
    faulty_backend,
    port_methods,
    throttled,
    timed_out,
)

LEASE_S = 30.0
BACKENDS = ["local", pytest.param("aws", marks=pytest.mark.aws)]


@pytest.fixture(params=BACKENDS)
def real(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The real backend under the wrappers: SQLite, or AWS adapters over moto's server."""
    if request.param == "local":
        yield open_local(BackendConfig(home=tmp_path / "home", lease_s=LEASE_S, max_receives=3))
        return
    from tests.aws_support import fresh_aws_backend

    yield from fresh_aws_backend(request, lease_s=LEASE_S, max_receives=3)


@pytest.fixture
def plan() -> FaultPlan:
    return FaultPlan()


@pytest.fixture
def faulty(real: Backend, plan: FaultPlan) -> Backend:
    return faulty_backend(real, plan)


def receive_one(queue: JobQueue):
    deliveries = queue.receive(max_messages=1, wait_s=2.0)
    assert len(deliveries) == 1, deliveries
    return deliveries[0]


def claimed_job(store: JobStore, now: float):
    job = job_record()
    store.create_jobs([job])
    return store.claim(job.study_id, job.job_id, "w1", LEASE_S, now)


# --- pass-through ---


def test_wrappers_are_the_ports_and_pass_every_call_through(real: Backend, faulty: Backend, plan: FaultPlan):
    assert isinstance(faulty.queue, JobQueue) and isinstance(faulty.store, JobStore)
    assert isinstance(faulty.artifacts, ArtifactStore) and faulty.name == real.name
    assert faulty.queue.send(["a", "b"]) == 2
    job = job_record()
    assert faulty.store.create_jobs([job]) == [job.job_id]
    assert faulty.store.get_job(job.study_id, job.job_id) == real.store.get_job(job.study_id, job.job_id)
    assert faulty.artifacts.put_bytes("x/y.txt", b"hello") is True
    assert real.artifacts.get_bytes("x/y.txt") == b"hello"
    assert faulty.artifacts.key_for("artifacts:x/y.txt") == "x/y.txt"
    assert [c.method for c in plan.log] == [
        "queue.send", "store.create_jobs", "store.get_job", "artifacts.put_bytes", "artifacts.key_for",
    ]
    assert {c.outcome for c in plan.log} == {PASSED}


def test_every_port_method_is_wrapped():
    # generated from shared.ports: a method added to a port is wrapped (and faultable) at once
    for wrapper, port in ((FaultyQueue, JobQueue), (FaultyStore, JobStore), (FaultyArtifacts, ArtifactStore)):
        for name in port_methods(port):
            assert name in vars(wrapper) and getattr(wrapper, name) is not getattr(port, name), name


def test_adapter_attributes_outside_the_port_pass_through(tmp_path: Path):
    real = open_local(BackendConfig(home=tmp_path / "home", lease_s=7.0))
    faulty = faulty_backend(real, FaultPlan())
    assert faulty.queue.visibility_timeout_s == 7.0  # an SqliteJobQueue attribute, not a port method
    assert faulty.queue.inner is real.queue
    with pytest.raises(AttributeError):
        faulty.queue.no_such_attribute


# --- injected failures ---


def test_failure_happens_exactly_on_the_planned_calls(real: Backend, faulty: Backend, plan: FaultPlan):
    real.queue.send(["job"])
    delivery = receive_one(real.queue)
    plan.fail("queue.extend", throttled("ChangeMessageVisibility"), times=3)
    for _ in range(3):
        with pytest.raises(RetryableError, match="throttled"):
            faulty.queue.extend(delivery.receipt, 60)
    assert faulty.queue.extend(delivery.receipt, 60) is True
    assert plan.outcomes("queue.extend") == [INJECTED, INJECTED, INJECTED, PASSED]
    assert plan.count("queue.extend") == 4


def test_failure_on_numbered_calls_leaves_the_adapter_untouched(real: Backend, faulty: Backend, plan: FaultPlan):
    now = time.time()
    claimed = claimed_job(real.store, now)
    plan.fail("store.renew", timed_out("UpdateItem"), on_calls=[2, 3])
    args = (claimed.study_id, claimed.job_id, claimed.attempt, LEASE_S)
    assert faulty.store.renew(*args, now + 10).lease_expires_at == pytest.approx(now + 10 + LEASE_S)
    for later_s in (20, 30):
        with pytest.raises(RetryableError, match="timed out"):
            faulty.store.renew(*args, now + later_s)
    # the refused renewals never reached the store: the lease is still the one of call 1
    assert real.store.get_job(claimed.study_id, claimed.job_id).lease_expires_at == pytest.approx(now + 10 + LEASE_S)
    assert faulty.store.renew(*args, now + 40).lease_expires_at == pytest.approx(now + 40 + LEASE_S)
    assert plan.outcomes("store.renew") == [PASSED, INJECTED, INJECTED, PASSED]
    assert [c.error for c in plan.calls("store.renew") if c.outcome is INJECTED] == [
        "RetryableError: UpdateItem timed out (injected)"
    ] * 2


def test_disk_full_on_artifact_writes(real: Backend, faulty: Backend, plan: FaultPlan, tmp_path: Path):
    source = tmp_path / "best.keras"
    source.write_bytes(b"weights")
    plan.fail_forever("artifacts.put_file", disk_full())
    for _ in range(2):
        with pytest.raises(OSError) as raised:
            faulty.artifacts.put_file(source, "studies/s/jobs/j/best.keras")
        assert raised.value.errno == errno.ENOSPC and "No space left on device" in str(raised.value)
    assert real.artifacts.exists("studies/s/jobs/j/best.keras") is False
    assert faulty.artifacts.put_bytes("studies/s/jobs/j/best.json", b"{}") is True  # other methods are fine
    plan.clear("artifacts.put_file")
    faulty.artifacts.put_file(source, "studies/s/jobs/j/best.keras")
    assert real.artifacts.get_bytes("studies/s/jobs/j/best.keras") == b"weights"
    assert plan.outcomes("artifacts.put_file") == [INJECTED, INJECTED, PASSED]


def test_project_errors_are_raised_as_given(faulty: Backend, plan: FaultPlan):
    plan.fail("store.get_job", NotFoundError("no such job (injected)"))
    plan.fail("store.list_studies", FatalError("credentials expired (injected)"))
    with pytest.raises(NotFoundError):
        faulty.store.get_job("s-1", "j-1")
    with pytest.raises(FatalError):
        faulty.store.list_studies()
    assert faulty.store.get_job("s-1", "j-1") is None  # the real answer: one failure was planned
    assert plan.outcomes("store.get_job") == [INJECTED, PASSED]


def test_where_limits_a_fault_to_matching_calls(real: Backend, faulty: Backend, plan: FaultPlan):
    a, b = job_record(learning_rate=0.1), job_record(learning_rate=0.2)
    real.store.create_jobs([a, b])
    plan.fail("store.claim", throttled(), where=lambda study_id, job_id, *rest: job_id == b.job_id)
    assert faulty.store.claim(a.study_id, a.job_id, "w1", LEASE_S, time.time()).attempt == 1
    with pytest.raises(RetryableError):
        faulty.store.claim(b.study_id, b.job_id, "w1", LEASE_S, time.time())
    assert faulty.store.claim(b.study_id, b.job_id, "w1", LEASE_S, time.time()).attempt == 1
    assert plan.outcomes("store.claim") == [PASSED, INJECTED, PASSED]


def test_errors_of_the_adapter_itself_are_logged_as_raised(real: Backend, faulty: Backend, plan: FaultPlan):
    with pytest.raises(NotFoundError):
        faulty.artifacts.get_bytes("missing/key")
    assert plan.calls("artifacts.get_bytes")[0].outcome is RAISED


# --- lost responses ---


def test_lost_send_response_leaves_the_message_sent(real: Backend, faulty: Backend, plan: FaultPlan):
    plan.lose_response("queue.send")
    with pytest.raises(RetryableError, match="response timed out"):
        faulty.queue.send(["only-once"])
    assert receive_one(real.queue).body == "only-once"  # the side effect is done
    assert plan.outcomes("queue.send") == [LOST]


def test_lost_claim_response_leaves_the_job_leased(real: Backend, faulty: Backend, plan: FaultPlan):
    job = job_record()
    real.store.create_jobs([job])
    plan.lose_response("store.claim", throttled("UpdateItem response"))
    with pytest.raises(RetryableError):
        faulty.store.claim(job.study_id, job.job_id, "w1", LEASE_S, time.time())
    record = real.store.get_job(job.study_id, job.job_id)
    assert (record.status, record.attempt, record.lease_owner) == (JobStatus.RUNNING, 1, "w1")
    # the caller, believing it failed, claims again: the job is leased (by itself), so None
    assert faulty.store.claim(job.study_id, job.job_id, "w1", LEASE_S, time.time()) is None


# --- timing: delays and held calls ---


def test_delay_waits_then_performs_or_times_out(real: Backend):
    slept: list[float] = []
    plan = FaultPlan(sleep=slept.append)  # deterministic: record the wait instead of sleeping
    faulty = faulty_backend(real, plan)
    plan.delay("queue.send", seconds=4.0)
    plan.delay("queue.send", seconds=9.0, error=timed_out("SendMessageBatch"))
    assert faulty.queue.send(["slow"]) == 1
    with pytest.raises(RetryableError, match="timed out"):
        faulty.queue.send(["never"])
    assert slept == [4.0, 9.0]
    assert [(c.outcome, c.delay_s) for c in plan.calls("queue.send")] == [(PASSED, 4.0), (INJECTED, 9.0)]
    assert [d.body for d in real.queue.receive(max_messages=10, wait_s=2.0)] == ["slow"]


def test_held_call_interleaves_deterministically(real: Backend, faulty: Backend, plan: FaultPlan):
    """A heartbeat's renewal is held while the job's lease is taken over; released, it is fenced out."""
    now = time.time()
    first = claimed_job(real.store, now)
    gate = plan.hold("store.renew")
    errors: list[BaseException] = []

    def heartbeat() -> None:
        try:
            faulty.store.renew(first.study_id, first.job_id, first.attempt, LEASE_S, now + 1)
        except BaseException as exc:  # collected for the main thread to assert on
            errors.append(exc)

    thread = threading.Thread(target=heartbeat)
    thread.start()
    gate.wait_entered()
    second = real.store.claim(first.study_id, first.job_id, "w2", LEASE_S, now + LEASE_S + 1)
    gate.release()
    thread.join(timeout=30)
    assert second.attempt == first.attempt + 1
    assert len(errors) == 1 and isinstance(errors[0], LeaseLostError)
    assert plan.outcomes("store.renew") == [RAISED]


# --- the plan itself (no backend needed beyond SQLite) ---


def test_plan_is_thread_safe(tmp_path: Path):
    plan = FaultPlan()
    faulty = faulty_backend(open_local(BackendConfig(home=tmp_path / "home")), plan)
    plan.fail("queue.counts", throttled(), times=5)
    failures: list[int] = []

    def poll() -> None:
        for _ in range(10):
            try:
                faulty.queue.counts()
            except RetryableError:
                failures.append(1)

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    calls = plan.calls("queue.counts")
    assert len(failures) == 5 and sorted(c.number for c in calls) == list(range(1, 41))
    assert [c.outcome for c in calls].count(INJECTED) == 5


def test_plan_refuses_what_it_cannot_mean():
    plan = FaultPlan()
    with pytest.raises(ValueError, match="has no method 'extnd'"):
        plan.fail("queue.extnd", throttled())
    with pytest.raises(ValueError, match="port must be one of"):
        plan.fail("bucket.put_file", disk_full())
    with pytest.raises(ValueError, match="not both"):
        plan.fail("queue.send", throttled(), times=2, on_calls=[1])
    with pytest.raises(ValueError, match="at least 1"):
        plan.fail("queue.send", throttled(), times=0)


def test_first_matching_rule_wins_and_clear_drops_rules(tmp_path: Path):
    plan = FaultPlan()
    faulty = faulty_backend(open_local(BackendConfig(home=tmp_path / "home")), plan)
    plan.fail("queue.counts", throttled(), times=1)
    plan.fail_forever("queue.counts", FatalError("queue deleted (injected)"))
    with pytest.raises(RetryableError):
        faulty.queue.counts()
    for _ in range(2):
        with pytest.raises(FatalError):
            faulty.queue.counts()
    plan.clear()
    assert faulty.queue.counts().backlog == 0
    assert plan.outcomes("queue.counts") == [INJECTED, INJECTED, INJECTED, PASSED]
