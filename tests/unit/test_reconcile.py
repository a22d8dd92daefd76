"""The reconciler and the one enqueue path on the embedded backend (real SQLite), each failure made
to happen: a send refused or its response lost (tests/faults.py), a purged queue, the queue's own
redrive, a lapsed lease, a follow-up nobody started, a cancel racing a claim. Time is passed in.
The same scenarios on moto's SQS and DynamoDB, with workers, are in tests/integration/test_reconcile.py."""

from __future__ import annotations

import json
import threading
import time

import pytest

from shared.errors import RetryableError
from shared.followups import advance_study
from shared.jobs import JobRecord, StudyRecord
from shared.ports import Backend
from shared.reconcile import ReconcilePolicy, reconcile, reconcile_if_due
from shared.status import JobStatus
from shared.study import StudySpec, expand, job_count, parse_study
from shared.submission import submit_jobs
from submitter import service
from tests.faults import FaultPlan, faulty_backend, throttled, timed_out

POLICY = ReconcilePolicy(max_failures=3, resend_grace_s=10.0, expired_margin_s=5.0)
LEASE_S = 3.0  # the local_backend fixture's lease and visibility timeout; max_receives is 3


def study_spec(optimizers: int = 3, **followups: object) -> StudySpec:
    return parse_study(json.dumps({
        "name": "reconcile", "dataset": "/data/flowers", "image_size": 32,
        "parameters": {"architecture": ["benchmark", "mobilenet_v2"][: 1 + bool(followups)], "weights": [None],
                       "optimizer": [{"name": "sgd", "learning_rate": 0.01 * (i + 1)} for i in range(optimizers)]},
        "training": {"epochs": 2}, **followups,
    }))


def put_study(backend: Backend, spec: StudySpec) -> None:
    backend.store.put_study(StudyRecord(study_id=spec.study_id, name=spec.name, created_at=time.time(),
                                        spec=spec.model_dump(mode="json"), job_count=job_count(spec)))


def submitted(backend: Backend, **kwargs: object) -> StudySpec:
    spec = study_spec(**kwargs)  # type: ignore[arg-type]
    put_study(backend, spec)
    submit_jobs(backend.store, backend.queue, spec.study_id, expand(spec))
    return spec


def queued_ids(backend: Backend) -> list[str]:
    """The job id of every message on the job queue (visible or not), sorted; duplicates repeat."""
    rows = backend.queue.db.read("SELECT body FROM messages WHERE dead = 0")
    return sorted(json.loads(row["body"])["job_id"] for row in rows)


def purge(backend: Backend) -> None:
    """Every message of the job queue lost (an operator's purge)."""
    with backend.queue.db.write() as conn:
        conn.execute("DELETE FROM messages WHERE dead = 0")


def job_ids(backend: Backend, spec: StudySpec) -> list[str]:
    return sorted(j.job_id for j in backend.store.list_jobs(spec.study_id))


def redriven_by_the_queue(backend: Backend) -> None:
    """Receive the one message until the queue's own redrive moves it to the dead letters (as
    kills do: each delivery that ends without a delete costs a receive)."""
    for _ in range(3):  # the fixture's max_receives
        [delivery] = backend.queue.receive(max_messages=1, wait_s=1)
        backend.queue.release(delivery.receipt)
    assert backend.queue.receive(max_messages=1, wait_s=0) == []
    assert backend.queue.counts().dead == 1 and backend.queue.counts().backlog == 0


# --- 1. one enqueue path: records, messages, stamps ---


def test_a_submission_whose_send_failed_is_finished_by_submitting_again(local_backend):
    spec = study_spec()
    put_study(local_backend, spec)
    plan = FaultPlan()
    plan.fail("queue.send", throttled())
    broken = faulty_backend(local_backend, plan)
    with pytest.raises(RetryableError):
        submit_jobs(broken.store, broken.queue, spec.study_id, expand(spec))
    assert queued_ids(local_backend) == [] and len(job_ids(local_backend, spec)) == 3  # records, no messages
    assert {j.enqueued_at for j in local_backend.store.list_jobs(spec.study_id)} == {None}
    report = submit_jobs(local_backend.store, local_backend.queue, spec.study_id, expand(spec))
    assert (report.created, report.existing, report.resent, report.sent) == (0, 3, 3, 3)
    assert queued_ids(local_backend) == job_ids(local_backend, spec)
    assert submit_jobs(local_backend.store, local_backend.queue, spec.study_id, expand(spec)).sent == 0  # done


