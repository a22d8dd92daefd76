"""The demo's study (examples/sweep.json): one grid crosses the benchmark CNN with a transfer
architecture, so `weights` (a pretrained base's) must leave the benchmark, which has no base,
starting from scratch, whether they are ImageNet's or the demo's calibrated file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.study import expand, parse_study

EXAMPLE = Path(__file__).parents[2] / "examples" / "sweep.json"


@pytest.mark.parametrize("weights", ["imagenet", "weights/mobilenet_v2-128-calibrated.weights.h5"])
def test_the_benchmark_takes_no_weights_the_transfer_model_takes_the_studys(weights: str) -> None:
    study = json.loads(EXAMPLE.read_text())
    study["parameters"]["weights"] = [weights]
    jobs = [job for _, job in expand(parse_study(json.dumps(study), "sweep.json"))]
    assert len(jobs) == 10
    assert {job.model.weights for job in jobs if job.model.architecture == "benchmark"} == {None}
    assert {job.model.weights for job in jobs if job.model.architecture == "mobilenet_v2"} == {weights}


def test_the_example_asks_for_imagenet_weights() -> None:
    assert json.loads(EXAMPLE.read_text())["parameters"]["weights"] == ["imagenet"]
