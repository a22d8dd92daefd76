"""A lease no claim could have granted, written into the real SQLite store past its port (a
broken or hostile writer): the worker loop never hides the job's message for longer than the
longest lease a claim grants plus the visibility margin, and a lease that ends absurdly far
ahead (`status: RUNNING`, `lease_expires_at: 1e15`) is taken back by a fenced finish and the
job runs. Before the cap, the loop released the message until the lease's end: on the embedded
queue for millions of years, on SQS for up to 12 hours at every delivery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.errors import LeaseLostError
from shared.ports import Backend
from shared.reconcile import longest_lease_s, suspicious_lease_s
from shared.status import JobStatus
from shared.submission import submit_jobs
from tests.contract.raw_rows import put_job_row
from tests.integration.test_worker_protocol import STUDY, FakeTraining, make_jobs, settings_for
from worker.lease import visibility_margin_s
from worker.loop import Policy, Worker


def hold_row(backend: Backend, job_id: str, owner: str, expires_at: float) -> None:
    """Rewrite the job's row as RUNNING at attempt 1, leased by `owner` until `expires_at`."""
    row = backend.store.get_job(STUDY, job_id).model_dump(mode="json")
    row.update(status="RUNNING", attempt=1, lease_owner=owner, lease_expires_at=expires_at, started_at=time.time())
    put_job_row(backend.store, STUDY, job_id, row)


def visible_at(backend: Backend) -> list[float]:
    return [row["visible_at"] for row in backend.queue.db.read("SELECT visible_at FROM messages WHERE dead = 0")]


def test_a_lease_beyond_any_claim_is_released_for_at_most_the_longest_lease(local_backend: Backend, tiny_dataset: Path, tmp_path: Path) -> None:
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    settings = settings_for(tmp_path / "home")
    ahead_s = (longest_lease_s(settings.lease_s) + suspicious_lease_s(settings.lease_s)) / 2  # too long, not absurd
    hold_row(local_backend, job_id, "clock-ahead", time.time() + ahead_s)
    training = FakeTraining()
    worker = Worker(local_backend, settings, training)
    [delivery] = local_backend.queue.receive(max_messages=1, wait_s=1)
    before = time.time()
    worker.execute(delivery)

    assert training.calls == []  # a lease not (yet) suspicious is respected: the job is not taken
    record = local_backend.store.get_job(STUDY, job_id)
    assert (record.status, record.attempt, record.lease_owner) == (JobStatus.RUNNING, 1, "clock-ahead")
    [hidden_until] = visible_at(local_backend)
    cap_s = longest_lease_s(settings.lease_s) + visibility_margin_s(settings.lease_s)
    assert before + cap_s - 1 <= hidden_until <= time.time() + cap_s < before + ahead_s, (hidden_until - before, cap_s)


@pytest.mark.parametrize("expires_at", [1e15, time.time() + 10**7], ids=["year-31-million", "in-116-days"])
def test_an_absurd_lease_is_taken_back_fenced_and_the_job_runs(local_backend: Backend, tiny_dataset: Path, tmp_path: Path, expires_at: float, caplog: pytest.LogCaptureFixture) -> None:
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    hold_row(local_backend, job_id, "hostile", expires_at)
    training = FakeTraining()
    Worker(local_backend, settings_for(tmp_path / "home"), training).work(Policy(until_empty=True, idle_timeout_s=5))

    assert training.calls == [(job_id, 0)]
    record = local_backend.store.get_job(STUDY, job_id)
    assert (record.status, record.attempt, record.failures) == (JobStatus.SUCCEEDED, 2, 0), record
    counts = local_backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (0, 0, 0), counts
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "suspicious_lease"]
    assert "hostile" in line.getMessage() and line.job_id == job_id
    with pytest.raises(LeaseLostError):  # the writer of the bogus lease is fenced out
        local_backend.store.renew(STUDY, job_id, 1, 3.0, time.time())
