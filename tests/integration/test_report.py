"""`submit report`: plots and the HTML page from a real (tiny) study written through the store's
own protocol (claim, per-epoch metrics, finish), with a real evaluation's artifacts.

No TensorFlow here: the values are realistic, the records and artifacts are the real ones.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.ports import Backend
from shared.config import BackendConfig
from shared.errors import BadInputError
from shared.jobs import EpochRecord, JobRecord
from shared.paths import job_prefix
from shared.schemas import LeaderboardDocument, MatrixDocument, ReportDocument, StatusDocument
from shared.status import JobStatus
from shared.study import parse_study
from submitter import plots, service
from submitter.cli import app
from submitter.leaderboard import matrix
from submitter.report import HTML_NAME, build_report, read_artifact

PRICE = 0.526  # $/hour
ARCH_SKILL = {"benchmark": 0.55, "mobilenet_v2": 0.78}
OPT_SKILL = {"adam": 0.06, "sgd": 0.0}
SECONDS_PER_EPOCH = {"benchmark": 3.0, "mobilenet_v2": 7.5}


def study_spec(dataset: Path | str, name: str = "report-demo"):
    return parse_study(json.dumps({
        "name": name, "dataset": str(dataset), "image_size": 32, "seed": 3,
        "parameters": {
            "architecture": ["benchmark", "mobilenet_v2"], "weights": [None],
            "optimizer": [{"name": "adam"}, {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9}],
            "batch_size": [8, 16],
        },
        "training": {"epochs": 4},
    }))


def curve(record: JobRecord, epochs: int) -> list[dict[str, float]]:
    """Accuracy rising towards the configuration's ceiling, loss falling; the last epoch overfits a bit."""
    arch, opt = record.spec.model.architecture, record.spec.optimizer.name
    ceiling = ARCH_SKILL[arch] + OPT_SKILL[opt] - (0.03 if record.spec.training.batch_size == 16 else 0.0)
    rows = []
    for e in range(1, epochs + 1):
        progress = 1 - math.exp(-1.2 * e)
        val = round(ceiling * progress - (0.02 if e == epochs else 0.0), 4)
        train = round(min(0.99, ceiling * progress + 0.05 * e), 4)
        rows.append({"accuracy": train, "loss": round(1.6 * (1 - train) + 0.1, 4),
                     "val_accuracy": val, "val_loss": round(1.8 * (1 - val) + 0.15, 4)})
    return rows


def run_through_store(backend: Backend, record: JobRecord, epochs: list[dict[str, float]], status: JobStatus = JobStatus.SUCCEEDED,
                      **changes: object) -> JobRecord:
    """What a worker writes: claim, one EpochRecord per epoch (fenced), then the result."""
    now = time.time()
    claimed = backend.store.claim(record.study_id, record.job_id, "test-worker-1", 60, now)
    assert claimed is not None
    seconds = SECONDS_PER_EPOCH[record.spec.model.architecture] * (0.5 if record.spec.training.batch_size == 16 else 1.0)
    for epoch, values in enumerate(epochs, start=1):
        backend.store.put_epoch(EpochRecord(study_id=record.study_id, job_id=record.job_id, epoch=epoch,
                                            attempt=claimed.attempt, metrics=values, seconds=seconds, recorded_at=now))
    best = max(range(len(epochs)), key=lambda i: epochs[i]["val_accuracy"]) if epochs else None
    train_seconds = seconds * len(epochs)
    key = f"{job_prefix(record.study_id, record.job_id)}/best.keras"
    if status == JobStatus.SUCCEEDED and record.kind != "evaluate":
        backend.artifacts.put_bytes(key, b"not really a keras zip")
    fields: dict[str, object] = {
        "epochs_run": len(epochs), "best_epoch": None if best is None else best + 1,
        "metrics": epochs[best] if best is not None else {}, "train_seconds": train_seconds,
        "cost_usd": round(train_seconds * PRICE / 3600, 6), "finished_at": now,
        "checkpoint": key if status == JobStatus.SUCCEEDED and record.kind != "evaluate" else None,  # a key, never a URI
        **changes,
    }
    return backend.store.finish(record.study_id, record.job_id, claimed.attempt, status, fields)


