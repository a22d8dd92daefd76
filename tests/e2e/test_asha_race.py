"""ASHA across the queue with no head node (issue 16): three real worker processes race to settle
jobs and enqueue the study's next trials and promotions, and one of them is SIGKILLed while it
holds a promotion. The study still ends with exactly `count` trials, each (trial, rung) job made
once, every job SUCCEEDED, and the killed promotion finished by another worker without training
a committed epoch again.

The workers stay up (a long `--idle-timeout`, not `--until-empty`: while the last running job
settles, the queue is briefly empty, and a worker that left then would miss the promotions that
settlement enqueues); the test stops them (SIGTERM) once `shared.search.search_complete` holds.
The killed worker's job comes back when its short lease lapses; its message is the queue's own
(visible again after the lease), or one the idle workers' reconciler sends. The closing figures
are one line, e.g.
    ASHA_RACE trials=8 jobs=14 epochs=17 victim=3:1 killed_at_attempt=1 resumed_after_epoch=1 taken_over_at_attempt=2 seconds=60
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.backends.factory import open_backend
from shared.config import BackendConfig
from shared.jobs import JobRecord
from shared.ports import Backend
from shared.search import promotion_job_id, rungs, search_complete, trial_job_id
from shared.status import JobStatus
from shared.study import StudySpec
from tests.e2e.conftest import LoggedProcess, env_for, start_workers, submit_json

pytestmark = pytest.mark.slow

TRIALS = 8
WORKERS = 3
LEASE_S = 10  # the victim's job is taken over within ~a lease (heartbeats every third of it)
RECONCILE_INTERVAL_S = 5
RACE_TIMEOUT_S = 420  # the whole study, on two shared cores
POLL_S = 0.1


def write_study(path: Path, dataset: Path) -> Path:
    path.write_text(json.dumps({
        "name": "asha-race", "dataset": str(dataset), "image_size": 32, "validation_split": 0.25, "seed": 11,
        "search": {"method": "asha", "count": TRIALS, "seed": 2, "min_epochs": 1, "reduction_factor": 2, "parallel": WORKERS},
        "parameters": {
            "architecture": ["benchmark"], "weights": [None], "batch_size": [8],
            "optimizer": [{"name": "sgd", "learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 0.1}, "momentum": 0.9}],
        },
        "training": {"epochs": 4},  # rungs at 1, 2 and 4 epochs
        "head": {"units": 16},
    }))
    return path


@dataclass
class WorkerProcess(LoggedProcess):
    """A worker process and what its JSON log lines said so far."""

    def owns(self, owner: str | None) -> bool:
        """Whether a record's `lease_owner` (`{hostname}-{pid}`, worker.settings) is this process."""
        return owner is not None and owner.rsplit("-", 1)[-1] == str(self.process.pid)


def start(env: dict[str, str], root: Path) -> list[WorkerProcess]:
    workers = []
    for n in range(WORKERS):
        own = {**env, "SPOTSWEEP_CACHE_DIR": str(root / "caches" / f"w{n}")}
        [process] = start_workers(own, 1, "--idle-timeout", str(RACE_TIMEOUT_S), "--log-format", "json",
                                  log_dir=root / "logs" / f"w{n}")
        workers.append(WorkerProcess(process, root / "logs" / f"w{n}" / "worker-0.out"))
    return workers


@dataclass
class Kill:
    job_id: str
    trial: int
    rung: int
    attempt: int  # the attempt the victim held
    epochs_committed: int  # where the next attempt starts: the promotion's own last commit, or its parent's rung


def running_promotion(jobs: list[JobRecord]) -> JobRecord | None:
    return next((j for j in jobs if j.spec.trial.rung >= 1 and j.status is JobStatus.RUNNING and j.lease_owner), None)


def kill_mid_promotion(backend: Backend, spec: StudySpec, workers: list[WorkerProcess], deadline: float) -> tuple[Kill, WorkerProcess]:
    """SIGKILL the worker process that holds the first promotion seen RUNNING."""
    while time.monotonic() < deadline:
        job = running_promotion(backend.store.list_jobs(spec.study_id))
        victim = next((w for w in workers if job is not None and w.owns(job.lease_owner)), None)
        if job is not None and victim is not None:
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.wait(timeout=30)
            victim.read()
            record = backend.store.get_job(spec.study_id, job.job_id)
            assert record.status is JobStatus.RUNNING and victim.owns(record.lease_owner), record  # died holding it
            committed = record.epochs_run if record.state_key else rungs(spec)[job.spec.trial.rung - 1]
            return Kill(job.job_id, job.spec.trial.index, job.spec.trial.rung, record.attempt, committed), victim
        assert all(w.process.poll() is None for w in workers), "a worker left before any promotion ran"
        time.sleep(POLL_S)
    pytest.fail(f"no promotion ran within {RACE_TIMEOUT_S} s: {Counter(j.status.value for j in backend.store.list_jobs(spec.study_id))}")


def wait_complete(backend: Backend, spec: StudySpec, survivors: list[WorkerProcess], deadline: float) -> list[JobRecord]:
    while time.monotonic() < deadline:
        jobs = backend.store.list_jobs(spec.study_id)
        if jobs and search_complete(spec, jobs):
            return jobs
        assert any(w.process.poll() is None for w in survivors), "every surviving worker left before the search was complete"
        time.sleep(0.5)
    jobs = backend.store.list_jobs(spec.study_id)
    pytest.fail(f"the search was not complete within {RACE_TIMEOUT_S} s: {Counter(j.status.value for j in jobs)}, queue {backend.queue.counts()}")


