"""The study file schema: accepted input, and every kind of bad input named by its JSON path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from shared.errors import BadInputError
from shared.jobs import JobMessage, parse_message
from shared.limits import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_HEAD_UNITS,
    MAX_IMAGE_SIZE,
    MAX_REPEATS,
    MAX_SEED,
    MAX_TOP,
)
from shared.study import GRID_CAP, expand, grid_size, job_count, parse_study

EXAMPLE = json.loads((Path(__file__).parents[2] / "examples" / "sweep.json").read_text())


def study(**changes: object) -> dict:
    data = copy.deepcopy(EXAMPLE)
    data.update(changes)
    return data


def parse(data: dict):
    return parse_study(json.dumps(data))


def error_of(data: dict | str) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        parse_study(data if isinstance(data, str) else json.dumps(data))
    return info.value


def test_the_example_is_accepted_as_written():
    spec = parse(EXAMPLE)
    assert spec.name == "flowers-arch-opt" and spec.image_size == 128
    assert grid_size(spec) == 2 * 5 and job_count(spec) == 10


def test_invalid_json_names_line_and_column():
    error = error_of('{"name": "x",\n  "dataset": }')
    assert "line 2 column" in str(error) and str(error).count("\n") == 0


def test_unknown_top_level_field():
    assert str(error_of(study(epochs=3))).startswith("epochs: unknown field")


def test_unknown_field_deep_inside():
    data = study()
    data["training"]["early_stopping"]["patiense"] = 2
    assert error_of(data).path == "training.early_stopping.patiense"


def test_unknown_architecture_names_its_index():
    data = study()
    data["parameters"]["architecture"] = ["benchmark", "alexnet"]
    error = error_of(data)
    assert error.path == "parameters.architecture[1]" and "alexnet" in str(error)


def test_unknown_optimizer_names_its_entry():
    data = study()
    data["parameters"]["optimizer"].append({"name": "lion"})
    assert error_of(data).path == "parameters.optimizer[2].name"


def test_parameter_the_optimizer_does_not_take():
    data = study()
    data["parameters"]["optimizer"][1]["beta_1"] = 0.9  # sgd has no beta_1
    assert error_of(data).path == "parameters.optimizer[1].beta_1"


def test_negative_learning_rate_in_a_list():
    data = study()
    data["parameters"]["optimizer"][1]["learning_rate"] = [0.01, -0.1]
    error = error_of(data)
    assert error.path == "parameters.optimizer[1].learning_rate[1]" and "greater than 0" in str(error)


def test_image_size_below_architecture_minimum():
    data = study(image_size=64)
    data["parameters"]["architecture"] = ["benchmark", "inception_v3"]
    error = error_of(data)
    assert error.path == "parameters.architecture[1]" and "minimum of 75" in str(error)


def test_fixed_size_for_imagenet_weights():
    data = study(image_size=128)
    data["parameters"]["architecture"] = ["nasnet_mobile"]
    data["parameters"]["weights"] = ["imagenet"]
    assert "needs image_size 224" in str(error_of(data))


def test_grid_above_the_cap_is_refused_before_expansion():
    data = study()
    data["parameters"]["batch_size"] = list(range(1, 1001))
    data["parameters"]["data_fraction"] = [0.1 * i for i in range(1, 11)]
    error = error_of(data)
    assert error.path == "parameters" and "100000 jobs" in str(error)


def test_max_jobs_cannot_exceed_the_hard_cap():
    assert error_of(study(max_jobs=GRID_CAP + 1)).path == "max_jobs"


def test_random_search_needs_exactly_one_size():
    assert error_of(study(search={"method": "random", "seed": 1})).path == "search"
    assert error_of(study(search={"method": "random", "fraction": 0.5, "count": 2})).path == "search"


def test_scalars_are_accepted_where_lists_are():
    data = study()
    data["parameters"]["batch_size"] = 16
    assert parse(data).parameters.batch_size == [16]


def test_a_stored_study_validates_again_to_the_same_spec():
    data = study(finetune={"top": 2}, evaluate={"top": 1})
    spec = parse(data)
    again = type(spec).model_validate(spec.model_dump(mode="json"))
    assert again == spec and again.study_id == spec.study_id


# --- caps: one constant each, enforced at the study file and again at the message -------------

CAPS = [
    ("image_size", lambda d, v: d.update(image_size=v), MAX_IMAGE_SIZE),
    ("parameters.image_size[0]", lambda d, v: d["parameters"].update(image_size=[v]), MAX_IMAGE_SIZE),
    ("parameters.batch_size[0]", lambda d, v: d["parameters"].update(batch_size=[v]), MAX_BATCH_SIZE),
    ("training.epochs", lambda d, v: d["training"].update(epochs=v), MAX_EPOCHS),
    ("training.early_stopping.patience", lambda d, v: d["training"]["early_stopping"].update(patience=v), MAX_EPOCHS),
    ("training.repeats", lambda d, v: d["training"].update(repeats=v), MAX_REPEATS),
    ("head.units", lambda d, v: d.update(head={"units": v}), MAX_HEAD_UNITS),
    ("finetune.epochs", lambda d, v: d.update(finetune={"epochs": v}), MAX_EPOCHS),
    ("finetune.top", lambda d, v: d.update(finetune={"top": v}), MAX_TOP),
    ("evaluate.top", lambda d, v: d.update(evaluate={"top": v}), MAX_TOP),
    ("seed", lambda d, v: d.update(seed=v), MAX_SEED),
    ("search.seed", lambda d, v: d.update(search={"method": "random", "count": 2, "seed": v}), MAX_SEED),
]


@pytest.mark.parametrize(("path", "put", "cap"), CAPS, ids=[c[0] for c in CAPS])
def test_each_cap_is_the_largest_value_a_study_may_give(path, put, cap):
    at_cap, above = study(), study()
    put(at_cap, cap)
    put(above, cap + 1)
    parse(at_cap)
    error = error_of(above)
    assert error.path == path and str(cap) in str(error)


def test_jobs_of_a_study_at_every_cap_pass_the_message_door():
    data = study(image_size=MAX_IMAGE_SIZE, seed=MAX_SEED, head={"units": MAX_HEAD_UNITS})
    data["parameters"]["batch_size"] = [MAX_BATCH_SIZE]
    data["training"].update(epochs=MAX_EPOCHS, repeats=MAX_REPEATS)
    spec = parse(data)
    jobs = list(expand(spec))
    assert len(jobs) == job_count(spec) == 10 * MAX_REPEATS
    for job_id, job in jobs[-MAX_REPEATS:]:  # the last configuration, every repeat (the largest seeds)
        message = parse_message(JobMessage(study_id=spec.study_id, job_id=job_id, spec=job).to_body())
        assert message.spec == job


def test_omitting_the_optimizer_means_adam():
    data = study()
    del data["parameters"]["optimizer"]
    assert [job.optimizer.name for _, job in expand(parse(data))] == ["adam", "adam"]


def test_discriminator_errors_name_the_field_the_user_wrote():
    error = error_of(study(search={"method": "magic"}))
    assert str(error) == "search.method: unknown method 'magic' (known: grid, random, sobol, tpe, asha)"
    data = study()
    data["parameters"]["optimizer"][0] = {"name": "lion"}
    assert str(error_of(data)).startswith("parameters.optimizer[0].name: unknown optimizer 'lion' (known: sgd,")
