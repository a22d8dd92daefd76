"""The three ports. Each adapter (embedded SQLite/directory, AWS SQS/DynamoDB/S3) implements the
contract written in these docstrings, and `tests/contract/` checks every adapter against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shared.jobs import EpochRecord, JobRecord, StudyRecord
from shared.status import JobStatus


@dataclass(frozen=True)
class Delivery:
    """One receipt of one message. `receipt` is valid until the message is received again."""

    message_id: str
    body: str
    receipt: str
    receive_count: int  # 1 on first delivery


@dataclass(frozen=True)
class QueueCounts:
    visible: int
    in_flight: int
    dead: int

    @property
    def backlog(self) -> int:
        return self.visible + self.in_flight


@runtime_checkable
class JobQueue(Protocol):
    """An at-least-once queue of message bodies with SQS semantics.

    - `send` enqueues bodies (batched by the adapter: 10 per call on SQS) and returns how many.
    - `receive` returns up to `max_messages` deliveries, waiting up to `wait_s` for the first one.
      A received message is invisible to every other receiver for the queue's visibility timeout,
      then becomes visible again with `receive_count + 1`. A message received more than
      `max_receives` times is moved to the dead-letter queue instead of being delivered.
    - `delete` removes messages for good, given their current receipts; an unknown or stale
      receipt is ignored.
    - `extend` sets a received message's visibility to `visibility_timeout_s` from now; it returns
      False (and changes nothing) when the receipt is no longer the current one.
    - `release` makes a received message visible again after `delay_s` (0: at once).
    - `dead_letter` moves a delivered message to the dead-letter queue at once (poison messages).
    - `counts` reports approximate visible, in-flight and dead-lettered message counts.
    - `dead_letters` lists (does not remove) bodies in the dead-letter queue, oldest first.
    """

    def send(self, bodies: Iterable[str], delay_s: int = 0) -> int: ...
    def receive(self, max_messages: int = 1, wait_s: float = 0.0) -> list[Delivery]: ...
    def delete(self, receipts: Sequence[str]) -> None: ...
    def extend(self, receipt: str, visibility_timeout_s: float) -> bool: ...
    def release(self, receipt: str, delay_s: float = 0.0) -> None: ...
    def dead_letter(self, delivery: Delivery, reason: str) -> None: ...
    def counts(self) -> QueueCounts: ...
    def dead_letters(self, limit: int = 100) -> list[str]: ...


@runtime_checkable
class JobStore(Protocol):
    """Studies, job records and per-epoch metrics, with conditional transitions.

    Job state changes follow `JobStatus.TRANSITIONS`. The lease holder's writes are *fenced*:
    each one names the attempt number its claim returned, and fails with `LeaseLostError` unless
    the job is still RUNNING with exactly that attempt. Time is passed in (`now`, epoch seconds)
    so that leases are testable without sleeping.

    - `put_study` creates a study if absent; returns False (changing nothing) if it exists.
    - `mark_stage` sets a study's follow-up stage once; True only for the first caller.
    - `create_jobs` inserts the records whose ids do not exist yet (batched by the adapter: 25
      per call on DynamoDB) and returns the ids it created; existing rows are left untouched.
    - `claim` takes a job for `owner`: QUEUED, or RUNNING with a lease expired at `now`, becomes
      RUNNING with attempt + 1 and a lease until `now + lease_s`. Returns the new record, or
      None if the job is not claimable (finished, or leased by someone else). Raises
      NotFoundError for an unknown job.
    - `renew` extends the lease (heartbeat) of the holder of `attempt`.
    - `update` writes fields of a running job (metrics, epochs, artifacts) for the lease holder.
    - `finish` moves the lease holder's job to SUCCEEDED, FAILED, CANCELLED or back to QUEUED
      (preemption) with the given field changes, and clears the lease.
    - `reset` is the unfenced administrative transition (`submit retry` / `submit cancel`):
      it moves a job from one of `from_statuses` to `to`, returns False if it was in none.
    - `request_cancel` flags a running job so that its worker stops at the next epoch.
    - `put_epoch` upserts one epoch's metrics, fenced like `update`; a redone epoch replaces
      the earlier row.
    - `list_jobs` returns a study's jobs (optionally of one status) in job id order.
    - `find_job` looks a job up by id alone (may be eventually consistent).
    """

    def put_study(self, study: StudyRecord) -> bool: ...
    def get_study(self, study_id: str) -> StudyRecord | None: ...
    def list_studies(self) -> list[StudyRecord]: ...
    def mark_stage(self, study_id: str, stage: str) -> bool: ...
    def create_jobs(self, records: Iterable[JobRecord]) -> list[str]: ...
    def get_job(self, study_id: str, job_id: str) -> JobRecord | None: ...
    def find_job(self, job_id: str) -> JobRecord | None: ...
    def list_jobs(self, study_id: str, status: JobStatus | None = None) -> list[JobRecord]: ...
    def claim(self, study_id: str, job_id: str, owner: str, lease_s: float, now: float) -> JobRecord | None: ...
    def renew(self, study_id: str, job_id: str, attempt: int, lease_s: float, now: float) -> JobRecord: ...
    def update(self, study_id: str, job_id: str, attempt: int, changes: dict[str, Any]) -> None: ...
    def finish(
        self, study_id: str, job_id: str, attempt: int, status: JobStatus, changes: dict[str, Any]
    ) -> JobRecord: ...
    def reset(
        self, study_id: str, job_id: str, from_statuses: Sequence[JobStatus], to: JobStatus, changes: dict[str, Any]
    ) -> bool: ...
    def request_cancel(self, study_id: str, job_id: str) -> bool: ...
    def put_epoch(self, record: EpochRecord) -> None: ...
    def epochs(self, study_id: str, job_id: str) -> list[EpochRecord]: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@runtime_checkable
class ArtifactStore(Protocol):
    """Files by key ("studies/s1/jobs/j1/best.keras"). Keys are relative POSIX paths without
    `..`, checked by `shared.paths.check_key`; a bad key raises BadInputError.

    - `put_file` / `put_bytes` store an object, replacing any; with `if_absent=True` `put_bytes`
      stores only if the key is free and returns whether it did (write-once entries).
    - `get_file` writes an object to a local path atomically (the path never holds a partial
      file); `get_bytes` returns it. Both raise NotFoundError for a missing key.
    - `list` yields the objects under a prefix, in key order.
    - `uri` is where a person finds the object (a file path, s3://bucket/key).
    """

    def put_file(self, local_path: Path, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool: ...
    def get_file(self, key: str, local_path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str) -> str: ...


@dataclass
class Backend:
    """The three ports of one configured backend (`shared.backends.factory.open_backend`)."""

    queue: JobQueue
    store: JobStore
    artifacts: ArtifactStore
    name: str = "local"
