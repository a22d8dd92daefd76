"""The search (shared/search.py): what each method draws, what ASHA promotes, what a study shows,
and how budgets and windows hold enqueuing back.

Sampling, TPE and the ASHA rules are checked on records built in memory (the decisions are pure
functions of the records); budgets and windows on the embedded backend, with a driver that claims
and finishes jobs through the store as a worker would (tests/search_support.py).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from shared.jobs import JobRecord, JobSpec
from shared.ranking import latest_rungs, rank
from shared.search import (
    Bound,
    drawn_params,
    initial_jobs,
    next_jobs,
    promotion,
    rungs,
    search_complete,
    summary,
    promotion_job_id,
    trial_job_id,
    trial_jobs,
    trial_view,
    upper_bound,
)
from shared.status import JobStatus
from shared.study import StudySpec, expand, grid_size, study_warnings
from tests.search_support import LOG_LR, ROOT, Driver, score, study, submit, train_jobs

# --- records, as the store holds them ------------------------------------------------------------


def record(job_id: str, job: JobSpec, status: JobStatus = JobStatus.SUCCEEDED, val_accuracy: float | None = None,
           epochs_run: int | None = None, study_id: str = "s-1") -> JobRecord:
    """A record as the store would hold it: SUCCEEDED ones trained their epochs unless told otherwise."""
    done = status is JobStatus.SUCCEEDED
    return JobRecord(
        study_id=study_id, job_id=job_id, spec=job, status=status,
        metrics={"val_accuracy": val_accuracy} if val_accuracy is not None else {},
        epochs_run=epochs_run if epochs_run is not None else (job.training.epochs if done else 0),
    )


Scorer = Callable[[JobRecord], float]


def finished(proposals: list[tuple[str, JobSpec]], scorer: Scorer | None = None) -> list[JobRecord]:
    """The proposals as SUCCEEDED records, scored by `scorer(record)` (default: the driver's score)."""
    scorer = scorer or score
    return [record(job_id, job, val_accuracy=scorer(record(job_id, job))) for job_id, job in proposals]


def drawn_trial(spec: StudySpec, index: int) -> list[tuple[str, JobSpec]]:
    """Trial `index`'s rung-0 jobs as the search draws them (whatever the window holds)."""
    return trial_jobs(spec, index, drawn_params(spec, index))


# --- sampling ------------------------------------------------------------------------------------

WIDE_SPACE = {  # every kind of distribution, in every place one is accepted
    "parameters": {
        "architecture": ["benchmark"], "weights": [None],
        "image_size": {"distribution": "int_uniform", "low": 32, "high": 64, "step": 8},
        "optimizer": [{"name": "sgd", "learning_rate": LOG_LR,
                       "momentum": {"distribution": "uniform", "low": 0.0, "high": 0.9}}],
        "batch_size": {"distribution": "int_uniform", "low": 16, "high": 64, "step": 16},
        # low + 13 steps is an ulp above 1.0 in floating point: the top step must still be a valid fraction
        "data_fraction": {"distribution": "uniform", "low": 0.09, "high": 1.0, "step": 0.07},
    },
    "head": {"units": {"distribution": "int_uniform", "low": 16, "high": 1024, "log": True},
             "dropout": {"distribution": "uniform", "low": 0.0, "high": 0.5, "step": 0.1}},
}


def sampled(method: str, count: int = 64, seed: int = 3) -> StudySpec:
    return study({"method": method, "count": count, "seed": seed}, **WIDE_SPACE)


def on_grid(value: float, low: float, step: float) -> bool:
    steps = (value - low) / step
    return abs(steps - round(steps)) < 1e-9


def assert_within_space(job: JobSpec) -> None:
    assert 32 <= job.model.image_size <= 64 and job.model.image_size % 8 == 0
    optimizer: Any = job.optimizer
    assert 1e-4 <= optimizer.learning_rate <= 1e-1 and 0.0 <= optimizer.momentum <= 0.9
    assert job.training.batch_size in (16, 32, 48, 64)
    assert 0.09 <= job.training.data_fraction <= 1.0 and on_grid(job.training.data_fraction, 0.09, 0.07)
    assert 16 <= job.model.head.units <= 1024 and type(job.model.head.units) is int
    assert 0.0 <= job.model.head.dropout <= 0.5 and on_grid(job.model.head.dropout, 0.0, 0.1)


@pytest.mark.parametrize("method", ["random", "sobol"])
def test_every_sampled_value_lies_within_its_bounds_and_on_its_grid(method):
    jobs = [job for _, job in initial_jobs(sampled(method))]
    assert len(jobs) == 64 and [job.trial.index for job in jobs] == list(range(64))  # type: ignore[union-attr]
    for job in jobs:
        assert_within_space(job)
    assert max(job.training.data_fraction for job in jobs) == 1.0  # the top step is drawn, and is valid


@pytest.mark.parametrize("method", ["random", "sobol"])
def test_a_log_uniform_dimension_is_spread_on_the_log_scale(method):
    spec = sampled(method, count=2000)
    rates = [drawn_params(spec, k)["optimizer[0].learning_rate"] for k in range(2000)]
    assert min(rates) >= 1e-4 and max(rates) <= 1e-1
    assert abs(math.log10(statistics.median(rates)) - math.log10(math.sqrt(1e-4 * 1e-1))) < 0.1  # the geometric mean
    assert 600 < sum(rate < 1e-3 for rate in rates) < 733  # the first of three decades: a third of the draws


def trials_of(spec: StudySpec) -> list[tuple[str, dict[str, float]]]:
    return [(job_id, job.trial.params) for job_id, job in initial_jobs(spec)]  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["random", "sobol", "tpe", "asha"])
