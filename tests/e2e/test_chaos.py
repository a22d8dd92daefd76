"""Chaos: a study of multi-epoch jobs on three worker processes that are SIGKILLed again and again
(at least 30 kills, aimed at three phases) and replaced, with the default SPOTSWEEP_MAX_RECEIVES,
on the embedded backend and on moto's server. Nobody runs a command after the study is
submitted: what the kills leave behind, the workers heal themselves (a lapsed lease is claimed
again; anything stranded, the idle workers' reconciler sends again).

The dataset lives in the artifact store (`submit dataset upload`), and every worker process has
a cache of its own, so every replacement syncs it again. The kills are aimed at:
- startup: a process spawned moments ago, before its first claim (often still importing);
- sync: a worker whose log says its dataset sync started and not yet that it ended;
- training: a worker whose current attempt committed an epoch and has epochs left to run.
A kill counts for the phase the victim's log shows once it is dead.

At the end: every job SUCCEEDED exactly once (one result in the store, one unfenced success in
all the workers' logs), its CSV log (`record.artifacts["log_csv"]`, read through the artifact
store) lists epochs 1..N once each, the store's epoch rows are consistent with the attempts
that wrote them, no committed epoch was trained again, the queue and its dead-letter queue are
empty. The closing figures are one line, e.g.
    CHAOS kills=30 (startup=10 sync=10 training=10) epochs_redone=0 resumed=6 duplicates=0 backend=local ...
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.backends.factory import open_backend
from shared.config import BackendConfig
from shared.ports import Backend
from shared.status import JobStatus
from tests.e2e.conftest import LoggedProcess, env_for, start_workers, submit, submit_json

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
EPOCHS = 6  # enough training for its kills on an idle machine too (at 4, jobs could all finish first)
WORKERS = 3
LEASE_S = 5  # a killed worker's job is taken over within ~lease + margin
RECONCILE_INTERVAL_S = 5  # how often an idle worker runs the reconciler
IDLE_EXIT_S = 10  # a worker with nothing to do for this long leaves (the reconciler runs meanwhile)
KILLS = {"startup": 10, "sync": 10, "training": 10}  # at least this many of each
KILL_GAP_S = (0.5, 1.5)  # between two kills
STARTUP_KILL_AFTER_S = (0.2, 3.0)  # a startup victim dies this long after its spawn
STARTUP_SHARE = 0.5  # of the spawns, while startup kills are still due
POLL_S = 0.02  # how often the logs are read: a sync lasts a few tenths of a second
CHAOS_TIMEOUT_S = {"local": 420, "aws": 480}
# Many small files, so that a sync lasts long enough to be hit (a few tenths of a second on the
# embedded backend; moto's server answers one request at a time, so there a quarter as many do).
IMAGES_PER_CLASS = {"local": 160, "aws": 40}
DATA_FRACTION = 0.25  # ...of which training reads a quarter: short epochs


def chaos_dataset(root: Path, per_class: int) -> Path:
    """3 classes x `per_class` images of 32 px, prepared."""
    from shared.datasets import prepare, synthesize

    synthesize(root / "raw", classes=3, per_class=per_class, size=32, seed=3)
    prepare(root / "raw", root / "prepared", test_fraction=0.25, seed=3)
    return root / "prepared"


def write_study(path: Path, dataset: str) -> Path:
    path.write_text(json.dumps({
        "name": "chaos", "dataset": dataset, "image_size": 32, "validation_split": 0.25, "seed": 7,
        "parameters": {
            "architecture": ["benchmark"], "weights": [None],
            "optimizer": [{"name": "sgd", "learning_rate": [0.005, 0.01, 0.02], "momentum": [0.0, 0.9]}],
            "batch_size": [16], "data_fraction": [DATA_FRACTION],
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
    dataset: str  # where `submit dataset upload` put it: the study's dataset location


@pytest.fixture(params=["local", pytest.param("aws", marks=pytest.mark.aws)])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    home, dataset_dir = tmp_path / "home", chaos_dataset(tmp_path / "data", IMAGES_PER_CLASS[request.param])
    common = {  # SPOTSWEEP_MAX_RECEIVES is left at its default
        "SPOTSWEEP_LEASE_S": str(LEASE_S), "SPOTSWEEP_RETRY_BACKOFF_S": "1",
        "SPOTSWEEP_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
    }
    if request.param == "local":
        env = env_for(home, **common)
        submit(env, "dataset", "upload", str(dataset_dir), "artifacts:datasets/chaos")
        yield Setup(env, BackendConfig(home=home, lease_s=LEASE_S), "artifacts:datasets/chaos")
        return
    if aws_support is None:
        pytest.skip(AWS_MISSING)
    endpoint = request.getfixturevalue("moto_endpoint")
    aws_support.use_moto_env(request, endpoint)  # this process too: it reads the store while the workers run
    stack = aws_support.unique_stack("chaos")
    env = aws_support.aws_subprocess_env(endpoint, env_for(home, **common))
    env.update(SPOTSWEEP_BACKEND="aws", SPOTSWEEP_STACK=stack)
    config = aws_support.aws_config(stack, lease_s=LEASE_S, max_receives=BackendConfig().max_receives)
    dataset = f"s3://{config.resolved_bucket}/datasets/chaos"
    submit(env, "init")
    submit(env, "dataset", "upload", str(dataset_dir), dataset)
    try:
        yield Setup(env, config, dataset)
    finally:
        import boto3

        aws_support.delete_resources(config, boto3.Session(region_name=aws_support.REGION))


# --- the workers and what their logs say ------------------------------------------------------


@dataclass
class WorkerProcess(LoggedProcess):
    """One worker process, its own cache and its own log; what its JSON log lines said so far."""

    spawned_at: float  # time.monotonic()
    kill_after_s: float | None  # a startup victim: killed this long after its spawn

    def state(self) -> tuple[str, int | None]:
        """The phase its log shows, and the last epoch the current attempt committed (or None):
        startup (no claim yet), sync (claimed, its dataset not ready yet), training (the dataset
        ready, the job not settled), idle (between jobs)."""
        if not any(e.get("event") == "claimed" for e in self.events):
            return "startup", None
        for event in reversed(self.events):
            name = event.get("event")
            if name in ("claimed", "dataset_sync"):
                return "sync", None
            if name in ("dataset_ready", "epoch"):
                return "training", event.get("epoch")
            if name in SETTLED:
                return "idle", None
        return "idle", None

    def target(self) -> str | None:
        """The phase this worker is worth a kill for now: any startup or sync; training only once
        its attempt committed an epoch and has more to run (a kill there shows resumption)."""
        phase, epoch = self.state()
        if phase == "training":
            return phase if epoch is not None and epoch < EPOCHS else None
        return phase if phase in ("startup", "sync") else None


SETTLED = {"succeeded", "failed", "cancelled", "preempted", "handoff", "retry", "fatal", "breaker", "lease_lost"}


@dataclass
class Fleet:
    """The worker processes: each with a fresh cache (every one syncs the dataset) and a log."""

    env: dict[str, str]
    root: Path
    rng: random.Random
    live: list[WorkerProcess] = field(default_factory=list)
    done: list[WorkerProcess] = field(default_factory=list)  # exited on their own or killed
    exit_codes: list[int] = field(default_factory=list)  # of those that exited on their own

    def start(self, startup_victim: bool = False) -> WorkerProcess:
        n = len(self.live) + len(self.done)
        env = {**self.env, "SPOTSWEEP_CACHE_DIR": str(self.root / "caches" / f"w{n:02d}")}
        [process] = start_workers(env, 1, "--idle-timeout", str(IDLE_EXIT_S), "--log-format", "json",
                                  log_dir=self.root / "logs" / f"w{n:02d}")
        kill_after_s = self.rng.uniform(*STARTUP_KILL_AFTER_S) if startup_victim else None
        worker = WorkerProcess(process, self.root / "logs" / f"w{n:02d}" / "worker-0.out", time.monotonic(), kill_after_s)
        self.live.append(worker)
        return worker

    def read(self) -> None:
        for worker in list(self.live):
            worker.read()
            if worker.process.poll() is not None:
                worker.read()
                self.live.remove(worker)
                self.done.append(worker)
                self.exit_codes.append(worker.process.returncode)

    def kill(self, worker: WorkerProcess) -> str:
        """SIGKILL `worker`; the phase its log shows once it is dead."""
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=30)
        worker.read()
        self.live.remove(worker)
        self.done.append(worker)
        return worker.state()[0]

    def everyone(self) -> list[WorkerProcess]:
        return self.done + self.live


# --- the chaos --------------------------------------------------------------------------------


@dataclass
class Chaos:
    """Who gets killed when: the kills still due per phase, and what each kill interrupted."""

    fleet: Fleet
    rng: random.Random
    due: Counter[str] = field(default_factory=lambda: Counter(KILLS))
    kills: list[dict[str, Any]] = field(default_factory=list)
    next_kill_at: float = 0.0

    def victim(self) -> WorkerProcess | None:
        """A worker in a phase that still has kills due: sync first (its windows are short)."""
        now = time.monotonic()
        if now < self.next_kill_at:
            return None
        by_phase = defaultdict(list)
        for worker in self.fleet.live:
            by_phase[worker.target()].append(worker)
        for phase in ("sync", "training"):
            if self.due[phase] > 0 and by_phase[phase]:
                return self.rng.choice(by_phase[phase])
        starting = [w for w in by_phase["startup"] if w.kill_after_s is not None and now - w.spawned_at >= w.kill_after_s]
        return self.rng.choice(starting) if starting and self.due["startup"] > 0 else None

    def strike(self, worker: WorkerProcess) -> None:
        """Kill `worker` and start its replacement (itself a startup victim now and then)."""
        phase = self.fleet.kill(worker)
        self.kills.append({"phase": phase, "epoch": worker.state()[1]})  # the epoch its attempt committed last
        self.due[phase] -= 1
        self.next_kill_at = time.monotonic() + self.rng.uniform(*KILL_GAP_S)
        only_startup_left = self.due["sync"] <= 0 and self.due["training"] <= 0
        self.fleet.start(startup_victim=self.due["startup"] > 0 and (only_startup_left or self.rng.random() < STARTUP_SHARE))

    @property
    def finished(self) -> bool:
        return all(self.due[phase] <= 0 for phase in KILLS)


def run_chaos(chaos: Chaos, backend: Backend, study_id: str, timeout_s: float) -> None:
    """Kill until every phase had its kills, and until every job is finished; keep workers up
    while work remains (a replacement for every kill; one if all left on their own)."""
    deadline = time.monotonic() + timeout_s
    checked_at = 0.0
    while time.monotonic() < deadline:
        chaos.fleet.read()
        victim = chaos.victim()
        if victim is not None:
            chaos.strike(victim)
        if time.monotonic() - checked_at >= 0.5:
            checked_at = time.monotonic()
            jobs = backend.store.list_jobs(study_id)
            if chaos.finished and jobs and all(j.status.finished for j in jobs):
                return
            if not chaos.fleet.live:  # all left on their own while work remains: a new host comes up
                chaos.fleet.start()
        time.sleep(POLL_S)
    states = Counter(j.status.value for j in backend.store.list_jobs(study_id))
    pytest.fail(f"the study did not finish within {timeout_s} s: {dict(states)}, kills due {dict(chaos.due)},"
                f" {len(chaos.kills)} kills, queue {backend.queue.counts()}")


def wait_for_exits(fleet: Fleet, timeout_s: float) -> None:
    """The survivors leave on their own once idle for IDLE_EXIT_S."""
    deadline = time.monotonic() + timeout_s
    while fleet.live and time.monotonic() < deadline:
        fleet.read()
        time.sleep(0.2)
    assert not fleet.live, f"{len(fleet.live)} workers still running {timeout_s} s after the study finished"


# --- what the logs and the store say afterwards -----------------------------------------------


def job_events(fleet: Fleet, name: str) -> list[dict[str, Any]]:
    return [e for worker in fleet.everyone() for e in worker.events if e.get("event") == name]


def count_duplicates(fleet: Fleet, job_ids: list[str]) -> int:
    """Successes settled twice: a "job succeeded" line not followed by the worker's "fenced out
    while settling" (that worker's finish was refused) counts; one per job is the only allowed."""
    settled: Counter[str] = Counter()
    for worker in fleet.everyone():
        for i, event in enumerate(worker.events):
            if event.get("event") == "succeeded":
                refused = any(e.get("job_id") == event["job_id"] and "fenced out while settling" in e.get("msg", "")
                              for e in worker.events[i + 1:])
                settled[event["job_id"]] += 0 if refused else 1
    assert sorted(settled) == sorted(job_ids) and all(settled[j] >= 1 for j in job_ids), settled
    return sum(n - 1 for n in settled.values())


