"""`submit repair`, `submit study` again, `submit status` (failed jobs and why) and `submit cancel`,
through typer's CliRunner on the embedded backend."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.schemas import RepairDocument, StatusDocument, SubmitDocument
from shared.status import JobStatus
from submitter.cli import app

EXAMPLE = json.loads((Path(__file__).parents[2] / "examples" / "sweep.json").read_text())



@pytest.fixture
def study_id(home, tmp_path, tiny_dataset) -> str:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({**EXAMPLE, "dataset": str(tiny_dataset), "image_size": 32}))
    return json.loads(invoke("study", str(path), "--format", "json").stdout)["study_id"]


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def purge(home: Path) -> None:
    with open_local(BackendConfig(home=home)).queue.db.write() as conn:
        conn.execute("DELETE FROM messages WHERE dead = 0")


def test_repair_refills_a_purged_queue_and_says_what_it_did(home, study_id):
    purge(home)
    doc = json.loads(invoke("repair", "--format", "json").stdout)
    RepairDocument.model_validate(doc)  # the documented shape
    assert doc["resent"]["count"] == 10 and len(doc["resent"]["ids"]) == 10
    assert open_local(BackendConfig(home=home)).queue.counts().visible == 10
    assert invoke("repair").stdout.strip() == "nothing to repair"


def test_submitting_a_purged_study_again_resends_its_messages(home, tmp_path, study_id):
    purge(home)
    doc = json.loads(invoke("study", str(tmp_path / "sweep.json"), "--format", "json").stdout)
    SubmitDocument.model_validate(doc)
    assert (doc["created"], doc["existing"], doc["repair"]["resent"]["count"]) == (0, 10, 10)
    assert open_local(BackendConfig(home=home)).queue.counts().visible == 10


def test_status_shows_a_job_the_reconciler_failed_and_why(home, study_id):
    backend = open_local(BackendConfig(home=home))
    job = backend.store.list_jobs(study_id)[0]
    claimed = backend.store.claim(study_id, job.job_id, "w1", 0.01, time.time())
    backend.store.update(study_id, job.job_id, claimed.attempt, {"failures": 3, "error": "RuntimeError: CUDA error"})
    delivery = next(d for d in backend.queue.receive(max_messages=10, wait_s=1) if job.job_id in d.body)
    backend.queue.dead_letter(delivery, "gave up")
    time.sleep(0.05)  # the holder's lease lapses: it died
    assert json.loads(invoke("repair", "--format", "json").stdout)["failed"]["ids"] == [job.job_id]
    doc = json.loads(invoke("status", study_id, "--format", "json").stdout)
    StatusDocument.model_validate(doc)
    reason = "dead-lettered after 3 own failures: RuntimeError: CUDA error"
    assert doc["failed"] == [{"job_id": job.job_id, "kind": "train", "failures": 3, "error": reason}]
    assert "dead-lettered after 3 own failures" in invoke("status", study_id).stdout


def test_cancel_marks_the_study_and_is_idempotent(home, study_id):
    assert invoke("cancel", study_id).stdout.strip() == "10 jobs cancelled, 0 running jobs asked to stop"
    assert invoke("cancel", study_id).stdout.strip() == "10 jobs cancelled, 0 running jobs asked to stop"
    backend = open_local(BackendConfig(home=home))
    assert backend.store.get_study(study_id).stages == ["cancelled"]
    assert {j.status for j in backend.store.list_jobs(study_id)} == {JobStatus.CANCELLED}
