"""A stop request that reaches a job while its dataset syncs (a spot notice, a first signal)
ends the job like one during training: put back (QUEUED, preemptions + 1, a fresh message),
not a failure, and training never starts. The worker loop on the embedded backend with a
dataset in its artifact store; a stand-in for training that must not be called."""

from __future__ import annotations

from pathlib import Path

from shared.datasets import upload
from shared.jobs import JobSpec, ModelSpec, TrainingSpec, job_id_for
from shared.ports import Backend
from shared.status import JobStatus
from shared.submission import submit_jobs
from worker.job import JobContext, JobResult
from worker.loop import Worker
from worker.settings import WorkerSettings
from worker.stop import StopFlag

STUDY = "syncstop-1"


def never_trains(ctx: JobContext) -> JobResult:
    raise AssertionError("training started although the worker was asked to stop during the sync")


def test_a_stop_during_the_dataset_sync_puts_the_job_back(local_backend: Backend, tiny_dataset: Path, tmp_path: Path) -> None:
    upload(tiny_dataset, local_backend.artifacts, "datasets/tiny")
    spec = JobSpec(dataset="artifacts:datasets/tiny", model=ModelSpec(architecture="benchmark", image_size=32),
                   optimizer={"name": "sgd", "learning_rate": 0.01}, training=TrainingSpec(epochs=2))
    job_id = job_id_for(STUDY, spec)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    settings = WorkerSettings(home=tmp_path / "home", lease_s=3.0, poll_wait_s=0.2, retry_backoff_s=0.0)
    stop = StopFlag()
    worker = Worker(local_backend, settings, never_trains, stop)
    [delivery] = local_backend.queue.receive(max_messages=1, wait_s=1)
    stop.request("signal SIGTERM")  # arrives as the job starts: the sync hears it before its first file
    worker.execute(delivery)

    record = local_backend.store.get_job(STUDY, job_id)
    assert record.status == JobStatus.QUEUED and record.preemptions == 1 and record.failures == 0, record
    counts = local_backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (1, 0, 0), counts
    assert not list((settings.resolved_cache_dir / "datasets").glob("*/manifest.json"))  # the sync stopped
