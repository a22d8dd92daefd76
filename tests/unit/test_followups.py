"""Follow-ups on the embedded backend: which models are fine-tuned, how many jobs each stage enqueued.

Records are real (the SQLite store and queue), moved to SUCCEEDED through the store's own claim
and finish, so the ranking sees what a worker would have written.
"""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.errors import BadInputError
from shared.followups import advance_study, finetune_candidates, finetune_settings
from shared.jobs import JobRecord, StudyRecord, parse_message
from shared.limits import MAX_TOP
from shared.ports import Backend
from shared.status import JobStatus
from shared.study import StudySpec, expand, job_count, parse_study
from shared.submission import submit_jobs
from submitter.cli import app

# What training reached: the benchmark CNN wins, then mobilenet_v2, then vgg16.
VAL_ACCURACY = {"benchmark": 0.9, "mobilenet_v2": 0.8, "vgg16": 0.7}


def study(architectures: list[str], **followups: object) -> StudySpec:
    return parse_study(json.dumps({
        "name": "followups", "dataset": "/data/flowers", "image_size": 32,
        "parameters": {"architecture": architectures, "weights": [None], "optimizer": [{"name": "adam"}]},
        "training": {"epochs": 2}, **followups,
    }))


def submit(backend: Backend, spec: StudySpec) -> None:
    backend.store.put_study(StudyRecord(
        study_id=spec.study_id, name=spec.name, created_at=time.time(), spec=spec.model_dump(mode="json"),
        job_count=job_count(spec),
    ))
    submit_jobs(backend.store, backend.queue, spec.study_id, expand(spec))


def succeed(backend: Backend, record: JobRecord, val_accuracy: float) -> None:
    claimed = backend.store.claim(record.study_id, record.job_id, "w1", 60.0, time.time())
    assert claimed is not None
    changes = {"metrics": {"val_accuracy": val_accuracy}, "epochs_run": 2}
    backend.store.finish(record.study_id, record.job_id, claimed.attempt, JobStatus.SUCCEEDED, changes)


def train_all(backend: Backend, study_id: str) -> None:
    for record in backend.store.list_jobs(study_id):
        if record.kind == "train":
            succeed(backend, record, VAL_ACCURACY[record.spec.model.architecture])


def finetune_jobs(backend: Backend, study_id: str) -> list[JobRecord]:
    return [j for j in backend.store.list_jobs(study_id) if j.kind == "finetune"]


def architecture_of(backend: Backend, study_id: str, job_id: str | None) -> str:
    assert job_id is not None
    parent = backend.store.get_job(study_id, job_id)
    assert parent is not None
    return parent.spec.model.architecture


def test_top_1_finetunes_the_best_transfer_model_when_the_benchmark_ranks_first(local_backend):
    spec = study(["benchmark", "mobilenet_v2", "vgg16"], finetune={"top": 1})
    submit(local_backend, spec)
    train_all(local_backend, spec.study_id)

    assert advance_study(local_backend.store, local_backend.queue, spec.study_id) == {"finetune": 1}

    (job,) = finetune_jobs(local_backend, spec.study_id)
    assert architecture_of(local_backend, spec.study_id, job.spec.parent_job_id) == "mobilenet_v2"
    # 3 training messages, then the one fine-tuning message, valid for a worker as sent
    bodies = [d.body for d in local_backend.queue.receive(10)]
    assert [parse_message(b).spec.kind for b in bodies].count("finetune") == 1


def test_top_k_counts_only_models_that_can_be_finetuned(local_backend):
    spec = study(["benchmark", "mobilenet_v2", "vgg16"], finetune={"top": 2})
    submit(local_backend, spec)
    train_all(local_backend, spec.study_id)
    parents = finetune_candidates(local_backend.store.list_jobs(spec.study_id), 2)
    assert [p.spec.model.architecture for p in parents] == ["mobilenet_v2", "vgg16"]
    assert advance_study(local_backend.store, local_backend.queue, spec.study_id) == {"finetune": 2}


def test_a_stage_with_nothing_to_finetune_says_zero_and_evaluation_follows(local_backend):
    spec = study(["benchmark"], finetune={"top": 1}, evaluate={"top": 1})
    submit(local_backend, spec)
    train_all(local_backend, spec.study_id)
    assert advance_study(local_backend.store, local_backend.queue, spec.study_id) == {"finetune": 0, "evaluate": 1}
    assert advance_study(local_backend.store, local_backend.queue, spec.study_id) == {}  # each stage once


def test_nothing_is_advanced_before_training_ends(local_backend):
    spec = study(["benchmark", "mobilenet_v2"], finetune={"top": 1})
    submit(local_backend, spec)
    first = local_backend.store.list_jobs(spec.study_id)[0]
    succeed(local_backend, first, 0.5)
    assert advance_study(local_backend.store, local_backend.queue, spec.study_id) == {}
    assert finetune_jobs(local_backend, spec.study_id) == []


def test_submit_finetune_top_1_chooses_like_the_study_does(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SPOTSWEEP_HOME", str(home))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    backend = open_local(BackendConfig(home=home))
    spec = study(["benchmark", "mobilenet_v2", "vgg16"])
    submit(backend, spec)
    train_all(backend, spec.study_id)

    result = CliRunner().invoke(app, ["finetune", spec.study_id, "--top", "1"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert "1 finetune jobs enqueued" in result.stdout
    (job,) = finetune_jobs(backend, spec.study_id)
    assert architecture_of(backend, spec.study_id, job.spec.parent_job_id) == "mobilenet_v2"


def test_submit_finetune_top_is_capped_like_the_study_file():
    assert finetune_settings(MAX_TOP).top == MAX_TOP
    with pytest.raises(BadInputError) as info:
        finetune_settings(MAX_TOP + 1)
    assert str(info.value).startswith("--top: ")
    with pytest.raises(BadInputError) as info:
        finetune_settings(1, "x" * 10_000)
    assert str(info.value).startswith("--unfreeze-from: ")
