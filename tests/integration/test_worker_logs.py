"""`worker run --log-format json`: one JSON object per line, with `event`, and `job_id`/`attempt`
on every line about a job. A real worker process on a one-job study (benchmark CNN, one epoch)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, env_for, submit_json

pytestmark = pytest.mark.slow

JOB_EVENTS = {"claimed", "epoch", "succeeded"}


def write_study(path: Path, dataset: Path) -> Path:
    path.write_text(json.dumps({
        "name": "logs", "dataset": str(dataset), "image_size": 32, "validation_split": 0.25, "seed": 5,
        "parameters": {"architecture": ["benchmark"], "weights": [None], "optimizer": [{"name": "adam"}], "batch_size": [8]},
        "training": {"epochs": 1, "early_stopping": None},
        "head": {"units": 16},
    }))
    return path


def test_json_log_lines_carry_event_job_and_attempt(tmp_path, tiny_dataset):
    env = env_for(tmp_path / "home")
    submitted = submit_json(env, "study", str(write_study(tmp_path / "sweep.json", tiny_dataset)))
    assert submitted["created"] == 1

    result = subprocess.run([str(BIN / "worker"), "run", "--until-empty", "--log-format", "json"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    lines = (result.stdout + result.stderr).splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]  # every JSON-looking line parses
    other = [line for line in lines if not line.startswith("{")]
    # What is not JSON is TensorFlow's own C++ logging (absl), never a spotsweep record.
    assert not [line for line in other if any(word in line for word in ("claimed", "job succeeded", "worker_", "epoch 1"))], other

    assert events and all("event" in e and "ts" in e and "level" in e and "msg" in e for e in events), events
    names = [e["event"] for e in events]
    for expected in ("worker_started", "claimed", "epoch", "succeeded", "queue_empty", "worker_stopped"):
        assert expected in names, names
    assert names.index("claimed") < names.index("epoch") < names.index("succeeded") < names.index("worker_stopped")

    job_events = [e for e in events if e["event"] in JOB_EVENTS]
    assert sorted(e["event"] for e in job_events) == ["claimed", "epoch", "succeeded"], job_events
    assert all(isinstance(e["job_id"], str) and e["job_id"] and e["attempt"] == 1 for e in job_events), job_events
    assert len({e["job_id"] for e in job_events}) == 1
    epoch = next(e for e in job_events if e["event"] == "epoch")
    assert epoch["epoch"] == 1 and 0.0 <= epoch["metrics"]["val_accuracy"] <= 1.0

    shown = submit_json(env, "show", job_events[0]["job_id"])
    assert shown["job"]["status"] == "SUCCEEDED" and shown["job"]["attempt"] == 1
    assert [(r["epoch"], r["attempt"]) for r in shown["rows"]] == [(1, 1)]
