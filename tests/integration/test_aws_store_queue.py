"""The AWS adapters beyond the contract: API call budgets, native attributes, races (moto's server)."""

from __future__ import annotations

import json
import math
import threading
import time
from decimal import Decimal

import pytest

from shared.errors import BadInputError, LeaseLostError, NotFoundError
from shared.jobs import EpochRecord, JobMessage
from shared.status import JobStatus
from tests.aws_support import DYNAMO_READS, DYNAMO_WRITES, CallCounter, fresh_aws_backend
from tests.factories import job_record, study_record

pytestmark = pytest.mark.aws

LEASE = 30.0


@pytest.fixture
def aws(request):
    yield from fresh_aws_backend(request, lease_s=LEASE, max_receives=3)


@pytest.fixture
def counter(aws):
    return CallCounter(aws.queue.client, aws.store.client, aws.artifacts.client)


def records(n: int, study_id: str = "s-1"):
    return [job_record(study_id=study_id, learning_rate=0.0001 * (i + 1)) for i in range(n)]


def test_submission_costs_about_n_over_10_sqs_and_n_over_100_dynamo_write_calls(aws, counter, capsys):
    n = 250
    jobs = records(n)
    bodies = (JobMessage(study_id=r.study_id, job_id=r.job_id, spec=r.spec).to_body() for r in jobs)

    counter.reset()
    assert aws.queue.send(bodies) == n
    sqs_calls = counter.count("sqs")
    assert sqs_calls <= math.ceil(n / 10) + 2, counter.operations("sqs")

    counter.reset()
    created = aws.store.create_jobs(iter(jobs))
    assert sorted(created) == sorted(r.job_id for r in jobs)
    writes, reads = counter.count("dynamodb", DYNAMO_WRITES), counter.count("dynamodb", DYNAMO_READS)
    assert writes <= math.ceil(n / 25) + 2, counter.operations("dynamodb")

    counter.reset()  # submitting the same study again writes nothing
    assert aws.store.create_jobs(jobs) == []
    again_writes, again_reads = counter.count("dynamodb", DYNAMO_WRITES), counter.count("dynamodb", DYNAMO_READS)
    assert again_writes == 0

    assert aws.queue.counts().visible == n
    assert len(aws.store.list_jobs("s-1", JobStatus.QUEUED)) == n
    with capsys.disabled():
        print(
            f"\n[aws submission N={n}] SQS calls {sqs_calls}; DynamoDB writes {writes}, reads {reads} "
            f"({counter_summary(writes, reads)}); resubmission writes {again_writes}, reads {again_reads}"
        )


def counter_summary(writes: int, reads: int) -> str:
    return f"{writes} TransactWriteItems of <=100 conditional puts, {reads} BatchGetItem of <=100 keys"


def test_partly_submitted_study_creates_only_the_missing_jobs(aws, counter):
    jobs = records(130)
    assert len(aws.store.create_jobs(jobs[:45])) == 45
    counter.reset()
    created = aws.store.create_jobs(jobs)
    assert sorted(created) == sorted(r.job_id for r in jobs[45:])
    assert counter.count("dynamodb", DYNAMO_WRITES) == 2  # one transaction per chunk of 100


def test_racing_submitters_create_each_job_exactly_once(aws):
    jobs = records(120)
    results: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def submit(slot: int) -> None:
        barrier.wait()
        results[slot] = aws.store.create_jobs(jobs)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results[0] + results[1]) == sorted(r.job_id for r in jobs)


def test_a_job_created_meanwhile_is_never_overwritten(aws):
    """The window between create_jobs' existence check and its write: the write is conditional."""
    job = job_record()
    aws.store.create_jobs([job])
    claimed = aws.store.claim("s-1", job.job_id, "w1", LEASE, time.time())
    assert aws.store._create_group([job]) == []  # as if the BatchGetItem had not seen it
    after = aws.store.get_job("s-1", job.job_id)
    assert (after.status, after.attempt, after.lease_owner) == (JobStatus.RUNNING, claimed.attempt, "w1")


def test_racing_claims_have_exactly_one_winner(aws):
    jobs = records(4)
    aws.store.create_jobs(jobs)
    now = time.time()
    for job in jobs:
        winners = []
        barrier = threading.Barrier(4)

        def claim(owner: str, job_id: str = job.job_id) -> None:
            barrier.wait()
            result = aws.store.claim("s-1", job_id, owner, LEASE, now)
            if result is not None:
                winners.append(result)

        threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1 and winners[0].attempt == 1
        assert aws.store.get_job("s-1", job.job_id).lease_owner == winners[0].lease_owner


