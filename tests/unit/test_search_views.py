"""The pure parts of what people see of a search: the best-so-far frame, the plots' drawn data,
the leaderboard's rung cells and marks, the dry run's last row and upper bound, the budget line."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from rich.console import Console

from shared.jobs import JobRecord, JobSpec, Metrics, ModelSpec
from shared.search import TrialView
from shared.status import JobStatus
from shared.study import parse_study
from submitter import plots, service
from submitter.leaderboard import STOPPED_MARK, for_table, leaderboard, table_notes
from submitter.render import budget_line, formatted, search_status
from submitter.report import search_progress

LEARNING_RATE = {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1}
SPEC = JobSpec(dataset="/data/x", model=ModelSpec(architecture="benchmark", image_size=32))


def job(job_id: str, status: JobStatus, finished_at: float | None, score: float | None, seconds: float,
        batch_size: int = 32) -> JobRecord:
    spec = SPEC.model_copy(update={"training": SPEC.training.model_copy(update={"batch_size": batch_size})})
    return JobRecord(study_id="s", job_id=job_id, spec=spec, status=status, finished_at=finished_at,
                     metrics=Metrics(val_accuracy=score), train_seconds=seconds, cost_usd=seconds / 3600)


def test_best_so_far_follows_the_order_jobs_finished_and_counts_every_paid_job(tmp_path):
    records = [
        job("c", JobStatus.SUCCEEDED, 30.0, 0.7, 1800),
        job("a", JobStatus.FAILED, 10.0, None, 900),  # paid for, no score
        job("b", JobStatus.SUCCEEDED, 20.0, 0.6, 900),
        job("d", JobStatus.SUCCEEDED, 40.0, 0.65, 3600),  # worse: the best so far stays
        job("e", JobStatus.RUNNING, None, 0.9, 100),  # not finished: not yet on the curve
    ]
    frame = search_progress(records)
    assert list(frame["job_id"]) == ["a", "b", "c", "d"]
    assert list(frame["gpu_hours"]) == pytest.approx([0.25, 0.5, 1.0, 2.0])
    assert frame["best_so_far"].iloc[0] != frame["best_so_far"].iloc[0]  # NaN: nothing scored yet
    assert list(frame["best_so_far"].iloc[1:]) == [0.6, 0.7, 0.7]

    drawn = plots.best_so_far(frame, tmp_path / "best.png")
    assert list(drawn["job_id"]) == ["b", "c", "d"]  # from the first score on
    assert (tmp_path / "best.png").stat().st_size > 0


def test_rung_curves_draw_each_trial_in_epoch_order_without_missing_values(tmp_path):
    frame = pd.DataFrame({
        "trial": [1, 0, 0, 0, 1], "epoch": [1, 3, 1, 2, 2], "val_accuracy": [0.3, 0.6, 0.4, math.nan, 0.35],
        "rung": [0, 1, 0, 1, 1], "stopped_early": [True, False, False, False, True],
    })
    drawn = plots.rung_curves(frame, [1, 3], tmp_path / "rungs.png")
    assert list(zip(drawn["trial"], drawn["epoch"])) == [(0, 1), (0, 3), (1, 1), (1, 2)]
    assert (tmp_path / "rungs.png").stat().st_size > 0


def _views(*records: JobRecord, stopped: set[str] = frozenset()) -> dict[str, TrialView]:
    return {r.job_id: TrialView(index=i, rung=0, rung_epochs=1, stopped_early=r.job_id in stopped, superseded=False)
            for i, r in enumerate(records)}


def test_the_stopped_mark_shows_even_when_every_row_is_at_the_same_rung():
    a = job("a", JobStatus.SUCCEEDED, 1.0, 0.8, 10, batch_size=8)
    b = job("b", JobStatus.SUCCEEDED, 2.0, 0.6, 10, batch_size=16)
    frame = leaderboard([a, b], trials=_views(a, b, stopped={"b"}))
    shown = for_table(frame)
    assert list(shown["trial"]) == [0, 1] and list(shown["rung"]) == ["0 (1 ep)", f"0 (1 ep) {STOPPED_MARK}"]
    assert any(note.startswith(STOPPED_MARK) for note in table_notes(frame))

    plain = for_table(leaderboard([a, b], trials=_views(a, b)))  # nothing stopped, one rung: says nothing
    assert "rung" not in plain.columns and "trial" in plain.columns
    grid = leaderboard([a, b])  # no search: the fields are null and the columns hidden
    assert grid["trial"].isna().all() and grid["stopped_early"].isna().all()
    assert {"trial", "rung"}.isdisjoint(for_table(grid).columns)


def study(**changes: object):
    return parse_study(json.dumps({
        "name": "views", "dataset": "/data/x", "image_size": 32,
        "search": {"method": "tpe", "count": 10, "seed": 1, "startup": 2, "parallel": 2},
        "parameters": {"architecture": ["benchmark"], "weights": [None],
                       "optimizer": [{"name": "sgd", "learning_rate": LEARNING_RATE}]},
        "training": {"epochs": 5}, **changes,
    }))


def test_the_dry_run_bound_takes_the_smallest_of_estimate_and_caps_in_either_unit():
    spec = study(budget={"gpu_hours": 1.0, "usd": 10.0})
    jobs = [{"job_id": j, **service.job_parameters(s)} for j, s in service.search.initial_jobs(spec)]
    estimate = {"seconds": 7200.0, "cost_usd": 6.0, "price_per_hour": 3.0}  # 2 GPU-hours estimated
    plan = service.search_plan(spec, jobs, estimate)
    counts = ("trials", "initial_jobs", "trials_decided_later", "jobs_decided_later")
    assert [plan[name] for name in counts] == [10, 2, 8, 8]
    assert plan["gpu_hours"] == 2.0 and plan["gpu_hours_bound"] == 1.0  # the GPU-hour cap
    assert plan["usd_bound"] == 3.0  # 1 GPU-hour at $3: below both the estimate and the $10 cap
    later = service.plan_frame(jobs, plan).iloc[-1]
    assert (later["job_id"], later["trial"], later["note"]) == ("+8 jobs", "2-9", "decided as results arrive")

    unpriced = service.search_plan(spec, jobs, {"seconds": None, "cost_usd": None, "price_per_hour": None})
    assert unpriced["gpu_hours"] is None and unpriced["usd"] is None
    assert (unpriced["gpu_hours_bound"], unpriced["usd_bound"]) == (1.0, 10.0)  # the caps alone


def test_no_later_row_when_everything_is_enqueued_at_once():
    spec = study(search={"method": "sobol", "count": 3, "seed": 1}, budget={"jobs": 3})
    jobs = [{"job_id": j, **service.job_parameters(s)} for j, s in service.search.initial_jobs(spec)]
    plan = service.search_plan(spec, jobs, {"seconds": None, "cost_usd": None, "price_per_hour": None})
    assert plan["jobs_decided_later"] == 0 and len(service.plan_frame(jobs, plan)) == len(jobs)


def test_budget_line_and_search_status_text():
    budget = {"jobs": [4.0, None], "gpu_hours": [0.5, 0.5], "usd": [1.25, None], "reached": True}
    line = budget_line(budget).plain
    assert line.startswith("budget: jobs 4, GPU-hours 0.500 of 0.500, dollars $1.2500")
    assert "reached: no new jobs; running ones finish" in line
    summary = {"method": "asha", "count": 9, "created": 3, "done": 1, "running": 2, "queued": 0, "planned": 6,
               "complete": False, "epochs_trained": 5, "budget": None,
               "rungs": [{"epochs": 1, "finished": 1, "running": 2, "queued": 0, "promoted": 0}]}
    console = Console(width=120, record=True)
    console.print(search_status(summary))
    text = console.export_text()
    assert "search asha: 9 trials: 1 done, 2 running, 0 queued, 6 planned (5 epochs trained)" in text
    assert "budget" not in text and "promoted" in text


def test_a_missing_text_cell_is_blank():
    frame = pd.DataFrame({"note": ["x", None, math.nan]})
    assert formatted(frame)[0][2] == ["x", "", ""]
