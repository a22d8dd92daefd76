"""Expansion: deterministic ids, grid arithmetic, seeded random subsets, repeats."""

from __future__ import annotations

import json

from shared.study import expand, grid_size, parse_study
from tests.unit.test_study import EXAMPLE, study

ARCHITECTURES = ["benchmark", "xception", "vgg16", "vgg19", "resnet50", "inception_v3",
                 "inception_resnet_v2", "mobilenet", "mobilenet_v2", "densenet121"]
OPTIMIZERS = ["sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamax", "nadam"]


def test_same_study_gives_same_ids_and_different_studies_differ():
    first = [job_id for job_id, _ in expand(parse_study(json.dumps(EXAMPLE)))]
    second = [job_id for job_id, _ in expand(parse_study(json.dumps(EXAMPLE)))]
    other = [job_id for job_id, _ in expand(parse_study(json.dumps(study(seed=8))))]
    assert first == second and len(set(first)) == 10
    assert not set(first) & set(other)


def test_optimizer_entries_expand_their_own_lists():
    jobs = [spec for _, spec in expand(parse_study(json.dumps(EXAMPLE)))]
    sgd = sorted((j.optimizer.learning_rate, j.optimizer.momentum) for j in jobs if j.optimizer.name == "sgd")
    assert sgd == sorted([(0.01, 0.0), (0.01, 0.9), (0.001, 0.0), (0.001, 0.9)] * 2)
    assert {j.model.architecture for j in jobs} == {"benchmark", "mobilenet_v2"}


def test_ten_architectures_by_seven_optimizers_is_seventy_jobs():
    data = study(image_size=299)
    data["parameters"]["architecture"] = ARCHITECTURES
    data["parameters"]["optimizer"] = [{"name": name} for name in OPTIMIZERS]
    jobs = list(expand(parse_study(json.dumps(data))))
    assert len(jobs) == 70 and len({job_id for job_id, _ in jobs}) == 70
    assert {(s.model.architecture, s.optimizer.name) for _, s in jobs} == {(a, o) for a in ARCHITECTURES for o in OPTIMIZERS}


def rmsprop_grid(seed: int) -> dict:
    data = study(search={"method": "random", "fraction": 0.2, "seed": seed})
    data["parameters"]["architecture"] = ["mobilenet_v2"]
    data["parameters"]["optimizer"] = [{
        "name": "rmsprop",
        "learning_rate": [0.1, 0.01, 0.001, 0.0001],
        "rho": [0.8, 0.9, 0.95],
        "momentum": [0.0, 0.5, 0.9],
        "epsilon": [1e-7, 1e-6, 1e-5, 1e-4],
    }]
    return data


def test_random_twenty_percent_of_144_picks_the_same_28_every_run():
    spec = parse_study(json.dumps(rmsprop_grid(42)))
    assert grid_size(spec) == 144
    runs = [[job_id for job_id, _ in expand(parse_study(json.dumps(rmsprop_grid(42))))] for _ in range(3)]
    assert len(runs[0]) == 28 and runs[0] == runs[1] == runs[2]
    other_seed = [job_id for job_id, _ in expand(parse_study(json.dumps(rmsprop_grid(43))))]
    assert len(other_seed) == 28 and other_seed != runs[0]


def test_random_count_and_repeats():
    data = study(search={"method": "random", "count": 3, "seed": 1})
    data["training"]["repeats"] = 2
    jobs = [spec for _, spec in expand(parse_study(json.dumps(data)))]
    assert len(jobs) == 6
    assert sorted(j.training.seed for j in jobs) == [7, 7, 7, 8, 8, 8]
    assert len({j.config_key() for j in jobs}) == 3  # repeats share their configuration


def test_huge_grid_is_sized_without_expanding():
    data = study(max_jobs=100_000, search={"method": "random", "count": 5, "seed": 0})
    data["parameters"]["batch_size"] = list(range(1, 4001))
    data["parameters"]["data_fraction"] = [round(0.01 * i, 2) for i in range(1, 101)]
    spec = parse_study(json.dumps(data))
    assert grid_size(spec) == 2 * 5 * 4000 * 100
    assert len(list(expand(spec))) == 5
