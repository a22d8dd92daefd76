"""The JobStore contract (shared.ports.JobStore), for every adapter."""

from __future__ import annotations

import time

import pytest

from shared.errors import LeaseLostError, NotFoundError
from shared.jobs import EpochRecord, Metrics
from shared.status import JobStatus
from tests.factories import job_record, study_record

LEASE = 30.0


def test_put_study_is_idempotent_and_listed_newest_first(store):
    assert store.put_study(study_record("old", created_at=1000.0)) is True
    assert store.put_study(study_record("new", created_at=2000.0)) is True
    assert store.put_study(study_record("old", created_at=3000.0)) is False
    assert [s.study_id for s in store.list_studies()] == ["new", "old"]
    assert store.get_study("old").created_at == 1000.0
    assert store.get_study("missing") is None


def test_mark_stage_is_true_once(store):
    store.put_study(study_record("s-1"))
    assert store.mark_stage("s-1", "finetune") is True
    assert store.mark_stage("s-1", "finetune") is False
    assert store.get_study("s-1").stages == ["finetune"]


def test_create_jobs_creates_only_missing(store):
    a, b = job_record(learning_rate=0.1), job_record(learning_rate=0.2)
    assert sorted(store.create_jobs([a])) == [a.job_id]
    assert sorted(store.create_jobs([a, b])) == [b.job_id]
    assert sorted(j.job_id for j in store.list_jobs("s-1")) == sorted([a.job_id, b.job_id])
    assert store.find_job(b.job_id).spec == b.spec


def test_create_jobs_in_many_batches(store):
    records = [job_record(learning_rate=0.001 * (i + 1)) for i in range(60)]
    assert len(store.create_jobs(records)) == 60
    assert len(store.list_jobs("s-1", JobStatus.QUEUED)) == 60


def test_claim_takes_queued_job_with_lease_and_attempt(store):
    job = job_record()
    store.create_jobs([job])
    now = time.time()
    claimed = store.claim("s-1", job.job_id, "w1", LEASE, now)
    assert claimed.status == JobStatus.RUNNING and claimed.attempt == 1
    assert claimed.lease_owner == "w1" and claimed.lease_expires_at == pytest.approx(now + LEASE)
    assert store.claim("s-1", job.job_id, "w2", LEASE, now + 1) is None  # leased by w1


def test_expired_lease_is_taken_over_and_old_holder_fenced_out(store):
    job = job_record()
    store.create_jobs([job])
    now = time.time()
    first = store.claim("s-1", job.job_id, "w1", LEASE, now)
    second = store.claim("s-1", job.job_id, "w2", LEASE, now + LEASE + 1)
    assert second.attempt == first.attempt + 1 and second.lease_owner == "w2"
    with pytest.raises(LeaseLostError):
        store.renew("s-1", job.job_id, first.attempt, LEASE, now + LEASE + 2)
    with pytest.raises(LeaseLostError):
        store.update("s-1", job.job_id, first.attempt, {"epochs_run": 3})
    with pytest.raises(LeaseLostError):
        store.finish("s-1", job.job_id, first.attempt, JobStatus.SUCCEEDED, {})
    store.finish("s-1", job.job_id, second.attempt, JobStatus.SUCCEEDED, {"epochs_run": 2})
    final = store.get_job("s-1", job.job_id)
    assert (final.status, final.epochs_run, final.lease_owner) == (JobStatus.SUCCEEDED, 2, None)


def test_renew_extends_lease(store):
    job = job_record()
    store.create_jobs([job])
    now = time.time()
    claimed = store.claim("s-1", job.job_id, "w1", LEASE, now)
    renewed = store.renew("s-1", job.job_id, claimed.attempt, LEASE, now + 20)
    assert renewed.lease_expires_at == pytest.approx(now + 20 + LEASE)
    assert store.claim("s-1", job.job_id, "w2", LEASE, now + LEASE + 1) is None


