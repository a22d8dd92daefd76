"""Every bad study file is refused at the door: exit 2, one line naming the JSON path, nothing written.

The corpus (tests/data/bad_studies/) is what a new user writes: typos in keys, wrong types, empty
lists, huge grids, negative or absurd numbers, NaN, a file saved as Latin-1 or UTF-16, a
pathologically nested file, a weights location that escapes the store. Each file goes through the
real `submit study --dry-run` (typer's CliRunner) and a few through the installed console script
without --dry-run. To grow it: add a file and its row in EXPECTED_PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from submitter.cli import app

CORPUS = Path(__file__).parents[1] / "data" / "bad_studies"
FILE = None  # the error is about the document itself: the line names the file instead of a field

# file -> the JSON path the one-line error must name
EXPECTED_PATH: dict[str, str | None] = {
    "augmentation_out_of_range.json": "parameters.augmentation[1].rotation",
    "batch_size_huge.json": "parameters.batch_size[1]",
    "comments.json": FILE,
    "data_fraction_zero.json": "parameters.data_fraction[0]",
    "deeply_nested.json": FILE,
    "duplicate_key.json": "seed",
    "early_stopping_as_number.json": "training.early_stopping",
    "empty_architecture_list.json": "parameters.architecture",
    "empty_dataset.json": "dataset",
    "empty_file.json": FILE,
    "epochs_as_words.json": "training.epochs",
    "epochs_huge.json": "training.epochs",
    "evaluate_top_zero.json": "evaluate.top",
    "finetune_epochs_huge.json": "finetune.epochs",
    "finetune_top_huge.json": "finetune.top",
    "fractional_epochs.json": "training.epochs",
    "head_units_huge.json": "head.units",
    "huge_grid.json": "parameters",
    "huge_integer.json": FILE,
    "image_size_huge.json": "image_size",
    "image_too_small_for_architecture.json": "parameters.architecture[1]",
    "infinity_number.json": "parameters.optimizer[1].learning_rate[0]",
    "max_jobs_above_cap.json": "max_jobs",
    "missing_name.json": "name",
    "missing_parameters.json": "parameters",
    "momentum_above_one.json": "parameters.optimizer[1].momentum[1]",
    "monitor_unknown_metric.json": "training.early_stopping.monitor",
    "name_with_spaces.json": "name",
    "nan_number.json": "validation_split",
    "negative_epochs.json": "training.epochs",
    "negative_learning_rate.json": "parameters.optimizer[1].learning_rate[1]",
    "negative_patience.json": "training.early_stopping.patience",
    "negative_seed.json": "seed",
    "not_an_object.json": FILE,
    "not_utf8.json": FILE,
    "optimizer_as_string.json": "parameters.optimizer[0]",
    "optimizer_without_name.json": "parameters.optimizer[0].name",
    "overflowing_number.json": "parameters.data_fraction[0]",
    "random_fraction_above_one.json": "search.fraction",
    "random_without_size.json": "search",
    "repeats_huge.json": "training.repeats",
    "search_as_string.json": "search",
    "search_without_method.json": "search.method",
    "sgd_with_adam_parameter.json": "parameters.optimizer[1].beta_1",
    "trailing_comma.json": FILE,
    "typo_in_early_stopping.json": "training.early_stopping.patiense",
    "typo_parameters_key.json": "parameters.architectures",
    "typo_top_level_key.json": "epoch",
    "unfreeze_from_list.json": "finetune.unfreeze_from",
    "unknown_architecture.json": "parameters.architecture[1]",
    "unknown_optimizer.json": "parameters.optimizer[1].name",
    "unknown_search_method.json": "search.method",
    "unpaired_surrogate.json": "dataset",
    "utf16.json": FILE,
    "validation_split_one.json": "validation_split",
    "version_two.json": "version",
    "weights_absolute_path.json": "parameters.weights[0]",
    "weights_as_number.json": "parameters.weights[0]",
    "weights_escape_the_store.json": "parameters.weights[0]",
    "yaml_not_json.json": FILE,
    "zero_batch_size.json": "parameters.batch_size[0]",
    # issue 16: distributions and sampled searches (tests/unit/test_space.py)
    "asha_min_epochs_not_below_epochs.json": "search.min_epochs",
    "distribution_batch_size_zero.json": "parameters.batch_size.low",
    "distribution_dropout_high_one.json": "head.dropout.high",
    "distribution_high_below_low.json": "parameters.batch_size.high",
    "distribution_int_uniform_fractional.json": "parameters.batch_size.low",
    "distribution_log_uniform_zero_low.json": "parameters.optimizer[0].learning_rate.low",
    "distribution_log_with_step.json": "head.units.step",
    "distribution_momentum_high_one.json": "parameters.optimizer[0].momentum.high",
    "distribution_on_boolean.json": "parameters.optimizer[0].nesterov",
    "distribution_step_not_dividing.json": "parameters.data_fraction.step",
    "distribution_unknown_field.json": "parameters.batch_size.mean",
    "distribution_unknown_name.json": "parameters.batch_size.distribution",
    "grid_over_distribution.json": "parameters.batch_size",
    "random_fraction_over_distribution.json": "parameters.optimizer[0].learning_rate",
    "tpe_with_repeats.json": "training.repeats",
}



def assert_refused(returncode: int, stderr: str, path: Path) -> None:
    expected = EXPECTED_PATH[path.name]
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"error: {path}: " if expected is FILE else f"error: {expected}: "), lines[0]


def test_every_file_of_the_corpus_has_its_expected_path():
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(EXPECTED_PATH)


@pytest.mark.parametrize("name", sorted(EXPECTED_PATH))
def test_bad_study_is_refused_by_submit_study_dry_run(home, name):
    path = CORPUS / name
    result = CliRunner().invoke(app, ["study", str(path), "--dry-run"], catch_exceptions=False)
    assert_refused(result.exit_code, result.stderr, path)
    assert result.stdout == "" and not home.exists()


@pytest.mark.parametrize("name", ["not_utf8.json", "deeply_nested.json", "nan_number.json", "weights_escape_the_store.json"])
def test_bad_study_is_refused_by_the_console_script_and_nothing_is_written(tmp_path, name):
    home = tmp_path / "home"
    script = Path(sys.executable).parent / "submit"
    env = {**os.environ, "SPOTSWEEP_HOME": str(home), "SPOTSWEEP_BACKEND": "local"}
    path = CORPUS / name
    result = subprocess.run([str(script), "study", str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert_refused(result.returncode, result.stderr, path)
    assert not home.exists()
