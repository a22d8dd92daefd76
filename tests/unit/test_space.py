"""Search-space distributions (shared/space.py, shared/study.py): each bad bound is refused with one
line naming its JSON path; every value a distribution gives lies within its bounds and on its
grid; and a study file written before distributions, budgets and windows keeps its ids.

The refusals are checked in-process (path and message) here, and through the real `submit study`
(the corpus rows in tests/unit/test_bad_studies.py, and the console script once below).
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.errors import BadInputError
from shared.search import initial_jobs
from shared.space import Distribution
from shared.study import StudySpec, expand, parse_study

CORPUS = Path(__file__).parents[1] / "data" / "bad_studies"

LOG_LR = {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1}
BASE: dict[str, Any] = {
    "name": "sampled", "dataset": "/data/flowers", "image_size": 64,
    "search": {"method": "random", "count": 8, "seed": 3},
    "parameters": {"architecture": ["benchmark"], "weights": [None],
                   "optimizer": [{"name": "sgd", "learning_rate": LOG_LR}]},
    "training": {"epochs": 9},
}


def document(*changes: tuple[str, Any]) -> dict[str, Any]:
    """BASE with each (slash-separated path, value) set: "parameters/optimizer/0/momentum"."""
    data = copy.deepcopy(BASE)
    for path, value in changes:
        *parents, last = path.split("/")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[last] = value
    return data


def dist(kind: str, low: float, high: float, **extra: Any) -> dict[str, Any]:
    return {"distribution": kind, "low": low, "high": high, **extra}


BATCH, FRACTION, LR = "parameters/batch_size", "parameters/data_fraction", "parameters/optimizer/0/learning_rate"
MOMENTUM, NESTEROV = "parameters/optimizer/0/momentum", "parameters/optimizer/0/nesterov"
ASHA = {"method": "asha", "count": 9, "seed": 1, "min_epochs": 9, "reduction_factor": 3}

# id -> (changes, the JSON path named, a fragment of the message)
REFUSED: dict[str, tuple[list[tuple[str, Any]], str, str]] = {
    "low-not-below-high": ([(BATCH, dist("int_uniform", 64, 16))], "parameters.batch_size.high", "not above low 64"),
    "low-equal-high": ([(FRACTION, dist("uniform", 0.5, 0.5))], "parameters.data_fraction.high", "not above low"),
    "log-uniform-low-zero": (
        [(LR, dist("log_uniform", 0, 0.1))], "parameters.optimizer[0].learning_rate.low", "low > 0"),
    "log-uniform-low-negative": (
        [(LR, dist("log_uniform", -1, 0.1))], "parameters.optimizer[0].learning_rate.low", "low > 0"),
    "int-uniform-fractional-low": (
        [(BATCH, dist("int_uniform", 8.5, 64))], "parameters.batch_size.low", "whole numbers"),
    "int-uniform-fractional-high": (
        [(BATCH, dist("int_uniform", 8, 64.5))], "parameters.batch_size.high", "whole numbers"),
    "int-uniform-fractional-step": (
        [(BATCH, dist("int_uniform", 8, 64, step=0.5))], "parameters.batch_size.step", "whole numbers"),
    "step-not-dividing": (
        [(FRACTION, dist("uniform", 0.1, 1.0, step=0.4))], "parameters.data_fraction.step", "not a multiple"),
    "step-negative": ([(BATCH, dist("int_uniform", 8, 64, step=-8))], "parameters.batch_size.step", "greater than 0"),
    "log-int-with-step": (
        [("head/units", dist("int_uniform", 16, 256, step=16, log=True))], "head.units.step", "no step"),
    "log-uniform-with-step": ([(LR, dist("log_uniform", 0.001, 0.1, step=0.001))],
                              "parameters.optimizer[0].learning_rate.step", "no step"),
    "log-on-uniform": (
        [(FRACTION, dist("uniform", 0.1, 1.0, log=True))], "parameters.data_fraction.log", "only int_uniform"),
    "log-int-low-zero": ([("head/units", dist("int_uniform", 0, 64, log=True))], "head.units.low", "low >= 1"),
    "batch-size-low-zero": (
        [(BATCH, dist("int_uniform", 0, 64))], "parameters.batch_size.low", "greater than or equal to 1"),
    "batch-size-uniform": ([(BATCH, dist("uniform", 8, 64))], "parameters.batch_size.distribution", "use int_uniform"),
    "momentum-high-one": (
        [(MOMENTUM, dist("uniform", 0.5, 1))], "parameters.optimizer[0].momentum.high", "less than 1"),
    "dropout-high-one": ([("head/dropout", dist("uniform", 0.0, 1.0))], "head.dropout.high", "less than 1"),
    "image-size-too-small": (
        [("parameters/image_size", dist("int_uniform", 8, 64))], "parameters.image_size.low", "16"),
    "head-units-huge": ([("head/units", dist("int_uniform", 8, 10**9))], "head.units.high", "16384"),
    "learning-rate-negative": (
        [(LR, dist("uniform", -1, 0.1))], "parameters.optimizer[0].learning_rate.low", "greater than 0"),
    "infinite-high": (
        [(FRACTION, dist("uniform", 0.1, math.inf))], "parameters.data_fraction.high", "not a number JSON allows"),
    "missing-high": ([(BATCH, {"distribution": "int_uniform", "low": 8})], "parameters.batch_size.high", "required"),
    "on-a-boolean": ([(NESTEROV, dist("uniform", 0, 1))], "parameters.optimizer[0].nesterov", "list"),
    "on-augmentation": ([("parameters/augmentation", dist("uniform", 0, 1))], "parameters.augmentation", "list"),
    "unknown-distribution": ([(BATCH, dist("normal", 8, 64))], "parameters.batch_size.distribution", "int_uniform"),
    "unknown-field": ([(BATCH, dist("int_uniform", 8, 64, mean=32))], "parameters.batch_size.mean", "unknown field"),
    "grid-over-distribution": ([("search", {"method": "grid"})],
                               "parameters.optimizer[0].learning_rate", "a grid cannot sweep a distribution"),
    "random-fraction-over-distribution": ([("search", {"method": "random", "fraction": 0.5})],
                                          "parameters.optimizer[0].learning_rate", "random search by fraction"),
    "tpe-repeats": (
        [("search", {"method": "tpe", "count": 4}), ("training/repeats", 2)], "training.repeats", "tpe runs each"),
    "asha-repeats": (
        [("search", {**ASHA, "min_epochs": 1}), ("training/repeats", 2)], "training.repeats", "asha runs each trial"),
    "asha-min-epochs-at-epochs": ([("search", ASHA)], "search.min_epochs", "no rung below training.epochs"),
    "asha-min-epochs-above-epochs": ([("search", {**ASHA, "min_epochs": 12})], "search.min_epochs", "no rung below"),
    "asha-reduction-factor-one": ([("search", {**ASHA, "min_epochs": 1, "reduction_factor": 1})],
                                  "search.reduction_factor", "greater than or equal to 2"),
    "budget-empty": ([("budget", {})], "budget", "at least one of jobs, gpu_hours, usd"),
    "budget-negative-usd": ([("budget", {"usd": -1})], "budget.usd", "greater than 0"),
    "parallel-zero": (
        [("search", {"method": "tpe", "count": 4, "parallel": 0})], "search.parallel", "greater than or equal to 1"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_bad_distribution_or_search_is_refused_naming_its_json_path(case):
    changes, path, fragment = REFUSED[case]
    with pytest.raises(BadInputError) as caught:
        parse_study(json.dumps(document(*changes)))
    message = str(caught.value)
    assert caught.value.path == path and message.startswith(f"{path}: ")
    assert fragment in message and "\n" not in message, message


def test_submit_study_refuses_a_bad_bound_with_exit_2_and_the_path_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    script = Path(sys.executable).parent / "submit"
    env = {**os.environ, "SPOTSWEEP_HOME": str(home), "SPOTSWEEP_BACKEND": "local"}
    path = CORPUS / "distribution_high_below_low.json"
    command = [str(script), "study", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["error: parameters.batch_size.high: 16 is not above low 64"]
    assert not home.exists()


# --- values ------------------------------------------------------------------------------------

QUANTILES = [0.0, 1e-12, 0.001, 0.25, 0.5, 0.77, 0.999, 1 - 1e-12, 1.0]
VALID = {
    "uniform": Distribution(distribution="uniform", low=0.05, high=0.95),
    "uniform-step": Distribution(distribution="uniform", low=0.7, high=1.0, step=0.1),
    "uniform-fine-step": Distribution(distribution="uniform", low=0.01, high=0.99, step=0.07),
    "log-uniform": Distribution(distribution="log_uniform", low=1e-5, high=1e-1),
    "log-uniform-narrow": Distribution(distribution="log_uniform", low=3.642356998808631e-05, high=2.07545737709e-04),
    "int": Distribution(distribution="int_uniform", low=8, high=64),
    "int-step": Distribution(distribution="int_uniform", low=16, high=256, step=16),
    "int-log": Distribution(distribution="int_uniform", low=16, high=1024, log=True),
}


def on_grid(d: Distribution, value: float) -> bool:
    if d.step is None:
        return True
    steps = (value - d.low) / d.step
    return abs(steps - round(steps)) < 1e-9


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_value_lies_within_the_bounds_on_the_step_grid(name):
    d = VALID[name]
    values = [d.value(u) for u in QUANTILES]
    assert all(d.low <= v <= d.high and on_grid(d, v) for v in values), values
    assert values == sorted(values)  # monotone in the quantile: Sobol's spread is kept
    if d.is_int:
        assert all(type(v) is int for v in values)


@pytest.mark.parametrize("name", ["uniform-step", "int-step", "int"])
def test_a_stepped_distribution_reaches_both_ends_and_every_step(name):
    d = VALID[name]
    step = d.step or 1
    count = round((d.high - d.low) / step) + 1
    values = {round(d.value((k + 0.5) / count), 9) for k in range(count)}
    assert values == {round(d.low + k * step, 9) for k in range(count)}


def test_log_uniform_spreads_on_the_log_scale():
    d = VALID["log-uniform"]
    draws = [d.value((k + 0.5) / 2000) for k in range(2000)]
    geometric_mean = math.sqrt(d.low * d.high)  # 1e-3: the arithmetic mean would be ~0.05
    assert statistics.median(draws) == pytest.approx(geometric_mean, rel=0.01)
    assert sum(v < 1e-4 for v in draws) == pytest.approx(500, abs=2)  # one decade of four: a quarter


# --- study files from before distributions keep their ids -------------------------------------
#
# The ids below were computed by the committed code before issue 16 (shared/study.py at HEAD,
# 3f49be4) from these very files: a study and its jobs must never change id, or resubmitting an
# old study would run it again.

OLD_STUDIES: dict[str, tuple[dict[str, Any], str, list[str]]] = {
    "grid": (
        {"name": "flowers-arch-opt", "dataset": "data/flowers", "image_size": 128, "validation_split": 0.2, "seed": 7,
         "search": {"method": "grid"},
         "parameters": {"architecture": ["benchmark", "mobilenet_v2"], "weights": ["imagenet"],
                        "optimizer": [{"name": "adam"},
                                      {"name": "sgd", "learning_rate": [0.01, 0.001], "momentum": [0.0, 0.9]}],
                        "batch_size": [32], "data_fraction": [1.0]},
         "training": {"epochs": 10, "early_stopping": {"monitor": "val_accuracy", "patience": 3}}},
        "flowers-arch-opt-c32733a7",
        ["ccc91dcea022", "f091a8dd706f", "39c395816103", "c02d8545c592", "1c9088e47225", "2b7604538b2d",
         "7ffcd39d06f8", "2eec0f56265c", "d7dd07ab2ee0", "bb8bbdf54ced"],
    ),
    "random-count": (
        {"name": "old-random", "dataset": "/data/flowers", "image_size": 96, "seed": 3,
         "search": {"method": "random", "count": 5, "seed": 11},
         "parameters": {"architecture": ["benchmark", "mobilenet_v2", "resnet50"], "weights": ["imagenet", None],
                        "optimizer": [{"name": "adam", "learning_rate": [0.001, 0.0001]},
                                      {"name": "sgd", "learning_rate": [0.1, 0.01], "momentum": [0.9]}],
                        "batch_size": [16, 32], "data_fraction": [0.5, 1.0], "augmentation": [False, True]},
         "head": {"units": 64, "dropout": 0.25},
         "training": {"epochs": 3, "repeats": 2}, "finetune": {"top": 2}, "evaluate": {"top": 1}},
        "old-random-f80f4f41",
        ["6776de997280", "a28b9e27a14f", "dea95e303fc2", "a8f05d649bdf", "6823bcaabfab", "fb58997aad8d",
         "147c172453b8", "e851a69bb501", "0f41c6f28c5f", "1a33f6f285fd"],
    ),
    "random-fraction": (
        {"name": "old-fraction", "dataset": "/data/flowers", "image_size": 64,
         "search": {"method": "random", "fraction": 0.5, "seed": 2},
         "parameters": {"architecture": ["benchmark"], "weights": [None],
                        "optimizer": [{"name": "rmsprop", "learning_rate": [0.01, 0.001, 0.0001]}],
                        "batch_size": [8, 16], "data_fraction": [1.0]},
         "training": {"epochs": 2}},
        "old-fraction-824e8af4",
        ["d016ef02a0e5", "ac82833011b0", "134b03d2fdc1"],
    ),
}


@pytest.mark.parametrize("name", sorted(OLD_STUDIES))
def test_an_old_study_file_keeps_its_study_id_and_job_ids(name):
    data, study_id, job_ids = OLD_STUDIES[name]
    spec = parse_study(json.dumps(data))
    assert spec.study_id == study_id
    assert [job_id for job_id, _ in expand(spec)] == job_ids
    assert [job_id for job_id, _ in initial_jobs(spec)] == job_ids  # what `submit study` enqueues
    assert all(job.trial is None for _, job in initial_jobs(spec))


@pytest.mark.parametrize("name", sorted(OLD_STUDIES))
def test_an_old_study_file_has_none_of_the_new_fields_in_its_canonical_form(name):
    canonical = json.loads(parse_study(json.dumps(OLD_STUDIES[name][0])).canonical_json())
    assert "budget" not in canonical and "parallel" not in canonical["search"]
    assert "trial" not in json.dumps(canonical)


def test_head_lists_of_one_value_train_what_the_fixed_values_train():
    fixed, _, _ = OLD_STUDIES["random-count"]
    listed = {**fixed, "head": {"units": [64], "dropout": [0.25]}}
    jobs = [job for _, job in expand(parse_study(json.dumps(listed)))]
    assert jobs == [job for _, job in expand(parse_study(json.dumps(fixed)))]


def test_a_sampled_study_round_trips_through_its_stored_json():
    spec = parse_study(json.dumps(document((BATCH, dist("int_uniform", 16, 64, step=16)), ("budget", {"usd": 3.0}))))
    again = StudySpec.model_validate(spec.model_dump(mode="json"))  # what advance_study reads back
    assert again == spec and again.study_id == spec.study_id
