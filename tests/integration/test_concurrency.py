"""`worker run --concurrency 2` with real processes and real (tiny) training: signals as a
terminal sends them, and children that die.

- Ctrl-C at a terminal is a SIGINT to the foreground process group (here the parent's group,
  sent with `os.killpg`): every child makes ONE warm stop (the job checkpointed and put back,
  QUEUED with preemptions + 1), not the cold stop two signals used to make.
- A child killed by a signal makes the parent exit non-zero.
- The parent killed outright takes its children with it (a warm stop, no orphans).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.status import JobStatus
from tests.e2e.conftest import BIN, env_for, submit

pytestmark = pytest.mark.slow

LEASE_S = 6
EPOCHS = 30  # long enough that the signal always lands mid-training


def write_study(path: Path, dataset: Path) -> Path:
    path.write_text(json.dumps({
        "name": "concurrency", "dataset": str(dataset), "image_size": 32, "validation_split": 0.25, "seed": 3,
        "parameters": {"architecture": ["benchmark"], "weights": [None], "batch_size": [2],
                       "optimizer": [{"name": "sgd", "learning_rate": lr} for lr in (0.01, 0.02)]},
        "training": {"epochs": EPOCHS, "early_stopping": {"patience": 1000}},
        "head": {"units": 16},
    }))
    return path


def start_parent(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """`worker run --concurrency 2 ...` as a shell would start it: the leader of its own process
    group (the group a terminal's Ctrl-C reaches), which is not pytest's."""
    return subprocess.Popen(
        [str(BIN / "worker"), "run", "--concurrency", "2", *args], env=env,
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def two_children(parent: subprocess.Popen) -> list[int] | None:
    pids = children_of(parent.pid)
    return pids if len(pids) == 2 else None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def wait_for(predicate, timeout_s: float, what: str, parent: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if parent.poll() is not None:
            pytest.fail(f"the parent exited ({parent.returncode}) while waiting for {what}: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}: {log.read_text()[-3000:]}")


def cleanup(parent: subprocess.Popen, pids: list[int]) -> None:
    """Kill whatever is left (the children are in sessions of their own: no group kill reaches them)."""
    for pid in [*children_of(parent.pid), *pids, parent.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    parent.wait()


def events(log: Path) -> list[str]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{") and '"event"' in line]
    return [json.loads(line)["event"] for line in lines]


def test_ctrl_c_at_the_terminal_is_one_warm_stop_in_each_child(tmp_path, tiny_dataset):
    home, log = tmp_path / "home", tmp_path / "parent.out"
    env = env_for(home, SPOTSWEEP_LEASE_S=str(LEASE_S))
    submit(env, "study", str(write_study(tmp_path / "sweep.json", tiny_dataset)))
    backend = open_local(BackendConfig(home=home, lease_s=LEASE_S))
    [study] = backend.store.list_studies()
    jobs = backend.store.list_jobs(study.study_id)
    assert len(jobs) == 2

    parent = start_parent(env, log, "--until-empty", "--log-format", "json")
    pids: list[int] = []
    try:
        training = lambda: all(backend.store.epochs(study.study_id, job.job_id) for job in jobs)  # noqa: E731
        wait_for(training, 240, "both jobs to finish an epoch", parent, log)
        pids = children_of(parent.pid)
        os.killpg(parent.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        code = parent.wait(timeout=90)
    finally:
        cleanup(parent, pids)
    assert code == 0, log.read_text()[-3000:]
    names = events(log)
    assert names.count("preempted") == 2 and "cold_stop" not in names, names
    for job in jobs:
        record = backend.store.get_job(study.study_id, job.job_id)
        assert record.status == JobStatus.QUEUED and record.preemptions == 1 and record.attempt == 1, record
        assert 1 <= record.epochs_run < EPOCHS, record  # stopped mid-training, checkpoint kept
    counts = backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (2, 0, 0), counts  # a fresh message each


def test_a_child_killed_by_a_signal_makes_the_parent_fail(tmp_path):
    home, log = tmp_path / "home", tmp_path / "parent.out"
    env = env_for(home)
    parent = start_parent(env, log, "--idle-timeout", "600")
    pids: list[int] = []
    try:
        pids = wait_for(lambda: two_children(parent), 60, "two children", parent, log)
        started = lambda: log.read_text().count(" started") == 2  # noqa: E731  (signal handlers installed)
        wait_for(started, 240, "both children to start", parent, log)
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.5)
        os.kill(parent.pid, signal.SIGTERM)  # the other child makes a warm stop and exits 0
        code = parent.wait(timeout=120)
    finally:
        cleanup(parent, pids)
    assert code == 1, log.read_text()[-3000:]
    assert f"worker process {pids[0]} was killed by SIGKILL" in log.read_text()


def test_children_stop_when_the_parent_is_killed(tmp_path):
    home, log = tmp_path / "home", tmp_path / "parent.out"
    parent = start_parent(env_for(home), log, "--idle-timeout", "600")
    pids: list[int] = []
    try:
        pids = wait_for(lambda: two_children(parent), 60, "two children", parent, log)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 120
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in pids), "children outlived their parent"
    finally:
        cleanup(parent, pids)
