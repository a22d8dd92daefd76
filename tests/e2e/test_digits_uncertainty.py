"""Numbers you can trust, end to end on a real dataset made here (issue 17): scikit-learn's digits.

A study of the benchmark CNN with three learning rates (Adam 1e-3 and 3e-3 learn the digits;
1e-6 barely moves from chance in four epochs) is submitted with `submit study`, run by a real
worker (`Worker.work` with the real `JobRunner`, in this process) and read back with the
commands a person uses. Every number `submit` prints about the comparison is recomputed here
from the files the jobs wrote, with the textbook formulas (no shared.stats): the per-example
validation files (`val_correct`) and, on the test split, the evaluations' predictions CSVs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.ports import Backend
from shared.schemas import CompareDocument, EvaluateDocument, LeaderboardDocument
from shared.stats import decode_correct, examples_id
from submitter.cli import app
from tests.digits import prepare_digits
from worker.loop import Policy, Worker
from worker.settings import WorkerSettings
from worker.training import JobRunner

pytestmark = pytest.mark.slow  # ~40 s on two cores: 3 trainings and 2 evaluations of the benchmark CNN

LEARNING_RATES = (0.003, 0.001, 1e-6)



def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def run_worker(home: Path, cache: Path) -> None:
    """A real worker, in this process, until the queue is empty."""
    backend = open_local(BackendConfig(home=home))
    settings = WorkerSettings(home=home, cache_dir=cache, lease_s=60.0, poll_wait_s=0.2, retry_backoff_s=0.0,
                              worker_id="digits-worker")
    Worker(backend, settings, JobRunner()).work(Policy(until_empty=True))


def mcnemar_by_hand(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(a_only, b_only, exact two-sided p): twice the smaller binomial tail of the discordant pairs."""
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    n = a_only + b_only
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2**n
    return a_only, b_only, min(1.0, 2 * tail) if n else 1.0


def csv_mask(backend: Backend, evaluation_job_id: str) -> tuple[str, np.ndarray]:
    """An evaluation's predictions CSV as (examples identity, right or wrong per row)."""
    record = backend.store.find_job(evaluation_job_id)
    rows = list(csv.DictReader(io.StringIO(backend.artifacts.get_bytes(record.artifacts["predictions_csv"]).decode())))
    return examples_id([r["file"] for r in rows]), np.array([r["true_class"] == r["predicted_class"] for r in rows])


