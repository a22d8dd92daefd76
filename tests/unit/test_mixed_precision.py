"""`"training": {"mixed_precision": true}`: Keras's mixed_float16 policy, checked on CPU with real
tiny models (float16 runs on CPU too, slowly; what is checked is the policy, not the speed).

The study field and the job field are left out of ids while off, so older studies keep theirs.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import keras
import pytest

from shared.errors import BadInputError, PermanentError
from shared.jobs import JobMessage, parse_message
from shared.study import expand, parse_study
from tests.training_support import StopInEpoch, context, tiny_dataset, tiny_spec  # noqa: F401 (fixture)
from worker.job import EpochReport, JobResult
from worker.training import run_job
from worker.training.models import load_model

EXAMPLE = json.loads((Path(__file__).parents[2] / "examples" / "sweep.json").read_text())
# examples/sweep.json's ids before the field existed (computed from the tree before this change).
EXAMPLE_STUDY_ID = "flowers-arch-opt-c32733a7"
EXAMPLE_FIRST_JOB_ID = "ccc91dcea022"

MIXED = tiny_spec(training={"epochs": 2, "mixed_precision": True})


def _study(training: dict[str, object]) -> dict[str, object]:
    data = copy.deepcopy(EXAMPLE)
    data["training"] = {**data.get("training", {}), **training}
    return data


def test_a_study_without_the_field_or_with_it_off_keeps_its_ids():
    for data in (EXAMPLE, _study({"mixed_precision": False})):
        spec = parse_study(json.dumps(data))
        assert spec.study_id == EXAMPLE_STUDY_ID and "mixed_precision" not in spec.canonical_json()
        job_id, job = next(expand(spec))
        assert job_id == EXAMPLE_FIRST_JOB_ID and job.training.mixed_precision is False


def test_the_field_reaches_every_job_and_round_trips_through_a_message():
    spec = parse_study(json.dumps(_study({"mixed_precision": True})))
    assert spec.training.mixed_precision is True and spec.study_id != EXAMPLE_STUDY_ID
    jobs = list(expand(spec))
    assert jobs and all(job.training.mixed_precision for _, job in jobs)
    job_id, job = jobs[0]
    message = JobMessage(study_id=spec.study_id, job_id=job_id, spec=job)
    assert parse_message(message.to_body()).spec == job
    assert '"mixed_precision":true' in job.canonical_json()


def test_a_value_that_is_not_a_boolean_is_refused_naming_its_path():
    with pytest.raises(BadInputError) as info:
        parse_study(json.dumps(_study({"mixed_precision": "sometimes"})))
    assert "training.mixed_precision" in str(info.value)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> tuple[Path, JobResult, list[EpochReport]]:
    """A mixed-precision benchmark job run for 2 epochs without interruption."""
    tmp = tmp_path_factory.mktemp("mixed")
    reports: list[EpochReport] = []
    result = run_job(context(tmp, MIXED, tiny_dataset, job_id="straight", on_epoch=reports.append))
    return tmp, result, reports


def test_a_mixed_precision_job_trains_in_float16_with_a_float32_softmax(straight):
    tmp, result, reports = straight
    assert result.outcome == "completed" and result.epochs_run == 2 and [r.epoch for r in reports] == [1, 2]
    for report in reports:
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(report.metrics)
        assert all(math.isfinite(value) for value in report.metrics.values())
    model = load_model(tmp / "artifacts" / result.checkpoint)  # safe mode, as every load
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(layer.compute_dtype == "float16" for layer in convolutions)
    assert all(layer.variable_dtype == "float32" for layer in convolutions)  # weights stay float32
    assert model.get_layer("predictions").compute_dtype == "float32" and model.output.dtype == "float32"
    # compile wrapped the optimizer itself (Keras 3's auto_scale_loss), and it survives the save.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_the_policy_does_not_leak_into_the_next_job_of_the_process(straight, tmp_path, tiny_dataset):
    assert keras.config.dtype_policy().name == "float32"
    plain = run_job(context(tmp_path, tiny_spec(training={"epochs": 1}), tiny_dataset, job_id="plain"))
    model = load_model(tmp_path / "artifacts" / plain.checkpoint)
    assert {layer.compute_dtype for layer in model.layers if layer.weights} == {"float32"}
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_a_resumed_mixed_precision_job_ends_with_the_uninterrupted_numbers(straight, tmp_path, tiny_dataset):
    _, _, straight_reports = straight
    stop = StopInEpoch(2)
    first = context(tmp_path, MIXED, tiny_dataset, **stop.fields())
    assert run_job(first).outcome == "stopped" and [r.epoch for r in stop.reports] == [1]
    second_reports: list[EpochReport] = []
    resumed = run_job(context(tmp_path, MIXED, tiny_dataset, artifacts=first.artifacts, work_dir=tmp_path / "host-2",
                              on_epoch=second_reports.append, attempt=2, state_key=stop.reports[-1].state_key))
    assert resumed.outcome == "completed" and [r.epoch for r in second_reports] == [2]
    for ours, theirs in zip(stop.reports + second_reports, straight_reports):
        for name in ("loss", "val_loss", "accuracy", "val_accuracy"):
            assert ours.metrics[name] == pytest.approx(theirs.metrics[name], abs=1e-4), name
    assert keras.config.dtype_policy().name == "float32"


def test_a_mixed_precision_job_that_fails_while_building_restores_the_policy(tmp_path, tiny_dataset):
    spec = tiny_spec(model={"weights": "weights/missing.weights.h5"}, training={"mixed_precision": True})
    with pytest.raises(PermanentError, match="does not exist"):
        run_job(context(tmp_path, spec, tiny_dataset))
    assert keras.config.dtype_policy().name == "float32"
