"""Per-example results (issue 17): a completed train job writes which validation images its best
epoch got right (`val_correct.bin`), an evaluation which test images (`test_correct.bin`).

Each file is checked against a recomputation that does not go through the writer: the published
`best.keras` predicting the validation images itself, the recorded val_accuracy, the predictions
CSV row by row, and the examples identity rebuilt from the manifest's paths.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from shared.backends.local import LocalArtifactStore
from shared.manifest import Manifest
from shared.stats import decode_correct, examples_id
from tests.training_support import context, tiny_dataset, tiny_spec  # noqa: F401 (fixture)
from worker.training import data, run_job
from worker.training.models import load_model

pytestmark = pytest.mark.xdist_group("per_example")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset, store):
    """Three completed jobs: the benchmark CNN (seed 3), a mobilenet head on cached features
    (seed 3) and the benchmark again with seed 4 (another validation split)."""
    specs = {
        "cnn": tiny_spec(training={"epochs": 2}),
        "head": tiny_spec("mobilenet", model={"head": {"units": 16}}, training={"epochs": 2}),
        "cnn-seed4": tiny_spec(training={"epochs": 1, "seed": 4}),
    }
    tmp = tmp_path_factory.mktemp("jobs")
    return {name: (spec, run_job(context(tmp, spec, tiny_dataset, job_id=name, artifacts=store)))
            for name, spec in specs.items()}


def validation_paths(manifest: Manifest, validation_split: float, seed: int) -> tuple[list[str], np.ndarray]:
    """The validation files' manifest paths in validation order, and their labels."""
    files = data.split_files(manifest, "train")
    _, val_idx = data.validation_split(files.labels, validation_split, seed)
    return [files.paths[i] for i in val_idx], files.labels[val_idx]


def test_a_train_job_writes_which_validation_images_its_best_model_gets_right(tiny_dataset, store, trained, tmp_path):
    spec, result = trained["cnn"]
    key = result.artifacts["val_correct"]
    assert key == "studies/study-1/jobs/cnn/attempt-1/val_correct.bin"  # under the attempt's folder, beside best.keras
    results = decode_correct(store.get_bytes(key))
    manifest = data.load_manifest(tiny_dataset)
    paths, labels = validation_paths(manifest, spec.validation_split, spec.training.seed)
    assert results.examples_id == examples_id(paths)
    assert results.correct.size == len(paths) == result.metrics["val_examples"]
    assert results.correct.mean() == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)

    # the published model, predicting the validation images on its own, gets the same ones right
    model = load_model(store.root / result.checkpoint)
    files = data.split_files(manifest, "train")
    images = data.load_images(tiny_dataset, manifest, "train", spec.model.image_size, tmp_path / "cache")
    rows = [files.paths.index(path) for path in paths]
    predicted = model.predict(np.asarray(images[rows]), batch_size=spec.training.batch_size, verbose=0).argmax(axis=1)
    np.testing.assert_array_equal(results.correct, predicted == labels)


def test_a_head_on_cached_features_writes_its_file_from_the_features(store, trained):
    spec, result = trained["head"]
    assert "feature_cache" in result.artifacts
    results = decode_correct(store.get_bytes(result.artifacts["val_correct"]))
    assert results.correct.size == result.metrics["val_examples"]
    assert results.correct.mean() == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)


def test_jobs_with_one_seed_share_their_validation_examples_and_another_seed_does_not(store, trained):
    identity = {name: decode_correct(store.get_bytes(r.artifacts["val_correct"])).examples_id
                for name, (_, r) in trained.items()}
    assert identity["cnn"] == identity["head"]  # another architecture, the same examples: comparable
    assert identity["cnn-seed4"] != identity["cnn"]  # another split: never paired


def test_an_evaluation_writes_which_test_images_it_gets_right_in_the_csv_order(tmp_path, tiny_dataset, store, trained):
    _, parent = trained["cnn"]
    spec = tiny_spec(kind="evaluate", parent_job_id="cnn")
    ctx = context(tmp_path, spec, tiny_dataset, job_id="ev", artifacts=store, parent_checkpoint=parent.checkpoint)
    result = run_job(ctx)
    assert result.artifacts["test_correct"] == "studies/study-1/jobs/ev/attempt-1/test_correct.bin"
    rows = list(csv.DictReader(io.StringIO(store.get_bytes(result.artifacts["predictions_csv"]).decode())))
    results = decode_correct(store.get_bytes(result.artifacts["test_correct"]))
    assert results.examples_id == examples_id([row["file"] for row in rows])
    assert results.correct.tolist() == [row["true_class"] == row["predicted_class"] for row in rows]
    assert result.metrics["test_examples"] == len(rows) == len(data.load_manifest(tiny_dataset).split("test"))
    assert result.metrics["test_accuracy"] == pytest.approx(results.correct.mean())