def stop(workers: list[WorkerProcess]) -> list[int]:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)  # a warm stop: idle, they leave at once
    codes = [worker.process.wait(timeout=60) for worker in workers]
    for worker in workers:
        worker.read()
    return codes


def check_exactly_once(spec: StudySpec, jobs: list[JobRecord]) -> None:
    """N trials, each (trial, rung) once under its deterministic id, every one SUCCEEDED, and each
    promotion the child of its trial's previous rung."""
    pairs = Counter((j.spec.trial.index, j.spec.trial.rung) for j in jobs)
    assert {index for index, _ in pairs} == set(range(TRIALS)), sorted(pairs)
    assert set(pairs.values()) == {1}, pairs
    assert all(j.job_id == trial_job_id(spec.study_id, j.spec.trial.index) for j in jobs if not j.spec.trial.rung)
    slots = Counter(j.spec.trial.rung for j in jobs if j.spec.trial.rung)  # promotions fill each rung's slots in order
    assert {j.job_id for j in jobs if j.spec.trial.rung} == {
        promotion_job_id(spec.study_id, rung, slot) for rung, count in slots.items() for slot in range(count)}
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}, [(j.job_id, j.status, j.error) for j in jobs]
    epochs = rungs(spec)
    by_pair = {(j.spec.trial.index, j.spec.trial.rung): j for j in jobs}
    for (index, rung), job in by_pair.items():
        assert job.epochs_run == epochs[rung] and job.spec.training.epochs == epochs[rung], job
        if rung:
            assert job.spec.parent_job_id == by_pair[(index, rung - 1)].job_id, job


def check_epochs(backend: Backend, spec: StudySpec, jobs: list[JobRecord], logged: dict[str, Counter[int]]) -> None:
    """Every job's store rows are the epochs of its own rung only (a promotion's start past its
    parent's), and no committed epoch was trained again: each one's `epoch` log line appears once,
    across all the attempts on all the workers."""
    epochs = rungs(spec)
    for job in jobs:
        rung = job.spec.trial.rung
        own = list(range((epochs[rung - 1] if rung else 0) + 1, epochs[rung] + 1))
        assert [row.epoch for row in backend.store.epochs(spec.study_id, job.job_id)] == own, job.job_id
        assert sorted(logged[job.job_id]) == own and set(logged[job.job_id].values()) == {1}, (job.job_id, logged[job.job_id])


def check_takeover(kill: Kill, victim: WorkerProcess, survivors: list[WorkerProcess], jobs: list[JobRecord]) -> int:
    """The killed promotion was finished by another worker, on a later attempt that started where
    the killed one had committed (its own epoch, or its parent's rung); that attempt's number."""
    record = next(j for j in jobs if j.job_id == kill.job_id)
    assert record.status is JobStatus.SUCCEEDED and record.attempt >= 2 and record.attempt > kill.attempt, record
    assert not any(e.get("event") == "succeeded" and e.get("job_id") == kill.job_id for e in victim.events)
    settled = [e for w in survivors for e in w.events if e.get("event") == "succeeded" and e.get("job_id") == kill.job_id]
    assert [e["attempt"] for e in settled] == [record.attempt], settled
    later = [e["epoch"] for w in survivors for e in w.events
             if e.get("event") == "epoch" and e.get("job_id") == kill.job_id and e.get("attempt", 0) > kill.attempt]
    assert later and min(later) == kill.epochs_committed + 1, (later, kill)
    return record.attempt


def test_asha_with_racing_workers_and_a_kill_mid_promotion_makes_exactly_count_trials(tmp_path, tiny_dataset):
    env = env_for(tmp_path / "home", SPOTSWEEP_LEASE_S=str(LEASE_S), SPOTSWEEP_RECONCILE_INTERVAL_S=str(RECONCILE_INTERVAL_S),
                  SPOTSWEEP_RETRY_BACKOFF_S="1")
    submitted = submit_json(env, "study", str(write_study(tmp_path / "asha.json", tiny_dataset)))
    assert submitted["created"] == WORKERS  # the first window
    backend = open_backend(BackendConfig(home=tmp_path / "home", lease_s=LEASE_S))
    spec = StudySpec.model_validate(backend.store.get_study(submitted["study_id"]).spec)
    started = time.monotonic()
    deadline = started + RACE_TIMEOUT_S
    workers = start(env, tmp_path)
    try:
        kill, victim = kill_mid_promotion(backend, spec, workers, deadline)
        survivors = [w for w in workers if w is not victim]
        jobs = wait_complete(backend, spec, survivors, deadline)
    finally:
        codes = stop(workers)
    elapsed_s = time.monotonic() - started

    assert victim.process.returncode == -signal.SIGKILL
    assert [c for w, c in zip(workers, codes) if w is not victim] == [0] * (WORKERS - 1), codes
    check_exactly_once(spec, jobs)
    logged: dict[str, Counter[int]] = defaultdict(Counter)  # job -> epoch -> times committed
    for event in (e for w in workers for e in w.events if e.get("event") == "epoch"):
        logged[event["job_id"]][event["epoch"]] += 1
    check_epochs(backend, spec, jobs, logged)
    attempt = check_takeover(kill, victim, survivors, jobs)
    counts = backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (0, 0, 0), counts
    trained = sum(sum(c.values()) for c in logged.values())
    print(f"ASHA_RACE trials={TRIALS} jobs={len(jobs)} epochs={trained} victim={kill.trial}:{kill.rung}"
          f" killed_at_attempt={kill.attempt} resumed_after_epoch={kill.epochs_committed} taken_over_at_attempt={attempt} seconds={elapsed_s:.0f}")