def test_update_and_finish_keep_all_fields(store):
    job = job_record()
    store.create_jobs([job])
    claimed = store.claim("s-1", job.job_id, "w1", LEASE, time.time())
    store.update("s-1", job.job_id, claimed.attempt, {"epochs_run": 2, "total_params": 1234})
    metrics = Metrics(val_accuracy=0.875, val_loss=0.25).model_dump()
    store.finish(
        "s-1", job.job_id, claimed.attempt, JobStatus.SUCCEEDED,
        {"metrics": metrics, "train_seconds": 12.5, "cost_usd": 0.0017, "artifacts": {"log": "x/log.csv"}},
    )
    final = store.get_job("s-1", job.job_id)
    assert final.metrics.val_accuracy == 0.875 and final.train_seconds == 12.5
    assert final.cost_usd == pytest.approx(0.0017) and final.artifacts == {"log": "x/log.csv"}
    assert final.total_params == 1234 and final.epochs_run == 2


def test_finished_job_cannot_be_claimed_again(store):
    job = job_record()
    store.create_jobs([job])
    claimed = store.claim("s-1", job.job_id, "w1", LEASE, time.time())
    store.finish("s-1", job.job_id, claimed.attempt, JobStatus.SUCCEEDED, {})
    assert store.claim("s-1", job.job_id, "w2", LEASE, time.time() + 10 * LEASE) is None


def test_preempted_job_goes_back_to_queued_and_is_claimed_again(store):
    job = job_record()
    store.create_jobs([job])
    claimed = store.claim("s-1", job.job_id, "w1", LEASE, time.time())
    store.finish("s-1", job.job_id, claimed.attempt, JobStatus.QUEUED, {"preemptions": 1})
    again = store.claim("s-1", job.job_id, "w2", LEASE, time.time())
    assert again.attempt == 2 and again.preemptions == 1


def test_reset_moves_only_from_allowed_statuses(store):
    job = job_record()
    store.create_jobs([job])
    claimed = store.claim("s-1", job.job_id, "w1", LEASE, time.time())
    store.finish("s-1", job.job_id, claimed.attempt, JobStatus.FAILED, {"error": "boom"})
    assert store.reset("s-1", job.job_id, [JobStatus.SUCCEEDED], JobStatus.QUEUED, {}) is False
    assert store.reset("s-1", job.job_id, [JobStatus.FAILED], JobStatus.QUEUED, {"error": None}) is True
    assert store.get_job("s-1", job.job_id).status == JobStatus.QUEUED
    assert store.reset("s-1", job.job_id, [JobStatus.QUEUED], JobStatus.CANCELLED, {}) is True
    assert store.claim("s-1", job.job_id, "w1", LEASE, time.time()) is None


def test_request_cancel_flags_running_job(store):
    job = job_record()
    store.create_jobs([job])
    assert store.request_cancel("s-1", job.job_id) is False  # not running
    store.claim("s-1", job.job_id, "w1", LEASE, time.time())
    assert store.request_cancel("s-1", job.job_id) is True
    assert store.get_job("s-1", job.job_id).cancel_requested is True


def test_epochs_are_upserted_and_fenced(store):
    job = job_record()
    store.create_jobs([job])
    claimed = store.claim("s-1", job.job_id, "w1", LEASE, time.time())

    def epoch(n: int, acc: float, attempt: int) -> EpochRecord:
        return EpochRecord(study_id="s-1", job_id=job.job_id, epoch=n, attempt=attempt, metrics={"val_accuracy": acc})

    store.put_epoch(epoch(2, 0.5, claimed.attempt))
    store.put_epoch(epoch(1, 0.25, claimed.attempt))
    store.put_epoch(epoch(2, 0.75, claimed.attempt))  # redone epoch replaces
    assert [(e.epoch, e.metrics["val_accuracy"]) for e in store.epochs("s-1", job.job_id)] == [(1, 0.25), (2, 0.75)]
    with pytest.raises(LeaseLostError):
        store.put_epoch(epoch(3, 0.9, claimed.attempt + 5))


def test_unknown_job_raises_not_found(store):
    with pytest.raises(NotFoundError):
        store.claim("s-1", "nope", "w1", LEASE, time.time())
    assert store.get_job("s-1", "nope") is None
    assert store.find_job("nope") is None
