"""What people see of an adaptive search: `submit status`, the leaderboard, `submit report` and
`submit study --dry-run`, on an ASHA study whose records are written through the store's own
protocol (create, claim, one EpochRecord per epoch, finish), as workers would write them.

The study: 9 trials, rungs at 1, 3 and 9 epochs (eta 3). All 9 finish rung 0; the best 3 are
promoted and resume at epoch 2; the best of those goes on to rung 2. The other 8 are stopped at
their rung. No TensorFlow: the records and epochs are the real ones, the values made up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared import search
from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.jobs import EpochRecord, JobRecord, Trial
from shared.ports import Backend
from shared.schemas import DryRunDocument, LeaderboardDocument, StatusDocument
from shared.status import JobStatus
from shared.study import StudySpec, parse_study
from submitter import service
from submitter.cli import app
from submitter.leaderboard import STOPPED_MARK
from submitter.report import build_report

LEARNING_RATE = {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1}
SECONDS_PER_EPOCH = 36.0  # 100 epochs of it make one GPU-hour
PRICE = 2.0  # $/hour
RUNG_0 = {k: 0.40 + 0.02 * k for k in range(9)}  # trial -> val_accuracy at 1 epoch: 8, 7, 6 are the top 3
RUNG_1 = {8: 0.70, 7: 0.78, 6: 0.74}  # at 3 epochs: 7 is the top 1
RUNG_2 = {7: 0.91}


def asha_study(dataset: Path, **changes: object) -> StudySpec:
    document = {
        "name": "asha-view", "dataset": str(dataset), "image_size": 32, "seed": 5,
        "search": {"method": "asha", "count": 9, "seed": 1, "min_epochs": 1, "reduction_factor": 3, "parallel": 3},
        "budget": {"jobs": 30, "usd": 5.0},
        "parameters": {"architecture": ["benchmark"], "weights": [None],
                       "optimizer": [{"name": "adam", "learning_rate": LEARNING_RATE}]},
        "training": {"epochs": 9},
        **changes,
    }
    return parse_study(json.dumps(document))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def trial_job(spec: StudySpec, index: int, rung: int) -> JobRecord:
    """Trial `index`'s job at `rung`: rung 0 as the search draws it, a promotion resuming its parent."""
    job_id, job = search.trial_jobs(spec, index, search.drawn_params(spec, index))[0]
    for step in range(1, rung + 1):
        trial = Trial(index=index, rung=step, params=job.trial.params)
        training = job.training.model_copy(update={"epochs": search.rungs(spec)[step]})
        job = job.model_copy(update={"trial": trial, "training": training, "parent_job_id": job_id})
        job_id = search.promotion_job_id(spec.study_id, step, index)  # a slot per trial: distinct ids
    return JobRecord(study_id=spec.study_id, job_id=job_id, spec=job, created_at=time.time())


def run(backend: Backend, record: JobRecord, first_epoch: int, score: float, finish: bool = True) -> None:
    """Claim, record the epochs from `first_epoch` (a promotion resumes its parent's) up to the
    job's rung, rising to `score`, and (with `finish`) settle it SUCCEEDED with its cost."""
    backend.store.create_jobs([record])
    claimed = backend.store.claim(record.study_id, record.job_id, "w-1", 600, time.time())
    assert claimed is not None
    last = record.spec.training.epochs
    for epoch in range(first_epoch, last + 1):
        value = round(score - 0.01 * (last - epoch), 4)
        metrics = {"val_accuracy": value, "accuracy": value}
        backend.store.put_epoch(EpochRecord(study_id=record.study_id, job_id=record.job_id, epoch=epoch, attempt=1,
                                            metrics=metrics, seconds=SECONDS_PER_EPOCH))
    if finish:
        seconds = SECONDS_PER_EPOCH * (last - first_epoch + 1)
        backend.store.finish(record.study_id, record.job_id, claimed.attempt, JobStatus.SUCCEEDED, {
            "epochs_run": last, "best_epoch": last, "metrics": {"val_accuracy": score}, "train_seconds": seconds,
            "cost_usd": seconds * PRICE / 3600, "finished_at": time.time(),
        })
    else:
        progress = {"epochs_run": last, "heartbeat_at": time.time()}
        backend.store.update(record.study_id, record.job_id, claimed.attempt, progress)


