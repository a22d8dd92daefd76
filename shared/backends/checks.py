"""The checks every adapter makes the same way, so that the contract in `shared.ports` holds alike.

- Which job fields a write may change (`job_changes`): a job's identity never changes, and the
  fields of the lease protocol change only through the store's own transitions. A refused or
  invalid field raises `BadInputError` naming it, before anything is read or written.
- What a record read back must be (`read_job`, `read_study`, `read_record`): a row that does not validate, or
  that names another job than the key it is stored under, raises `CorruptRecordError` naming the
  record and the first bad field. Listings leave such rows out with a logged warning
  (`readable`): one hostile row must not hide every other record.
- How large a message body may be (`checked_bodies`): SQS's 256 KiB, on every queue.
- What a lock is (`check_lock`): an identifier held for a positive number of seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.errors import BadInputError, CorruptRecordError
from shared.jobs import MAX_MESSAGE_BYTES, JobRecord, StudyRecord, first_error
from shared.paths import check_id
from shared.status import JobStatus

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Row = TypeVar("Row")

# What the job is: its id is a hash of the study id and the spec.
IDENTITY_FIELDS = frozenset({"study_id", "job_id", "spec"})
# The lease protocol's fields: set only by claim, renew, finish (status) and reset (status).
LEASE_FIELDS = frozenset({"status", "attempt", "lease_owner", "lease_expires_at"})
# What `update` and `finish` (the lease holder's writes) may not change.
HOLDER_FORBIDDEN = IDENTITY_FIELDS | LEASE_FIELDS
# What `reset` (the administrative transition) may not change: it may clear a lapsed lease.
RESET_FORBIDDEN = IDENTITY_FIELDS | {"status", "attempt"}
FINISH_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED})
# Where `mark_enqueued` stamps `enqueued_at`: the jobs that may still need their message.
UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


@lru_cache(maxsize=None)
def _field_adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(JobRecord.model_fields[name].annotation)


def job_changes(changes: dict[str, Any], forbidden: frozenset[str]) -> dict[str, Any]:
    """`changes` validated field by field against `JobRecord`, as JSON-mode values.

    Raises BadInputError, with the JSON path `changes.<field>`, for the first field that
    `JobRecord` does not have, that is in `forbidden`, or whose value does not validate.
    """
    out: dict[str, Any] = {}
    for name, value in changes.items():
        path = f"changes.{name}"
        if name not in JobRecord.model_fields:
            raise BadInputError("a job record has no such field", path)
        if name in IDENTITY_FIELDS & forbidden:
            raise BadInputError(f"a job's {name} is its identity and never changes", path)
        if name in forbidden:
            raise BadInputError(f"a job's {name} changes only through the store's own transitions", path)
        adapter = _field_adapter(name)
        try:
            out[name] = adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as exc:
            raise BadInputError(f"invalid value: {first_error(exc)[0]}", path) from None
    return out


def finish_status(status: JobStatus | str) -> JobStatus:
    """The status a lease holder may finish with: SUCCEEDED, FAILED, CANCELLED or QUEUED."""
    try:
        checked = JobStatus(status)
    except ValueError:
        checked = None
    if checked not in FINISH_STATUSES:
        raise BadInputError(f"a job cannot finish as {status!r}", "status")
    return checked


def read_record(model: type[M], data: str | dict[str, Any], what: str) -> M:
    """`data` (a JSON document or a dict) validated as `model`; CorruptRecordError if it is not one.

    `what` names the record in the message ("job j1 of study s1"); the message also gives the
    JSON path of the first field that does not validate.
    """
    try:
        if isinstance(data, str):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        message, path = first_error(exc)
        where = path or "(the record)"
        raise CorruptRecordError(f"{what}: the stored record is invalid at {where}: {message}") from None


def read_job(data: str | dict[str, Any], study_id: str, job_id: str) -> JobRecord:
    """The job record stored under (`study_id`, `job_id`); CorruptRecordError if it is not valid.

    A record that names another study or job than its key is corrupt too: a write conditioned
    on its own ids would miss the row it came from.
    """
    what = f"job {job_id} of study {study_id}"
    record = read_record(JobRecord, data, what)
    if record.study_id != study_id:
        raise CorruptRecordError(f"{what}: the stored record is invalid at study_id: it names {record.study_id!r}")
    if record.job_id != job_id:
        raise CorruptRecordError(f"{what}: the stored record is invalid at job_id: it names {record.job_id!r}")
    return record


def read_study(data: str | dict[str, Any], study_id: str) -> StudyRecord:
    """The study record stored under `study_id`; CorruptRecordError if it is not valid or names another."""
    what = f"study {study_id}"
    record = read_record(StudyRecord, data, what)
    if record.study_id != study_id:
        raise CorruptRecordError(f"{what}: the stored record is invalid at study_id: it names {record.study_id!r}")
    return record


def readable(rows: Iterable[Row], read: Callable[[Row], M]) -> list[M]:
    """`read` of every row, leaving out (with a warning) the rows that raise CorruptRecordError.

    A listing serves status tables, reports and retries; one corrupt row must not break them.
    The row itself still raises when it is read alone (`get_job`, `find_job`, `claim`).
    """
    records: list[M] = []
    for row in rows:
        try:
            records.append(read(row))
        except CorruptRecordError as exc:
            log.warning("left a corrupt record out of a listing: %s", exc)
    return records


def checked_bodies(bodies: Iterable[str]) -> list[str]:
    """`bodies` as a list, or BadInputError naming the first one over SQS's 256 KiB (`bodies[i]`)."""
    checked = list(bodies)
    for index, body in enumerate(checked):
        size = len(body.encode())
        if size > MAX_MESSAGE_BYTES:
            message = f"message body of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"
            raise BadInputError(message, f"bodies[{index}]")
    return checked


def check_lock(name: str, ttl_s: float) -> str:
    """`name` if it is an identifier and `ttl_s` a positive number of seconds; else BadInputError
    naming the argument (`name`, `ttl_s`)."""
    try:
        check_id(name, "lock name")
    except BadInputError as exc:
        raise BadInputError(str(exc), "name") from None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise BadInputError(f"a lock is held for a positive number of seconds, got {ttl_s!r}", "ttl_s")
    return name
