"""The JobStore contract (shared.ports.JobStore), for every adapter.

Every error a method's docstring names is made to happen here, on every adapter: unknown jobs,
lost leases, refused field changes, and corrupt rows written past the port (`raw_rows`).
"""

from __future__ import annotations

import logging
import time

import pytest

from shared.errors import BadInputError, CorruptRecordError, LeaseLostError, NotFoundError
from shared.jobs import EpochRecord, Metrics
from shared.status import JobStatus
from tests.contract.raw_rows import put_epoch_row, put_job_row, put_study_row
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


def running_job(store, now: float | None = None):
    """A created and claimed job: (record as created, record as claimed)."""
    job = job_record()
    store.create_jobs([job])
    return job, store.claim("s-1", job.job_id, "w1", LEASE, time.time() if now is None else now)


def test_create_jobs_keeps_the_first_of_duplicate_ids(store):
    first, second = job_record(), job_record(error="second")
    assert store.create_jobs([first, second]) == [first.job_id]
    assert store.get_job("s-1", first.job_id).error is None


# --- NotFoundError ---


def test_every_method_that_names_a_job_raises_not_found_for_an_unknown_one(store):
    epoch = EpochRecord(study_id="s-1", job_id="nope", epoch=1, attempt=1, metrics={"loss": 1.0})
    calls = {
        "claim": lambda: store.claim("s-1", "nope", "w1", LEASE, time.time()),
        "renew": lambda: store.renew("s-1", "nope", 1, LEASE, time.time()),
        "update": lambda: store.update("s-1", "nope", 1, {"epochs_run": 1}),
        "finish": lambda: store.finish("s-1", "nope", 1, JobStatus.SUCCEEDED, {}),
        "reset": lambda: store.reset("s-1", "nope", [JobStatus.FAILED], JobStatus.QUEUED, {}),
        "reset to nowhere": lambda: store.reset("s-1", "nope", [JobStatus.SUCCEEDED], JobStatus.QUEUED, {}),
        "request_cancel": lambda: store.request_cancel("s-1", "nope"),
        "put_epoch": lambda: store.put_epoch(epoch),
        "mark_stage": lambda: store.mark_stage("nope", "finetune"),
    }
    for name, call in calls.items():
        with pytest.raises(NotFoundError, match="nope"):
            call()
            pytest.fail(f"{name} did not raise")
    assert store.get_job("s-1", "nope") is None and store.find_job("nope") is None
    assert store.get_study("nope") is None and store.list_jobs("nope") == [] and store.epochs("s-1", "nope") == []


# --- LeaseLostError ---


def test_a_finished_job_fences_out_its_own_holder(store):
    job, claimed = running_job(store)
    store.finish("s-1", job.job_id, claimed.attempt, JobStatus.FAILED, {"error": "boom"})
    epoch = EpochRecord(study_id="s-1", job_id=job.job_id, epoch=1, attempt=claimed.attempt, metrics={"loss": 1.0})
    for call in (
        lambda: store.renew("s-1", job.job_id, claimed.attempt, LEASE, time.time()),
        lambda: store.update("s-1", job.job_id, claimed.attempt, {"epochs_run": 9}),
        lambda: store.finish("s-1", job.job_id, claimed.attempt, JobStatus.SUCCEEDED, {}),
        lambda: store.put_epoch(epoch),
    ):
        with pytest.raises(LeaseLostError, match=f"attempt {claimed.attempt} is fenced out"):
            call()
    final = store.get_job("s-1", job.job_id)
    assert (final.status, final.epochs_run, final.error) == (JobStatus.FAILED, 0, "boom")
    assert store.epochs("s-1", job.job_id) == []


# --- BadInputError: identity and lease fields never change through update, finish or reset ---

HOLDER_REFUSED = {
    "study_id": "s-2",
    "job_id": "other",
    "spec": job_record(learning_rate=0.5).spec.model_dump(),
    "status": "SUCCEEDED",
    "attempt": 7,
    "lease_owner": "w2",
    "lease_expires_at": 0.0,
}


@pytest.mark.parametrize("field", sorted(HOLDER_REFUSED))
def test_update_and_finish_refuse_identity_and_lease_fields_and_change_nothing(store, field):
    job, claimed = running_job(store)
    changes = {"epochs_run": 5, field: HOLDER_REFUSED[field]}
    with pytest.raises(BadInputError, match=f"^changes.{field}: ") as raised:
        store.update("s-1", job.job_id, claimed.attempt, changes)
    assert raised.value.path == f"changes.{field}"
    with pytest.raises(BadInputError, match=f"^changes.{field}: "):
        store.finish("s-1", job.job_id, claimed.attempt, JobStatus.SUCCEEDED, changes)
    assert store.get_job("s-1", job.job_id) == claimed  # the allowed field was not written either
    assert store.find_job(job.job_id) == claimed