def build_asha(home: Path, dataset: Path, last_rung_done: bool = True) -> tuple[Backend, StudySpec]:
    backend = open_local(BackendConfig(home=home))
    spec = asha_study(dataset)
    service.submit_study(backend, spec, PRICE)
    for index, score in RUNG_0.items():
        run(backend, trial_job(spec, index, 0), 1, score)
    for index, score in RUNG_1.items():
        run(backend, trial_job(spec, index, 1), 2, score)
    run(backend, trial_job(spec, 7, 2), 4, RUNG_2[7], finish=last_rung_done)
    return backend, spec


@pytest.fixture
def asha_home(home: Path, tiny_dataset: Path) -> tuple[Backend, StudySpec]:
    return build_asha(home, tiny_dataset)


def test_status_shows_trials_budget_and_rungs(home, tiny_dataset):
    backend, spec = build_asha(home, tiny_dataset, last_rung_done=False)
    doc = StatusDocument.model_validate_json(invoke("status", "--format", "json").stdout)
    assert doc.search is not None and doc.search.method == "asha"
    assert (doc.search.count, doc.search.done, doc.search.running, doc.search.planned) == (9, 8, 1, 0)
    rungs = [(r.epochs, r.finished, r.running, r.promoted) for r in doc.search.rungs]
    assert rungs == [(1, 9, 0, 3), (3, 3, 0, 1), (9, 0, 1, 0)]
    assert doc.search.budget is not None and doc.search.budget.jobs == (13, 30) and not doc.search.budget.reached
    assert doc.search.budget.usd[1] == 5.0 and doc.search.budget.gpu_hours[1] is None
    assert doc.search.epochs_trained == 9 + 3 * 2 + 6  # a promotion's resumed epochs counted once

    table = invoke("status").stdout
    assert "search asha: 9 trials: 8 done, 1 running, 0 queued, 0 planned" in table
    assert "budget: jobs 13 of 30, GPU-hours 0.150, dollars $0.3000 of $5.0000" in table
    assert "rungs (promoted" in table and "promoted" in table.split("rungs (")[1]


def test_grid_status_has_no_search(home, tiny_dataset):
    backend = open_local(BackendConfig(home=home))
    spec = asha_study(tiny_dataset, search={"method": "grid"}, budget=None,
                      parameters={"architecture": ["benchmark"], "weights": [None], "batch_size": [8, 16]})
    service.submit_study(backend, spec)
    doc = StatusDocument.model_validate_json(invoke("status", "--format", "json").stdout)
    assert doc.search is None and doc.total == 2
    assert "search" not in invoke("status").stdout


