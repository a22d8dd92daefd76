"""End-to-end helpers: run the real console scripts as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


@dataclass
class LoggedProcess:
    """A worker process started with `--log-format json`, and the events its log said so far."""

    process: subprocess.Popen
    log: Path
    events: list[dict[str, Any]] = field(default_factory=list, kw_only=True)
    _offset: int = field(default=0, kw_only=True)
    _partial: str = field(default="", kw_only=True)

    def read(self) -> None:
        """Take in the lines written since the last read (a line still being written waits)."""
        with open(self.log, errors="replace") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
            self._offset = handle.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        self.events += [event for line in lines if (event := parse_event(line)) is not None]


def parse_event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None  # TensorFlow's own C++ logging
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # the last line of a SIGKILLed worker may be cut short
        return None


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
