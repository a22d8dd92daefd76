"""A worker fed a corpus of hostile messages and records keeps running and sets each one aside
(issue 15, "must show"), on the embedded backend and on AWS (moto's server over HTTP).

The corpus is what a careless or compromised teammate with write access to the queue and the
table can put there: bodies that are not JSON, nest 100 000 deep, hold numbers JSON does not
have, a newer schema, unknown fields, ids that climb out of a directory, caps a worker must not
honour; records written past the store's port (`tests/contract/raw_rows.py`) whose spec does not
validate, that name another job than their key, or carry unsafe ids; records that validate but
name a dataset no worker may read. They are interleaved with good jobs and fed to a real
`worker.loop.Worker` whose `run_job` is a stand-in that records what it was asked to run.

What must hold afterwards: the worker returned on its own (the queue is empty) without a stop
being requested; every hostile message is in the dead-letter queue with a one-line reason, every
hostile record that validates is FAILED with a one-line error, and nothing hostile was run; every
good job SUCCEEDED; nothing outside the worker's cache was created or removed.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.backends.local import SqliteJobQueue
from shared.jobs import JobMessage, JobRecord, JobSpec
from shared.ports import Backend, JobQueue
from shared.status import JobStatus
from shared.submission import submit_jobs
from tests.contract.raw_rows import put_job_row
from tests.integration.test_worker_protocol import STUDY, make_jobs, settings_for
from worker.job import EpochReport, JobContext, JobOutcome, JobResult
from worker.loop import Policy, Worker

LEASE_S = 3.0
MAX_RECEIVES = 3
CLIMB = "../../victim"  # the work dir is cache/work/{job_id}-{attempt}: this is host/victim-1


@pytest.fixture(params=["local", pytest.param("aws", marks=pytest.mark.aws)])
def backend(request: pytest.FixtureRequest, local_backend: Backend) -> Iterator[Backend]:
    if request.param == "local":
        yield local_backend
        return
    from tests.aws_support import fresh_aws_backend

    yield from fresh_aws_backend(request, lease_s=LEASE_S, max_receives=MAX_RECEIVES)


class StandIn:
    """`run_job` that reports each epoch like real training and records (job id, spec) it ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, JobSpec]] = []

    def __call__(self, ctx: JobContext) -> JobResult:
        self.ran.append((ctx.job_id, ctx.spec))
        epochs = ctx.spec.training.epochs
        for epoch in range(1, epochs + 1):
            ctx.on_epoch(EpochReport(epoch, {"val_accuracy": 0.5, "loss": 1.0}, 0.01))
        return JobResult(JobOutcome.COMPLETED, None, epochs, epochs, {"val_accuracy": 0.5}, 0.01,
                         10, 10, f"{ctx.prefix}/best.keras", {})


# --- the corpus -----------------------------------------------------------------------------------


def _deep(depth: int) -> str:
    return '{"study_id": ' + "[" * depth + "]" * depth + "}"


def _spec_set(data: dict[str, Any], path: str, value: object) -> None:
    """Set data["spec"].<dotted path> to `value`."""
    *parents, last = path.split(".")
    target = data["spec"]
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


Change = Callable[[dict[str, Any]], object]


