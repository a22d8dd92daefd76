"""A real study on the embedded backend: two worker processes train real (tiny) Keras models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import env_for, start_workers, submit, submit_json, wait_all

pytestmark = pytest.mark.slow


def write_study(path: Path, dataset: Path, **extra: object) -> Path:
    study = {
        "name": "e2e", "dataset": str(dataset), "image_size": 32, "validation_split": 0.25, "seed": 3,
        "parameters": {
            "architecture": ["benchmark", "mobilenet_v2"], "weights": [None],
            "optimizer": [{"name": "adam"}, {"name": "sgd", "learning_rate": [0.05, 0.01], "momentum": 0.9}],
            "batch_size": [8],
        },
        "training": {"epochs": 2, "early_stopping": {"patience": 2}},
        "head": {"units": 16},
        **extra,
    }
    path.write_text(json.dumps(study))
    return path


def test_two_workers_run_a_study_to_one_result_per_job(tmp_path, tiny_dataset):
    env = env_for(tmp_path / "home")
    study_file = write_study(tmp_path / "sweep.json", tiny_dataset)
    submitted = submit_json(env, "study", str(study_file))
    assert submitted["created"] == 6
    codes = wait_all(start_workers(env, 2, "--until-empty", log_dir=tmp_path / "logs"), timeout_s=600)
    assert codes == [0, 0], [p.read_text()[-3000:] for p in (tmp_path / "logs").iterdir()]

    board = submit_json(env, "leaderboard")
    rows = board["rows"]
    assert len(rows) == 6 and {r["status"] for r in rows} == {"SUCCEEDED"}
    assert len({r["job_id"] for r in rows}) == 6
    scores = [r["val_accuracy"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    for row in rows:
        # records hold store keys; the display URI of the embedded store is the file itself
        assert row["checkpoint"].startswith("studies/") and row["checkpoint"].endswith("best.keras")
        assert Path(row["checkpoint_uri"]).is_file()
        assert row["epochs_run"] >= 1 and row["train_seconds"] > 0 and row["cost_usd"] > 0
        assert row["total_params"] > row["trainable_params"] or row["architecture"] == "benchmark"
    logs = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert logs.count("claimed train") == 6  # no job ran twice
    status = submit_json(env, "status")
    assert status["counts"]["SUCCEEDED"] == 6 and status["finished"] and status["cost_usd"] > 0


def test_study_fine_tunes_its_best_and_evaluates_it_automatically(tmp_path, tiny_dataset):
    env = env_for(tmp_path / "home")
    study_file = write_study(
        tmp_path / "sweep.json", tiny_dataset,
        finetune={"top": 1, "epochs": 1, "unfreeze_from": -5}, evaluate={"top": 1},
    )
    data = json.loads(study_file.read_text())
    data["parameters"]["architecture"] = ["mobilenet_v2"]
    study_file.write_text(json.dumps(data))
    submit(env, "study", str(study_file))
    codes = wait_all(start_workers(env, 2, "--until-empty", log_dir=tmp_path / "logs"), timeout_s=600)
    assert codes == [0, 0]

    rows = submit_json(env, "leaderboard")["rows"]
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["evaluate", "finetune", "train", "train", "train"], rows
    assert {r["status"] for r in rows} == {"SUCCEEDED"}
    finetuned = next(r for r in rows if r["kind"] == "finetune")
    best_train = max((r for r in rows if r["kind"] == "train"), key=lambda r: r["val_accuracy"])
    assert finetuned["parent_job_id"] == best_train["job_id"]
    evaluation = next(r for r in rows if r["kind"] == "evaluate")
    shown = submit_json(env, "show", evaluation["job_id"])
    assert shown["job"]["artifacts"]["predictions_csv"].startswith("studies/")  # a store key
    with open(shown["artifact_uris"]["predictions_csv"]) as handle:
        predictions = list(csv.DictReader(handle))
    matching = sum(p["true_class"] == p["predicted_class"] for p in predictions)
    assert len(predictions) == 9  # the test split: 3 classes x 3 images
    assert evaluation["test_accuracy"] == pytest.approx(matching / len(predictions))
