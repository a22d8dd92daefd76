"""Chaos: a study of multi-epoch jobs, three worker processes, workers SIGKILLed at random moments
and replaced, on the embedded backend and on moto's server. At the end every job has exactly one
result, nobody finished a job twice, and every job picked up again after a kill resumed from its
last checkpoint instead of starting over.

The closing figures are printed as one line, e.g.
    CHAOS kills=8 resumed=4 epochs_redone=0 duplicates=0 | backend=local ...
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.backends.factory import open_backend
from shared.ports import Backend
from shared.config import BackendConfig
from shared.paths import job_prefix
from shared.status import JobStatus
from tests.e2e.conftest import env_for, start_workers, submit, submit_json, wait_all

try:  # the AWS test support (moto's server in a subprocess) may not exist yet on every branch
    from tests import aws_support
    from tests.aws_support import moto_endpoint  # noqa: F401  (the session fixture, used by name)
except ImportError as exc:  # pragma: no cover - depends on the branch
    aws_support = None
    AWS_MISSING = f"tests/aws_support.py is not importable yet ({exc})"
else:
    AWS_MISSING = ""

pytestmark = pytest.mark.slow

SEED = 20240605
JOBS = 6  # 3 learning rates x 2 momentums
EPOCHS = 5
WORKERS = 3
LEASE_S = 6  # a killed worker's job is taken over within ~lease + margin
MAX_RECEIVES = 10  # kills count as receives on SQS too; leave room so no job is dead-lettered by chaos
KILLS = 6  # SIGKILLs in all, one every 3-8 s
KILL_EVERY_S = (3.0, 8.0)
ANY_MOMENT = 0.25  # the share of kills that hit whatever a busy worker is doing (often its first epoch)
GRACE_S = 90.0  # how long any other due kill waits for a job past its first checkpoint
CHAOS_TIMEOUT_S = {"local": 360, "aws": 420}


def write_study(path: Path, dataset: str) -> Path:
    path.write_text(json.dumps({
        "name": "chaos", "dataset": dataset, "image_size": 32, "validation_split": 0.25, "seed": 7,
        "parameters": {
            "architecture": ["benchmark"], "weights": [None],
            "optimizer": [{"name": "sgd", "learning_rate": [0.005, 0.01, 0.02], "momentum": [0.0, 0.9]}],
            "batch_size": [2],
        },
        "training": {"epochs": EPOCHS, "early_stopping": {"patience": 100}},  # every job runs every epoch
        "head": {"units": 16},
    }))
    return path


# --- the two backends -------------------------------------------------------------------------


@dataclass
class Setup:
    env: dict[str, str]
    config: BackendConfig
    dataset: str


@pytest.fixture(params=["local", pytest.param("aws", marks=pytest.mark.aws)])
def setup(request: pytest.FixtureRequest, tmp_path: Path, tiny_dataset: Path) -> Iterator[Setup]:
    home = tmp_path / "home"
    common = {"SPOTSWEEP_LEASE_S": str(LEASE_S), "SPOTSWEEP_MAX_RECEIVES": str(MAX_RECEIVES), "SPOTSWEEP_RETRY_BACKOFF_S": "1"}
    if request.param == "local":
        yield Setup(env_for(home, **common), BackendConfig(home=home, lease_s=LEASE_S, max_receives=MAX_RECEIVES), str(tiny_dataset))
        return
    if aws_support is None:
        pytest.skip(AWS_MISSING)
    endpoint = request.getfixturevalue("moto_endpoint")
    aws_support.use_moto_env(request, endpoint)  # this process too: it reads the store while the workers run
    stack = aws_support.unique_stack("chaos")
    env = aws_support.aws_subprocess_env(endpoint, env_for(home, **common))
    env.update(SPOTSWEEP_BACKEND="aws", SPOTSWEEP_STACK=stack)
    config = aws_support.aws_config(stack, lease_s=LEASE_S, max_receives=MAX_RECEIVES)
    submit(env, "init")
    submit(env, "dataset", "upload", str(tiny_dataset), "artifacts:datasets/tiny")
    try:
        yield Setup(env, config, "artifacts:datasets/tiny")
    finally:
        import boto3

        aws_support.delete_resources(config, boto3.Session(region_name=aws_support.REGION))


# --- the chaos --------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Worker processes, each with its own log folder (restarts never overwrite a log)."""

    env: dict[str, str]
    logs: Path
    live: list[subprocess.Popen] = field(default_factory=list)
    exited: list[tuple[subprocess.Popen, int]] = field(default_factory=list)
    started: int = 0

    def start(self, count: int) -> None:
        for _ in range(count):
            self.live += start_workers(self.env, 1, "--until-empty", "--log-format", "json", log_dir=self.logs / f"w{self.started:02d}")
            self.started += 1

    def reap(self) -> None:
        for process in list(self.live):
            if process.poll() is not None:
                self.live.remove(process)
                self.exited.append((process, process.returncode))

    def kill(self, process: subprocess.Popen) -> None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self.live.remove(process)


