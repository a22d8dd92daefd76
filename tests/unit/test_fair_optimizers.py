"""Keras 2 defaults on request: a study with `"optimizer_defaults": "keras2"` trains with the 2019
defaults for every optimizer parameter it does not set; Keras 3's stay the default."""

from __future__ import annotations

import json

import keras
import pytest

from shared.errors import BadInputError
from shared.optimizers import KERAS2_DEFAULTS
from shared.study import expand, parse_study
from worker.training.optimizers import make_optimizer

OPTIMIZERS = [
    {"name": "adadelta"},
    {"name": "adagrad"},
    {"name": "adamax"},
    {"name": "nadam", "learning_rate": 0.01},  # set by the study: kept
    {"name": "sgd", "momentum": 0.9},
    {"name": "adamw"},  # Keras 2 had none: Keras 3's defaults
]


def study(**fields) -> dict:
    return {"name": "replay", "dataset": "datasets/d", "image_size": 32,
            "parameters": {"architecture": "benchmark", "optimizer": OPTIMIZERS}, **fields}


def jobs_by_optimizer(**fields) -> dict:
    return {spec.optimizer.name: spec.optimizer for _, spec in expand(parse_study(json.dumps(study(**fields))))}


def test_a_keras2_study_builds_its_adadelta_job_with_learning_rate_one():
    optimizers = jobs_by_optimizer(optimizer_defaults="keras2")
    adadelta = make_optimizer(optimizers["adadelta"])
    assert isinstance(adadelta, keras.optimizers.Adadelta)
    assert float(keras.ops.convert_to_numpy(adadelta.learning_rate)) == pytest.approx(1.0)
    assert adadelta.rho == pytest.approx(0.95) and adadelta.epsilon == pytest.approx(1e-7)
    adagrad = make_optimizer(optimizers["adagrad"])
    assert float(keras.ops.convert_to_numpy(adagrad.learning_rate)) == pytest.approx(0.01)
    assert adagrad.initial_accumulator_value == 0.0  # Keras 2's accumulators start at zero
    assert optimizers["adamax"].learning_rate == 0.002
    assert optimizers["nadam"].learning_rate == 0.01  # what the study set wins
    assert (optimizers["sgd"].learning_rate, optimizers["sgd"].momentum) == (0.01, 0.9)
    assert optimizers["adamw"].learning_rate == 0.001


def test_keras3_defaults_stay_the_default_and_keep_the_study_id():
    default = parse_study(json.dumps(study()))
    optimizers = jobs_by_optimizer()
    assert default.optimizer_defaults == "keras3"
    assert optimizers["adadelta"].learning_rate == 0.001 and optimizers["adagrad"].initial_accumulator_value == 0.1
    assert optimizers["adamax"].learning_rate == optimizers["nadam"].learning_rate / 10 == 0.001
    explicit = parse_study(json.dumps(study(optimizer_defaults="keras3")))
    keras2 = parse_study(json.dumps(study(optimizer_defaults="keras2")))
    assert explicit.study_id == default.study_id != keras2.study_id  # a study written before the field keeps its id
    assert "optimizer_defaults" not in default.canonical_json()


def test_the_keras2_table_only_names_parameters_the_specs_have():
    from shared.optimizers import CONCRETE_CLASSES

    for name, values in KERAS2_DEFAULTS.items():
        assert set(values) <= set(CONCRETE_CLASSES[name].model_fields), name
        CONCRETE_CLASSES[name](**values)  # and values the specs accept


def test_an_unknown_defaults_name_is_refused_with_its_path():
    with pytest.raises(BadInputError) as refused:
        parse_study(json.dumps(study(optimizer_defaults="keras1")))
    assert refused.value.path == "optimizer_defaults"


def test_entries_that_coincide_under_keras2_defaults_are_one_configuration():
    entries = [{"name": "adadelta"}, {"name": "adadelta", "learning_rate": 1.0}]
    data = study(optimizer_defaults="keras2")
    data["parameters"]["optimizer"] = entries
    with pytest.raises(BadInputError, match="list each configuration once"):
        parse_study(json.dumps(data))
    data["optimizer_defaults"] = "keras3"
    assert len(list(expand(parse_study(json.dumps(data))))) == 2
