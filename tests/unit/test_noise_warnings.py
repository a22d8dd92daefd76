"""Warnings at submission (issue 17): a study that can only produce noise is said so, in one line
each, and still submitted: a frozen base with `weights: null` (its features are ~0) and early
stopping on a training metric (which also picks the best epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.schemas import DryRunDocument, SubmitDocument
from shared.study import StudySpec, study_warnings
from submitter.cli import app

NOISY = {
    "name": "noisy", "dataset": "ds", "image_size": 32,
    "parameters": {"architecture": ["benchmark", "mobilenet_v2"], "weights": ["imagenet", None]},
    "training": {"early_stopping": {"monitor": "loss"}},
    "finetune": {"early_stopping": {"monitor": "accuracy"}},
}
RANDOM_BASE = ('parameters.weights[1]: null gives mobilenet_v2 a random frozen base whose features are ~0: '
               'its jobs learn noise (use "imagenet" or a weights file)')
TRAINING_LOSS = ("training.early_stopping.monitor: 'loss' is a training metric: the best epoch and the stop follow "
                 "the fit to the training images, not the validation score (use 'val_loss')")


def test_each_way_to_measure_noise_is_one_line_naming_its_path():
    warnings = study_warnings(StudySpec.model_validate(NOISY))
    assert warnings[:2] == [RANDOM_BASE, TRAINING_LOSS] and len(warnings) == 3
    assert warnings[2].startswith("finetune.early_stopping.monitor: 'accuracy' is a training metric")
    assert warnings[2].endswith("(use 'val_accuracy')")


@pytest.mark.parametrize("change", [
    {"parameters": {"architecture": ["benchmark"], "weights": [None]}},  # trained from scratch: nothing frozen
    {"parameters": {"architecture": ["mobilenet_v2"], "weights": ["imagenet"]}},
    {"training": {"early_stopping": {"monitor": "val_loss"}}},
    {"training": {"early_stopping": None}},
])
def test_a_study_that_measures_something_gets_no_warning(change):
    clean = {**NOISY, "finetune": None, "training": {}, "parameters": {"architecture": ["benchmark"]}, **change}
    assert study_warnings(StudySpec.model_validate(clean)) == []


@pytest.fixture
def study_file(tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPOTSWEEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({**NOISY, "dataset": str(tiny_dataset)}))
    return path


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output  # a warning, never an error
    return result


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_the_dry_run_warns_in_every_format(study_file, fmt):
    result = invoke("study", str(study_file), "--dry-run", "--format", fmt)
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert lines[:2] == [f"warning: {RANDOM_BASE}", f"warning: {TRAINING_LOSS}"] and len(lines) == 3
    assert lines[2].startswith("warning: finetune.early_stopping.monitor: 'accuracy'")
    if fmt == "json":
        assert DryRunDocument.model_validate_json(result.stdout).warnings[:2] == [RANDOM_BASE, TRAINING_LOSS]


def test_the_study_is_submitted_with_its_warnings_even_when_quiet(study_file, tmp_path):
    result = invoke("--quiet", "study", str(study_file), "--format", "json")
    doc = SubmitDocument.model_validate_json(result.stdout)
    assert doc.created == 3 and doc.warnings[:2] == [RANDOM_BASE, TRAINING_LOSS]  # benchmark, mobilenet_v2 x 2 weights
    printed = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert printed == [f"warning: {warning}" for warning in doc.warnings]

    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps({**json.loads(study_file.read_text()), "finetune": None, "training": {},
                                 "parameters": {"architecture": ["benchmark"]}}))
    result = invoke("study", str(clean), "--format", "json")
    assert SubmitDocument.model_validate_json(result.stdout).warnings == [] and "warning" not in result.stderr