@pytest.mark.parametrize("field", ["study_id", "job_id", "spec", "status", "attempt"])
def test_reset_refuses_identity_status_and_attempt_and_changes_nothing(store, field):
    job, claimed = running_job(store)
    changes = {"lease_owner": None, field: HOLDER_REFUSED[field]}
    with pytest.raises(BadInputError, match=f"^changes.{field}: "):
        store.reset("s-1", job.job_id, [JobStatus.RUNNING], JobStatus.QUEUED, changes)
    assert store.get_job("s-1", job.job_id) == claimed


def test_reset_may_clear_a_lapsed_lease(store):
    job, claimed = running_job(store, now=1000.0)
    changes = {"lease_owner": None, "lease_expires_at": None}
    assert store.reset("s-1", job.job_id, [JobStatus.RUNNING], JobStatus.QUEUED, changes) is True
    reset = store.get_job("s-1", job.job_id)
    assert (reset.status, reset.lease_owner, reset.lease_expires_at) == (JobStatus.QUEUED, None, None)
    assert reset.attempt == claimed.attempt


def test_unknown_fields_and_invalid_values_are_refused_before_the_fence(store):
    job, claimed = running_job(store)
    stale = claimed.attempt + 1  # a fenced-out writer still hears about its bad input first
    with pytest.raises(BadInputError, match="^changes.epoch_run: a job record has no such field"):
        store.update("s-1", job.job_id, stale, {"epoch_run": 3})
    with pytest.raises(BadInputError, match="^changes.epochs_run: invalid value"):
        store.update("s-1", job.job_id, claimed.attempt, {"epochs_run": "many"})
    with pytest.raises(BadInputError, match="^changes.metrics: invalid value"):
        store.finish("s-1", job.job_id, claimed.attempt, JobStatus.SUCCEEDED, {"metrics": "great"})
    with pytest.raises(BadInputError, match="^changes.error: invalid value"):
        store.reset("s-1", job.job_id, [JobStatus.RUNNING], JobStatus.QUEUED, {"error": ["a", "list"]})
    assert store.get_job("s-1", job.job_id) == claimed


@pytest.mark.parametrize("status", [JobStatus.RUNNING, "DONE"])
def test_finish_refuses_a_status_a_job_cannot_finish_with(store, status):
    job, claimed = running_job(store)
    with pytest.raises(BadInputError, match="^status: a job cannot finish as"):
        store.finish("s-1", job.job_id, claimed.attempt, status, {"epochs_run": 1})
    assert store.get_job("s-1", job.job_id) == claimed


# --- CorruptRecordError: rows that do not validate, read back ---


def corrupted(record, **fields) -> dict:
    """`record` as JSON with `fields` replaced; `spec_image_size` reaches into the spec."""
    data = record.model_dump(mode="json")
    if "spec_image_size" in fields:
        data["spec"]["model"]["image_size"] = fields.pop("spec_image_size")
    return {**data, **fields}


@pytest.mark.parametrize(
    "fields, path",
    [({"spec_image_size": 3}, "spec.model.image_size"), ({"epochs_run": "many"}, "epochs_run"),
     ({"job_id": "someone-else"}, "job_id")],
)
def test_a_corrupt_job_raises_naming_its_ids_and_first_bad_field(store, fields, path):
    job = job_record()
    store.create_jobs([job])
    put_job_row(store, "s-1", job.job_id, corrupted(job, **fields))
    for read in (
        lambda: store.get_job("s-1", job.job_id),
        lambda: store.claim("s-1", job.job_id, "w1", LEASE, time.time()),
    ):
        with pytest.raises(CorruptRecordError, match=f"job {job.job_id} of study s-1: .* at {path}"):
            read()
    if path != "job_id":  # find_job looks the row up by the job id it stores
        with pytest.raises(CorruptRecordError, match=f"job {job.job_id} of study s-1: .* at {path}"):
            store.find_job(job.job_id)


def test_a_job_corrupted_while_running_fails_its_holders_transitions(store):
    job, claimed = running_job(store)
    put_job_row(store, "s-1", job.job_id, corrupted(claimed, spec_image_size=3))
    for call in (
        lambda: store.renew("s-1", job.job_id, claimed.attempt, LEASE, time.time()),
        lambda: store.finish("s-1", job.job_id, claimed.attempt, JobStatus.FAILED, {"error": "x"}),
    ):
        with pytest.raises(CorruptRecordError, match="at spec.model.image_size"):
            call()


