"""The circuit breaker policy (worker/breaker.py), then a disk-full host tripping it for real."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.jobs import parse_message
from shared.paths import job_prefix
from shared.ports import Backend, Delivery
from shared.status import JobStatus
from shared.submission import enqueue_record
from tests.factories import job_record
from tests.faults import FaultPlan, disk_full, faulty_backend
from worker.breaker import CircuitBreaker

DISK_FULL = "OSError: [Errno 28] No space left on device"


def test_trips_after_threshold_failures_on_different_jobs():
    breaker = CircuitBreaker(threshold=3)
    breaker.record_failure("a", DISK_FULL)
    breaker.record_failure("b", DISK_FULL)
    assert not breaker.tripped and breaker.reason == ""
    breaker.record_failure("c", DISK_FULL)
    assert breaker.tripped and breaker.touched == ["a", "b", "c"]
    assert breaker.reason == (
        "circuit breaker: 3 consecutive failures on 3 different jobs"
        " (last: OSError: [Errno 28] No space left on device)"
    )


def test_repeated_failures_of_one_job_do_not_trip_it():
    breaker = CircuitBreaker(threshold=2)
    for _ in range(5):
        breaker.record_failure("poison", "ValueError: bad input")
    assert not breaker.tripped and breaker.touched == ["poison"] and breaker.failures == 5
    breaker.record_failure("other", "RuntimeError: CUDA error: an illegal memory access was encountered")
    assert breaker.tripped and breaker.touched == ["poison", "other"]
    assert breaker.reason == (
        "circuit breaker: 6 consecutive failures on 2 different jobs"
        " (last: RuntimeError: CUDA error: an illegal memory access was encountered)"
    )


def test_a_success_ends_the_run_of_failures():
    breaker = CircuitBreaker(threshold=3)
    breaker.record_failure("a", DISK_FULL)
    breaker.record_failure("b", DISK_FULL)
    breaker.record_success("c")
    assert breaker.touched == [] and breaker.failures == 0
    breaker.record_failure("d", DISK_FULL)
    breaker.record_failure("e", DISK_FULL)
    assert not breaker.tripped and breaker.touched == ["d", "e"]


def test_once_tripped_it_stays_tripped_with_its_reason():
    breaker = CircuitBreaker(threshold=1)
    breaker.record_failure("a", "OSError: [Errno 5] Input/output error\nTraceback (most recent call last): ...")
    reason = breaker.reason
    breaker.record_success("b")
    breaker.record_failure("c", DISK_FULL)
    assert breaker.tripped and breaker.reason == reason and breaker.touched == ["a"]
    assert reason == (
        "circuit breaker: 1 consecutive failure on 1 different job (last: OSError: [Errno 5] Input/output error)"
    )
    assert "\n" not in reason


def test_reason_stays_one_short_line_whatever_the_error():
    breaker = CircuitBreaker(threshold=1)
    breaker.record_failure("a", "x" * 10_000)
    assert len(breaker.reason) < 400
    empty = CircuitBreaker(threshold=1)
    empty.record_failure("a", "")
    assert empty.reason.endswith("(last: no error message)")


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker(threshold=0)


# --- a disk-full host, for real: SQLite backend, ENOSPC injected at the artifact store ---


def attempt(backend: Backend, delivery: Delivery, worker_id: str, breaker: CircuitBreaker) -> None:
    """A stand-in for one pass of the worker loop: claim, write the job's state, settle. A failure
    the job cannot be blamed for puts the job back (QUEUED, message released) and tells the breaker."""
    message = parse_message(delivery.body)
    record = backend.store.claim(message.study_id, message.job_id, worker_id, 60.0, time.time())
    assert record is not None
    try:
        backend.artifacts.put_bytes(f"{job_prefix(record.study_id, record.job_id)}/state.json", b"{}")
    except OSError as exc:
        breaker.record_failure(record.job_id, f"{type(exc).__name__}: {exc}")
        backend.store.finish(record.study_id, record.job_id, record.attempt, JobStatus.QUEUED, {})
        backend.queue.release(delivery.receipt, 0)
        return
    breaker.record_success(record.job_id)
    backend.store.finish(record.study_id, record.job_id, record.attempt, JobStatus.SUCCEEDED, {})
    backend.queue.delete([delivery.receipt])


def work(backend: Backend, worker_id: str, breaker: CircuitBreaker) -> None:
    """Take jobs until the queue is empty or the breaker trips."""
    while not breaker.tripped:
        deliveries = backend.queue.receive(max_messages=1, wait_s=0)
        if not deliveries:
            return
        attempt(backend, deliveries[0], worker_id, breaker)


def test_disk_full_host_touches_at_most_threshold_jobs_and_a_healthy_one_finishes_them(tmp_path: Path):
    real = open_local(BackendConfig(home=tmp_path / "home", lease_s=60.0, max_receives=2))
    records = [job_record(learning_rate=0.01 * (i + 1)) for i in range(6)]
    real.store.create_jobs(records)
    for record in records:
        enqueue_record(real.queue, record)
    plan = FaultPlan()
    plan.fail_forever("artifacts.put_bytes", disk_full())
    sick = CircuitBreaker(threshold=3)
    work(faulty_backend(real, plan), "sick", sick)
    assert sick.tripped and len(sick.touched) == 3 and len(plan.calls("artifacts.put_bytes")) == 3
    assert "No space left on device" in sick.reason
    healthy = CircuitBreaker(threshold=3)
    work(real, "healthy", healthy)
    assert {r.status for r in real.store.list_jobs("s-1")} == {JobStatus.SUCCEEDED}
    assert real.queue.counts().dead == 0  # max_receives=2: the touched jobs were received twice at most
