"""End-to-end helpers: run the real console scripts as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def env_for(home: Path, **more: str) -> dict[str, str]:
    return {
        **os.environ, "SPOTSWEEP_HOME": str(home), "SPOTSWEEP_BACKEND": "local", "SPOTSWEEP_LEASE_S": "30",
        "SPOTSWEEP_POLL_WAIT_S": "0.5", "SPOTSWEEP_PRICE_PER_HOUR": "0.526", "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "-1", "PYTHONUNBUFFERED": "1", **more,
    }


def submit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "submit"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"submit {args}: {result.stderr}"
    return result


def submit_json(env: dict[str, str], *args: str) -> dict:
    return json.loads(submit(env, *args, "--format", "json").stdout)


def start_workers(env: dict[str, str], count: int, *args: str, log_dir: Path) -> list[subprocess.Popen]:
    log_dir.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen([str(BIN / "worker"), "run", *args], env=env,
                         stdout=open(log_dir / f"worker-{i}.out", "w"), stderr=subprocess.STDOUT)
        for i in range(count)
    ]


def wait_all(processes: list[subprocess.Popen], timeout_s: float) -> list[int]:
    return [p.wait(timeout=timeout_s) for p in processes]