def test_messages_sent_but_not_stamped_are_sent_again_once(local_backend):
    spec = study_spec()
    put_study(local_backend, spec)
    plan = FaultPlan()
    plan.fail("store.mark_enqueued", timed_out())  # stopped between the send and the stamp
    broken = faulty_backend(local_backend, plan)
    with pytest.raises(RetryableError):
        submit_jobs(broken.store, broken.queue, spec.study_id, expand(spec))
    assert queued_ids(local_backend) == job_ids(local_backend, spec)
    report = reconcile(local_backend, POLICY, time.time() + 60)
    assert sorted(report.sent_unsent) == job_ids(local_backend, spec)  # duplicates: harmless by the claim
    assert queued_ids(local_backend) == sorted(job_ids(local_backend, spec) * 2)
    assert not reconcile(local_backend, POLICY, time.time() + 120).changed


def test_a_lost_send_response_leaves_records_the_reconciler_stamps_after_its_grace(local_backend):
    spec = study_spec()
    put_study(local_backend, spec)
    plan = FaultPlan()
    plan.lose_response("queue.send")
    broken = faulty_backend(local_backend, plan)
    with pytest.raises(RetryableError):
        submit_jobs(broken.store, broken.queue, spec.study_id, expand(spec))
    now = time.time()
    assert reconcile(local_backend, POLICY, now).sent_unsent == []  # created just now: within the grace
    assert sorted(reconcile(local_backend, POLICY, now + POLICY.resend_grace_s + 1).sent_unsent) == job_ids(local_backend, spec)
    assert all(j.enqueued_at == now + POLICY.resend_grace_s + 1 for j in local_backend.store.list_jobs(spec.study_id))


# --- 2. messages lost: a purge, the retention, a lapsed lease ---


def test_a_purged_queue_is_refilled_once_and_a_healthy_backlog_never_resent(local_backend):
    spec = submitted(local_backend)
    now = time.time()
    for later in (60, 600, 6000):  # as full as the store: nothing to send, however late
        assert not reconcile(local_backend, POLICY, now + later).changed
    assert queued_ids(local_backend) == job_ids(local_backend, spec)
    purge(local_backend)
    assert reconcile(local_backend, POLICY, now + 1).resent == []  # sent within the grace: maybe not counted yet
    report = reconcile(local_backend, POLICY, now + 60)
    assert sorted(report.resent) == job_ids(local_backend, spec)
    assert queued_ids(local_backend) == job_ids(local_backend, spec)
    assert not reconcile(local_backend, POLICY, now + 600).changed


def test_submitting_a_purged_study_again_sends_every_message(local_backend, tiny_dataset):
    spec = study_spec().model_copy(update={"dataset": str(tiny_dataset)})
    service.submit_study(local_backend, spec)
    purge(local_backend)
    report = service.submit_study(local_backend, spec)
    assert report.created == 0 and report.repair is not None
    assert sorted(report.repair.resent) == job_ids(local_backend, spec) == queued_ids(local_backend)
    assert service.submit_study(local_backend, spec).repair.changed is False  # nothing left to repair


def test_a_message_near_the_queues_retention_is_sent_again(local_backend):
    spec = submitted(local_backend)
    policy = ReconcilePolicy(resend_grace_s=10.0, retention_s=4 * 86400, retention_margin_s=3600)
    now = time.time()
    assert not reconcile(local_backend, policy, now + 4 * 86400 - 3700).changed
    report = reconcile(local_backend, policy, now + 4 * 86400 - 3500)  # SQS would drop it within the hour
    assert sorted(report.resent) == job_ids(local_backend, spec)
    assert not reconcile(local_backend, policy, now + 4 * 86400).changed  # the fresh ones are young


