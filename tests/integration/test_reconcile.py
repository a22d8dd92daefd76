"""Stranded jobs finish, on SQLite and on moto's SQS/DynamoDB, with real workers (`Worker`) driven
by a stand-in for training (a `run_job` that reports epochs and returns a result: the ports are
real). Each scenario is made to happen: a purged queue, the queue's own redrive after kills, a
send whose response is lost.

Must show: every message of a study lost (a purged queue): submitting the study again finishes it,
and so does an idle worker's reconciler without any command."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.datasets.sync import upload
from shared.errors import RetryableError
from shared.ports import Backend
from shared.status import JobStatus
from shared.study import StudySpec, parse_study
from submitter import service
from tests.faults import FaultPlan, faulty_backend
from worker.job import EpochReport, JobContext, JobOutcome, JobResult
from worker.loop import Policy, Worker
from worker.settings import WorkerSettings

LEASE_S = 3.0
MAX_RECEIVES = 3
BACKENDS = ["local", pytest.param("aws", marks=pytest.mark.aws)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        yield open_local(BackendConfig(home=tmp_path / "home", lease_s=LEASE_S, max_receives=MAX_RECEIVES))
        return
    from tests.aws_support import fresh_aws_backend

    yield from fresh_aws_backend(request, lease_s=LEASE_S, max_receives=MAX_RECEIVES)


def study_on(backend: Backend, tiny_dataset: Path, optimizers: int = 3) -> StudySpec:
    dataset = str(tiny_dataset)
    if backend.name == "aws":  # a worker of the AWS backend reads the dataset from the bucket
        upload(tiny_dataset, backend.artifacts, "datasets/tiny")
        dataset = backend.artifacts.uri("datasets/tiny")
    return parse_study(json.dumps({
        "name": "stranded", "dataset": dataset, "image_size": 32,
        "parameters": {"architecture": ["benchmark"], "weights": [None],
                       "optimizer": [{"name": "sgd", "learning_rate": 0.01 * (i + 1)} for i in range(optimizers)]},
        "training": {"epochs": 2},
    }))


class StandIn:
    """Training stand-in: reports each epoch and completes; records which jobs it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, ctx: JobContext) -> JobResult:
        self.ran.append(ctx.job_id)
        epochs = ctx.spec.training.epochs
        for epoch in range(1, epochs + 1):
            ctx.on_epoch(EpochReport(epoch, {"val_accuracy": 0.5 + epoch / 10, "loss": 1.0 / epoch}, 0.01))
        return JobResult(JobOutcome.COMPLETED, None, epochs, epochs, {"val_accuracy": 0.7}, 0.01, 100, 10,
                         f"{ctx.prefix}/best.keras")


def worker(backend: Backend, home: Path, **settings: object) -> tuple[Worker, StandIn]:
    run_job = StandIn()
    config = WorkerSettings(home=home, lease_s=LEASE_S, max_receives=MAX_RECEIVES, max_failures=3, poll_wait_s=0.2,
                            retry_backoff_s=0.0, **settings)
    return Worker(backend, config, run_job), run_job


def purge(backend: Backend) -> None:
    """Every message of the job queue lost: an operator's purge."""
    if backend.name == "aws":
        backend.queue.client.purge_queue(QueueUrl=backend.queue.queue_url)
    else:
        with backend.queue.db.write() as conn:
            conn.execute("DELETE FROM messages WHERE dead = 0")
    assert backend.queue.counts().backlog == 0


def statuses(backend: Backend, spec: StudySpec) -> set[JobStatus]:
    return {job.status for job in backend.store.list_jobs(spec.study_id)}


def job_ids(backend: Backend, spec: StudySpec) -> list[str]:
    return sorted(job.job_id for job in backend.store.list_jobs(spec.study_id))


def kill_until_dead_lettered(backend: Backend) -> None:
    """Deliver the study's one message until the queue itself dead-letters it: every delivery
    that ends without a delete (a SIGKILL, a cold stop, a bounced duplicate) costs a receive."""
    deadline = time.monotonic() + 30
    while backend.queue.counts().dead == 0 and time.monotonic() < deadline:
        for delivery in backend.queue.receive(max_messages=1, wait_s=1):
            backend.queue.release(delivery.receipt)
    assert backend.queue.counts().dead == 1 and backend.queue.counts().backlog == 0