def test_two_tied_configurations_and_a_worse_one_on_the_digits(tmp_path, home):
    dataset, manifest = prepare_digits(tmp_path / "digits")
    study = {
        "name": "digits", "dataset": str(dataset), "image_size": 32, "seed": 0, "validation_split": 0.2,
        "parameters": {"architecture": ["benchmark"], "batch_size": [32],
                       "optimizer": [{"name": "adam", "learning_rate": list(LEARNING_RATES)}]},
        "training": {"epochs": 4, "early_stopping": None},
    }
    (tmp_path / "digits.json").write_text(json.dumps(study))
    assert json.loads(invoke("study", str(tmp_path / "digits.json"), "--format", "json"))["created"] == 3
    run_worker(home, tmp_path / "cache")

    doc = LeaderboardDocument.model_validate_json(invoke("leaderboard", "--format", "json"))
    by_rate = {json.loads(row.optimizer_params)["learning_rate"]: row for row in doc.rows}
    best, tied, worse = (by_rate[rate] for rate in LEARNING_RATES)
    assert [row.job_id for row in doc.rows] == [best.job_id, tied.job_id, worse.job_id], [
        (row.job_id, row.val_accuracy) for row in doc.rows]
    assert worse.val_accuracy < 0.3 < 0.9 < tied.val_accuracy  # near chance (0.1), and two that learnt

    # every row's file, decoded here: the counts and the tie flags follow from them
    backend = open_local(BackendConfig(home=home))
    masks = {}
    val_examples = sum(round(0.2 * count) for count in Counter(f.label for f in manifest.split("train")).values())
    for row in doc.rows:
        key = backend.store.find_job(row.job_id).artifacts["val_correct"]
        results = decode_correct(backend.artifacts.get_bytes(key))
        masks[row.job_id] = results.correct
        assert row.val_examples == results.correct.size == val_examples  # a fifth of each class of the train split
        assert row.val_accuracy == pytest.approx(results.correct.mean(), abs=1e-6)
    p_tied = mcnemar_by_hand(masks[best.job_id], masks[tied.job_id])[2]
    p_worse = mcnemar_by_hand(masks[best.job_id], masks[worse.job_id])[2]
    holm = sorted([p_tied, p_worse])
    adjusted = {p: max(min(1.0, 2 * holm[0]), min(1.0, p)) if p == holm[1] else min(1.0, 2 * p) for p in holm}
    assert (best.tied_with_best, tied.tied_with_best, worse.tied_with_best) == (True, True, False)
    assert tied.tie_p_value == pytest.approx(adjusted[p_tied], rel=1e-9) and tied.tie_p_value > 0.05
    assert worse.tie_p_value == pytest.approx(adjusted[p_worse], rel=1e-6) and worse.tie_p_value < 1e-6
    table = invoke("leaderboard")
    assert "≈" in next(line for line in table.splitlines() if tied.job_id in line)
    assert "≈" not in next(line for line in table.splitlines() if worse.job_id in line)

    # submit compare agrees with the two files
    compared = CompareDocument.model_validate_json(invoke("compare", best.job_id, tied.job_id, "--format", "json"))
    a_only, b_only, p_value = mcnemar_by_hand(masks[best.job_id], masks[tied.job_id])
    assert (compared.n, compared.a_only, compared.b_only) == (masks[best.job_id].size, a_only, b_only)
    assert compared.p_value == pytest.approx(p_value, rel=1e-9)

    # on the test split, after evaluating both: compare agrees with their predictions CSVs
    for job_id in (best.job_id, tied.job_id):
        assert EvaluateDocument.model_validate_json(invoke("evaluate", job_id, "--format", "json")).created == 1
    run_worker(home, tmp_path / "cache")
    compared = CompareDocument.model_validate_json(
        invoke("compare", best.job_id, tied.job_id, "--split", "test", "--format", "json"))
    sources = (compared.a_source_job_id, compared.b_source_job_id)
    (a_id, a_mask), (b_id, b_mask) = (csv_mask(backend, job_id) for job_id in sources)
    a_only, b_only, p_value = mcnemar_by_hand(a_mask, b_mask)
    assert a_id == b_id and (compared.n, compared.a_only, compared.b_only) == (len(a_mask), a_only, b_only)
    assert len(a_mask) == len(manifest.split("test"))
    assert compared.p_value == pytest.approx(p_value, rel=1e-9)
    assert (compared.a_accuracy, compared.b_accuracy) == (pytest.approx(a_mask.mean()), pytest.approx(b_mask.mean()))

    # an evaluation of a model already evaluated returns the recorded result: no new job, no message
    jobs_before = len(backend.store.list_jobs(doc.study_id))
    again = EvaluateDocument.model_validate_json(invoke("evaluate", best.job_id, "--format", "json"))
    (evaluation,) = again.evaluations
    recorded = backend.store.find_job(compared.a_source_job_id)
    assert (again.created, again.sent) == (0, 0)
    assert (evaluation.evaluation_job_id, evaluation.status) == (recorded.job_id, "SUCCEEDED")
    assert evaluation.test_accuracy == recorded.metrics.test_accuracy
    assert evaluation.test_examples == len(manifest.split("test"))
    by_evaluation = EvaluateDocument.model_validate_json(invoke("evaluate", recorded.job_id, "--format", "json"))
    assert by_evaluation.created == 0 and by_evaluation.evaluations == again.evaluations  # it stands for its model
    assert len(backend.store.list_jobs(doc.study_id)) == jobs_before and backend.queue.counts().backlog == 0
    assert f"evaluation {recorded.job_id} (recorded): test accuracy {recorded.metrics.test_accuracy:.4f}" in invoke(
        "evaluate", best.job_id)
