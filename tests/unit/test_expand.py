"""Expansion: deterministic ids, grid arithmetic, seeded random subsets, repeats, and a grid
whose every point is a distinct job (the benchmark CNN's weights, values listed twice)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.errors import BadInputError
from shared.study import MAX_OPTIMIZER_ENTRIES, expand, grid_size, job_count, parse_study
from submitter.cli import app
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


# --- every grid point is a distinct job ---


def several_weights(**changes: object) -> dict:
    """The example with two weights: mobilenet_v2 takes both, the benchmark CNN neither (5 optimizers)."""
    data = study(**changes)
    data["parameters"]["weights"] = ["imagenet", None]
    return data


def ids(data: dict) -> list[str]:
    return [job_id for job_id, _ in expand(parse_study(json.dumps(data)))]


def test_the_benchmark_takes_no_weights_so_several_weights_repeat_none_of_its_jobs():
    spec = parse_study(json.dumps(several_weights()))
    jobs = list(expand(spec))
    assert len(jobs) == 5 + 2 * 5 and len({job_id for job_id, _ in jobs}) == 15
    assert grid_size(spec) == job_count(spec) == 15
    assert {s.model.weights for _, s in jobs if s.model.architecture == "benchmark"} == {None}
    assert {s.model.weights for _, s in jobs if s.model.architecture == "mobilenet_v2"} == {"imagenet", None}


def test_dry_run_and_submit_count_each_job_once(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTSWEEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(several_weights(dataset=str(tiny_dataset), image_size=32)))
    dry = CliRunner().invoke(app, ["study", str(path), "--dry-run", "--format", "json"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["job_count"] == len(plan["jobs"]) == len({job["job_id"] for job in plan["jobs"]}) == 15
    assert plan["estimate"]["jobs"] == 15
    done = CliRunner().invoke(app, ["study", str(path), "--format", "json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert (report["jobs"], report["created"], report["existing"], report["sent"]) == (15, 15, 0, 15)
    backend = open_local(BackendConfig(home=tmp_path / "home"))
    assert len(backend.store.list_jobs(plan["study_id"])) == 15 and backend.queue.counts().visible == 15
    assert backend.store.get_study(plan["study_id"]).job_count == 15


def test_a_random_subset_of_such_a_grid_is_distinct_and_reproducible():
    for search in ({"method": "random", "count": 12, "seed": 3}, {"method": "random", "fraction": 0.8, "seed": 3}):
        runs = [ids(several_weights(search=search)) for _ in range(3)]
        assert len(runs[0]) == len(set(runs[0])) == 12 and runs[0] == runs[1] == runs[2]
        assert job_count(parse_study(json.dumps(several_weights(search=search)))) == 12
    everything = parse_study(json.dumps(several_weights(search={"method": "random", "count": 1000, "seed": 3})))
    grid = parse_study(json.dumps(several_weights()))
    specs = sorted(spec.canonical_json() for _, spec in expand(everything))
    assert specs == sorted(spec.canonical_json() for _, spec in expand(grid))  # more than there is: each job once


def test_values_listed_twice_or_spelt_twice_make_one_job():
    data = study()
    default_augmentation = {"rotation": 0.05, "shift": 0.1, "zoom": 0.1, "horizontal_flip": True}  # what `true` means
    data["parameters"].update(
        architecture=["mobilenet_v2", "mobilenet_v2"], weights=["imagenet", "imagenet"], batch_size=[32, 32],
        data_fraction=[1.0, 1.00], optimizer=[{"name": "sgd", "learning_rate": [0.01, 1e-2]}],
        augmentation=[False, {"rotation": 0.0}, True, default_augmentation],
    )
    spec = parse_study(json.dumps(data))
    jobs = ids(data)
    assert len(jobs) == len(set(jobs)) == grid_size(spec) == job_count(spec) == 2  # no augmentation, the default one


def test_optimizer_entries_that_share_a_configuration_are_refused():
    data = study()
    data["parameters"]["optimizer"] = [{"name": "sgd"}, {"name": "adam"}, {"name": "sgd", "momentum": [0.0, 0.9]}]
    with pytest.raises(BadInputError) as info:
        parse_study(json.dumps(data))
    assert str(info.value).startswith("parameters.optimizer[2]: gives an optimizer that parameters.optimizer[0] gives")
    assert "momentum=0.0" in str(info.value) and "\n" not in str(info.value)
    data["parameters"]["optimizer"][2]["momentum"] = [0.9]  # the same name, no configuration in common: fine
    assert len(ids(data)) == 2 * 3


def test_more_optimizer_entries_than_the_cap_are_refused_before_any_pair_is_compared():
    data = study(search={"method": "random", "count": 3, "seed": 0})
    entries = [{"name": "sgd", "learning_rate": (i + 1) * 1e-6} for i in range(MAX_OPTIMIZER_ENTRIES)]
    data["parameters"]["optimizer"] = entries
    assert job_count(parse_study(json.dumps(data))) == 3  # at the cap: 100 distinct entries, compared pairwise
    data["parameters"]["optimizer"] *= 200  # 20 000 entries, all overlapping: 2e8 pairs if they were compared
    with pytest.raises(BadInputError, match=f"^parameters.optimizer: .*at most {MAX_OPTIMIZER_ENTRIES} items"):
        parse_study(json.dumps(data))