def test_the_same_seed_gives_the_same_trials_and_another_seed_others(method):
    search = {"method": method, "count": 6, "seed": 4, "parallel": 6}
    first, again = trials_of(study(search)), trials_of(study(search))
    assert first == again and len(first) == 6
    other = trials_of(study({**search, "seed": 5}))
    assert all(a[1] != b[1] for a, b in zip(first, other))


FRESH_PROCESS = """
import json, sys
from shared.search import initial_jobs
from tests.search_support import ROOT, study
spec = study(json.loads(sys.argv[1]))
print(json.dumps([[job_id, job.trial.params] for job_id, job in initial_jobs(spec)]))
"""


def test_the_same_seed_gives_the_same_trials_in_a_fresh_process():
    search = {"method": "sobol", "count": 5, "seed": 9}
    command = [sys.executable, "-c", FRESH_PROCESS, json.dumps(search)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    assert json.loads(result.stdout) == [[job_id, params] for job_id, params in trials_of(study(search))]


LISTS_ONLY = {
    "parameters": {"architecture": ["benchmark", "mobilenet_v2"], "weights": ["imagenet", None], "batch_size": [16, 32],
                   "optimizer": [{"name": "adam", "learning_rate": [1e-3, 1e-4]},
                                 {"name": "sgd", "learning_rate": [0.1, 0.01, 0.001]}]},
    "head": {"units": [8, 16]},
}


def configuration(job: JobSpec) -> str:
    """What a job trains, whatever its epochs, trial and early stopping."""
    parts = [job.model, job.optimizer, job.training.batch_size, job.training.data_fraction]
    return json.dumps([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts], sort_keys=True)


def test_asha_over_lists_with_count_the_grid_size_tries_every_grid_point_once():
    grid = study({"method": "grid"}, **LISTS_ONLY)
    size = grid_size(grid)
    assert size == 20 + 40  # 5 optimizers x 2 batch sizes x 2 head sizes: the benchmark once, mobilenet_v2 twice
    spec = study({"method": "asha", "count": size, "seed": 2, "parallel": size}, **LISTS_ONLY)
    trials = [job for _, job in initial_jobs(spec)]
    assert sorted(configuration(job) for job in trials) == sorted(configuration(job) for _, job in expand(grid))


# --- TPE -----------------------------------------------------------------------------------------


TPE = {"method": "tpe", "count": 24, "seed": 5, "startup": 4, "parallel": 4}


def test_tpe_starts_with_the_trials_random_search_draws():
    tpe = [params for _, params in trials_of(study(TPE))]
    random_search = [params for _, params in trials_of(study({"method": "random", "count": 24, "seed": 5}))]
    assert tpe == random_search[:4]
    spec = study({**TPE, "parallel": 2})  # trials 2 and 3 come after results: drawn all the same
    later = next_jobs(spec, finished(list(initial_jobs(spec))))
    assert [job.trial.params for _, job in later] == random_search[2:4]  # type: ignore[union-attr]


def test_tpe_proposes_from_the_finished_history_and_only_from_it():
    spec = study(TPE)
    history = finished(list(initial_jobs(spec)))
    proposals = next_jobs(spec, history)
    assert [job.trial.index for _, job in proposals] == [4, 5, 6, 7]  # type: ignore[union-attr]
    trials = [job.trial for _, job in proposals]
    assert all(trial.params != drawn_params(spec, trial.index) for trial in trials)  # type: ignore[union-attr]
    copies = [JobRecord.model_validate_json(r.model_dump_json()) for r in history]
    assert next_jobs(spec, copies) == proposals  # same records, same proposals: racing workers agree
    reversed_scores = finished(list(initial_jobs(spec)), lambda r: 1 - score(r))
    assert next_jobs(spec, reversed_scores) != proposals


def tpe_history(seed: int) -> list[JobRecord]:
    """16 random trials, then 8 TPE proposals made one at a time, each scored before the next."""
    spec = study({**TPE, "count": 24, "startup": 16, "parallel": 1, "seed": seed})
    history = finished([pair for k in range(16) for pair in trial_jobs(spec, k, drawn_params(spec, k))])
    for _ in range(8):
        history += finished(next_jobs(spec, history))
    return history


def peak_distance(records: list[JobRecord]) -> float:
    """The median distance of the records' learning rates from the score's peak (1e-2), in decades."""
    return statistics.median(abs(math.log10(r.spec.optimizer.learning_rate) + 2) for r in records)  # type: ignore[attr-defined]


def test_tpe_proposals_move_towards_the_best_region():
    histories = [tpe_history(seed) for seed in range(5)]  # over seeds: one seed's random start may be lucky
    assert all(len(history) == 24 for history in histories)
    proposed = statistics.fmean(peak_distance(history[16:]) for history in histories)
    drawn = statistics.fmean(peak_distance(history[:16]) for history in histories)
    assert proposed < drawn / 2


# --- ASHA rules ----------------------------------------------------------------------------------


def asha(count: int = 9, eta: int = 3, min_epochs: int = 1, epochs: int = 9, parallel: int = 9, **changes: Any
         ) -> StudySpec:
    search = {"method": "asha", "count": count, "seed": 1, "min_epochs": min_epochs, "reduction_factor": eta,
              "parallel": parallel}
    return study(search, training={"epochs": epochs}, **changes)


@pytest.mark.parametrize(("min_epochs", "eta", "epochs", "expected"), [
    (1, 3, 9, [1, 3, 9]), (1, 3, 10, [1, 3, 9, 10]), (1, 3, 27, [1, 3, 9, 27]), (2, 2, 10, [2, 4, 8, 10]),
    (3, 3, 9, [3, 9]), (1, 2, 8, [1, 2, 4, 8]), (5, 3, 6, [5, 6]), (1, 100, 50, [1, 50]),
], ids=lambda value: str(value).replace(" ", ""))
def test_asha_rungs(min_epochs, eta, epochs, expected):
    assert rungs(asha(min_epochs=min_epochs, eta=eta, epochs=epochs)) == expected


def test_a_method_without_rungs_has_one_rung_at_the_epochs():
    assert rungs(study({"method": "tpe", "count": 3}, training={"epochs": 7})) == [7]


def rung_zero(spec: StudySpec, scores: dict[int, float]) -> list[JobRecord]:
    """Every trial of the first window at rung 0: SUCCEEDED with `scores[k]`, else QUEUED."""
    out = []
    for job_id, job in initial_jobs(spec):
        index = job.trial.index  # type: ignore[union-attr]
        status = JobStatus.SUCCEEDED if index in scores else JobStatus.QUEUED
        out.append(record(job_id, job, status, scores.get(index), study_id=spec.study_id))
    return out


def promoted(jobs: list[tuple[str, JobSpec]]) -> list[tuple[int, int]]:
    return [(job.trial.index, job.trial.rung) for _, job in jobs if job.trial.rung > 0]  # type: ignore[union-attr]


@pytest.mark.parametrize(("finished_count", "expected"), [(2, []), (3, [(2, 1)]), (5, [(4, 1)]), (6, [(5, 1), (4, 1)])])
def test_the_top_floor_n_over_eta_of_a_rungs_finished_jobs_are_promoted(finished_count, expected):
    spec = asha()
    jobs = rung_zero(spec, {k: 0.1 * k for k in range(finished_count)})  # the later a trial, the better
    assert promoted(decide_until_done(spec, jobs)) == expected


def decide_until_done(spec: StudySpec, jobs: list[JobRecord]) -> list[tuple[str, JobSpec]]:
    """What advance_search creates in one settlement: rounds of next_jobs (one promotion per rung
    each), each round's jobs created QUEUED, until a round wants nothing."""
    created: list[tuple[str, JobSpec]] = []
    while chosen := [pair for pair in next_jobs(spec, jobs) if pair[0] not in {j.job_id for j in jobs}]:
        created += chosen
        jobs = jobs + [record(job_id, job, JobStatus.QUEUED, study_id=spec.study_id) for job_id, job in chosen]
    return created


def test_a_promotion_resumes_its_rung_job_for_the_next_rungs_epochs():
    spec = asha()
    jobs = rung_zero(spec, {0: 0.9, 1: 0.5, 2: 0.4})
    ((job_id, job),) = next_jobs(spec, jobs)
    parent = jobs[0]
    assert job_id == promotion_job_id(spec.study_id, 1, 0)  # rung 1's first slot
    assert (job.trial.index, job.trial.rung) == (0, 1)  # type: ignore[union-attr]
    assert job.parent_job_id == parent.job_id and job.training.epochs == 3 and job.training.early_stopping is None
    assert job.trial.params == parent.spec.trial.params  # type: ignore[union-attr]
    assert (job.model, job.optimizer, job.training.batch_size) == (
        parent.spec.model, parent.spec.optimizer, parent.spec.training.batch_size)
    assert parent.spec.training.epochs == 1 and parent.spec.training.early_stopping is None  # ASHA stops early itself


def test_each_trial_is_promoted_once():
    spec = asha()
    jobs = rung_zero(spec, {0: 0.9, 1: 0.5, 2: 0.4})
    ((job_id, job),) = next_jobs(spec, jobs)
    jobs.append(record(job_id, job, JobStatus.QUEUED, study_id=spec.study_id))
    assert promoted(next_jobs(spec, jobs)) == []
    more = rung_zero(spec, {0: 0.9, 1: 0.5, 2: 0.4, 3: 0.1, 4: 0.2, 5: 0.3})  # 6 finished: the top 2 are trials 0 and 1
    assert promoted(next_jobs(spec, [*more, jobs[-1]])) == [(1, 1)]


def test_promotions_to_the_top_rungs_come_first_and_before_new_trials():
    spec = asha(count=12, parallel=3)
    jobs = rung_zero(spec, {0: 0.9, 1: 0.8, 2: 0.7})  # the first window: 3 trials, all finished
    for parent in list(jobs):  # as if all three had reached rung 1 and finished it
        child_id, child = promotion(spec, spec.study_id, parent, parent.spec.trial.index)  # type: ignore[union-attr]
        score_at_rung_1 = 0.5 + 0.1 * parent.spec.trial.index  # type: ignore[union-attr]
        jobs.append(record(child_id, child, JobStatus.SUCCEEDED, score_at_rung_1, study_id=spec.study_id))
    chosen = next_jobs(spec, jobs)
    assert promoted(chosen)[0] == (2, 2)  # rung 1's best goes to rung 2 first
    assert [job.trial.index for _, job in chosen[1:]] == [3, 4]  # type: ignore[union-attr]


@pytest.mark.parametrize(("count", "eta", "min_epochs", "epochs", "jobs", "total_epochs"), [
    (9, 3, 1, 9, 9 + 3 + 1, 9 * 1 + 3 * 2 + 1 * 6),
    (27, 3, 1, 27, 27 + 9 + 3 + 1, 27 * 1 + 9 * 2 + 3 * 6 + 1 * 18),
    (10, 2, 2, 10, 10 + 5 + 2 + 1, 10 * 2 + 5 * 2 + 2 * 4 + 1 * 2),
    (5, 3, 1, 9, 5 + 1 + 0, 5 * 1 + 1 * 2),
    (2, 3, 1, 9, 2, 2),
])
def test_asha_upper_bound_counts_floor_n_over_eta_per_rung_and_their_extra_epochs(
        count, eta, min_epochs, epochs, jobs, total_epochs):
    assert upper_bound(asha(count, eta, min_epochs, epochs)) == Bound(trials=count, jobs=jobs, epochs=total_epochs)


def test_upper_bound_of_other_methods_and_under_a_job_budget():
    assert upper_bound(study({"method": "tpe", "count": 6})) == Bound(trials=6, jobs=6, epochs=54)
    assert upper_bound(study({"method": "tpe", "count": 6}, budget={"jobs": 2})) == Bound(trials=6, jobs=2, epochs=18)
    # 30 jobs of 27 epochs would be more than ASHA's own bound of 81 epochs: that one stands
    assert upper_bound(asha(27, epochs=27, budget={"jobs": 30})) == Bound(trials=27, jobs=30, epochs=81)


def increasing(job: JobRecord) -> float:
    """Each trial better than the ones before it, each rung better than the one before."""
    return job.spec.trial.index / 100 + job.spec.trial.rung  # type: ignore[union-attr]


@pytest.mark.parametrize(("count", "eta", "epochs"), [(9, 3, 9), (12, 2, 8)])
def test_asha_keeps_to_its_upper_bound_when_each_result_beats_the_earlier_ones(local_backend, count, eta, epochs):
    # Without a cap, asynchronous promotion would promote nearly every trial here: each new result
    # is the best so far, so it is in its rung's top 1/eta when it arrives.
    spec = asha(count, eta, epochs=epochs, parallel=1)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec, scorer=increasing)
    driver.run()
    jobs, bound = driver.jobs(), upper_bound(spec)
    assert [rung.finished for rung in summary(spec, jobs).rungs] == [count // eta**i for i in range(len(rungs(spec)))]
    assert len(train_jobs(jobs)) == bound.jobs and summary(spec, jobs).epochs_trained == bound.epochs


# --- what a study shows ---------------------------------------------------------------------------


def scenario(spec: StudySpec) -> list[JobRecord]:
    """ASHA, 9 trials, rungs 1/3/9: trials 0-5 finished rung 0; 5 finished rung 1 (3 epochs, 2 of them
    new); 4 is 2 epochs into rung 1 (1 new); 6 runs rung 0, 7 is queued, 8 is not created."""
    jobs = {index: drawn_trial(spec, index)[0] for index in range(8)}
    out = [record(*jobs[k], JobStatus.SUCCEEDED, 0.1 * k, 1, spec.study_id) for k in range(6)]
    out += [record(*jobs[6], JobStatus.RUNNING, study_id=spec.study_id),
            record(*jobs[7], JobStatus.QUEUED, study_id=spec.study_id)]
    for index, status, epochs_run in ((5, JobStatus.SUCCEEDED, 3), (4, JobStatus.RUNNING, 2)):
        job_id, job = promotion(spec, spec.study_id, out[index], 5 - index)
        val_accuracy = 0.9 if status is JobStatus.SUCCEEDED else None
        out.append(record(job_id, job, status, val_accuracy, epochs_run, spec.study_id))
    return out


def test_summary_counts_trials_rungs_and_epochs_trained_once():
    spec = asha(parallel=4, budget={"jobs": 20, "usd": 1.0})
    view = summary(spec, scenario(spec)).as_json()
    assert {k: view[k] for k in ("method", "count", "created", "done", "running", "queued", "planned", "complete")} == {
        "method": "asha", "count": 9, "created": 8, "done": 5, "running": 2, "queued": 1, "planned": 1,
        "complete": False}
    assert view["epochs_trained"] == 6 * 1 + (3 - 1) + (2 - 1)  # a promotion's resumed epochs are its parent's
    assert [(r["epochs"], r["finished"], r["running"], r["queued"], r["promoted"]) for r in view["rungs"]] == [
        (1, 6, 1, 1, 2), (3, 1, 1, 0, 0), (9, 0, 0, 0, 0)]
    assert view["budget"] == {"jobs": [10, 20], "gpu_hours": [0.0, None], "usd": [0.0, 1.0], "reached": False}


def test_trial_view_marks_superseded_jobs_at_once_and_stopped_ones_once_the_search_is_complete():
    spec = asha(parallel=4)
    jobs = scenario(spec)
    view = trial_view(spec, jobs)
    by_key = {(v.index, v.rung): v for v in view.values()}
    assert by_key[(5, 0)].superseded and not by_key[(4, 0)].superseded  # rung 1 of trial 4 still runs
    assert (by_key[(5, 1)].rung_epochs, by_key[(0, 0)].rung_epochs) == (3, 1)
    assert not any(v.stopped_early for v in view.values())  # more results may promote any of them yet


def test_in_a_complete_asha_study_the_unpromoted_trials_stopped_early_and_rank_by_their_last_rung():
    spec = asha(count=3, eta=3, epochs=3, parallel=3)  # rungs 1 and 3
    jobs = rung_zero(spec, {0: 0.5, 1: 0.6, 2: 0.7})
    ((job_id, job),) = next_jobs(spec, jobs)
    jobs.append(record(job_id, job, JobStatus.SUCCEEDED, 0.65, 3, spec.study_id))  # trial 2 got worse: still its score
    assert search_complete(spec, jobs)
    view = trial_view(spec, jobs)
    ordered = sorted(view.values(), key=lambda v: (v.index, v.rung))
    assert [(v.index, v.rung, v.stopped_early, v.superseded) for v in ordered] == [
        (0, 0, True, False), (1, 0, True, False), (2, 0, False, True), (2, 1, False, False)]
    assert sorted(r.job_id for r in latest_rungs(jobs)) == sorted([jobs[0].job_id, jobs[1].job_id, job_id])
    ranked = [(r.record.spec.trial.index, r.score) for r in rank(jobs)]  # type: ignore[union-attr]
    assert ranked == [(2, 0.65), (1, 0.6), (0, 0.5)]


def test_latest_rungs_keeps_grid_jobs_and_a_rung_whose_successor_did_not_succeed():
    spec = asha(count=3, eta=3, epochs=3, parallel=3)
    jobs = rung_zero(spec, {0: 0.5, 1: 0.6, 2: 0.7})
    ((job_id, job),) = next_jobs(spec, jobs)
    failed = record(job_id, job, JobStatus.FAILED, study_id=spec.study_id)
    grid_job = record("gridjob00001", next(expand(study({"method": "grid"}, parameters=LISTS_ONLY["parameters"])))[1])
    assert latest_rungs([*jobs, failed, grid_job]) == [*jobs, failed, grid_job]


# --- budgets and windows --------------------------------------------------------------------------


def run_within_window(driver: Driver, window: int) -> int:
    """Settle every job, checking after each settlement that at most `window` training jobs are in flight."""
    steps = 0
    while driver.step():
        steps += 1
        unfinished = [j for j in train_jobs(driver.jobs()) if not j.status.finished]
        assert len(unfinished) <= window and steps < 500
    return steps


FOLLOWUP = {"evaluate": {"top": 1}}


@pytest.mark.parametrize("search", [
    {"method": "random", "count": 10, "seed": 1, "parallel": 3},
    {"method": "asha", "count": 10, "seed": 1, "min_epochs": 1, "reduction_factor": 2, "parallel": 3},
    {"method": "tpe", "count": 8, "seed": 1, "startup": 2, "parallel": 3},
], ids=lambda search: search["method"])
def test_a_job_budget_caps_the_jobs_created_across_settlements_then_follow_ups_start(local_backend, search):
    spec = study(search, budget={"jobs": 5}, **FOLLOWUP)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec)
    run_within_window(driver, 3)
    jobs = driver.jobs()
    assert len(train_jobs(jobs)) == 5 and driver.complete()
    assert [job.kind for job in jobs].count("evaluate") == 1 and {"evaluate": 1} in driver.stages
    assert summary(spec, jobs).budget["reached"]  # type: ignore[index]