def worker_id(process: subprocess.Popen) -> str:
    return f"{socket.gethostname()}-{process.pid}"  # WorkerSettings.worker_id's default


def run_chaos(fleet: Fleet, backend: Backend, study_id: str, rng: random.Random, timeout_s: float) -> list[dict[str, Any]]:
    """SIGKILL a random busy worker every 3-8 s (KILLS in all) and start one in its place, until
    every job is finished. Returns what each kill interrupted.

    When a kill is due, the victim is drawn among all the busy workers (ANY_MOMENT of the kills),
    or else among those whose job has a checkpoint and epochs still to run, the case resumption is
    about (falling back to any busy worker after GRACE_S). A worker still importing TensorFlow is
    never an interesting victim: on a busy CI machine a job's first epoch (loading, tracing) takes
    far longer than the others, so uniformly random kills would rarely land after a checkpoint."""
    kills: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    due = time.monotonic() + rng.uniform(*KILL_EVERY_S)
    any_moment = rng.random() < ANY_MOMENT
    while time.monotonic() < deadline:
        jobs = backend.store.list_jobs(study_id)
        if jobs and all(j.status.finished for j in jobs):
            return kills
        fleet.reap()
        now = time.monotonic()
        if len(kills) < KILLS and now >= due:
            owners = {j.lease_owner: j for j in jobs if j.status == JobStatus.RUNNING and (j.lease_expires_at or 0) > time.time()}
            busy = [p for p in fleet.live if worker_id(p) in owners]
            ripe = [p for p in busy if 1 <= owners[worker_id(p)].epochs_run < EPOCHS]
            pool = busy if any_moment or now >= due + GRACE_S else ripe
            if pool:
                victim = rng.choice(pool)
                job = owners[worker_id(victim)]
                fleet.kill(victim)
                kills.append({"job_id": job.job_id, "attempt": job.attempt, "epochs_run": job.epochs_run, "at": time.time()})
                fleet.start(1)
                due = time.monotonic() + rng.uniform(*KILL_EVERY_S)
                any_moment = rng.random() < ANY_MOMENT
        if not fleet.live:  # every worker left on its own while work remains: never let the study stall
            fleet.start(1)
        time.sleep(0.2)
    states = Counter(j.status.value for j in backend.store.list_jobs(study_id))
    pytest.fail(f"the study did not finish within {timeout_s} s: {dict(states)}, {len(kills)} kills, queue {backend.queue.counts()}")


