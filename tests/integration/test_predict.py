"""`submit export` and `submit predict` (which runs `worker predict` in a subprocess: the
submitter never imports TensorFlow). The slow test trains one real tiny job with a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.datasets import load_manifest
from PIL import Image

from shared.schemas import ExportDocument, PredictionDocument, ReportDocument
from submitter.cli import app
from submitter.report import build_report
from tests.e2e.conftest import env_for, start_workers, submit, submit_json, wait_all
from tests.integration.test_report import build_study
from worker.predict import classes_from

BIN = Path(sys.executable).parent


@pytest.fixture
def store_home(tmp_path, tiny_dataset, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SPOTSWEEP_HOME", str(home))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    return home


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_export_copies_the_checkpoint_with_the_class_names(tmp_path, tiny_dataset, store_home):
    backend, study_id = build_study(store_home, tiny_dataset, evaluate=True)
    records = backend.store.list_jobs(study_id)
    best = max((r for r in records if r.kind == "train" and r.metrics.val_accuracy is not None), key=lambda r: r.metrics.val_accuracy)
    result = invoke("export", best.job_id, "--out", str(tmp_path / "out" / "model.keras"), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = ExportDocument.model_validate_json(result.stdout)
    assert Path(doc.path).read_bytes() == backend.artifacts.get_bytes(best.checkpoint)
    names = json.loads(Path(doc.classes_file).read_text())
    assert names["classes"] == load_manifest(tiny_dataset).classes == doc.classes and names["image_size"] == 32
    assert classes_from(Path(doc.classes_file)) == doc.classes  # what `worker predict` reads beside the model

    evaluation = next(r for r in records if r.kind == "evaluate")  # an evaluate job exports its model
    into_dir = invoke("export", evaluation.job_id, "--out", str(tmp_path))
    assert into_dir.exit_code == 0 and (tmp_path / f"{evaluation.job_id}.keras").is_file()

    failed = next(r for r in records if r.status.value == "FAILED")
    assert invoke("export", failed.job_id).exit_code == 1  # no checkpoint
    assert invoke("export", "nope").exit_code == 2
    assert invoke("export", best.job_id, "--out", str(tmp_path / "model.h5")).exit_code == 2


def test_predict_errors_come_back_with_the_documented_codes(tmp_path, tiny_dataset, store_home):
    build_study(store_home, tiny_dataset, evaluate=False)
    image = next((tiny_dataset / "test").rglob("*.png"))
    unknown = invoke("predict", "nope", str(image))
    assert unknown.exit_code == 2 and "unknown job" in unknown.stderr
    assert invoke("predict", "nope", str(image), "--top", "0").exit_code == 2
    assert classes_from(tiny_dataset) == load_manifest(tiny_dataset).classes


@pytest.mark.slow
def test_train_export_and_predict_a_real_model(tmp_path, tiny_dataset):
    env = env_for(tmp_path / "home")
    study = tmp_path / "sweep.json"
    study.write_text(json.dumps({
        "name": "predict", "dataset": str(tiny_dataset), "image_size": 32, "validation_split": 0.25, "seed": 1,
        "parameters": {"architecture": ["benchmark"], "weights": [None], "optimizer": [{"name": "adam"}], "batch_size": [8]},
        "training": {"epochs": 2},
    }))
    submit(env, "study", str(study))
    codes = wait_all(start_workers(env, 1, "--until-empty", log_dir=tmp_path / "logs"), timeout_s=600)
    assert codes == [0], (tmp_path / "logs" / "worker-0.out").read_text()[-3000:]
    job_id = submit_json(env, "leaderboard")["rows"][0]["job_id"]
    classes = load_manifest(tiny_dataset).classes
    images = [str(next((tiny_dataset / "test" / name).glob("*.png"))) for name in classes[:2]]

    exported = ExportDocument.model_validate(submit_json(env, "export", job_id, "--out", str(tmp_path / "model.keras")))
    assert exported.classes == classes and Path(exported.path).stat().st_size > 10_000

    doc = PredictionDocument.model_validate(submit_json(env, "predict", job_id, *images, "--top", "3"))
    assert doc.job_id == job_id and doc.classes == classes and doc.image_size == 32 and doc.top == 3
    assert [p.image for p in doc.predictions] == images
    for prediction in doc.predictions:
        probabilities = [c.probability for c in prediction.top]
        assert len(prediction.top) == 3 and all(0.0 <= p <= 1.0 for p in probabilities)
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)  # 3 classes: top-3 is all of them
        assert {c.class_ for c in prediction.top} == set(classes)
    assert len(doc.rows) == 6

    # the report of the real study: its plots are valid PNGs, its heatmap the --matrix values
    report = ReportDocument.model_validate(submit_json(env, "report", "--out", str(tmp_path / "report")))
    assert {Path(f).name for f in report.files} >= {"learning_curves.png", "heatmap.png", "pareto_cost.png", "report.html"}
    for name in report.files:
        if name.endswith(".png"):
            with Image.open(name) as image:
                assert image.format == "PNG" and image.size[0] > 300
    grid = submit_json(env, "leaderboard", "--matrix", "architecture", "optimizer")["rows"]
    assert grid[0]["architecture"] == "benchmark" and 0 <= grid[0]["adam"] <= 1
    backend = open_local(BackendConfig(home=tmp_path / "home"))
    drawn = build_report(backend, backend.store.list_studies()[0].study_id, tmp_path / "again").data["heatmap"]
    assert drawn.loc["benchmark", "adam"] == pytest.approx(grid[0]["adam"], abs=1e-9)  # JSON keeps 10 digits
    page = Path(report.html).read_text()
    assert all(Path(f).name in page for f in report.files if f.endswith(".png"))

    # the exported file alone: `worker predict --model` finds the class names beside it
    alone = subprocess.run([str(BIN / "worker"), "predict", "--model", exported.path, "--top", "1", images[0]],
                           env=env, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    single = PredictionDocument.model_validate_json(alone.stdout)
    assert single.job_id is None and single.predictions[0].top[0].class_ == doc.predictions[0].top[0].class_
    assert single.predictions[0].top[0].probability == pytest.approx(doc.predictions[0].top[0].probability, abs=1e-5)
