"""Budgets stop enqueuing, and the dry run shows what a search may cost at most (issue 16).

The `submit` commands run through typer's CliRunner; the jobs are trained for real (tiny Keras
models) by the worker loop in this process, whose settlements top the study's window up.
- a random search of 6 trials with `"budget": {"jobs": 3}` and a window of 2: the submission
  enqueues 2, a settlement one more, and then nothing, though 3 trials were never made;
- the same search with a dollar budget smaller than one job's cost: the first job spends it,
  and nothing more is enqueued;
- `submit status --format json` shows the budget used against its limit, and that it was reached;
- `submit study --dry-run` of an ASHA study prints its first trials and the upper bound: trials,
  jobs (promotions included) and epochs (each promotion's extra epochs only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.status import JobStatus
from submitter.cli import app
from tests.integration.test_heartbeat import worker_settings
from worker.loop import Policy, Worker
from worker.training import JobRunner

TRIALS = 6
PRICE_PER_HOUR = 0.526


def study(dataset: Path, search: dict[str, Any], budget: dict[str, Any] | None = None, epochs: int = 1) -> dict[str, Any]:
    doc = {
        "name": "budget", "dataset": str(dataset), "image_size": 32, "validation_split": 0.25, "seed": 3,
        "search": search,
        "parameters": {
            "architecture": ["benchmark"], "weights": [None], "batch_size": [8],
            "optimizer": [{"name": "sgd", "learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1e-1}, "momentum": 0.9}],
        },
        "training": {"epochs": epochs, "early_stopping": None},
        "head": {"units": 16},
    }
    return doc | ({"budget": budget} if budget else {})


def invoke(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("budget", "parallel", "expected_jobs"),
    [({"jobs": 3}, 2, 3), ({"usd": 1e-6}, 1, 1)],
    ids=["jobs", "usd"],
)
def test_a_budget_stops_enqueuing_and_status_shows_it(home, tiny_dataset, tmp_path, budget, parallel, expected_jobs):
    doc = study(tiny_dataset, {"method": "random", "count": TRIALS, "seed": 4, "parallel": parallel}, budget)
    submitted = invoke("study", str(write(tmp_path, doc)))
    assert submitted["created"] == min(parallel, expected_jobs)
    backend = open_local(BackendConfig(home=home))
    worker = Worker(backend, worker_settings(tmp_path, 60.0), JobRunner(), price_per_hour=PRICE_PER_HOUR)
    worker.work(Policy(until_empty=True))  # each settlement tops the window up, until the budget is reached

    jobs = backend.store.list_jobs(submitted["study_id"])
    assert len(jobs) == expected_jobs and {j.status for j in jobs} == {JobStatus.SUCCEEDED}, jobs
    assert sorted(j.spec.trial.index for j in jobs) == list(range(expected_jobs))  # trials in order, none twice
    counts = backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (0, 0, 0)

    status = invoke("status", submitted["study_id"])
    search = status["search"]
    assert (search["method"], search["count"], search["created"], search["done"]) == ("random", TRIALS, expected_jobs, expected_jobs)
    assert search["planned"] == TRIALS - expected_jobs and search["complete"] is True
    used_jobs, limit_jobs = search["budget"]["jobs"]
    assert (used_jobs, limit_jobs) == (expected_jobs, budget.get("jobs"))
    used_usd, limit_usd = search["budget"]["usd"]
    assert limit_usd == budget.get("usd") and used_usd == pytest.approx(sum(j.cost_usd for j in jobs), abs=1e-6)
    assert search["budget"]["reached"] is True
    assert status["finished"] is True

    again = invoke("study", str(write(tmp_path, doc)))  # submitting again: nothing past the budget either
    assert again["created"] == 0 and len(backend.store.list_jobs(submitted["study_id"])) == expected_jobs


def test_the_dry_run_of_an_asha_study_prints_its_trials_and_upper_bound(home, tiny_dataset, tmp_path):
    search = {"method": "asha", "count": 8, "seed": 1, "min_epochs": 1, "reduction_factor": 2, "parallel": 3}
    path = write(tmp_path, study(tiny_dataset, search, epochs=4))
    plan = invoke("study", str(path), "--dry-run")
    # Rungs at 1, 2 and 4 epochs: 8 trials train 1 epoch, 4 promotions 1 more, 2 promotions 2 more.
    assert (plan["search"]["method"], plan["search"]["trials"]) == ("asha", 8)
    assert (plan["search"]["jobs"], plan["search"]["epochs"]) == (8 + 4 + 2, 8 * 1 + 4 * 1 + 2 * 2)
    assert plan["job_count"] == 3 and [job["trial"] for job in plan["jobs"]] == [0, 1, 2]  # the first window
    assert {(job["rung"], job["epochs"]) for job in plan["jobs"]} == {(0, 1)}
    assert plan["search"]["jobs_decided_later"] == 14 - 3

    table = CliRunner().invoke(app, ["study", str(path), "--dry-run"], catch_exceptions=False)
    assert table.exit_code == 0, table.output
    assert "upper bound" in table.stdout and "decided as results arrive" in table.stdout
    bound_row = next(line for line in table.stdout.splitlines() if "search at most" in line)
    assert [cell.strip() for cell in bound_row.strip("│┃ ").split("│")][1:4] == ["8", "14", "16"], bound_row
    assert not home.exists()  # a dry run writes nothing