def test_numbers_are_native_decimal_attributes_and_round_trip_exactly(aws):
    job = job_record()
    aws.store.create_jobs([job])
    claimed = aws.store.claim("s-1", job.job_id, "w1", LEASE, 1_718_000_000.123456)
    metrics = {"val_accuracy": 0.1 + 0.2, "val_loss": float("nan"), "top5": 0.999999999999, "loss": 1e-7}
    aws.store.finish(
        "s-1", job.job_id, claimed.attempt, JobStatus.SUCCEEDED,
        {"metrics": metrics, "train_seconds": 12345.678901234567, "cost_usd": 1e-7, "total_params": 2**40},
    )
    final = aws.store.get_job("s-1", job.job_id)
    assert final.metrics.val_accuracy == 0.1 + 0.2 and final.metrics.loss == 1e-7
    assert math.isnan(final.metrics.val_loss) and final.metrics.top5 == 0.999999999999
    assert final.train_seconds == 12345.678901234567 and final.cost_usd == 1e-7 and final.total_params == 2**40
    assert final.started_at == 1_718_000_000.123456 and final.lease_owner is None

    raw = aws.store.client.get_item(
        TableName=aws.store.table_name, Key={"pk": {"S": "STUDY#s-1"}, "sk": {"S": f"JOB#{job.job_id}"}}
    )["Item"]
    assert raw["attempt"] == {"N": "1"} and raw["status"] == {"S": "SUCCEEDED"}
    assert raw["metrics"]["M"]["val_accuracy"] == {"N": str(Decimal(str(0.1 + 0.2)))}
    assert raw["spec"]["M"]["optimizer"]["M"]["learning_rate"] == {"N": "0.01"}  # the JobSpec is a map
    assert "lease_owner" not in raw and "lease_expires_at" not in raw  # None: no attribute


def test_updates_write_only_the_changed_fields_under_conditions(aws, counter):
    job = job_record()
    aws.store.create_jobs([job])
    claimed = aws.store.claim("s-1", job.job_id, "w1", LEASE, time.time())
    sent = []
    aws.store.client.meta.events.register("before-parameter-build.dynamodb.UpdateItem", lambda params, **_: sent.append(params))
    aws.store.update("s-1", job.job_id, claimed.attempt, {"epochs_run": 3})
    (params,) = sent
    assert set(params["ExpressionAttributeNames"].values()) == {"epochs_run", "status", "attempt"}
    assert params["ConditionExpression"].count("=") == 2 and params["UpdateExpression"].startswith("SET ")
    counter.reset()
    for changes in ({"epochs_run": "many"}, {"status": "SUCCEEDED"}, {"job_id": "other"}):
        with pytest.raises(BadInputError):
            aws.store.update("s-1", job.job_id, claimed.attempt, changes)
    assert counter.count("dynamodb") == 0  # refused before any request


def test_fenced_writes_tell_a_lost_lease_from_an_unknown_job(aws):
    job = job_record()
    aws.store.create_jobs([job])
    first = aws.store.claim("s-1", job.job_id, "w1", LEASE, 1000.0)
    aws.store.claim("s-1", job.job_id, "w2", LEASE, 1000.0 + LEASE + 1)
    with pytest.raises(LeaseLostError, match="now RUNNING, attempt 2"):
        aws.store.renew("s-1", job.job_id, first.attempt, LEASE, 2000.0)
    epoch = EpochRecord(study_id="s-1", job_id=job.job_id, epoch=1, attempt=first.attempt, metrics={"loss": 1.0})
    with pytest.raises(LeaseLostError):
        aws.store.put_epoch(epoch)
    # one conditional write each, told apart by the old item it returns (the contract suite makes
    # every method meet an unknown job)
    with pytest.raises(NotFoundError):
        aws.store.put_epoch(epoch.model_copy(update={"job_id": "nope"}))


def test_reads_are_queries_never_scans_and_paginate_in_job_id_order(aws, counter):
    aws.store.put_study(study_record("s-1", created_at=1.0))
    aws.store.put_study(study_record("s-2", created_at=2.0))
    jobs = records(20)
    aws.store.create_jobs(jobs)
    aws.store.create_jobs(records(3, study_id="s-2"))
    claimed = aws.store.claim("s-1", jobs[5].job_id, "w1", LEASE, time.time())
    aws.store.put_epoch(
        EpochRecord(study_id="s-1", job_id=jobs[5].job_id, epoch=1, attempt=claimed.attempt, metrics={"loss": 1.0})
    )
    aws.store.page_size = 7
    counter.reset()
    listed = aws.store.list_jobs("s-1")
    assert [j.job_id for j in listed] == sorted(r.job_id for r in jobs)  # no epoch items, no other study
    assert counter.calls[("dynamodb", "Query")] >= 3  # 20 items in pages of 7
    assert [j.job_id for j in aws.store.list_jobs("s-1", JobStatus.RUNNING)] == [jobs[5].job_id]
    assert len(aws.store.list_jobs("s-1", JobStatus.QUEUED)) == 19
    assert [s.study_id for s in aws.store.list_studies()] == ["s-2", "s-1"]
    assert aws.store.find_job(jobs[5].job_id).status == JobStatus.RUNNING
    assert [e.epoch for e in aws.store.epochs("s-1", jobs[5].job_id)] == [1]
    assert counter.calls[("dynamodb", "Scan")] == 0
    assert set(counter.operations("dynamodb")) <= {"Query", "BatchGetItem", "GetItem"}