def check_job(backend: Backend, study_id: str, job_id: str, logged: dict[int, set[int]]) -> tuple[int, bool]:
    """One job's record, CSV log and epoch rows: (epochs committed twice, whether it resumed)."""
    record = backend.store.get_job(study_id, job_id)
    assert record.status is JobStatus.SUCCEEDED and record.epochs_run == EPOCHS and record.failures == 0, record
    # The CSV log is one continuous log across the attempts: no epoch missing or repeated.
    log_csv = backend.artifacts.get_bytes(record.artifacts["log_csv"]).decode()
    assert [int(float(r["epoch"])) for r in csv.DictReader(io.StringIO(log_csv))] == list(range(1, EPOCHS + 1)), log_csv
    # One row per epoch, written by the attempt that committed it (the one whose log says so):
    # attempts never go back, and none is later than the record's.
    rows = {row.epoch: row.attempt for row in backend.store.epochs(study_id, job_id)}
    assert list(rows) == list(range(1, EPOCHS + 1)), rows
    attempts = list(rows.values())
    assert attempts == sorted(attempts) and attempts[-1] <= record.attempt, (rows, record.attempt)
    assert all(rows[epoch] == attempt for attempt, epochs in logged.items() for epoch in epochs), (rows, logged)
    redone = sum(n - 1 for n in Counter(e for epochs in logged.values() for e in epochs).values())
    resumed = any(min(epochs) > 1 for attempt, epochs in logged.items() if epochs and attempt > 1)
    return redone, resumed