def _message_bodies(valid: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, body, words its dead-letter reason must hold); `valid` is a good job's message."""

    def changed(change: Change) -> str:
        data = copy.deepcopy(valid)
        change(data)
        return json.dumps(data)

    text = json.dumps(valid)

    def replaced(old: str, new: str) -> str:
        assert old in text, old  # the corpus item must really differ from the valid body
        return text.replace(old, new)

    return [
        ("not json", "this is not json", "invalid JSON"),
        ("truncated", text[:50], "invalid JSON"),
        ("a list", "[1, 2, 3]", "JSON object"),
        ("nested 100000 deep", _deep(100_000), "nested deeper"),
        ("integer of 5000 digits", replaced('"seed": 0', '"seed": ' + "9" * 5000), "invalid JSON"),
        ("1e999", replaced('"data_fraction": 1.0', '"data_fraction": 1e999'), "data_fraction"),
        ("NaN", changed(lambda d: _spec_set(d, "optimizer.learning_rate", float("nan"))), "learning_rate"),
        ("unpaired surrogate", replaced('"kind": "train"', '"kind": "\\udc80"'), "spec.kind"),
        ("duplicate key", text[:-1] + ', "job_id": "other"}', "job_id"),
        ("schema version 2", changed(lambda d: d.update(schema_version=2)), "schema_version"),
        ("no schema version", changed(lambda d: d.pop("schema_version")), "schema_version"),
        ("unknown field", changed(lambda d: d.update(priority=9)), "priority"),
        ("job id climbs out", changed(lambda d: d.update(job_id=CLIMB)), "job_id"),
        ("study id climbs out", changed(lambda d: d.update(study_id="../../victim")), "study_id"),
        ("parent climbs out", changed(lambda d: _spec_set(d, "parent_job_id", "../x")), "parent_job_id"),
        ("weights absolute", changed(lambda d: _spec_set(d, "model.weights", "/root/.aws/credentials")), "weights"),
        ("image size 1e9", changed(lambda d: _spec_set(d, "model.image_size", 10**9)), "spec.model.image_size"),
        ("batch size 1e9", changed(lambda d: _spec_set(d, "training.batch_size", 10**9)), "spec.training.batch_size"),
        ("epochs 1e15", changed(lambda d: _spec_set(d, "training.epochs", 10**15)), "spec.training.epochs"),
        ("head units 1e9", changed(lambda d: _spec_set(d, "model.head.units", 10**9)), "spec.model.head.units"),
        ("job not in the store", changed(lambda d: d.update(job_id="0000aaaa0000")), "unknown job"),
        ("study not in the store", changed(lambda d: d.update(study_id="no-such-study")), "unknown job"),
    ]


@dataclass(frozen=True)
class HostileRecord:
    """A row stored under (STUDY, key) by `change` of a good row, and a valid message naming it."""

    label: str
    key: str
    change: Change
    words: str  # what the dead-letter reason (or the FAILED record's error) must hold
    runs: bool = False  # True: the record validates, the job starts and must end FAILED


def _records() -> list[HostileRecord]:
    def spec(path: str, value: object) -> Change:
        return lambda row: _spec_set(row, path, value)

    def row(**fields: object) -> Change:
        return lambda data: data.update(fields)

    def dataset(location: str) -> Change:
        return lambda data: data["spec"].update(dataset=location)

    return [
        HostileRecord("spec does not validate", "bad-optimizer", spec("optimizer", {"name": "lion"}), "spec.optimizer"),
        HostileRecord("epochs over the cap", "epochs-cap", spec("training.epochs", 10**15), "spec.training.epochs"),
        HostileRecord("image size over the cap", "image-cap", spec("model.image_size", 10**9), "spec.model.image_size"),
        HostileRecord("spec missing", "no-spec", lambda data: data.pop("spec"), "spec"),
        HostileRecord("status unknown", "bad-status", row(status="PWNED"), "status"),
        HostileRecord("names another job", "other-job", row(job_id="0123456789ab"), "job_id"),
        HostileRecord("job id climbs out", "climbing-job", row(job_id=CLIMB), "job_id"),
        HostileRecord("study id climbs out", "climbing-study", row(study_id="../../victim"), "study_id"),
        HostileRecord("parent climbs out", "climbing-parent", spec("parent_job_id", CLIMB), "parent_job_id"),
        HostileRecord("weights outside the store", "weights-home", spec("model.weights", "/root/.aws/x"), "weights"),
        # These validate: the job starts and fails on its dataset before anything runs. Three in a
        # row: failures that are the jobs' own (bad input) must not read as a sick host.
        HostileRecord("dataset climbs out", "dataset-climbs", dataset("artifacts:../../victim"), "victim", True),
        HostileRecord("dataset in another bucket", "other-bucket", dataset("s3://elsewhere/x"), "elsewhere", True),
        HostileRecord("dataset not prepared", "dataset-home", dataset("~"), "not found", True),
    ]


# --- feeding the worker ---------------------------------------------------------------------------


@dataclass
class Fed:
    """What was put on the queue and in the store, by what must become of it."""

    good: list[str] = field(default_factory=list)  # job ids that must succeed
    dead: dict[str, tuple[str, str]] = field(default_factory=dict)  # body -> (label, words of its reason)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # job id -> (label, words of its error)
    differs: tuple[str, JobSpec] | None = None  # a job whose only message carries another spec than its record


