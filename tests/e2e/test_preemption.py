"""Spot preemption and shutdown, with real worker processes and real (tiny) training.

- A spot notice from a fake instance metadata service (tests/fake_imds.py) arrives mid-epoch: the
  worker checkpoints, puts the job back (QUEUED, preemptions + 1, a fresh message, nothing
  dead-lettered) and exits 0 well within the 60 s deadline; a second worker resumes the job at the
  epoch after the last checkpoint and finishes it.
- A second signal is a cold stop: the worker exits at once with a non-zero code, and the job is
  picked up again by the next worker.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.ports import Backend
from shared.config import BackendConfig
from shared.jobs import JobRecord
from shared.paths import job_prefix
from shared.status import JobStatus
from tests.e2e.conftest import env_for, start_workers, submit, submit_json
from tests.fake_imds import FakeImds

pytestmark = pytest.mark.slow

LEASE_S = 6
EPOCHS = 20  # long enough that the notice always lands before the job could finish
DEADLINE_S = 60


def write_study(path: Path, dataset: Path) -> Path:
    path.write_text(json.dumps({
        "name": "preempt", "dataset": str(dataset), "image_size": 32, "validation_split": 0.25, "seed": 11,
        "parameters": {"architecture": ["benchmark"], "weights": [None],
                       "optimizer": [{"name": "sgd", "learning_rate": 0.01, "momentum": 0.9}], "batch_size": [2]},
        "training": {"epochs": EPOCHS, "early_stopping": {"patience": 1000}},
        "head": {"units": 16},
    }))
    return path


def backend_at(home: Path) -> Backend:
    return open_local(BackendConfig(home=home, lease_s=LEASE_S))


def only_job(backend: Backend) -> JobRecord:
    studies = backend.store.list_studies()
    assert len(studies) == 1
    jobs = backend.store.list_jobs(studies[0].study_id)
    assert len(jobs) == 1
    return jobs[0]


def wait_for(predicate, timeout_s: float, what: str, processes: list[subprocess.Popen] = (), logs: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in processes:
            if p.poll() is not None:
                pytest.fail(f"worker exited early ({p.returncode}) while waiting for {what}: {tail(logs)}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}: {tail(logs)}")


def tail(logs: Path | None) -> str:
    if logs is None or not logs.exists():
        return ""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.iterdir()))


def epochs_by_attempt(backend: Backend, job: JobRecord) -> list[tuple[int, int]]:
    return [(e.epoch, e.attempt) for e in backend.store.epochs(job.study_id, job.job_id)]


def checkpointed_epoch(backend: Backend, job: JobRecord) -> int:
    """The epoch of the state that the job's record commits (attempt-scoped, written fenced)."""
    record = backend.store.get_job(job.study_id, job.job_id)
    assert record.state_key is not None and record.state_key.startswith(f"{job_prefix(job.study_id, job.job_id)}/attempt-1/")
    state = json.loads(backend.artifacts.get_bytes(record.state_key))
    assert state["epoch"] == record.epochs_run
    return state["epoch"]