@pytest.mark.parametrize(("budget", "created"), [
    ({"gpu_hours": 0.1}, 4 + 3),  # 90 s a job: the 4th settled reaches 360 s; each before it freed a slot
    ({"usd": 0.2}, 4 + 2),  # $0.09 a job: the 3rd settled reaches $0.27
], ids=["gpu_hours", "usd"])
def test_a_spending_budget_stops_enqueuing_once_reached_within_a_window_of_four(local_backend, budget, created):
    spec = study({"method": "random", "count": 20, "seed": 2}, budget=budget, **FOLLOWUP)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec)
    run_within_window(driver, 4)
    jobs = driver.jobs()
    assert len(train_jobs(jobs)) == created and driver.complete()
    assert [job.kind for job in jobs].count("evaluate") == 1
    view = summary(spec, jobs).budget
    assert view is not None and view["reached"] and view["jobs"] == [created, None]


def test_a_running_job_is_left_alone_when_the_budget_is_reached_and_follow_ups_wait_for_it(local_backend):
    spec = study({"method": "random", "count": 20, "seed": 2}, budget={"usd": 0.2}, **FOLLOWUP)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec)
    first = train_jobs(driver.jobs())[0]
    held = local_backend.store.claim(spec.study_id, first.job_id, "slow-worker", 600.0, time.time())
    assert held is not None
    while driver.step():  # the others settle and reach the budget; the held job's message comes back too
        pass
    now = local_backend.store.get_job(spec.study_id, held.job_id)
    assert now is not None and now.status is JobStatus.RUNNING
    assert (now.attempt, now.lease_owner) == (held.attempt, "slow-worker")
    assert summary(spec, driver.jobs()).budget["reached"] and not driver.complete()  # type: ignore[index]
    assert "evaluate" not in [job.kind for job in driver.jobs()]
    created = len(train_jobs(driver.jobs()))
    driver.finish(held)
    assert driver.advance() == {"evaluate": 1} and len(train_jobs(driver.jobs())) == created


