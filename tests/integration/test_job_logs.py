"""Logs that outlive the instance: a job preempted on one worker and finished on another has
both attempts' log lines in the artifact store, and `submit logs JOB` shows them in order.
The loop, the store, the queue and the artifact store are the real embedded ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.jobs import JobSpec, JobStatus, ModelSpec, TrainingSpec, job_id_for
from shared.submission import submit_jobs
from submitter.cli import app
from worker.job import EpochReport, JobContext, JobResult
from worker.joblog import job_log_key
from worker.loop import Policy, Worker
from worker.settings import WorkerSettings
from worker.stop import StopFlag

STUDY = "job-logs-1"
METRICS = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4}
training_log = logging.getLogger("spotsweep.worker.training")


def settings_for(home: Path, worker_id: str) -> WorkerSettings:
    return WorkerSettings(home=home, lease_s=3.0, max_receives=3, poll_wait_s=0.1, retry_backoff_s=0.0, worker_id=worker_id)


def test_both_attempts_lines_reach_the_store_and_submit_logs_shows_them(local_backend, tiny_dataset, tmp_path, monkeypatch):
    home = tmp_path / "home"  # the local_backend fixture's home
    spec = JobSpec(dataset=str(tiny_dataset), model=ModelSpec(architecture="benchmark", image_size=32),
                   optimizer={"name": "adam"}, training=TrainingSpec(epochs=2))
    job_id = job_id_for(STUDY, spec)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    flushed_mid_job: list[bool] = []
    stop = StopFlag()

    def preempted(ctx: JobContext) -> JobResult:
        training_log.info("first worker trains epoch 1")
        ctx.on_epoch(EpochReport(1, METRICS, 0.1))
        # what a reclaim right now would leave behind: the lines up to the epoch's commit
        flushed_mid_job.append(b"first worker trains epoch 1" in ctx.artifacts.get_bytes(job_log_key(STUDY, job_id, ctx.attempt)))
        stop.request("spot interruption: terminate")
        return JobResult("stopped", ctx.should_stop(), 1, 1, {}, 0.1, None, None, None, {})

    def resumed(ctx: JobContext) -> JobResult:
        training_log.info("second worker resumes at epoch 2")
        ctx.on_epoch(EpochReport(2, METRICS, 0.1))
        return JobResult("completed", None, 2, 2, METRICS, 0.1, 10, 10, None, {})

    Worker(local_backend, settings_for(home, "worker-a"), preempted, stop).work(Policy(until_empty=True))
    assert local_backend.store.get_job(STUDY, job_id).status is JobStatus.QUEUED
    Worker(local_backend, settings_for(home, "worker-b"), resumed).work(Policy(until_empty=True))
    assert local_backend.store.get_job(STUDY, job_id).status is JobStatus.SUCCEEDED
    assert flushed_mid_job == [True]

    monkeypatch.setenv("SPOTSWEEP_HOME", str(home))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    shown = CliRunner().invoke(app, ["logs", job_id], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    first = lines.index(next(line for line in lines if "first worker trains epoch 1" in line))
    second = lines.index(next(line for line in lines if "second worker resumes at epoch 2" in line))
    assert first < second and lines[first].startswith("#1 ") and lines[second].startswith("#2 ")
    assert any(line.startswith("#1 ") and "[epoch]" in line for line in lines)
    assert any(line.startswith("#1 worker-a ") and "[preempted]" in line for line in lines), lines
    assert any(line.startswith("#2 worker-b ") and "[succeeded]" in line for line in lines), lines

    raw = CliRunner().invoke(app, ["logs", job_id, "--json"], catch_exceptions=False)
    records = [json.loads(line) for line in raw.stdout.splitlines()]
    assert [r["attempt"] for r in records] == sorted(r["attempt"] for r in records) and {1, 2} <= {r["attempt"] for r in records}
    assert {r.get("job_id") for r in records if r.get("event") == "epoch"} == {job_id}


def test_submit_logs_of_an_unknown_job_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTSWEEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    result = CliRunner().invoke(app, ["logs", "no-such-job"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def test_a_log_that_cannot_be_written_never_fails_the_job(local_backend, tiny_dataset, tmp_path, caplog):
    spec = JobSpec(dataset=str(tiny_dataset), model=ModelSpec(architecture="benchmark", image_size=32),
                   optimizer={"name": "adam"}, training=TrainingSpec(epochs=1))
    job_id = job_id_for(STUDY, spec)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    # a file where attempt 1's folder would be: every write of its log fails
    blocker = job_log_key(STUDY, job_id, 1).rsplit("/", 1)[0]
    local_backend.artifacts.put_bytes(blocker, b"not a folder")

    def completes(ctx: JobContext) -> JobResult:
        ctx.on_epoch(EpochReport(1, METRICS, 0.1))
        return JobResult("completed", None, 1, 1, METRICS, 0.1, 10, 10, None, {})

    with caplog.at_level(logging.INFO, logger="spotsweep"):
        Worker(local_backend, settings_for(tmp_path / "home", "worker-c"), completes).work(Policy(until_empty=True))
    assert local_backend.store.get_job(STUDY, job_id).status is JobStatus.SUCCEEDED
    failures = [r for r in caplog.records if getattr(r, "event", None) == "job_log_failed"]
    assert len(failures) == 2  # after the epoch, and at settle: one line each
    assert all("\n" not in r.getMessage() for r in failures)
