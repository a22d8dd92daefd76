"""One rule for repeats (issue 17): every selection ranks configurations by the mean over their
succeeded repeats and stands for each by its best repeat: the leaderboard, fine-tuning,
evaluation and the report. Records are real domain objects, built in memory."""

from __future__ import annotations

import pytest

from shared.followups import evaluation_candidates, finetune_candidates, finetune_spec
from shared.jobs import JobRecord, job_id_for
from shared.ranking import rank, top_succeeded
from shared.status import JobStatus
from submitter.leaderboard import for_table, leaderboard
from tests.factories import job_spec

STUDY = "ranking"


def job(learning_rate: float, val_accuracy: float | None, seed: int = 0, status: JobStatus = JobStatus.SUCCEEDED,
        architecture: str = "mobilenet_v2") -> JobRecord:
    spec = job_spec(architecture, learning_rate, seed=seed).model_copy(update={"repeat": seed})
    metrics = {} if val_accuracy is None else {"val_accuracy": val_accuracy}
    return JobRecord(study_id=STUDY, job_id=job_id_for(STUDY, spec), spec=spec, status=status, metrics=metrics)


def finetuned(parent: JobRecord, val_accuracy: float) -> JobRecord:
    spec = finetune_spec(parent)
    return JobRecord(study_id=STUDY, job_id=job_id_for(STUDY, spec), spec=spec, status=JobStatus.SUCCEEDED,
                     metrics={"val_accuracy": val_accuracy})


@pytest.fixture
def jobs() -> dict[str, JobRecord]:
    """T: a lucky seed (0.95) and a bad one (0.60), mean 0.775; U: one run, 0.78; F: U fine-tuned, 0.80."""
    records = {"T0": job(0.1, 0.95, seed=0), "T1": job(0.1, 0.60, seed=1), "U": job(0.2, 0.78)}
    records["F"] = finetuned(records["U"], 0.80)
    return records


def test_configurations_are_ranked_by_their_mean_and_stand_for_their_best_repeat(jobs):
    ranked = rank(jobs.values(), kind="train")
    assert [(r.record.job_id, r.repeats) for r in ranked] == [(jobs["U"].job_id, 1), (jobs["T0"].job_id, 2)]
    assert ranked[1].mean == pytest.approx(0.775) and ranked[1].score == 0.95
    assert {m.job_id for m in ranked[1].members} == {jobs["T0"].job_id, jobs["T1"].job_id}


def test_every_selection_uses_the_same_rule(jobs):
    records = list(jobs.values())
    # by the best seed, T (0.95) would be fine-tuned and evaluated first; by the mean it is last
    assert finetune_candidates(records, 1) == [jobs["U"]]
    assert evaluation_candidates(records, 2) == [jobs["F"], jobs["U"]]
    assert evaluation_candidates(records, 3)[-1] == jobs["T0"]  # the configuration's best repeat stands for it
    board = leaderboard(records)
    assert list(board["job_id"]) == [r.job_id for r in evaluation_candidates(records, 3)]
    assert list(board["val_accuracy_mean"]) == pytest.approx([0.80, 0.78, 0.775])
    # the table shows what it sorts by: the mean, not the lucky seed's 0.95
    assert list(for_table(board)["val_acc"]) == pytest.approx([0.80, 0.78, 0.775])


def test_a_failed_repeat_does_not_drag_the_mean_but_counts_until_one_succeeds():
    done, failed = job(0.1, 0.9, seed=0), job(0.1, 0.1, seed=1, status=JobStatus.FAILED)
    (ranked,) = rank([done, failed])
    assert (ranked.mean, ranked.record, ranked.repeats) == (0.9, done, 2)
    running = job(0.3, 0.5, status=JobStatus.RUNNING)
    (progress,) = rank([running])
    assert progress.mean == 0.5  # nothing succeeded yet: placed by what it has so far ...
    assert top_succeeded([running, done, failed], 5, "train") == [done]  # ... but never selected


def test_unscored_configurations_come_last_and_benchmarks_are_not_fine_tuned(jobs):
    benchmark = job(0.5, 0.99, architecture="benchmark")
    queued = job(0.6, None, status=JobStatus.QUEUED)
    ranked = rank([*jobs.values(), benchmark, queued], kind="train")
    assert ranked[0].record == benchmark and ranked[-1].record == queued and ranked[-1].mean is None
    assert finetune_candidates([*jobs.values(), benchmark], 1) == [jobs["U"]]