def log_events(logs: Path) -> list[dict[str, Any]]:
    events = []
    for path in sorted(logs.rglob("*.out")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:  # the last line of a SIGKILLed worker may be cut short
                    pass
    return events


def test_chaos_every_job_succeeds_exactly_once_and_resumes(setup: Setup, tmp_path: Path):
    env, logs = setup.env, tmp_path / "logs"
    submitted = submit_json(env, "study", str(write_study(tmp_path / "sweep.json", setup.dataset)))
    assert submitted["created"] == JOBS
    study_id = submitted["study_id"]
    backend = open_backend(setup.config)
    rng = random.Random(SEED)

    fleet = Fleet(env, logs)
    fleet.start(WORKERS)
    started = time.monotonic()
    try:
        kills = run_chaos(fleet, backend, study_id, rng, CHAOS_TIMEOUT_S[backend.name])
        chaos_s = time.monotonic() - started
        codes = wait_all(fleet.live, timeout_s=120)  # the survivors leave on their own (--until-empty)
        fleet.exited += list(zip(fleet.live, codes))
        fleet.live.clear()
        # A final set of workers: nothing is left to do, and they say so.
        final = start_workers(env, 1, "--until-empty", "--log-format", "json", log_dir=logs / "final")
        assert wait_all(final, timeout_s=120) == [0]
    finally:
        for process in fleet.live:
            process.kill()
            process.wait()
    assert [code for _, code in fleet.exited] == [0] * len(fleet.exited), [code for _, code in fleet.exited]
    assert len(kills) >= 3, kills

    # One result per job, as the submitter reports it.
    status = submit_json(env, "status", study_id)
    assert status["counts"]["SUCCEEDED"] == JOBS and status["total"] == JOBS and status["finished"], status
    assert status["queue"] == {"visible": 0, "in_flight": 0, "dead_lettered": 0}, status["queue"]
    rows = submit_json(env, "leaderboard", study_id)["rows"]
    assert len(rows) == JOBS and len({r["job_id"] for r in rows}) == JOBS, rows
    assert {r["status"] for r in rows} == {"SUCCEEDED"}
    job_ids = sorted(r["job_id"] for r in rows)

    # Nobody finished a job twice: one "job succeeded" line per job in all the workers' logs.
    events = log_events(logs)
    succeeded = Counter(e["job_id"] for e in events if e.get("event") == "succeeded")
    raw = "".join(p.read_text(errors="replace") for p in logs.rglob("*.out"))
    assert raw.count('"msg": "job succeeded"') == sum(succeeded.values())
    duplicates = sum(n - 1 for n in succeeded.values() if n > 1) + (len(rows) - len(set(job_ids)))
    assert duplicates == 0 and sorted(succeeded) == job_ids, succeeded
    assert not [e for e in events if e.get("event") in ("claimed",) and e["job_id"] not in job_ids]

    # Resumption: epochs written per (job, attempt), from the store (show) and the logs together
    # (the store keeps one row per epoch, the last writer's; the logs keep every attempt's).
    written: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))  # job -> attempt -> epochs
    for e in events:
        if e.get("event") == "epoch":
            written[e["job_id"]][e["attempt"]].add(e["epoch"])
    resumptions, redone, attempts, table_gaps = 0, 0, {}, 0
    for job_id in job_ids:
        shown = submit_json(env, "show", job_id)
        record = shown["job"]
        attempts[job_id] = record["attempt"]
        assert record["status"] == "SUCCEEDED" and record["epochs_run"] == EPOCHS, record
        for row in shown["rows"]:
            written[job_id][row["attempt"]].add(row["epoch"])
        # An epoch whose worker died between its checkpoint and its metrics write has no row (its
        # metrics are in the job's state and CSV log): counted, not asserted.
        table_gaps += EPOCHS - len({row["epoch"] for row in shown["rows"]})
        # The job's CSV log is one continuous log across its attempts: no epoch missing or repeated.
        log_csv = backend.artifacts.get_bytes(f"{job_prefix(study_id, job_id)}/log.csv").decode()
        assert [int(float(r["epoch"])) for r in csv.DictReader(io.StringIO(log_csv))] == list(range(1, EPOCHS + 1)), log_csv
        by_attempt = written[job_id]
        assert max(by_attempt) == record["attempt"], (job_id, dict(by_attempt), record["attempt"])
        assert set().union(*by_attempt.values()) >= {EPOCHS}
        done_before = 0
        for attempt in sorted(by_attempt):
            epochs = sorted(by_attempt[attempt])
            if attempt > 1 and done_before >= 1:
                # Resumed from the checkpoint: never from epoch 1, never an epoch already written.
                assert epochs[0] > done_before, (job_id, attempt, dict(by_attempt))
                resumptions += 1
            done_before = max(done_before, epochs[-1])
        counts = Counter(e for epochs in by_attempt.values() for e in epochs)
        redone += sum(1 for n in counts.values() if n > 1)
    assert redone == 0
    after_checkpoint = [k for k in kills if k["epochs_run"] >= 1]
    # A job resumed: a later attempt wrote its epochs, starting after epoch 1 (from a checkpoint).
    resumed = sum(1 for job_id in job_ids if any(min(v) > 1 for a, v in written[job_id].items() if a > 1))
    assert after_checkpoint and resumed >= 1, (kills, {j: dict(w) for j, w in written.items()})

    print(f"\nCHAOS kills={len(kills)} resumed={resumed} epochs_redone={redone} duplicates={duplicates}"
          f" | backend={backend.name} kills_after_checkpoint={len(after_checkpoint)} resumptions={resumptions}"
          f" attempts={sum(attempts.values())} epochs_missing_from_table={table_gaps} workers_started={fleet.started + 1} chaos_s={chaos_s:.0f}")
