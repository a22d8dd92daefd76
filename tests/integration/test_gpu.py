"""GPUs used well, on this CPU machine, with a fake `nvidia-smi` on PATH listing two GPUs:
a worker whose TensorFlow sees none refuses to start with one line (exit 1), unless
SPOTSWEEP_REQUIRE_GPU=false; `worker run --per-gpu` starts one child per GPU, each pinned
to its own with CUDA_VISIBLE_DEVICES. The workers are real processes (`python -m worker`)
on an empty embedded queue."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from worker.gpu import machine_gpus, per_gpu_envs

REPO = Path(__file__).parents[2]
TIMEOUT_S = 300  # each process loads TensorFlow on a shared, slow machine

FAKE_NVIDIA_SMI = """#!/bin/sh
[ "$1" = "-L" ] || exit 9
echo "GPU 0: NVIDIA A10G (UUID: GPU-00000000-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA A10G (UUID: GPU-11111111-1111-1111-1111-111111111111)"
"""


@pytest.fixture
def fake_gpu_path(tmp_path: Path) -> str:
    """A PATH whose first directory holds an `nvidia-smi` that lists two GPUs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def worker_env(tmp_path: Path, path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTSWEEP_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update(PATH=path, SPOTSWEEP_BACKEND="local", SPOTSWEEP_HOME=str(tmp_path / "home"),
               SPOTSWEEP_POLL_WAIT_S="0", PYTHONPATH=str(REPO), **extra)
    return env


def run_worker(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def test_machine_gpus_reads_nvidia_smi(fake_gpu_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_gpu_path)
    assert [line.split(":")[0] for line in machine_gpus()] == ["GPU 0", "GPU 1"]
    monkeypatch.setenv("PATH", str(Path(fake_gpu_path.split(os.pathsep)[0]).parent / "empty"))
    assert machine_gpus() == []  # no nvidia-smi: no GPUs, no error


def test_per_gpu_envs_pin_one_gpu_each():
    envs = per_gpu_envs({"A": "1"}, 2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"] and all(e["A"] == "1" for e in envs)


def test_gpu_machine_whose_tensorflow_sees_none_refuses_to_start(tmp_path, fake_gpu_path):
    done = run_worker(["run", "--until-empty"], worker_env(tmp_path, fake_gpu_path))
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "2 GPU(s)" in errors[0] and "TensorFlow sees none" in errors[0] and "SPOTSWEEP_REQUIRE_GPU=false" in errors[0]
    assert "Traceback" not in done.stderr


def test_per_gpu_runs_one_pinned_worker_per_gpu(tmp_path, fake_gpu_path):
    env = worker_env(tmp_path, fake_gpu_path, SPOTSWEEP_REQUIRE_GPU="false")  # this machine's TensorFlow sees no GPU
    done = run_worker(["run", "--per-gpu", "--until-empty", "--log-format", "json"], env)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    pinned = sorted(e["cuda_visible_devices"] for e in events if e.get("event") == "gpu_pinned")
    assert pinned == ["0", "1"], done.stderr
    assert [e["gpus"] for e in events if e.get("event") == "per_gpu"] == [2]
    assert sum(e.get("event") == "queue_empty" for e in events) == 2  # both children worked the (empty) queue