def build_study(
    home: Path | Backend, dataset: Path | str, evaluate: bool = True, leave_queued: int = 0
) -> tuple[Backend, str]:
    """8 train jobs (2 architectures x 2 optimizers x 2 batch sizes): one FAILED after 1 epoch, the
    rest SUCCEEDED with 4 epochs; the last `leave_queued` untouched; optionally the best one evaluated.
    `home`: the embedded backend's directory, or any backend."""
    backend = home if isinstance(home, Backend) else open_local(BackendConfig(home=home))
    spec = study_spec(dataset)
    service.submit_study(backend, spec, PRICE)
    jobs = backend.store.list_jobs(spec.study_id)
    runnable = jobs[: len(jobs) - leave_queued]
    for index, record in enumerate(runnable):
        if index == 1:
            run_through_store(backend, record, curve(record, 4)[:1], JobStatus.FAILED, error="PermanentError: out of memory")
        else:
            run_through_store(backend, record, curve(record, 4))
    if evaluate:
        service.evaluate(backend, spec.study_id, top=1)
        evaluation = next(r for r in backend.store.list_jobs(spec.study_id) if r.kind == "evaluate")
        parent = backend.store.get_job(spec.study_id, evaluation.spec.parent_job_id)
        classes = ["daisy", "rose", "tulip"]
        confusion = [[3, 1, 0], [0, 4, 0], [1, 0, 3]]
        per_class = {name: confusion[i][i] / sum(confusion[i]) for i, name in enumerate(classes)}
        prefix = job_prefix(spec.study_id, evaluation.job_id)
        backend.artifacts.put_bytes(f"{prefix}/confusion_matrix.json", json.dumps({"classes": classes, "matrix": confusion}).encode())
        backend.artifacts.put_bytes(f"{prefix}/per_class_accuracy.json", json.dumps(per_class).encode())
        backend.artifacts.put_bytes(f"{prefix}/predictions.csv", b"file,true_class,predicted_class,probability\n")
        artifacts = {name: f"{prefix}/{file}" for name, file in
                     (("confusion_matrix", "confusion_matrix.json"), ("per_class_accuracy", "per_class_accuracy.json"),
                      ("predictions_csv", "predictions.csv"))}
        run_through_store(backend, evaluation, [], metrics={"test_accuracy": 10 / 12, "test_loss": 0.52},
                          artifacts=artifacts, checkpoint=parent.checkpoint, train_seconds=1.2, cost_usd=0.0002)
    return backend, spec.study_id


@pytest.fixture
def env_home(home: Path) -> Path:
    return home  # tests/conftest.py: SPOTSWEEP_HOME and the embedded backend, set for the CLI


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def assert_png(path: Path, min_size: tuple[int, int] = (300, 200)) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], (path, image.size)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 20, f"{path} looks blank"


