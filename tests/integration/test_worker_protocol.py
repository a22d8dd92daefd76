"""The job protocol on the embedded backend, with a deterministic stand-in for training so that
each scenario (duplicates, takeover, fencing, poison, preemption, retries, cancel) is exact.
Real training runs in the end-to-end tests."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from shared.ports import Backend
from shared.backends.local import SqliteJobStore
from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.errors import FatalError, LeaseLostError, PermanentError
from shared.jobs import JobMessage, JobRecord, JobSpec, ModelSpec, TrainingSpec, job_id_for
from shared.status import JobStatus
from shared.submission import enqueue_record, submit_jobs
from tests.faults import FaultPlan, faulty_backend, timed_out
from worker.loop import Policy, Worker, stopped_kind
from worker.outcomes import Outcome, OutcomeKind
from worker.settings import WorkerSettings
from worker.stop import StopFlag
from worker.job import EpochReport, JobContext, JobOutcome, JobResult, StopReason

STUDY = "proto-1"


def make_jobs(dataset: Path, count: int, epochs: int = 2) -> list[tuple[str, JobSpec]]:
    specs = [
        JobSpec(dataset=str(dataset), model=ModelSpec(architecture="benchmark", image_size=32),
                optimizer={"name": "sgd", "learning_rate": 0.01 * (i + 1)}, training=TrainingSpec(epochs=epochs))
        for i in range(count)
    ]
    return [(job_id_for(STUDY, spec), spec) for spec in specs]


def settings_for(backend_home: Path, **more: object) -> WorkerSettings:
    return WorkerSettings(home=backend_home, lease_s=3.0, max_receives=3, poll_wait_s=0.2, retry_backoff_s=0.0, **more)


class FakeTraining:
    """Reports each epoch like real training and returns a result; counts its calls."""

    def __init__(self, behaviour=None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.behaviour = behaviour or (lambda ctx, call: None)

    def __call__(self, ctx: JobContext) -> JobResult:
        call = len(self.calls)
        self.calls.append((ctx.job_id, call))
        special = self.behaviour(ctx, call)
        if special is not None:
            return special
        for epoch in range(1, ctx.spec.training.epochs + 1):
            ctx.on_epoch(EpochReport(epoch, {"val_accuracy": 0.5 + epoch / 10, "loss": 1.0 / epoch}, 0.01))
        epochs, prefix = ctx.spec.training.epochs, ctx.attempt_prefix
        return JobResult(JobOutcome.COMPLETED, None, epochs, epochs, {"val_accuracy": 0.7, "val_loss": 0.3}, 0.05,
                         100, 10, f"{prefix}/best.keras", {"log_csv": f"{prefix}/log.csv"})


def run_worker(backend: Backend, home: Path, training, **policy: object) -> Worker:
    worker = Worker(backend, settings_for(home), training)
    worker.work(Policy(until_empty=True, **policy))
    return worker


def statuses(backend: Backend) -> dict[str, JobStatus]:
    return {j.job_id: j.status for j in backend.store.list_jobs(STUDY)}


def test_duplicate_delivery_gives_one_result(local_backend, tiny_dataset, tmp_path):
    jobs = make_jobs(tiny_dataset, 2)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, jobs)
    for job_id, _ in jobs:  # every message delivered twice
        enqueue_record(local_backend.queue, local_backend.store.get_job(STUDY, job_id))
    training = FakeTraining()
    run_worker(local_backend, tmp_path / "home", training)
    assert sorted(job_id for job_id, _ in training.calls) == sorted(job_id for job_id, _ in jobs)
    assert set(statuses(local_backend).values()) == {JobStatus.SUCCEEDED}
    assert local_backend.queue.counts().backlog == 0 and local_backend.queue.counts().dead == 0
    for record in local_backend.store.list_jobs(STUDY):  # artifact-store keys, never display locations
        prefix = f"studies/{STUDY}/jobs/{record.job_id}/attempt-{record.attempt}"
        assert (record.checkpoint, record.artifacts) == (f"{prefix}/best.keras", {"log_csv": f"{prefix}/log.csv"})


class PartitionedStore(SqliteJobStore):
    """The same database, seen by a worker whose heartbeats no longer get through."""

    def renew(self, *args, **kwargs):
        raise ConnectionError("network partition")


def test_expired_lease_is_taken_over_and_fenced_out_worker_changes_nothing(local_backend, tiny_dataset, tmp_path):
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    taken_over, claimed = threading.Event(), threading.Event()
    refused: list[Exception] = []

    def stalled(ctx, call):
        claimed.set()
        assert taken_over.wait(30), "nobody took the job over"
        try:
            ctx.on_epoch(EpochReport(1, {"val_accuracy": 0.01}, 1.0))
        except LeaseLostError as exc:
            refused.append(exc)
            raise
        return None

    partitioned = Backend(local_backend.queue, PartitionedStore(local_backend.store.db.path), local_backend.artifacts)
    first = Worker(partitioned, settings_for(tmp_path / "home", worker_id="w1"), FakeTraining(stalled))
    thread = threading.Thread(target=first.work, args=(Policy(max_jobs=1),))
    thread.start()
    assert claimed.wait(30), "the first worker never claimed the job"
    second_training = FakeTraining()
    second = Worker(local_backend, settings_for(tmp_path / "home", worker_id="w2"), second_training)
    deadline = time.monotonic() + 30
    while not second_training.calls and time.monotonic() < deadline:
        second.work(Policy(max_jobs=1, idle_timeout_s=1))
    taken_over.set()
    thread.join(30)
    record = local_backend.store.get_job(STUDY, job_id)
    assert (record.status, record.attempt, record.lease_owner) == (JobStatus.SUCCEEDED, 2, None)
    assert record.metrics.val_accuracy == 0.7 and len(refused) == 1
    assert [e.attempt for e in local_backend.store.epochs(STUDY, job_id)] == [2, 2]


def test_poison_messages_are_moved_aside_and_real_jobs_finish(local_backend, tiny_dataset, tmp_path):
    jobs = make_jobs(tiny_dataset, 2)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, jobs)
    valid = json.loads(JobMessage(study_id=STUDY, job_id="x", spec=jobs[0][1]).to_body())
    poison = [
        "{not json",
        json.dumps({**valid, "schema_version": 99}),
        json.dumps({**valid, "job_id": "no-such-job"}),
        json.dumps({**valid, "spec": {"kind": "train"}}),
        "[" * 100_000 + "]" * 100_000,  # json.loads raises RecursionError, not ValueError
        json.dumps({**valid, "job_id": "../../victim"}),
    ]
    local_backend.queue.send(poison)
    run_worker(local_backend, tmp_path / "home", FakeTraining())
    assert set(statuses(local_backend).values()) == {JobStatus.SUCCEEDED}
    assert sorted(local_backend.queue.dead_letters()) == sorted(poison)


def test_preempted_job_is_requeued_fresh_and_resumed_elsewhere(local_backend, tiny_dataset, tmp_path):
    [(job_id, spec)] = make_jobs(tiny_dataset, 1, epochs=3)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    stop = StopFlag()

    def preempt_after_first_epoch(ctx, call):
        if call == 0:
            ctx.on_epoch(EpochReport(1, {"val_accuracy": 0.4}, 0.01))
            stop.request("spot interruption: terminate")
            assert ctx.should_stop() is StopReason.PREEMPTED
            return JobResult(JobOutcome.STOPPED, StopReason.PREEMPTED, 1, 1, {}, 0.5, None, None, None, {})
        return None

    training = FakeTraining(preempt_after_first_epoch)
    first = Worker(local_backend, settings_for(tmp_path / "home"), training, stop=stop)
    first.work(Policy(until_empty=True))
    record = local_backend.store.get_job(STUDY, job_id)
    assert (record.status, record.preemptions, record.epochs_run) == (JobStatus.QUEUED, 1, 1)
    run_worker(local_backend, tmp_path / "home", training)
    record = local_backend.store.get_job(STUDY, job_id)
    assert (record.status, record.attempt, record.preemptions, record.failures) == (JobStatus.SUCCEEDED, 2, 1, 0)
    assert local_backend.queue.counts().dead == 0  # a preemption never counts towards the DLQ


def test_transient_errors_retry_then_fail_into_dead_letters(local_backend, tiny_dataset, tmp_path):
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])

    def flaky(ctx, call):
        raise ConnectionError(f"throttled #{call}")

    training = FakeTraining(flaky)
    run_worker(local_backend, tmp_path / "home", training)
    record = local_backend.store.get_job(STUDY, job_id)
    assert len(training.calls) == record.failures == 3  # max_failures, counted in the record
    assert record.status == JobStatus.FAILED and record.error == "gave up after 3 failures: ConnectionError: throttled #2"
    traceback_key = record.artifacts["traceback"]  # a key in the artifact store, not a display location
    assert traceback_key == f"studies/{STUDY}/jobs/{job_id}/errors/attempt-3.txt"
    assert local_backend.artifacts.get_bytes(traceback_key).decode().startswith("Traceback")
    assert len(local_backend.queue.dead_letters()) == 1 and local_backend.queue.counts().backlog == 0


def test_permanent_error_fails_at_once(local_backend, tiny_dataset, tmp_path):
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])

    def missing(ctx, call):
        raise PermanentError("dataset has no class folders")

    training = FakeTraining(missing)
    run_worker(local_backend, tmp_path / "home", training)
    record = local_backend.store.get_job(STUDY, job_id)
    assert len(training.calls) == 1 and record.status == JobStatus.FAILED
    assert record.error == "PermanentError: dataset has no class folders"
    assert local_backend.queue.counts().backlog == 0 and local_backend.queue.counts().dead == 0


def test_cancel_stops_a_running_job_at_its_next_check(local_backend, tiny_dataset, tmp_path):
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])

    def cancellable(ctx, call):
        local_backend.store.request_cancel(STUDY, job_id)
        deadline = time.monotonic() + 10
        while ctx.should_stop() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the heartbeat (every lease/3 = 1 s) brings the flag
        return JobResult(JobOutcome.STOPPED, ctx.should_stop(), 0, None, {}, 0.1, None, None, None, {})

    run_worker(local_backend, tmp_path / "home", FakeTraining(cancellable))
    assert local_backend.store.get_job(STUDY, job_id).status == JobStatus.CANCELLED


def test_job_of_a_finished_study_is_acked_without_running(local_backend, tiny_dataset, tmp_path):
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    run_worker(local_backend, tmp_path / "home", FakeTraining())
    enqueue_record(local_backend.queue, local_backend.store.get_job(STUDY, job_id))  # a late duplicate
    training = FakeTraining()
    run_worker(local_backend, tmp_path / "home", training)
    assert training.calls == [] and local_backend.queue.counts().backlog == 0


def test_a_misspelt_stop_reason_fails_loudly_and_is_never_a_preemption(local_backend, tiny_dataset, tmp_path):
    """Before the enums, an unknown stop reason became a preemption: re-enqueued forever, never
    counted towards the dead-letter queue. Now it cannot even be made into a result."""
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])

    def misspelt(ctx, call):
        return JobResult("stopped", "preemptd", 0, None, {}, 0.1, None, None, None, {})  # type: ignore[arg-type]

    training = FakeTraining(misspelt)
    run_worker(local_backend, tmp_path / "home", training)
    record = local_backend.store.get_job(STUDY, job_id)
    assert (record.status, record.preemptions, len(training.calls)) == (JobStatus.FAILED, 0, 3)
    assert "ValueError: 'preemptd' is not a valid StopReason" in record.error
    assert local_backend.queue.counts().dead == 1


def test_every_stop_reason_and_outcome_kind_is_dispatched_by_name_and_nothing_else(local_backend):
    settler = Worker(local_backend, settings_for(local_backend.store.db.path.parent), FakeTraining()).settler
    assert {stopped_kind(reason) for reason in StopReason} == {
        OutcomeKind.PREEMPTED, OutcomeKind.CANCELLED, OutcomeKind.LEASE_LOST, OutcomeKind.HANDOFF
    }
    # one handler per kind, except that the worker's own faults (fatal, breaker) share "put back"
    assert len({settler._handler(kind).__name__ for kind in OutcomeKind}) == len(OutcomeKind) - 1
    with pytest.raises(ValueError, match="not a valid OutcomeKind"):
        Outcome("preempt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop reason"):
        JobResult(JobOutcome.STOPPED, None, 0, None, {}, 0.1, None, None, None, {})
    with pytest.raises(ValueError, match="stop reason"):
        JobResult(JobOutcome.COMPLETED, StopReason.CANCELLED, 0, None, {}, 0.1, None, None, None, {})


def test_failures_are_counted_in_the_record_not_by_the_messages_receive_count(tmp_path, tiny_dataset):
    """Kills and duplicate bounces cost receives, not failures. Before, a job whose message had
    been received `max_receives` times (3 here) was FAILED and dead-lettered at its first error;
    now that error is its first failure, and the job goes on to succeed."""
    backend = open_local(BackendConfig(home=tmp_path / "home", lease_s=3.0, max_receives=20))
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(backend.store, backend.queue, STUDY, [(job_id, spec)])
    for _ in range(4):  # four workers killed before they claimed: the message bounced four times
        [delivery] = backend.queue.receive(max_messages=1)
        backend.queue.release(delivery.receipt, 0)
    training = FakeTraining(lambda ctx, call: _raise(ConnectionError("throttled")) if call == 0 else None)
    run_worker(backend, tmp_path / "home", training)
    record = backend.store.get_job(STUDY, job_id)
    assert (record.status, record.failures, len(training.calls)) == (JobStatus.SUCCEEDED, 1, 2)
    assert backend.queue.counts().dead == 0


def test_fatal_errors_and_cold_stops_never_count_as_failures(local_backend, tiny_dataset, tmp_path):
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    worker = Worker(local_backend, settings_for(tmp_path / "home"), FakeTraining(lambda ctx, call: _raise(FatalError("no GPU"))))
    worker.work(Policy(until_empty=True))
    record = local_backend.store.get_job(STUDY, job_id)
    assert (record.status, record.failures, record.error) == (JobStatus.QUEUED, 0, "FatalError: no GPU")
    assert worker.stop.reason == "fatal: FatalError: no GPU"


def test_an_idle_worker_runs_the_reconciler_and_survives_its_failure(tmp_path, tiny_dataset, caplog):
    """A job left QUEUED with no message (its submission stopped before the send) is sent by an
    idle worker's reconciler and run; a reconciler that fails costs one log line, nothing more."""
    from tests.factories import study_record

    backend = open_local(BackendConfig(home=tmp_path / "home", lease_s=3.0, max_receives=20))
    backend.store.put_study(study_record(STUDY))
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    backend.store.create_jobs([JobRecord(study_id=STUDY, job_id=job_id, spec=spec, created_at=time.time() - 600)])
    plan = FaultPlan()
    plan.fail("store.acquire_lock", timed_out())  # the first idle worker's reconciler fails
    training = FakeTraining()
    failing = Worker(faulty_backend(backend, plan), settings_for(tmp_path / "home"), training)
    failing.work(Policy(idle_timeout_s=0.5))
    assert training.calls == [] and "reconciler failed: RetryableError" in caplog.text
    Worker(backend, settings_for(tmp_path / "home"), training).work(Policy(idle_timeout_s=1.0))
    assert training.calls == [(job_id, 0)] and backend.store.get_job(STUDY, job_id).status is JobStatus.SUCCEEDED


def _raise(exc: BaseException) -> None:
    raise exc