def check_study(backend: Backend, fleet: Fleet, study_id: str) -> tuple[int, int, int]:
    """Every job SUCCEEDED once, nothing left on the queue or its DLQ, each job's logs and rows
    consistent: (duplicate successes, epochs committed twice, jobs resumed from a checkpoint)."""
    counts = backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (0, 0, 0), counts
    jobs = backend.store.list_jobs(study_id)
    job_ids = sorted(j.job_id for j in jobs)
    assert len(job_ids) == JOBS and {j.status for j in jobs} == {JobStatus.SUCCEEDED}, jobs
    logged: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))  # job -> attempt -> epochs
    for event in job_events(fleet, "epoch"):
        logged[event["job_id"]][event["attempt"]].add(event["epoch"])
    results = [check_job(backend, study_id, job_id, logged[job_id]) for job_id in job_ids]
    return count_duplicates(fleet, job_ids), sum(r for r, _ in results), sum(1 for _, r in results if r)


def unleash(chaos: Chaos, backend: Backend, study_id: str) -> None:
    """Start the workers, kill and replace them until the study is done, let the last ones leave."""
    try:
        for n in range(WORKERS):
            chaos.fleet.start(startup_victim=n == 0)
        run_chaos(chaos, backend, study_id, CHAOS_TIMEOUT_S[backend.name])
        wait_for_exits(chaos.fleet, timeout_s=IDLE_EXIT_S + 60)
    finally:
        for worker in chaos.fleet.live:
            worker.process.kill()
            worker.process.wait()