def test_queue_sends_in_batches_bounded_by_size_and_refuses_oversized_bodies(aws, counter):
    counter.reset()
    big = ["x" * 100_000 + str(i) for i in range(6)]  # two fit the 256 KiB a batch may carry
    assert aws.queue.send(big) == 6
    assert counter.calls[("sqs", "SendMessageBatch")] == 3
    assert aws.queue.counts().visible == 6
    with pytest.raises(BadInputError):
        aws.queue.send(["y" * (256 * 1024 + 1)])


def test_dead_lettered_message_keeps_its_reason(aws):
    aws.queue.send(["not json"])
    (delivery,) = aws.queue.receive(max_messages=1, wait_s=2)
    aws.queue.dead_letter(delivery, "invalid JSON: line 1")
    assert aws.queue.dead_letter_reasons() == [("not json", "invalid JSON: line 1")]
    assert aws.queue.dead_letters() == ["not json"]  # peeking twice leaves it there
    counts = aws.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (0, 0, 1)


def test_queue_is_long_polled_with_the_configured_visibility(aws):
    sent = []
    aws.queue.client.meta.events.register("before-parameter-build.sqs.ReceiveMessage", lambda params, **_: sent.append(params))
    aws.queue.send(["a"])
    aws.queue.receive(max_messages=25, wait_s=2.5)
    assert sent[0]["WaitTimeSeconds"] == 3 and sent[0]["MaxNumberOfMessages"] == 10
    assert sent[0]["VisibilityTimeout"] == int(LEASE)
    attributes = aws.queue.client.get_queue_attributes(QueueUrl=aws.queue.queue_url, AttributeNames=["All"])
    policy = json.loads(attributes["Attributes"]["RedrivePolicy"])
    assert int(policy["maxReceiveCount"]) == 3 and policy["deadLetterTargetArn"].endswith("-jobs-dlq")


# --- the reconciler's calls: stamps, locks, dead letters, retention ---


def test_stamping_a_submission_costs_one_transaction_per_100_jobs(aws, counter):
    jobs = records(250)
    aws.store.create_jobs(jobs)
    counter.reset()
    assert aws.store.mark_enqueued("s-1", [r.job_id for r in jobs], 10.0) == [r.job_id for r in jobs]
    assert counter.operations("dynamodb") == {"TransactWriteItems": 3}
    claimed = aws.store.claim("s-1", jobs[0].job_id, "w1", LEASE, time.time())
    aws.store.finish("s-1", jobs[0].job_id, claimed.attempt, JobStatus.SUCCEEDED, {})
    counter.reset()  # a finished job in a transaction: dropped, the rest written again
    assert aws.store.mark_enqueued("s-1", [r.job_id for r in jobs[:100]], 20.0) == [r.job_id for r in jobs[1:100]]
    assert counter.operations("dynamodb") == {"TransactWriteItems": 2}
    stamped = {j.job_id: j.enqueued_at for j in aws.store.list_jobs("s-1")}
    assert stamped[jobs[0].job_id] == 10.0 and stamped[jobs[1].job_id] == 20.0 and stamped[jobs[200].job_id] == 10.0


def test_a_lock_is_one_conditional_put_and_stays_out_of_every_listing(aws, counter):
    aws.store.put_study(study_record("s-1"))
    counter.reset()
    assert aws.store.acquire_lock("reconciler", "w1", 60.0, 1000.0) is True
    assert aws.store.acquire_lock("reconciler", "w2", 60.0, 1001.0) is False
    assert counter.operations("dynamodb") == {"PutItem": 2}
    assert [s.study_id for s in aws.store.list_studies()] == ["s-1"]
    item = aws.store.client.get_item(TableName=aws.store.table_name, Key={"pk": {"S": "LOCK#reconciler"}, "sk": {"S": "META"}})
    assert item["Item"]["owner"] == {"S": "w1"} and item["Item"]["expires_at"] == {"N": "1060.0"}


def test_dead_letters_are_long_polled_and_counts_report_the_retention(aws):
    sent = []
    aws.queue.client.meta.events.register("before-parameter-build.sqs.ReceiveMessage", lambda params, **_: sent.append(params))
    assert aws.queue.receive_dead(max_messages=25, hide_s=30) == []
    assert sent[0]["QueueUrl"] == aws.queue.dlq_url and sent[0]["WaitTimeSeconds"] >= 1  # asks every host
    assert sent[0]["MaxNumberOfMessages"] == 10 and sent[0]["VisibilityTimeout"] == 30
    from shared.backends.aws import QUEUE_RETENTION_S

    assert aws.queue.counts().retention_s == QUEUE_RETENTION_S == 13 * 86400