def test_a_lapsed_lease_whose_message_is_gone_gets_one_message(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    now = time.time()
    claimed = local_backend.store.claim(spec.study_id, job_id, "w1", LEASE_S, now)
    [delivery] = local_backend.queue.receive(max_messages=1, wait_s=1)
    local_backend.queue.delete([delivery.receipt])  # the worker's settle deleted it, then it died
    assert not reconcile(local_backend, POLICY, now + 1).changed  # a live lease
    assert not reconcile(local_backend, POLICY, now + LEASE_S + 1).changed  # lapsed, within the margin
    report = reconcile(local_backend, POLICY, now + LEASE_S + POLICY.expired_margin_s + 1)
    assert report.sent_lapsed == [job_id] and queued_ids(local_backend) == [job_id]
    assert not reconcile(local_backend, POLICY, now + 3600).changed  # sent since it lapsed
    again = local_backend.store.claim(spec.study_id, job_id, "w2", LEASE_S, now + 3600)
    assert again is not None and again.attempt == claimed.attempt + 1  # the claim protocol takes it


# --- 3. dead letters: re-driven, FAILED at the limit, dropped, or kept ---


def test_a_job_dead_lettered_by_the_queues_own_rule_is_redriven(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    redriven_by_the_queue(local_backend)
    assert local_backend.store.get_job(spec.study_id, job_id).status is JobStatus.QUEUED  # stranded
    now = time.time()
    report = reconcile(local_backend, POLICY, now)
    assert report.redriven == [job_id] and report.sent_unsent == report.resent == []
    assert local_backend.queue.counts().dead == 0 and queued_ids(local_backend) == [job_id]
    assert local_backend.store.get_job(spec.study_id, job_id).enqueued_at == now
    assert not reconcile(local_backend, POLICY, now + 60).changed  # idempotent


def test_a_running_job_dead_lettered_after_its_worker_died_is_redriven(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    now = time.time()
    local_backend.store.claim(spec.study_id, job_id, "w1", LEASE_S, now)
    redriven_by_the_queue(local_backend)  # each kill cost a receive
    report = reconcile(local_backend, POLICY, now + LEASE_S + 1)
    assert report.redriven == [job_id] and report.sent_lapsed == []  # one message, not two
    assert queued_ids(local_backend) == [job_id] and local_backend.queue.counts().dead == 0


def test_a_dead_letter_of_a_job_held_by_a_live_worker_is_dropped(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    local_backend.queue.send([local_backend.queue.db.read("SELECT body FROM messages")[0]["body"]])  # a duplicate
    now = time.time()
    local_backend.store.claim(spec.study_id, job_id, "w1", 600.0, now)
    first = local_backend.queue.receive(max_messages=1, wait_s=1)[0]
    duplicate = local_backend.queue.receive(max_messages=1, wait_s=1)[0]
    local_backend.queue.dead_letter(duplicate, "bounced too often")
    report = reconcile(local_backend, POLICY, now + 1)
    assert report.dead_dropped == [job_id] and report.redriven == [] and local_backend.queue.counts().dead == 0
    assert local_backend.queue.extend(first.receipt, 600.0)  # the holder's message is untouched


def test_a_dead_lettered_job_at_its_failure_limit_is_recorded_failed_with_the_reason(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    now = time.time()
    claimed = local_backend.store.claim(spec.study_id, job_id, "w1", LEASE_S, now)
    local_backend.store.update(spec.study_id, job_id, claimed.attempt, {"failures": 3, "error": "OSError: disk full"})
    [delivery] = local_backend.queue.receive(max_messages=1, wait_s=1)
    local_backend.queue.dead_letter(delivery, "gave up")  # the worker died before finishing the record
    report = reconcile(local_backend, POLICY, now + LEASE_S + 1)
    assert report.failed == [job_id] and local_backend.queue.counts().dead == 0
    record = local_backend.store.get_job(spec.study_id, job_id)
    assert record.status is JobStatus.FAILED and record.lease_owner is None
    assert record.error == "dead-lettered after 3 own failures: OSError: disk full"
    with pytest.raises(Exception, match="fenced out"):  # the old holder can never write again
        local_backend.store.update(spec.study_id, job_id, claimed.attempt, {"epochs_run": 1})
    status = service.study_status(local_backend, spec.study_id, 60)
    assert status.failed == [{"job_id": job_id, "kind": "train", "failures": 3, "error": record.error}]
    assert not reconcile(local_backend, POLICY, now + 60).changed


def test_dead_letters_of_finished_jobs_are_deleted_and_poison_stays(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    now = time.time()
    claimed = local_backend.store.claim(spec.study_id, job_id, "w1", LEASE_S, now)
    local_backend.store.finish(spec.study_id, job_id, claimed.attempt, JobStatus.SUCCEEDED, {})
    unknown = json.loads(local_backend.queue.db.read("SELECT body FROM messages")[0]["body"]) | {"job_id": "no-such-job"}
    local_backend.queue.send(["not json", json.dumps(unknown)])
    while deliveries := local_backend.queue.receive(max_messages=10, wait_s=0.5):
        for delivery in deliveries:
            local_backend.queue.dead_letter(delivery, "test")
    policy = ReconcilePolicy(dead_hide_s=0.0)  # what is kept comes back at once for the second run
    report = reconcile(local_backend, policy, now)
    assert report.dead_dropped == [job_id] and len(report.poison) == 2 and not report.redriven
    assert sorted(local_backend.queue.dead_letters()) == sorted(["not json", json.dumps(unknown)])
    again = reconcile(local_backend, policy, now + 60)
    assert len(again.poison) == 2 and not again.changed  # left for people, every run


def test_every_dead_letter_is_handled_not_only_a_first_page(local_backend):
    spec = submitted(local_backend, optimizers=12)
    while deliveries := local_backend.queue.receive(max_messages=10, wait_s=0.5):
        for delivery in deliveries:
            local_backend.queue.dead_letter(delivery, "max receives")
    report = reconcile(local_backend, POLICY, time.time())
    assert sorted(report.redriven) == job_ids(local_backend, spec) == queued_ids(local_backend)


def test_retry_dead_lettered_is_idempotent(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    redriven_by_the_queue(local_backend)
    assert service.retry(local_backend, spec.study_id, failed=False, dead_lettered=True) == [job_id]
    assert service.retry(local_backend, spec.study_id, failed=False, dead_lettered=True) == []
    assert queued_ids(local_backend) == [job_id]


def test_retry_failed_resets_the_failure_count_and_a_second_run_does_nothing(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    purge(local_backend)
    claimed = local_backend.store.claim(spec.study_id, job_id, "w1", LEASE_S, time.time())
    local_backend.store.finish(spec.study_id, job_id, claimed.attempt, JobStatus.FAILED, {"failures": 3, "error": "boom"})
    assert service.retry(local_backend, spec.study_id) == [job_id]
    record = local_backend.store.get_job(spec.study_id, job_id)
    assert (record.status, record.failures, record.error) == (JobStatus.QUEUED, 0, None)
    assert service.retry(local_backend, spec.study_id) == [] and queued_ids(local_backend) == [job_id]


# --- 4. follow-ups and cancel ---


def finish_training(backend: Backend, spec: StudySpec) -> None:
    for number, record in enumerate(backend.store.list_jobs(spec.study_id)):
        claimed = backend.store.claim(spec.study_id, record.job_id, "w1", 60.0, time.time())
        changes = {"metrics": {"val_accuracy": 0.5 + number / 100}, "epochs_run": 2}
        backend.store.finish(spec.study_id, record.job_id, claimed.attempt, JobStatus.SUCCEEDED, changes)


def test_a_follow_up_the_last_worker_failed_to_start_is_started_by_the_reconciler(local_backend):
    spec = submitted(local_backend, optimizers=1, finetune={"top": 1})
    finish_training(local_backend, spec)  # and the worker that settled the last one crashed
    purge(local_backend)
    report = reconcile(local_backend, POLICY, time.time())
    assert report.advanced == {spec.study_id: {"finetune": 1}}
    [finetune] = [j for j in local_backend.store.list_jobs(spec.study_id) if j.kind == "finetune"]
    assert queued_ids(local_backend) == [finetune.job_id] and finetune.enqueued_at is not None
    assert not reconcile(local_backend, POLICY, time.time()).changed


def test_a_follow_up_stopped_before_its_stage_was_marked_is_finished_without_duplicates(local_backend):
    spec = submitted(local_backend, optimizers=1, finetune={"top": 1})
    finish_training(local_backend, spec)
    purge(local_backend)
    plan = FaultPlan()
    plan.fail("store.mark_stage", throttled())
    broken = faulty_backend(local_backend, plan)
    with pytest.raises(RetryableError):
        advance_study(broken.store, broken.queue, spec.study_id)
    assert local_backend.store.get_study(spec.study_id).stages == []
    report = reconcile(local_backend, POLICY, time.time())
    assert report.advanced == {spec.study_id: {"finetune": 0}}  # created before: marked now
    assert local_backend.store.get_study(spec.study_id).stages == ["finetune"]
    assert len(queued_ids(local_backend)) == 1  # the one message sent before the stop


def test_a_cancelled_study_never_starts_its_follow_ups(local_backend):
    spec = submitted(local_backend, optimizers=1, finetune={"top": 1}, evaluate={"top": 1})
    first = local_backend.store.list_jobs(spec.study_id)[0]
    local_backend.store.claim(spec.study_id, first.job_id, "w1", 600.0, time.time())
    assert service.cancel(local_backend, spec.study_id) == {"cancelled": 1, "stopping": 1}
    claimed = local_backend.store.get_job(spec.study_id, first.job_id)
    local_backend.store.finish(spec.study_id, first.job_id, claimed.attempt, JobStatus.CANCELLED, {})
    assert advance_study(local_backend.store, local_backend.queue, spec.study_id) == {}
    report = reconcile(local_backend, POLICY, time.time() + 3600)
    assert report.advanced == {} and report.sent_unsent == report.resent == []
    assert {j.kind for j in local_backend.store.list_jobs(spec.study_id)} == {"train"}


def test_cancel_acts_on_a_job_claimed_while_it_ran(local_backend):
    spec = submitted(local_backend, optimizers=2)
    plan = FaultPlan()
    gate = plan.hold("store.reset", times=1)
    broken = faulty_backend(local_backend, plan)
    result: dict[str, dict[str, int]] = {}
    thread = threading.Thread(target=lambda: result.update(done=service.cancel(broken, spec.study_id)))
    thread.start()
    gate.wait_entered()
    raced = local_backend.store.list_jobs(spec.study_id)[0]  # the job whose reset is held
    local_backend.store.claim(spec.study_id, raced.job_id, "w1", 600.0, time.time())  # a worker claims it
    gate.release()
    thread.join(30)
    assert result["done"] == {"cancelled": 1, "stopping": 1}
    assert local_backend.store.get_job(spec.study_id, raced.job_id).cancel_requested is True


def test_cancel_acts_on_a_job_preempted_while_it_ran(local_backend):
    spec = submitted(local_backend, optimizers=1)
    [job_id] = job_ids(local_backend, spec)
    claimed = local_backend.store.claim(spec.study_id, job_id, "w1", 600.0, time.time())
    plan = FaultPlan()
    gate = plan.hold("store.request_cancel", times=1)
    broken = faulty_backend(local_backend, plan)
    result: dict[str, dict[str, int]] = {}
    thread = threading.Thread(target=lambda: result.update(done=service.cancel(broken, spec.study_id)))
    thread.start()
    gate.wait_entered()
    local_backend.store.finish(spec.study_id, job_id, claimed.attempt, JobStatus.QUEUED, {"preemptions": 1})
    gate.release()
    thread.join(30)
    assert result["done"] == {"cancelled": 1, "stopping": 0}


def test_the_reconciler_cancels_what_a_cancelled_study_got_later(local_backend):
    spec = submitted(local_backend, optimizers=2)
    service.cancel(local_backend, spec.study_id)
    late = JobRecord(study_id=spec.study_id, job_id="late-follow-up", spec=local_backend.store.list_jobs(spec.study_id)[0].spec)
    local_backend.store.create_jobs([late])  # a worker that had not seen the mark
    report = reconcile(local_backend, POLICY, time.time() + 3600)
    assert report.cancelled == ["late-follow-up"] and report.sent_unsent == []
    assert local_backend.store.get_job(spec.study_id, "late-follow-up").status is JobStatus.CANCELLED


def test_a_cancelled_study_is_not_submitted_again(local_backend, tiny_dataset):
    spec = study_spec().model_copy(update={"dataset": str(tiny_dataset)})
    service.submit_study(local_backend, spec)
    service.cancel(local_backend, spec.study_id)
    with pytest.raises(Exception, match="^name: study .* was cancelled"):
        service.submit_study(local_backend, spec)


# --- reconcile_if_due: one idle worker per interval ---


def test_reconcile_if_due_runs_once_per_interval_across_workers(local_backend):
    spec = submitted(local_backend, optimizers=1)
    purge(local_backend)
    now = time.time() + 60
    assert reconcile_if_due(local_backend, "w1", POLICY, now, 300.0).resent == job_ids(local_backend, spec)
    assert reconcile_if_due(local_backend, "w2", POLICY, now + 10, 300.0) is None
    assert reconcile_if_due(local_backend, "w1", POLICY, now + 299, 300.0) is None
    report = reconcile_if_due(local_backend, "w2", POLICY, now + 300, 300.0)
    assert report is not None and not report.changed


def test_the_policy_of_a_configured_backend_scales_its_margins_to_the_lease():
    from shared.config import BackendConfig

    short = ReconcilePolicy.for_config(BackendConfig(lease_s=3.0, max_failures=5))
    assert (short.max_failures, short.resend_grace_s, short.expired_margin_s) == (5, 3.0, 3.0)
    default = ReconcilePolicy.for_config(BackendConfig(), resend_grace_s=0.0)
    assert (default.max_failures, default.resend_grace_s, default.expired_margin_s) == (3, 0.0, 60.0)
