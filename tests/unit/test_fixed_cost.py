"""A job's fixed cost (bench/fixed_cost.py): what keeps it low must not change what a job does.

A worker process keeps the bases of the feature-cache entries it used last, up to a bound on
their parameters (features.BaseCache): jobs that alternate between two entries assemble
best.keras without building either base again.
"""

from __future__ import annotations

import keras
from keras import layers

from shared.backends.local import LocalArtifactStore
from tests.training_support import context, tiny_dataset, tiny_spec  # noqa: F401 (fixture)
from worker.training import JobRunner
from worker.training.features import BaseCache


def dense(units: int) -> keras.Model:
    """A model of 4 * units + units parameters."""
    return keras.Sequential([keras.Input((4,)), layers.Dense(units)])


def test_the_base_cache_keeps_the_bases_used_last_up_to_its_parameter_bound():
    a, b, c, d = dense(10), dense(10), dense(10), dense(10)  # 50 parameters each
    bases = BaseCache(max_params=120)
    bases.remember("a", a)
    bases.remember("b", b)
    assert bases.get("a") is a and bases.get("b") is b  # 100 <= 120: both kept
    bases.remember("c", c)  # 150: the least recently used (a) goes
    assert bases.get("a") is None and bases.get("c") is c
    bases.get("b")  # used: c is now the least recently used
    bases.remember("d", d)
    assert (bases.get("b"), bases.get("c"), bases.get("d")) == (b, None, d)

    large = BaseCache(max_params=10)
    large.remember("a", a)
    assert large.get("a") is a  # the base used last stays, whatever its size
    large.remember("b", b)
    assert large.get("a") is None and large.get("b") is b


def test_jobs_alternating_between_two_entries_build_each_base_once(tmp_path, tiny_dataset):
    store = LocalArtifactStore(tmp_path / "artifacts")
    runner = JobRunner()  # one per worker process
    sgd = {"name": "sgd", "learning_rate": 0.05}

    def job(job_id: str, seed: int) -> tuple[str, keras.Model]:
        spec = tiny_spec("mobilenet", model={"head": {"units": 8}}, training={"epochs": 1, "seed": seed}, optimizer=sgd)
        result = runner(context(tmp_path, spec, tiny_dataset, job_id=job_id, artifacts=store))
        assert result.outcome == "completed" and result.checkpoint is not None
        key = result.artifacts["feature_cache"].rsplit("/", 1)[1]
        return key, runner.bases.get(key)

    first_key, first_base = job("a", seed=1)  # a random-init base's entry is named by its seed
    second_key, second_base = job("b", seed=2)
    assert first_key != second_key and first_base is not None and second_base is not first_base
    again_key, again_base = job("c", seed=1)  # entry 1 again: its base was kept, not built again
    assert again_key == first_key and again_base is first_base
    again_key, again_base = job("d", seed=2)
    assert again_key == second_key and again_base is second_base