def test_chaos_sigkills_in_every_phase_every_job_succeeds_exactly_once(setup: Setup, tmp_path: Path) -> None:
    submitted = submit_json(setup.env, "study", str(write_study(tmp_path / "sweep.json", setup.dataset)))
    assert submitted["created"] == JOBS
    study_id = submitted["study_id"]  # from here on, no command: the workers alone
    backend = open_backend(setup.config)
    rng = random.Random(SEED)
    chaos = Chaos(Fleet(setup.env, tmp_path, rng), rng)
    started = time.monotonic()
    unleash(chaos, backend, study_id)
    elapsed_s = time.monotonic() - started

    kinds = Counter(kill["phase"] for kill in chaos.kills)
    assert all(kinds[phase] >= count for phase, count in KILLS.items()), kinds
    assert chaos.fleet.exit_codes and set(chaos.fleet.exit_codes) == {0}, chaos.fleet.exit_codes  # none failed on its own
    duplicates, redone, resumed = check_study(backend, chaos.fleet, study_id)
    status = submit_json(setup.env, "status", study_id)  # the user's view: a read, once all is settled
    assert status["counts"]["SUCCEEDED"] == JOBS and status["finished"], status
    assert status["queue"] == {"visible": 0, "in_flight": 0, "dead_lettered": 0}, status["queue"]

    training = [kill for kill in chaos.kills if kill["phase"] == "training"]  # each cost the epoch in progress
    print(f"\nCHAOS kills={len(chaos.kills)} (startup={kinds['startup']} sync={kinds['sync']} training={kinds['training']})"
          f" epochs_redone={redone} resumed={resumed} duplicates={duplicates} backend={backend.name}"
          f" epochs_interrupted={len(training)} training_kills_after_a_commit={sum(k['epoch'] is not None for k in training)}"
          f" idle_kills={kinds['idle']} workers={len(chaos.fleet.everyone())}"
          f" attempts={sum(j.attempt for j in backend.store.list_jobs(study_id))}"
          f" reconciled={len(job_events(chaos.fleet, 'reconciled'))} wall_s={elapsed_s:.0f}")
    assert duplicates == 0 and redone == 0
    assert resumed >= 1, [kill["epoch"] for kill in training]