def plant_records(backend: Backend, good: JobRecord, fed: Fed) -> list[str]:
    """Write each hostile row past the store's port; the valid message naming each one."""
    template = good.model_dump(mode="json")
    bodies = []
    for hostile in _records():
        row = copy.deepcopy({**template, "job_id": hostile.key})
        hostile.change(row)
        put_job_row(backend.store, STUDY, hostile.key, row)
        body = JobMessage(study_id=STUDY, job_id=hostile.key, spec=good.spec).to_body()
        bodies.append(body)
        if hostile.runs:
            fed.failed[hostile.key] = (hostile.label, hostile.words)
        else:
            fed.dead[body] = (hostile.label, hostile.words)
    return bodies


def feed(backend: Backend, dataset: Path) -> Fed:
    """Hostile rows and bodies, then the good jobs submitted as `submit` does, one at a time
    between thirds of the hostile bodies: good, hostile..., good, hostile..., good, hostile..."""
    (first_id, spec), *others, (differs_id, differs_spec) = make_jobs(dataset, 4)
    good = [(first_id, spec), *others]
    fed = Fed(good=[job_id for job_id, _ in good], differs=(differs_id, differs_spec))
    valid = json.loads(JobMessage(study_id=STUDY, job_id=first_id, spec=spec).to_body())
    fed.dead = {body: (label, words) for label, body, words in _message_bodies(valid)}
    bodies = list(fed.dead)
    bodies += plant_records(backend, JobRecord(study_id=STUDY, job_id=first_id, spec=spec, created_at=time.time()), fed)
    backend.store.create_jobs([JobRecord(study_id=STUDY, job_id=differs_id, spec=differs_spec, created_at=time.time())])
    bodies.append(JobMessage(study_id=STUDY, job_id=differs_id, spec=spec).to_body())
    third = -(-len(bodies) // 3)
    for index, job in enumerate(good):
        submit_jobs(backend.store, backend.queue, STUDY, [job])
        backend.queue.send(bodies[index * third:(index + 1) * third])
    return fed


def dead_letters_and_reasons(queue: JobQueue) -> list[tuple[str, str]]:
    if isinstance(queue, SqliteJobQueue):
        rows = queue.db.read("SELECT body, reason FROM messages WHERE dead = 1 ORDER BY id")
        return [(row["body"], row["reason"]) for row in rows]
    return queue.dead_letter_reasons(limit=1000)


def snapshot(root: Path, cache: Path) -> dict[str, bytes | None]:
    """Every path under `root` but inside `cache`, with its bytes (None for a folder)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
        if not path.is_relative_to(cache)
    }


def plant_victims(host: Path) -> None:
    """Beside the cache, what a climbing job id (`victim-1`: its work dir at attempt 1) or study
    id would reach."""
    for name in ("victim-1", "victim"):
        (host / name).mkdir(parents=True)
        (host / name / "precious.txt").write_text(f"keep {name}")


def test_a_worker_fed_a_hostile_corpus_keeps_running_and_sets_each_item_aside(backend, tiny_dataset, tmp_path):
    host = tmp_path / "host"
    plant_victims(host)
    cache = host / "cache"
    before = snapshot(host, cache)
    fed = feed(backend, tiny_dataset)
    stand_in = StandIn()
    worker = Worker(backend, settings_for(tmp_path / "worker-home", cache_dir=cache), stand_in)

    worker.work(Policy(until_empty=True))  # returns, never raises

    assert not worker.stop.requested, worker.stop.reason
    assert snapshot(host, cache) == before
    assert list((cache / "work").iterdir()) == []
    counts = backend.queue.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)

    dead = dict(dead_letters_and_reasons(backend.queue))
    missing = [label for body, (label, _) in fed.dead.items() if body not in dead]
    assert missing == [] and len(dead) == len(fed.dead), (missing, set(dead) - set(fed.dead))
    for body, (label, words) in fed.dead.items():
        assert "\n" not in dead[body] and len(dead[body]) <= 1000 and words in dead[body], (label, dead[body])

    for job_id, (label, words) in fed.failed.items():
        record = backend.store.get_job(STUDY, job_id)
        assert record.status == JobStatus.FAILED, (label, record.status, record.error)
        assert "\n" not in record.error and words in record.error, (label, record.error)

    assert fed.differs is not None
    differs_id, differs_spec = fed.differs
    ran = dict(stand_in.ran)
    assert sorted(ran) == sorted([*fed.good, differs_id])  # nothing hostile ran
    assert ran[differs_id] == differs_spec  # the record's spec, never the message's
    for job_id in [*fed.good, differs_id]:
        assert backend.store.get_job(STUDY, job_id).status == JobStatus.SUCCEEDED
