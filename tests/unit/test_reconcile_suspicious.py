"""The reconciler and a lease no claim could have granted, on the embedded backend (real SQLite):
a record written past the store's port as RUNNING until `lease_expires_at: 1e15` (a broken or
hostile writer) whose message is gone. Before rule (d) the reconciler took that lease for a live
one and never sent the job a message: nothing would ever run it. Now it sends one, once, and the
worker that receives it takes the job back (worker.loop) and runs it; a lease a claim could have
granted is still left to its holder, whatever the queue is missing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.ports import Backend
from shared.reconcile import ReconcilePolicy, reconcile, suspicious_lease_s
from shared.status import JobStatus
from shared.study import expand
from shared.submission import submit_jobs
from tests.contract.raw_rows import put_job_row
from tests.integration.test_worker_protocol import FakeTraining, settings_for
from tests.unit.test_reconcile import purge, put_study, queued_ids, study_spec
from worker.loop import Policy, Worker
from worker.settings import WorkerSettings

ABSURD_AT = 1e15  # about 31 million years from now


def submitted(backend: Backend, dataset: Path) -> tuple[str, str]:
    """A study of one training job on `dataset`, sent: (study id, job id)."""
    spec = study_spec(optimizers=1).model_copy(update={"dataset": str(dataset)})
    put_study(backend, spec)
    [(job_id, job_spec)] = expand(spec)
    submit_jobs(backend.store, backend.queue, spec.study_id, [(job_id, job_spec)])
    return spec.study_id, job_id


def hold_row(backend: Backend, study_id: str, job_id: str, owner: str, expires_at: float) -> None:
    """Rewrite the job's row past the store's port: RUNNING at attempt 1, leased by `owner` until
    `expires_at`."""
    row = backend.store.get_job(study_id, job_id).model_dump(mode="json")
    row.update(status="RUNNING", attempt=1, lease_owner=owner, lease_expires_at=expires_at, started_at=time.time())
    put_job_row(backend.store, study_id, job_id, row)


def policy_of(settings: WorkerSettings) -> ReconcilePolicy:
    """An idle worker's policy: the bound of a suspicious lease is the workers' own."""
    return ReconcilePolicy.for_config(settings)


def test_a_suspicious_lease_whose_message_is_gone_gets_one_message_and_the_job_runs(
    local_backend: Backend, tiny_dataset: Path, tmp_path: Path
) -> None:
    study_id, job_id = submitted(local_backend, tiny_dataset)
    hold_row(local_backend, study_id, job_id, "hostile", ABSURD_AT)
    purge(local_backend)
    settings = settings_for(tmp_path / "home")
    now = time.time() + 10  # past the resend grace (the lease: 3 s) of the submit's send
    report = reconcile(local_backend, policy_of(settings), now)

    assert report.sent_suspicious == [job_id] and report.sent_lapsed == report.resent == report.sent_unsent == []
    assert queued_ids(local_backend) == [job_id]
    assert local_backend.store.get_job(study_id, job_id).enqueued_at == now
    assert not reconcile(local_backend, policy_of(settings), now + 60).changed  # its message is on the queue
    training = FakeTraining()
    Worker(local_backend, settings, training).work(Policy(until_empty=True, idle_timeout_s=5))
    assert training.calls == [(job_id, 0)]
    record = local_backend.store.get_job(study_id, job_id)
    assert (record.status, record.attempt, record.failures) == (JobStatus.SUCCEEDED, 2, 0), record


@pytest.mark.parametrize("ahead", ["lease", "just-under-the-bound"])
def test_a_lease_a_claim_could_have_granted_is_not_sent_a_message(
    local_backend: Backend, tiny_dataset: Path, tmp_path: Path, ahead: str
) -> None:
    study_id, job_id = submitted(local_backend, tiny_dataset)
    settings = settings_for(tmp_path / "home")
    now = time.time() + 10  # a QUEUED job's lost message would be re-sent now (rule c)
    ahead_s = settings.lease_s if ahead == "lease" else suspicious_lease_s(settings.lease_s) - 1
    hold_row(local_backend, study_id, job_id, "w1", now + ahead_s)
    purge(local_backend)  # its worker holds the message: here deleted, so only the store knows
    report = reconcile(local_backend, policy_of(settings), now)

    assert not report.changed, report.lines()
    assert queued_ids(local_backend) == []


def test_a_dead_letter_of_a_job_under_a_suspicious_lease_is_redriven_not_dropped(
    local_backend: Backend, tiny_dataset: Path, tmp_path: Path
) -> None:
    study_id, job_id = submitted(local_backend, tiny_dataset)
    hold_row(local_backend, study_id, job_id, "hostile", ABSURD_AT)
    [delivery] = local_backend.queue.receive(max_messages=1, wait_s=1)
    local_backend.queue.dead_letter(delivery, "received too often")
    report = reconcile(local_backend, policy_of(settings_for(tmp_path / "home")), time.time())

    assert report.redriven == [job_id] and report.dead_dropped == [] and report.sent_suspicious == []
    assert queued_ids(local_backend) == [job_id] and local_backend.queue.counts().dead == 0