def test_report_of_a_study_with_an_evaluation(tmp_path, tiny_dataset):
    backend, study_id = build_study(tmp_path / "home", tiny_dataset)
    report = build_report(backend, study_id, tmp_path / "out")

    names = sorted(p.name for p in report.files)
    assert names == sorted([
        "accuracy_intervals.png", "learning_curves.png", "heatmap.png", "pareto_cost.png", "pareto_time.png",
        "sweep_batch_size.png", "confusion_matrix.png", "per_class_accuracy.png", HTML_NAME,
    ])
    for path in report.files:
        assert path.is_file()
        if path.suffix == ".png":
            assert_png(path)

    # the heatmap's cells are exactly the `--matrix architecture optimizer` values
    records = backend.store.list_jobs(study_id)
    expected = matrix(records, "architecture", "optimizer").set_index("architecture")
    drawn = report.data["heatmap"]
    assert list(drawn.index) == list(expected.index) and list(drawn.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(drawn, expected.astype(float), check_names=False)
    best_mobilenet_adam = max(r.metrics.val_accuracy for r in records if r.kind != "evaluate"
                              and r.spec.model.architecture == "mobilenet_v2" and r.spec.optimizer.name == "adam")
    assert drawn.loc["mobilenet_v2", "adam"] == best_mobilenet_adam

    # learning curves: the top 5 configurations, each with its 4 stored epochs
    curves = report.data["learning_curves"]
    assert len(curves) == 5 and all(len(frame) == 4 for frame in curves.values())
    assert next(iter(curves)).startswith("#1 mobilenet_v2/adam")

    # Pareto fronts: no point on a front is dominated by another finished job
    succeeded = [r for r in records if r.status == JobStatus.SUCCEEDED and r.kind == "train"]
    for name, x in (("pareto_cost", "cost_usd"), ("pareto_time", "train_seconds")):
        front = report.data[name]
        assert len(front) >= 1
        for _, point in front.iterrows():
            assert not any(getattr(r, x) <= point[x] and r.metrics.val_accuracy > point["val_accuracy"] for r in succeeded)
    assert report.data["pareto_cost"]["val_accuracy"].max() == max(r.metrics.val_accuracy for r in succeeded)

    # the batch-size sweep: best accuracy and mean time per setting
    sweep = report.data["sweep_batch_size"]
    assert list(sweep.index) == [8, 16]
    assert sweep.loc[8, "train_seconds"] > sweep.loc[16, "train_seconds"]

    # evaluation: the confusion matrix read back through the artifact store
    assert report.data["confusion_matrix"].tolist() == [[3, 1, 0], [0, 4, 0], [1, 0, 3]]
    assert report.data["per_class_accuracy"] == {"daisy": 0.75, "rose": 1.0, "tulip": 0.75}

    page = report.html.read_text()
    for path in report.files:
        if path.suffix == ".png":
            assert f'href="{path.name}"' in page
            embedded = re.search(rf'src="data:image/png;base64,([^"]+)" alt="{re.escape(path.name)}"', page)
            assert embedded and base64.b64decode(embedded.group(1)) == path.read_bytes(), path.name
    assert page.count("<img ") == 8
    assert "mobilenet_v2" in page and 'class="board"' in page and "test accuracy 0.8333" in page
    assert "no finished jobs" not in page and "no evaluations yet" not in page


def test_empty_study_report_says_so(tmp_path, tiny_dataset):
    backend = open_local(BackendConfig(home=tmp_path / "home"))
    spec = study_spec(tiny_dataset)
    service.submit_study(backend, spec, PRICE)
    report = build_report(backend, spec.study_id, tmp_path / "out")
    assert [p.name for p in report.files] == [HTML_NAME]
    page = report.html.read_text()
    assert "no finished jobs" in page and "no evaluations yet" in page and "<img " not in page
    assert "8 queued" in page


def test_study_without_evaluations_still_plots_training(tmp_path, tiny_dataset):
    backend, study_id = build_study(tmp_path / "home", tiny_dataset, evaluate=False, leave_queued=2)
    report = build_report(backend, study_id, tmp_path / "out", top=2)
    names = {p.name for p in report.files}
    assert {"accuracy_intervals.png", "learning_curves.png", "heatmap.png", "pareto_cost.png"} <= names
    assert "confusion_matrix.png" not in names
    assert len(report.data["learning_curves"]) == 2
    page = report.html.read_text()
    assert "no evaluations yet" in page and "no finished jobs" not in page


def test_a_missing_evaluation_artifact_is_reported_not_raised(tmp_path, tiny_dataset):
    backend, study_id = build_study(tmp_path / "home", tiny_dataset)
    evaluation = next(r for r in backend.store.list_jobs(study_id) if r.kind == "evaluate")
    backend.artifacts.delete(evaluation.artifacts["confusion_matrix"])
    report = build_report(backend, study_id, tmp_path / "out")
    assert "confusion_matrix.png" not in {p.name for p in report.files}
    assert "confusion matrix unavailable" in report.html.read_text()


def test_read_artifact_reads_keys_and_never_a_local_file(tmp_path):
    backend = open_local(BackendConfig(home=tmp_path / "home"))
    backend.artifacts.put_bytes("studies/s/jobs/j/x.json", b"{}")
    assert read_artifact(backend.artifacts, "studies/s/jobs/j/x.json") == b"{}"
    assert read_artifact(backend.artifacts, "artifacts:studies/s/jobs/j/x.json") == b"{}"
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(b"[]")
    for local in (str(outside), backend.artifacts.uri("studies/s/jobs/j/x.json")):  # a path, even into the store
        with pytest.raises(BadInputError, match="not in the artifact store"):
            read_artifact(backend.artifacts, local)


def test_pareto_front_keeps_only_undominated_points():
    frame = pd.DataFrame({"cost_usd": [1.0, 2.0, 2.0, 3.0, 0.5], "val_accuracy": [0.6, 0.7, 0.65, 0.68, 0.4]})
    front = plots.pareto_front(frame, "cost_usd")
    assert front.to_dict("list") == {"cost_usd": [0.5, 1.0, 2.0], "val_accuracy": [0.4, 0.6, 0.7]}


def test_report_command_prints_the_files_and_json_validates(tmp_path, tiny_dataset, env_home):
    build_study(env_home, tiny_dataset, evaluate=False)
    out = tmp_path / "cli-report"
    result = invoke("report", "--out", str(out), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = ReportDocument.model_validate_json(result.stdout)
    assert doc.html.endswith(HTML_NAME) and all(Path(f).is_file() for f in doc.files)
    table = invoke("--quiet", "report", "--out", str(out))
    assert table.stdout.split() == doc.files


def test_status_and_leaderboard_json_match_the_documented_schemas(tiny_dataset, env_home):
    backend, study_id = build_study(env_home, tiny_dataset, leave_queued=1)
    running = backend.store.list_jobs(study_id, JobStatus.QUEUED)[0]
    backend.store.claim(study_id, running.job_id, "w-2", 60, time.time())

    status = StatusDocument.model_validate_json(invoke("status", "--format", "json").stdout)
    assert status.counts["RUNNING"] == 1 and status.rows[0].job_id == running.job_id and not status.finished
    board = LeaderboardDocument.model_validate_json(invoke("leaderboard", "--format", "json").stdout)
    assert board.rows[0].rank == 1 and board.rows[0].architecture == "mobilenet_v2"
    best = board.rows[0]  # the record's key, and beside it where a person finds the model
    assert best.checkpoint == f"{job_prefix(study_id, best.job_id)}/best.keras"
    assert best.checkpoint_uri == backend.artifacts.uri(best.checkpoint)
    grid = MatrixDocument.model_validate_json(invoke("leaderboard", "--matrix", "architecture", "optimizer", "--format", "json").stdout)
    expected = matrix(backend.store.list_jobs(study_id), "architecture", "optimizer")
    assert grid.rows == json.loads(expected.to_json(orient="records"))
    schema = json.loads(invoke("schema", "status").stdout)
    assert "running" in schema["properties"]
