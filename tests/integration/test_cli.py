"""The `submit` CLI through typer's CliRunner and as the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from submitter.cli import app

EXAMPLE = json.loads((Path(__file__).parents[2] / "examples" / "sweep.json").read_text())



@pytest.fixture
def study_file(tmp_path, tiny_dataset) -> Path:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({**EXAMPLE, "dataset": str(tiny_dataset), "image_size": 32}))
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_dry_run_prints_every_job_and_writes_nothing(home, study_file):
    result = invoke("study", str(study_file), "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["job_count"] == 10 and len(doc["jobs"]) == 10
    assert doc["study_id"].startswith("flowers-arch-opt-")
    assert {"job_id", "architecture", "optimizer", "optimizer_params", "batch_size"} <= set(doc["jobs"][0])
    assert doc["estimate"]["jobs"] == 10
    assert not home.exists()


def test_submitting_twice_creates_nothing_new(home, study_file):
    first = json.loads(invoke("study", str(study_file), "--format", "json").stdout)
    second = json.loads(invoke("study", str(study_file), "--format", "json").stdout)
    assert (first["created"], first["sent"]) == (10, 10)
    assert (second["created"], second["existing"], second["sent"]) == (0, 10, 0)
    backend = open_local(BackendConfig(home=home))
    assert backend.queue.counts().visible == 10


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d["parameters"]["optimizer"][1].update(rho=0.9), "parameters.optimizer[1].rho"),
        (lambda d: d.update(image_size=40, parameters={**d["parameters"], "architecture": ["xception"]}), "parameters.architecture[0]"),
        (lambda d: d["parameters"].update(architecture=["alexnet"]), "parameters.architecture[0]"),
        (lambda d: d.update(dataset="/nowhere"), "dataset"),
    ],
)
def test_bad_study_exits_2_naming_the_field_and_enqueues_nothing(home, study_file, change, path):
    data = json.loads(study_file.read_text())
    change(data)
    study_file.write_text(json.dumps(data))
    result = invoke("study", str(study_file))
    assert result.exit_code == 2
    assert path in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (home / "queue.db").exists()


def test_status_and_leaderboard_formats(home, study_file):
    invoke("study", str(study_file))
    status = json.loads(invoke("status", "--format", "json").stdout)
    assert status["counts"]["QUEUED"] == 10 and status["total"] == 10 and status["queue"]["visible"] == 10
    board = json.loads(invoke("leaderboard", "--format", "json").stdout)
    assert len(board["rows"]) == 10 and {"job_id", "val_accuracy", "checkpoint", "optimizer_params"} <= set(board["rows"][0])
    csv = invoke("leaderboard", "--format", "csv", "--top", "3").stdout.strip().splitlines()
    assert csv[0].startswith("rank,job_id,kind,status") and len(csv) == 4
    markdown = invoke("leaderboard", "--format", "markdown").stdout
    assert markdown.startswith("| rank | job_id |")


def test_top_zero_is_bad_input(home, study_file):
    invoke("study", str(study_file))
    for command in (["leaderboard", "--top", "0"], ["finetune", "--top", "0"], ["evaluate", "--top", "0"]):
        result = invoke(*command)
        assert result.exit_code == 2 and "--top" in result.stderr, command


def test_unknown_study_and_no_study(home):
    assert invoke("status").exit_code == 1
    home.mkdir(exist_ok=True)
    result = invoke("leaderboard", "nope")
    assert result.exit_code in (1, 2) and "error" in result.stderr


def test_console_script_runs(tmp_path, study_file):
    script = Path(sys.executable).parent / "submit"
    env = {**os.environ, "SPOTSWEEP_HOME": str(tmp_path / "h")}
    result = subprocess.run([str(script), "study", str(study_file), "--dry-run", "--format", "json"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["job_count"] == 10
    bad = subprocess.run([str(script), "study", str(tmp_path / "missing.json")], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "missing.json" in bad.stderr