def log_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_spot_notice_mid_epoch_requeues_and_another_worker_resumes(tmp_path, tiny_dataset):
    home, logs = tmp_path / "home", tmp_path / "logs"
    submit(env_for(home), "study", str(write_study(tmp_path / "sweep.json", tiny_dataset)))
    backend = backend_at(home)
    job = only_job(backend)

    with FakeImds() as imds:
        env = env_for(home, SPOTSWEEP_LEASE_S=str(LEASE_S), SPOTSWEEP_METADATA_URL=imds.url, SPOTSWEEP_SPOT_POLL_S="0.5")
        [first] = start_workers(env, 1, "--until-empty", "--log-format", "json", log_dir=logs / "first")
        try:
            wait_for(lambda: epochs_by_attempt(backend, job), 180, "the first epoch", [first], logs / "first")
            assert imds.polls("spot/instance-action") >= 1  # the watcher is polling (no notice yet)
            imds.arm_spot_notice()
            armed = time.monotonic()
            code = first.wait(timeout=DEADLINE_S)
            exited_after_s = time.monotonic() - armed
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert code == 0, tail(logs / "first")
    assert exited_after_s < DEADLINE_S

    # Put back, not failed: QUEUED, one preemption, a fresh visible message, nothing dead-lettered.
    record = backend.store.get_job(job.study_id, job.job_id)
    assert record.status == JobStatus.QUEUED and record.preemptions == 1 and record.attempt == 1, record
    counts = backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (1, 0, 0), counts
    written = epochs_by_attempt(backend, job)
    checkpoint = checkpointed_epoch(backend, job)
    assert 1 <= checkpoint < EPOCHS, "the notice came after the job had finished"
    assert written == [(e, 1) for e in range(1, checkpoint + 1)]  # every checkpointed epoch, none beyond
    events = log_events(logs / "first" / "worker-0.out")
    names = [e["event"] for e in events]
    assert "spot_notice" in names and "preempted" in names and "succeeded" not in names, names
    print(f"PREEMPTION exited_after_s={exited_after_s:.1f} checkpointed_epoch={checkpoint}")

    # A second worker (no metadata service) resumes at the epoch after the checkpoint and finishes.
    [second] = start_workers(env_for(home, SPOTSWEEP_LEASE_S=str(LEASE_S)), 1, "--until-empty", log_dir=logs / "second")
    assert second.wait(timeout=300) == 0, tail(logs / "second")
    record = backend.store.get_job(job.study_id, job.job_id)
    assert record.status == JobStatus.SUCCEEDED and record.attempt == 2 and record.preemptions == 1, record
    assert record.failures == 0 and record.checkpoint == f"{job_prefix(job.study_id, job.job_id)}/attempt-2/best.keras"
    written = epochs_by_attempt(backend, job)
    assert [e for e, _ in written] == list(range(1, EPOCHS + 1))  # no epoch missing or repeated
    assert min(e for e, a in written if a == 2) == checkpoint + 1
    assert all(a == 1 for e, a in written if e <= checkpoint)
    assert backend.queue.counts().backlog == 0 and backend.queue.counts().dead == 0

    log_csv = backend.artifacts.get_bytes(record.artifacts["log_csv"]).decode()  # a store key
    epochs_logged = [int(float(row["epoch"])) for row in csv.DictReader(io.StringIO(log_csv))]
    assert epochs_logged == list(range(1, EPOCHS + 1))  # one continuous CSV log across both attempts

    rows = submit_json(env_for(home), "leaderboard")["rows"]
    assert len(rows) == 1
    assert rows[0]["status"] == "SUCCEEDED" and rows[0]["preemptions"] == 1 and rows[0]["attempts"] == 2, rows[0]


def test_second_signal_is_a_cold_stop_and_the_job_is_picked_up_again(tmp_path, tiny_dataset):
    home, logs = tmp_path / "home", tmp_path / "logs"
    env = env_for(home, SPOTSWEEP_LEASE_S=str(LEASE_S))
    submit(env, "study", str(write_study(tmp_path / "sweep.json", tiny_dataset)))
    backend = backend_at(home)
    job = only_job(backend)

    [first] = start_workers(env, 1, "--until-empty", "--log-format", "json", log_dir=logs / "first")
    try:
        wait_for(lambda: epochs_by_attempt(backend, job), 180, "the first epoch", [first], logs / "first")
        # Two different signals back to back (two SIGTERMs could merge into one pending signal).
        first.send_signal(signal.SIGTERM)
        first.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        code = first.wait(timeout=30)
        exited_after_s = time.monotonic() - signalled
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert code != 0, tail(logs / "first")
    assert exited_after_s < 15, exited_after_s
    events = [e["event"] for e in log_events(logs / "first" / "worker-0.out")]
    assert "cold_stop" in events and "succeeded" not in events, events

    record = backend.store.get_job(job.study_id, job.job_id)
    assert record.status in (JobStatus.QUEUED, JobStatus.RUNNING) and record.attempt == 1, record
    status_after = record.status.value  # QUEUED when the cold stop still released the job, else RUNNING
    checkpoint = max(e for e, _ in epochs_by_attempt(backend, job))

    # The next worker gets the job once the lease has lapsed (at once if the cold stop released it).
    [second] = start_workers(env, 1, "--until-empty", log_dir=logs / "second")
    assert second.wait(timeout=300) == 0, tail(logs / "second")
    record = backend.store.get_job(job.study_id, job.job_id)
    assert record.status == JobStatus.SUCCEEDED and record.attempt == 2, record
    written = epochs_by_attempt(backend, job)
    assert [e for e, _ in written] == list(range(1, EPOCHS + 1))
    assert min(e for e, a in written if a == 2) == checkpoint + 1  # resumed, not restarted
    counts = backend.queue.counts()
    assert counts.backlog == 0 and counts.dead == 0, counts
    print(f"COLD_STOP exited_after_s={exited_after_s:.1f} status_after={status_after}")