def test_leaderboard_one_row_per_trial_with_rungs_and_stops(asha_home):
    doc = LeaderboardDocument.model_validate_json(invoke("leaderboard", "--format", "json").stdout)
    rows = [(r.trial, r.rung, r.rung_epochs, r.stopped_early, r.val_accuracy) for r in doc.rows]
    assert rows[0] == (7, 2, 9, False, RUNG_2[7])  # the trial that reached the top rung
    assert rows[1:3] == [(6, 1, 3, True, 0.74), (8, 1, 3, True, 0.70)]  # stopped: ranked by their last rung's score
    assert [r[0] for r in rows[3:]] == [5, 4, 3, 2, 1, 0] and all(r[1:4] == (0, 1, True) for r in rows[3:])

    table = invoke("leaderboard").stdout
    header = table.splitlines()[2]
    assert "trial" in header and "rung" in header
    assert table.count(STOPPED_MARK) == 8 + 1  # eight rows, and the note that explains the mark
    assert "9 (9 ep)" not in table and "2 (9 ep)" in table and f"1 (3 ep) {STOPPED_MARK}" in table
    assert f"{STOPPED_MARK}: stopped early at its rung" in table

    csv = invoke("leaderboard", "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("rank,job_id,kind,status,trial,rung,rung_epochs,stopped_early,")


def test_report_plots_best_so_far_and_the_rungs(asha_home, tmp_path):
    backend, spec = asha_home
    report = build_report(backend, spec.study_id, tmp_path / "out")
    names = {p.name for p in report.files}
    assert {"best_so_far.png", "rung_curves.png"} <= names

    progress = report.data["best_so_far"]
    assert len(progress) == 13 and progress["gpu_hours"].is_monotonic_increasing
    assert progress["gpu_hours"].iloc[-1] == pytest.approx(21 * SECONDS_PER_EPOCH / 3600)  # every epoch paid once
    assert progress["usd"].iloc[-1] == pytest.approx(21 * SECONDS_PER_EPOCH / 3600 * PRICE)
    assert progress["best_so_far"].is_monotonic_increasing and progress["best_so_far"].iloc[-1] == RUNG_2[7]

    curves = report.data["rung_curves"]
    by_trial = {trial: frame for trial, frame in curves.groupby("trial")}
    assert list(by_trial[7]["epoch"]) == list(range(1, 10)) and not by_trial[7]["stopped_early"].any()
    assert list(by_trial[7]["rung"]) == [0, 1, 1, 2, 2, 2, 2, 2, 2]  # the rung segments it crossed
    assert list(by_trial[6]["epoch"]) == [1, 2, 3] and by_trial[6]["stopped_early"].all()  # promoted once, then stopped
    assert list(by_trial[0]["epoch"]) == [1] and by_trial[0]["stopped_early"].all()
    assert by_trial[7]["val_accuracy"].iloc[-1] == RUNG_2[7]
    page = report.html.read_text()
    assert "ASHA rungs at 1, 3, 9 epochs" in page and "GPU-hours" in page


def test_dry_run_of_asha_shows_what_is_decided_later_and_the_bound(asha_home, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTSWEEP_PRICE_PER_HOUR", str(PRICE))
    path = tmp_path / "asha.json"  # a second study: its estimate uses the first one's seconds per epoch
    path.write_text(asha_study(tiny_dataset, name="asha-next").model_dump_json(exclude={"version"}))
    doc = DryRunDocument.model_validate_json(invoke("study", str(path), "--dry-run", "--format", "json").stdout)
    plan = doc.search
    assert plan is not None and (plan.trials, plan.jobs, plan.epochs) == (9, 13, 21)
    assert doc.job_count == plan.initial_jobs == 3 and len(doc.jobs) == 3
    assert (plan.trials_decided_later, plan.jobs_decided_later) == (6, 10)
    assert plan.gpu_hours == pytest.approx(21 * SECONDS_PER_EPOCH / 3600)
    assert plan.usd == pytest.approx(plan.gpu_hours * PRICE) and plan.usd_bound == plan.usd  # under the $5 cap
    assert plan.budget == {"jobs": 30, "gpu_hours": None, "usd": 5.0}

    table = invoke("study", str(path), "--dry-run").stdout
    assert "+10 jobs" in table and "3-8" in table and "decided as results arrive" in table
    assert "upper bound" in table and "budget caps" in table and "$5.00" in table


def test_dry_run_of_tpe_under_a_gpu_hour_budget(home, tiny_dataset, tmp_path):
    tpe = {"method": "tpe", "count": 12, "seed": 2, "startup": 4, "parallel": 4}
    spec = asha_study(tiny_dataset, name="tpe-view", search=tpe, budget={"gpu_hours": 0.5})
    path = tmp_path / "tpe.json"
    path.write_text(spec.model_dump_json(exclude={"version"}))
    doc = DryRunDocument.model_validate_json(invoke("study", str(path), "--dry-run", "--format", "json").stdout)
    plan = doc.search
    assert plan is not None and plan.method == "tpe" and (plan.trials, plan.jobs, plan.epochs) == (12, 12, 108)
    assert [job["trial"] for job in doc.jobs] == [0, 1, 2, 3] and plan.trials_decided_later == 8
    assert plan.gpu_hours is None and plan.gpu_hours_bound == 0.5 and plan.usd_bound is None  # no history, no price
    assert not home.exists()  # a dry run writes nothing


def test_learning_curves_of_a_promoted_trial_start_at_its_first_epoch(asha_home, tmp_path):
    backend, spec = asha_home
    report = build_report(backend, spec.study_id, tmp_path / "out", top=2)
    curves = list(report.data["learning_curves"].values())
    assert list(curves[0]["epoch"]) == list(range(1, 10))  # trial 7: its rungs' epochs, resumed, as one curve
    assert list(curves[1]["epoch"]) == [1, 2, 3]  # trial 6, stopped at rung 1
