"""Hostile input meets the worker loop on the embedded backend (issue 15): ids that climb out of
the work dir, a stored record that does not validate. Rows are written into the real SQLite
store past its port, as a careless or compromised teammate would; the worker must set each
one aside, delete nothing outside its cache, and go on with the next job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.backends.local import SqliteJobQueue, SqliteJobStore
from shared.jobs import JobMessage, JobRecord
from shared.ports import Backend
from shared.status import JobStatus
from shared.submission import submit_jobs
from tests.contract.raw_rows import put_job_row
from tests.integration.test_worker_protocol import STUDY, FakeTraining, make_jobs, settings_for
from worker.loop import Policy, Worker

HOSTILE = "../../victim"


def plant_victim(host: Path) -> Path:
    """What the work dir `cache/work/{job_id}-{attempt}` would be for HOSTILE at attempt 1."""
    victim = host / "victim-1"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    return victim


def dead_reasons(queue: SqliteJobQueue) -> list[str]:
    return [row["reason"] for row in queue.db.read("SELECT reason FROM messages WHERE dead = 1 ORDER BY id")]


def work(backend: Backend, host: Path, training: FakeTraining) -> None:
    """A worker whose cache is `host/cache`, until the queue is empty: it must return, not raise."""
    worker = Worker(backend, settings_for(host / "home", cache_dir=host / "cache"), training)
    worker.work(Policy(until_empty=True))


def test_a_message_and_record_with_an_escaping_job_id_delete_nothing(local_backend, tiny_dataset, tmp_path):
    host = tmp_path / "host"
    victim = plant_victim(host)
    [(job_id, spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, [(job_id, spec)])
    row = local_backend.store.get_job(STUDY, job_id).model_dump(mode="json")
    put_job_row(local_backend.store, STUDY, HOSTILE, {**row, "job_id": HOSTILE})
    body = json.dumps({**json.loads(JobMessage(study_id=STUDY, job_id=job_id, spec=spec).to_body()), "job_id": HOSTILE})
    local_backend.queue.send([body])
    training = FakeTraining()
    work(local_backend, host, training)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert local_backend.queue.dead_letters() == [body]
    assert "job_id" in dead_reasons(local_backend.queue)[0]
    assert training.calls == [(job_id, 0)]  # the worker went on with the real job
    assert local_backend.store.get_job(STUDY, job_id).status == JobStatus.SUCCEEDED
    assert list((host / "cache" / "work").iterdir()) == []


class UncheckedStore(SqliteJobStore):
    """A store that hands out a claimed record with an escaping job id, as an adapter that does
    not validate what it reads back would: the loop alone must keep the worker in its cache."""

    def __init__(self, path: Path, hostile_job: str) -> None:
        super().__init__(path)
        self.hostile_job = hostile_job

    def claim(self, study_id: str, job_id: str, *args: Any, **kwargs: Any) -> JobRecord | None:
        record = super().claim(study_id, job_id, *args, **kwargs)
        if record is None or job_id != self.hostile_job:
            return record
        return record.model_copy(update={"job_id": HOSTILE})  # model_copy does not validate


def test_the_loop_alone_keeps_the_work_dir_inside_the_cache(local_backend, tiny_dataset, tmp_path):
    host = tmp_path / "host"
    victim = plant_victim(host)
    jobs = make_jobs(tiny_dataset, 2)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, jobs)
    (hostile_job, _), (good_job, _) = jobs
    store = UncheckedStore(local_backend.store.db.path, hostile_job)
    unchecked = Backend(local_backend.queue, store, local_backend.artifacts)
    training = FakeTraining()
    work(unchecked, host, training)
    assert (victim / "precious.txt").read_text() == "keep me"
    [reason] = dead_reasons(local_backend.queue)
    assert reason.startswith("corrupt record: invalid job id '../../victim'")
    assert training.calls == [(good_job, 0)]
    assert local_backend.store.get_job(STUDY, good_job).status == JobStatus.SUCCEEDED


def test_a_stored_record_whose_spec_does_not_validate_is_set_aside(local_backend, tiny_dataset, tmp_path):
    jobs = make_jobs(tiny_dataset, 2)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, jobs)
    (corrupt_job, _), (good_job, _) = jobs
    row = local_backend.store.get_job(STUDY, corrupt_job).model_dump(mode="json")
    row["spec"]["optimizer"] = {"name": "no-such-optimizer"}
    put_job_row(local_backend.store, STUDY, corrupt_job, row)
    training = FakeTraining()
    work(local_backend, tmp_path / "host", training)
    assert training.calls == [(good_job, 0)]
    assert local_backend.store.get_job(STUDY, good_job).status == JobStatus.SUCCEEDED
    [reason] = dead_reasons(local_backend.queue)
    assert reason.startswith("corrupt record: ") and corrupt_job in reason and "spec" in reason
    assert len(local_backend.queue.dead_letters()) == 1 and local_backend.queue.counts().backlog == 0