@pytest.mark.parametrize("search", [
    {"method": "asha", "count": 12, "seed": 3, "min_epochs": 1, "reduction_factor": 3, "parallel": 2},
    {"method": "tpe", "count": 6, "seed": 3, "startup": 2, "parallel": 2},
    {"method": "sobol", "count": 6, "seed": 3, "parallel": 2},
], ids=lambda search: search["method"])
def test_a_window_is_never_exceeded_and_the_study_ends_with_count_trials(local_backend, search):
    spec = study(search)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec)
    run_within_window(driver, 2)
    view = summary(spec, driver.jobs())
    assert (view.created, view.done, view.planned, view.complete) == (search["count"], search["count"], 0, True)


@pytest.mark.parametrize(("search", "budget", "repeats", "created"), [
    ({"method": "random", "count": 3, "seed": 1, "parallel": 1}, None, 2, 3 * 2),  # a window of 1 runs each trial
    ({"method": "sobol", "count": 3, "seed": 1}, {"gpu_hours": 1.0}, 5, 3 * 5),  # the budget's window of 4, likewise
    ({"method": "random", "count": 3, "seed": 1}, {"jobs": 5}, 2, 2 * 2),  # 1 job left is no trial: the budget is spent
], ids=["parallel-below-repeats", "spending-budget", "job-budget-between-trials"])
def test_a_trials_repeats_start_together_whatever_the_window_and_the_search_ends(
        local_backend, search, budget, repeats, created):
    spec = study(search, training={"epochs": 2, "repeats": repeats}, budget=budget, **FOLLOWUP)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec)
    driver.run()
    jobs = driver.jobs()
    assert len(train_jobs(jobs)) == created and driver.complete()
    assert [job.kind for job in jobs].count("evaluate") == 1  # the follow-ups start: the search is over


def test_too_few_asha_trials_for_the_top_rung_is_said_at_submission():
    few = asha(count=8)  # eta 3, rungs 1/3/9: 8 // 9 = 0 trials can reach 9 epochs
    assert study_warnings(few) == [
        "search.count: 8 trials with reduction_factor 3 reach at most rung 1 (3 epochs): none trains to "
        "training.epochs (9); use count >= 9"]
    assert study_warnings(asha(count=9)) == []
