"""Records carry artifact-store keys, and readers on a laptop read only the configured store
(issue 12 item 1; issue 15 items 5 and 7), on the embedded backend. The same on a prefixed S3
store over moto: `test_store_keys_aws.py`.

The hostile records are written as a teammate would write them: through the store's own protocol
(claim, finish), with a local path where a key belongs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.errors import BadInputError
from shared.jobs import StudyRecord
from shared.paths import job_prefix
from shared.ports import Backend
from shared.schemas import LeaderboardDocument, ReportDocument, ShowDocument, StatusDocument
from shared.status import JobStatus
from submitter import service
from submitter.report import HTML_NAME, export_model
from tests.integration.test_report import build_study, curve, env_home, invoke, run_through_store  # noqa: F401 (fixture)
from worker import predict

SECRET = "AKIA-THE-LAPTOPS-SECRET"




def secrets(tmp_path: Path) -> dict[str, Path]:
    """Files of the laptop that runs `submit`, shaped like the artifacts a record may name."""
    folder = tmp_path / "laptop"
    folder.mkdir()
    files = {
        "checkpoint": folder / "secret.keras",
        "confusion_matrix": folder / "secret-confusion.json",
        "per_class_accuracy": folder / "secret-per-class.json",
    }
    files["checkpoint"].write_bytes(SECRET.encode())
    files["confusion_matrix"].write_text(json.dumps({"classes": [SECRET], "matrix": [[1]]}))
    files["per_class_accuracy"].write_text(json.dumps({SECRET: 1.0}))
    return files


def hostile_study(home: Path, dataset: Path, files: dict[str, Path]) -> tuple[Backend, str, str]:
    """A study whose last train job and whose evaluation name local files instead of keys.
    Returns (backend, study id, the hostile train job's id)."""
    backend, study_id = build_study(home, dataset, evaluate=False, leave_queued=1)
    queued = backend.store.list_jobs(study_id, JobStatus.QUEUED)[0]
    run_through_store(backend, queued, curve(queued, 4), checkpoint=str(files["checkpoint"]))
    service.evaluate(backend, study_id, top=1)
    evaluation = next(r for r in backend.store.list_jobs(study_id) if r.kind == "evaluate")
    names = ("confusion_matrix", "per_class_accuracy")
    run_through_store(backend, evaluation, [], metrics={"test_accuracy": 0.9}, checkpoint=str(files["checkpoint"]),
                      artifacts={name: str(files[name]) for name in names})
    return backend, study_id, queued.job_id


# --- keys in records, display URIs beside them ---


def test_show_and_leaderboard_json_give_the_key_and_where_to_find_it(home, tiny_dataset):
    backend, study_id = build_study(home, tiny_dataset)
    evaluation = next(r for r in backend.store.list_jobs(study_id) if r.kind == "evaluate")
    shown = invoke("show", evaluation.job_id, "--format", "json")
    assert shown.exit_code == 0, shown.output
    doc = ShowDocument.model_validate_json(shown.stdout)
    assert doc.job.artifacts["confusion_matrix"] == f"{job_prefix(study_id, evaluation.job_id)}/confusion_matrix.json"
    assert doc.artifact_uris["confusion_matrix"] == backend.artifacts.uri(doc.job.artifacts["confusion_matrix"])
    assert doc.checkpoint_uri == backend.artifacts.uri(doc.job.checkpoint)
    assert Path(doc.checkpoint_uri).is_file()  # the display URI of the embedded store is a real file

    board = LeaderboardDocument.model_validate_json(invoke("leaderboard", "--format", "json").stdout)
    with_model = [row for row in board.rows if row.checkpoint]
    assert with_model and all(row.checkpoint_uri == backend.artifacts.uri(row.checkpoint) for row in with_model)
    assert all(not Path(row.checkpoint).is_absolute() for row in with_model)
    assert invoke("show", evaluation.job_id).exit_code == 0  # the table view prints the URIs too


# --- issue 15 item 5: a record naming a local file never makes a reader read it ---


def test_report_does_not_embed_a_local_file_a_record_names(home, tmp_path, tiny_dataset):
    backend, study_id, _ = hostile_study(home, tiny_dataset, secrets(tmp_path))
    result = invoke("report", study_id, "--out", str(tmp_path / "out"), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = ReportDocument.model_validate_json(result.stdout)
    names = {Path(f).name for f in doc.files}
    assert "confusion_matrix.png" not in names and "per_class_accuracy.png" not in names  # nothing plotted from it
    assert {"learning_curves.png", HTML_NAME} <= names  # the rest of the report is there
    page = Path(doc.html).read_text()
    assert "confusion matrix unavailable" in page and "per-class accuracy unavailable" in page
    assert SECRET not in page


def test_export_does_not_copy_a_local_file_a_record_names(home, tmp_path, tiny_dataset):
    _, _, job_id = hostile_study(home, tiny_dataset, secrets(tmp_path))
    out = tmp_path / "exported" / "model.keras"
    result = invoke("export", job_id, "--out", str(out))
    assert result.exit_code == 2
    assert "not in the artifact store" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not out.parent.exists()


def test_predict_refuses_a_local_file_a_record_names(home, tmp_path, tiny_dataset):
    backend, _, job_id = hostile_study(home, tiny_dataset, secrets(tmp_path))
    image = next((tiny_dataset / "test").rglob("*.png"))
    with pytest.raises(BadInputError, match="not in the artifact store"):
        predict.run(lambda: backend, None, job_id, None, [image], top=1)  # `worker predict --job JOB IMAGE`
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(BadInputError):
        predict.job_source(backend, job_id, scratch)
    assert list(scratch.iterdir()) == []


def test_export_and_predict_read_the_store_by_key(home, tmp_path, tiny_dataset):
    backend, study_id = build_study(home, tiny_dataset)
    best = max((r for r in backend.store.list_jobs(study_id) if r.kind == "train" and r.checkpoint),
               key=lambda r: r.metrics.val_accuracy)
    exported = export_model(backend, best.job_id, tmp_path / "model.keras")
    assert exported.path.read_bytes() == backend.artifacts.get_bytes(best.checkpoint)
    source = predict.job_source(backend, best.job_id, tmp_path)
    assert source.model.read_bytes() == exported.path.read_bytes() and source.classes == exported.classes
    assert exported.classes and len(exported.classes) == 3


# --- issue 15 item 7: the report's directory and "the most recent study" ---


def test_a_hostile_study_id_never_names_the_report_directory(home, tmp_path, tiny_dataset, monkeypatch):
    backend, study_id = build_study(home, tiny_dataset, evaluate=False)
    hostile = StudyRecord.model_construct(  # as a teammate with table access writes it: unchecked
        study_id="x/../../target", name="x", created_at=time.time() + 1, spec={}, job_count=0,
        price_per_hour=None, stages=[],
    )
    backend.store.put_study(hostile)
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    result = invoke("report", "--format", "json")
    assert result.exit_code == 0, result.output
    assert ReportDocument.model_validate_json(result.stdout).study_id == study_id  # the hostile row is left out
    assert not (tmp_path / "target").exists() and not (cwd / "report-x").exists()
    assert (cwd / f"report-{study_id}" / HTML_NAME).is_file()
    refused = invoke("report", "x/../../target")
    assert refused.exit_code == 2 and not (tmp_path / "target").exists()


def put_study(backend: Backend, study_id: str, created_at: float) -> None:
    backend.store.put_study(StudyRecord(study_id=study_id, name=study_id, created_at=created_at, spec={}))


def test_a_study_stamped_in_the_future_is_never_the_most_recent(home):
    backend = open_local(BackendConfig(home=home))
    now = time.time()
    put_study(backend, "ours-1", now - 60)
    put_study(backend, "hijack-1", now + 10 * 24 * 3600)  # a teammate's clock, or on purpose
    status = invoke("status", "--format", "json")
    assert status.exit_code == 0, status.output
    assert StatusDocument.model_validate_json(status.stdout).study_id == "ours-1"
    assert service.resolve_study_id(backend, "hijack") == "hijack-1"  # still reachable by name
    put_study(backend, "ours-2", now)  # a later real submission wins as before
    assert service.resolve_study_id(backend, None) == "ours-2"


def test_clock_skew_is_tolerated_and_an_all_future_choice_is_refused(home):
    backend = open_local(BackendConfig(home=home))
    now = 1_000_000.0
    put_study(backend, "a-little-ahead", now + service.CLOCK_SKEW_S - 1)
    put_study(backend, "older", now - 5)
    assert service.resolve_study_id(backend, None, now=now) == "a-little-ahead"
    assert service.resolve_study_id(backend, None, now=now - 10) == "older"
    with pytest.raises(BadInputError, match="in the future"):
        service.resolve_study_id(backend, None, now=now - 10_000)


# --- issue 12 item 8, the store's part: refused at `submit study`, nothing written ---


def study_file(tmp_path: Path, dataset: str, weights: list[str | None]) -> Path:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({
        "name": "keys", "dataset": dataset, "image_size": 32,
        "parameters": {"architecture": ["mobilenet_v2"], "weights": weights}, "training": {"epochs": 1},
    }))
    return path


def assert_nothing_written(home: Path) -> None:
    backend = open_local(BackendConfig(home=home))
    assert backend.store.list_studies() == [] and backend.queue.counts().backlog == 0


@pytest.mark.parametrize(
    ("weights", "path", "message"),
    [
        ("s3://team-bucket/weights/w.weights.h5", "parameters.weights[1]", "not S3"),
        ("artifacts:weights/absent.weights.h5", "parameters.weights[1]", "no weights file"),
        ("weights/absent.weights.h5", "parameters.weights[1]", "no weights file"),
    ],
)
def test_weights_the_store_cannot_give_are_refused(home, tmp_path, tiny_dataset, weights, path, message):
    result = invoke("study", str(study_file(tmp_path, str(tiny_dataset), [None, weights])))
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: {path}: ") and message in line and "\n" not in line
    assert_nothing_written(home)


@pytest.mark.parametrize(
    ("dataset", "message"),
    [("s3://team-bucket/datasets/flowers", "not S3"), ("artifacts:datasets/never-uploaded", "no uploaded dataset")],
)
def test_a_dataset_the_backend_cannot_read_is_refused(home, tmp_path, dataset, message):
    result = invoke("study", str(study_file(tmp_path, dataset, [None])))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: dataset: ") and message in result.stderr
    assert_nothing_written(home)


def test_weights_and_a_dataset_in_the_store_are_accepted(home, tmp_path, tiny_dataset):
    from shared.datasets import upload

    backend = open_local(BackendConfig(home=home))
    upload(tiny_dataset, backend.artifacts, "datasets/tiny")
    backend.artifacts.put_bytes("weights/w.weights.h5", b"weights")
    result = invoke("study", str(study_file(tmp_path, "artifacts:datasets/tiny", [None, "artifacts:weights/w.weights.h5"])))
    assert result.exit_code == 0, result.output
    assert len(backend.store.list_jobs(backend.store.list_studies()[0].study_id)) == 2