def test_a_corrupt_study_raises_when_read_alone(store):
    store.put_study(study_record("s-1"))
    put_study_row(store, "s-1", {**study_record("s-1").model_dump(mode="json"), "created_at": "yesterday"})
    with pytest.raises(CorruptRecordError, match="study s-1: .* at created_at"):
        store.get_study("s-1")


def test_listings_leave_corrupt_rows_out_with_a_warning(store, caplog):
    store.put_study(study_record("s-1", created_at=1000.0))
    store.put_study(study_record("s-2", created_at=2000.0))
    put_study_row(store, "s-2", {**study_record("s-2").model_dump(mode="json"), "spec": "not a map"})
    good, bad = job_record(learning_rate=0.1), job_record(learning_rate=0.2)
    store.create_jobs([good, bad])
    put_job_row(store, "s-1", bad.job_id, corrupted(bad, spec_image_size=3))
    claimed = store.claim("s-1", good.job_id, "w1", LEASE, time.time())
    store.put_epoch(EpochRecord(study_id="s-1", job_id=good.job_id, epoch=1, attempt=claimed.attempt, metrics={}))
    epoch_2 = EpochRecord(study_id="s-1", job_id=good.job_id, epoch=2, attempt=claimed.attempt, metrics={})
    put_epoch_row(store, "s-1", good.job_id, 2, {**epoch_2.model_dump(mode="json"), "metrics": {"loss": "low"}})
    with caplog.at_level(logging.WARNING):
        assert [s.study_id for s in store.list_studies()] == ["s-1"]
        assert [j.job_id for j in store.list_jobs("s-1")] == [good.job_id]
        assert [e.epoch for e in store.epochs("s-1", good.job_id)] == [1]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "study s-2: " in warned and f"job {bad.job_id} of study s-1: " in warned and "metrics.loss" in warned


# --- mark_enqueued: the stamp of the one enqueue path ---


def test_mark_enqueued_stamps_unfinished_jobs_only_and_never_backwards(store):
    queued, running, done = job_record(learning_rate=0.1), job_record(learning_rate=0.2), job_record(learning_rate=0.3)
    store.create_jobs([queued, running, done])
    now = time.time()
    store.claim("s-1", running.job_id, "w1", LEASE, now)
    finished = store.claim("s-1", done.job_id, "w1", LEASE, now)
    store.finish("s-1", done.job_id, finished.attempt, JobStatus.SUCCEEDED, {})
    ids = [done.job_id, running.job_id, "unknown-job", queued.job_id, queued.job_id]
    assert store.mark_enqueued("s-1", ids, 1000.0) == [running.job_id, queued.job_id]
    assert store.mark_enqueued("s-1", [queued.job_id], 900.0) == []  # a later stamp is kept
    assert store.mark_enqueued("missing-study", [queued.job_id], 2000.0) == []
    stamps = {j.job_id: j.enqueued_at for j in store.list_jobs("s-1")}
    assert stamps == {queued.job_id: 1000.0, running.job_id: 1000.0, done.job_id: None}
    again = store.get_job("s-1", running.job_id)
    assert (again.status, again.attempt, again.lease_owner) == (JobStatus.RUNNING, 1, "w1")  # nothing else moved


def test_mark_enqueued_in_many_batches(store):
    records = [job_record(learning_rate=0.001 * (i + 1)) for i in range(130)]
    store.create_jobs(records)
    ids = [r.job_id for r in records]
    assert store.mark_enqueued("s-1", ids, 5.0) == ids
    assert {j.enqueued_at for j in store.list_jobs("s-1")} == {5.0}


# --- acquire_lock: one holder at a time, lapsing ---


def test_a_lock_has_one_holder_until_it_lapses(store):
    assert store.acquire_lock("reconciler", "w1", 60.0, 1000.0) is True
    assert store.acquire_lock("reconciler", "w2", 60.0, 1030.0) is False
    assert store.acquire_lock("reconciler", "w1", 60.0, 1030.0) is False  # not even its own holder
    assert store.acquire_lock("other-lock", "w2", 60.0, 1030.0) is True  # locks are independent
    assert store.acquire_lock("reconciler", "w2", 60.0, 1060.0) is True  # lapsed
    assert store.acquire_lock("reconciler", "w1", 60.0, 1100.0) is False


@pytest.mark.parametrize(("name", "ttl_s", "path"), [("Bad Name", 60.0, "name"), ("../x", 60.0, "name"),
                                                     ("ok", 0.0, "ttl_s"), ("ok", float("nan"), "ttl_s")])
def test_acquire_lock_refuses_a_bad_name_or_duration(store, name, ttl_s, path):
    with pytest.raises(BadInputError) as raised:
        store.acquire_lock(name, "w1", ttl_s, 1000.0)
    assert raised.value.path == path
    assert store.acquire_lock("ok", "w1", 60.0, 1000.0) is True  # nothing was taken