# --- must show: a purged queue ---


def test_submitting_a_purged_study_again_finishes_it(backend, tiny_dataset, tmp_path):
    spec = study_on(backend, tiny_dataset)
    service.submit_study(backend, spec)
    purge(backend)
    stranded, _ = worker(backend, tmp_path / "w0")
    assert stranded.work(Policy(until_empty=True)) == 0  # nothing to receive: stranded

    report = service.submit_study(backend, spec)
    assert report.created == 0 and sorted(report.repair.resent) == job_ids(backend, spec)
    finisher, ran = worker(backend, tmp_path / "w1")
    finisher.work(Policy(until_empty=True))
    assert statuses(backend, spec) == {JobStatus.SUCCEEDED}
    assert sorted(ran.ran) == job_ids(backend, spec)  # each once


def test_an_idle_workers_reconciler_finishes_a_purged_study_without_any_command(backend, tiny_dataset, tmp_path):
    spec = study_on(backend, tiny_dataset)
    service.submit_study(backend, spec)
    purge(backend)
    idle, ran = worker(backend, tmp_path / "w1", reconcile_interval_s=0.5)
    idle.work(Policy(idle_timeout_s=8.0))  # no command: it idles, reconciles, runs, idles again
    assert statuses(backend, spec) == {JobStatus.SUCCEEDED}
    assert sorted(ran.ran) == job_ids(backend, spec)


# --- redrive strands records: the reconciler re-drives them ---


def test_a_queued_job_dead_lettered_by_kills_finishes_after_repair(backend, tiny_dataset, tmp_path):
    spec = study_on(backend, tiny_dataset, optimizers=1)
    service.submit_study(backend, spec)
    kill_until_dead_lettered(backend)
    assert statuses(backend, spec) == {JobStatus.QUEUED}  # stranded: no message anywhere but the DLQ
    report = service.repair(backend, spec.study_id)
    assert report.redriven == job_ids(backend, spec) and backend.queue.counts().dead == 0
    assert not service.repair(backend, spec.study_id).changed  # idempotent
    finisher, ran = worker(backend, tmp_path / "w1")
    finisher.work(Policy(until_empty=True))
    assert statuses(backend, spec) == {JobStatus.SUCCEEDED} and ran.ran == job_ids(backend, spec)


def test_a_running_job_dead_lettered_after_its_worker_died_finishes_after_repair(backend, tiny_dataset, tmp_path):
    spec = study_on(backend, tiny_dataset, optimizers=1)
    service.submit_study(backend, spec)
    [job_id] = job_ids(backend, spec)
    backend.store.claim(spec.study_id, job_id, "killed-worker", LEASE_S, time.time())
    kill_until_dead_lettered(backend)
    time.sleep(LEASE_S + 0.5)  # the killed worker's lease lapses; the record stays RUNNING
    assert statuses(backend, spec) == {JobStatus.RUNNING}
    report = service.repair(backend, spec.study_id)
    assert report.redriven == [job_id] and backend.queue.counts().dead == 0
    finisher, ran = worker(backend, tmp_path / "w1")
    finisher.work(Policy(until_empty=True))
    assert statuses(backend, spec) == {JobStatus.SUCCEEDED} and ran.ran == [job_id]


def test_a_submission_whose_send_response_was_lost_finishes_when_submitted_again(backend, tiny_dataset, tmp_path):
    spec = study_on(backend, tiny_dataset)
    plan = FaultPlan()
    plan.lose_response("queue.send")  # sent, and the submitter saw a timeout: nothing stamped
    with pytest.raises(RetryableError):
        service.submit_study(faulty_backend(backend, plan), spec)
    assert {job.enqueued_at for job in backend.store.list_jobs(spec.study_id)} == {None}
    report = service.submit_study(backend, spec)
    assert report.resent == len(job_ids(backend, spec))  # duplicates of the lost-response send
    finisher, ran = worker(backend, tmp_path / "w1")
    finisher.work(Policy(until_empty=True))
    assert statuses(backend, spec) == {JobStatus.SUCCEEDED}
    assert sorted(ran.ran) == job_ids(backend, spec)  # a duplicate never runs a job twice
