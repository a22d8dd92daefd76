"""The three ports: a job queue, a job store and an artifact store.

Each adapter (embedded SQLite/directory, AWS SQS/DynamoDB/S3) implements the contract written in
these docstrings: what every method takes, returns and raises. `tests/contract/` checks every
adapter against it, making each documented error happen.
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
    """One receipt of one message.

    `receipt` names this delivery: it is valid until the message is received again, and the
    queue ignores (or refuses, for `extend`) a receipt that a later delivery superseded.
    """

    message_id: str
    body: str
    receipt: str
    receive_count: int  # 1 on first delivery


@dataclass(frozen=True)
class QueueCounts:
    """Approximate message counts of a queue (SQS's counts lag by up to a minute).

    `visible` wait to be received, `in_flight` are received and not yet deleted or released
    (delayed messages count here too), `dead` are in the dead-letter queue. `retention_s` is how
    long the queue keeps a message after it was sent before dropping it silently (SQS's
    `MessageRetentionPeriod`; None: kept until deleted, as on the embedded queue).
    """

    visible: int
    in_flight: int
    dead: int
    retention_s: float | None = None

    @property
    def backlog(self) -> int:
        return self.visible + self.in_flight


@runtime_checkable
class JobQueue(Protocol):
    """An at-least-once queue of message bodies with SQS semantics.

    A received message is invisible to every other receiver for the queue's visibility timeout,
    then becomes visible again with `receive_count + 1`. A message received more than
    `max_receives` times is moved to the dead-letter queue instead of being delivered.

    Errors that any method of an adapter talking to a service may raise are not repeated below:
    `RetryableError` (throttling, network trouble, after the client's own retries) and
    `FatalError` (`ResourceMissingError` for a queue that does not exist, refused credentials).
    """

    def send(self, bodies: Iterable[str], delay_s: int = 0) -> int:
        """Enqueue message bodies, batched by the adapter (10 per call on SQS).

        Args:
            bodies: the message bodies, each at most 256 KiB (`shared.jobs.MAX_MESSAGE_BYTES`).
            delay_s: seconds before the messages become visible (SQS allows at most 900).

        Returns:
            How many bodies were sent.

        Raises:
            BadInputError: a body is over 256 KiB (its JSON path is `bodies[i]`); nothing is sent.
        """
        ...

    def receive(self, max_messages: int = 1, wait_s: float = 0.0) -> list[Delivery]:
        """Take visible messages, waiting for the first one up to `wait_s`.

        Args:
            max_messages: the most deliveries wanted, clamped to 1..10 (SQS's limit).
            wait_s: how long to wait when no message is visible (0: return at once).

        Returns:
            Between 0 and `max_messages` deliveries (an empty list when the wait ran out).
        """
        ...

    def delete(self, receipts: Sequence[str]) -> None:
        """Remove delivered messages for good (acknowledge them).

        Args:
            receipts: the receipts of the deliveries to remove; an unknown or superseded receipt
                is ignored (on SQS, superseded by a later receive in this process).
        """
        ...

    def extend(self, receipt: str, visibility_timeout_s: float) -> bool:
        """Keep a delivered message invisible for `visibility_timeout_s` from now (heartbeat).

        Args:
            receipt: the delivery's receipt.
            visibility_timeout_s: seconds from now (SQS rounds up to whole seconds, at most 12 hours).

        Returns:
            True, or False (changing nothing) when the receipt is no longer the current one.

        Raises:
            VisibilityLimitError: the queue will not hide this delivery that long (SQS: 12 hours
                from its receipt); the receipt is still current. Queues without a limit never raise it.
        """
        ...

    def release(self, receipt: str, delay_s: float = 0.0) -> None:
        """Make a delivered message visible again after `delay_s` (0: at once); it counts as received.

        Args:
            receipt: the delivery's receipt; an unknown or superseded one is ignored.
            delay_s: seconds until the message is visible again.
        """
        ...

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivered message to the dead-letter queue at once (a poison message).

        Args:
            delivery: the delivery; a superseded one is ignored (someone else holds the message
                now). On SQS only this process's later receives are known to supersede it.
            reason: why, kept beside the body where the adapter can (first 1000 characters).
        """
        ...

    def counts(self) -> QueueCounts:
        """Approximate visible, in-flight and dead-lettered message counts, and the retention."""
        ...

    def dead_letters(self, limit: int = 100) -> list[str]:
        """The bodies in the dead-letter queue, oldest first, without removing them (for display).

        Args:
            limit: the most bodies returned.

        Returns:
            At most `limit` bodies.
        """
        ...

    def receive_dead(self, max_messages: int = 10, hide_s: float = 60.0) -> list[Delivery]:
        """Take messages from the dead-letter queue to handle them (the reconciler).

        Each message taken is hidden from later `receive_dead` calls for `hide_s`, then comes back
        unless `delete_dead` removed it: a caller that stops halfway loses nothing. Calling again
        until it returns an empty list pages through the whole dead-letter queue once.

        Args:
            max_messages: the most deliveries wanted, clamped to 1..10 (SQS's limit).
            hide_s: seconds each taken message stays hidden (whole seconds on SQS, at most 12 hours).

        Returns:
            Between 0 and `max_messages` deliveries. An empty list means no dead letter is visible
            now: on SQS the adapter long-polls, which asks every host, so an empty answer is not
            the sampling of a short poll.
        """
        ...

    def delete_dead(self, receipts: Sequence[str]) -> None:
        """Remove dead letters taken by `receive_dead` for good.

        Args:
            receipts: their receipts; an unknown or superseded one is ignored.
        """
        ...


@runtime_checkable
class JobStore(Protocol):
    """Studies, job records and per-epoch metrics, with conditional transitions.

    Job state changes follow `JobStatus.TRANSITIONS`. The lease holder's writes are *fenced*:
    each one names the attempt number its claim returned, and fails with `LeaseLostError` unless
    the job is still RUNNING with exactly that attempt. Time is passed in (`now`, epoch seconds)
    so that leases are testable without sleeping.

    Field changes (`update`, `finish`, `reset`) are checked before anything is read or written,
    the same way on every adapter (`shared.backends.checks`): a field `JobRecord` does not have,
    a value that does not validate, or a field the method may not change raises `BadInputError`
    with the JSON path `changes.<field>`, and changes nothing. A job's identity (`study_id`,
    `job_id`, `spec`: the id is a hash of the spec) never changes; the lease protocol's fields
    (`status`, `attempt`, `lease_owner`, `lease_expires_at`) change only through `claim`,
    `renew`, `finish` (its `status` argument) and `reset` (its `to`; it may clear a lapsed lease).

    Records read back are validated. A stored record that does not validate, or that names
    another study or job than the key it is stored under (a hostile, older or newer writer), is
    corrupt: a method that returns it (`get_study`, `get_job`, `find_job`, `claim`, `renew`,
    `finish`) raises `CorruptRecordError` naming the record and the first bad field's JSON path;
    listings (`list_studies`, `list_jobs`, `epochs`) leave it out and log a warning, so that one
    bad row never hides the others. The SQLite adapter reads the record in every transition, so
    its `update`, `reset`, `request_cancel`, `put_epoch` and `mark_stage` raise it too, changing
    nothing; DynamoDB's updates do not read it, and DynamoDB validates what a conditional update
    returns, so its `claim`, `renew` or `finish` that raises `CorruptRecordError` was written.

    Errors that any method of an adapter talking to a service may raise are not repeated below:
    `RetryableError` (throttling, network trouble, a transaction still conflicting after
    retries) and `FatalError` (`ResourceMissingError` for a missing table, refused credentials).
    """

    def put_study(self, study: StudyRecord) -> bool:
        """Create a study if absent.

        Args:
            study: the study record.

        Returns:
            True if it was created; False, changing nothing, if a study with its id exists.
        """
        ...

    def get_study(self, study_id: str) -> StudyRecord | None:
        """One study.

        Returns:
            The study, or None if there is none with that id.

        Raises:
            CorruptRecordError: the stored study does not validate.
        """
        ...

    def list_studies(self) -> list[StudyRecord]:
        """Every study, newest (`created_at`) first, then by id; corrupt ones left out (logged)."""
        ...

    def mark_stage(self, study_id: str, stage: str) -> bool:
        """Record a study's `stage` once: a follow-up enqueued ("finetune", "evaluate"), or
        "cancelled" (`submit cancel`: no follow-up starts after it).

        Returns:
            True only for the first caller naming that stage; False for every later one.

        Raises:
            NotFoundError: no study has that id.
        """
        ...

    def create_jobs(self, records: Iterable[JobRecord]) -> list[str]:
        """Insert the records whose ids do not exist yet (batched: 100 per transaction on DynamoDB).

        Args:
            records: new job records; of duplicate ids in one call the first wins.

        Returns:
            The ids created, in input order; existing rows are left untouched and not listed.
        """
        ...

    def mark_enqueued(self, study_id: str, job_ids: Sequence[str], now: float) -> list[str]:
        """Stamp `enqueued_at = now` on unfinished jobs: a message for each was just sent.

        Unfenced and safe without a lease: it changes nothing but the stamp, and only on jobs that
        are QUEUED or RUNNING, never moving a stamp back (a later one is kept). Batched: 100 jobs
        per transaction on DynamoDB.

        Args:
            job_ids: the jobs of `study_id` whose message was sent (duplicates count once).
            now: when the messages were sent (epoch seconds; the caller's clock before sending).

        Returns:
            The ids stamped, in input order; a finished or unknown job, or one stamped later
            than `now`, is left as it is and not listed.
        """
        ...

    def get_job(self, study_id: str, job_id: str) -> JobRecord | None:
        """One job, read consistently.

        Returns:
            The record, or None if the study has no such job.

        Raises:
            CorruptRecordError: the stored record is corrupt (see the class docstring).
        """
        ...

    def find_job(self, job_id: str) -> JobRecord | None:
        """A job looked up by its id alone (may be eventually consistent: a DynamoDB index).

        Returns:
            The record, or None if no study has such a job.

        Raises:
            CorruptRecordError: the stored record is corrupt.
        """
        ...

    def list_jobs(self, study_id: str, status: JobStatus | None = None) -> list[JobRecord]:
        """A study's jobs in job id order, optionally only those of one status.

        Returns:
            The records (none for an unknown study); corrupt ones are left out and logged.
        """
        ...

    def claim(self, study_id: str, job_id: str, owner: str, lease_s: float, now: float) -> JobRecord | None:
        """Take a job for `owner`: QUEUED, or RUNNING with a lease expired at `now`, becomes RUNNING.

        Args:
            owner: the worker's name, kept as `lease_owner`.
            lease_s: the lease length; it expires at `now + lease_s` unless renewed.
            now: the time of the claim (epoch seconds).

        Returns:
            The new record, with `attempt + 1` (the fencing token of every later write), or None
            if the job is not claimable (finished, or leased by someone else until after `now`).

        Raises:
            NotFoundError: the study has no such job.
            CorruptRecordError: the stored record is corrupt.
        """
        ...

    def renew(self, study_id: str, job_id: str, attempt: int, lease_s: float, now: float) -> JobRecord:
        """Extend the lease of the holder of `attempt` to `now + lease_s` (heartbeat).

        Returns:
            The record with its new `lease_expires_at` and `heartbeat_at = now`.

        Raises:
            LeaseLostError: the job is no longer RUNNING with this attempt.
            NotFoundError: the study has no such job.
            CorruptRecordError: the stored record is corrupt.
        """
        ...

    def update(self, study_id: str, job_id: str, attempt: int, changes: dict[str, Any]) -> None:
        """Write fields of a running job (metrics, epochs run, artifacts) for the lease holder.

        Args:
            attempt: the attempt number the holder's claim returned.
            changes: field name -> new value; None clears an optional field. Neither identity
                nor lease fields (see the class docstring).

        Raises:
            BadInputError: a field that does not exist, is not valid or may not change
                (`changes.<field>`); nothing is written, whoever holds the lease.
            LeaseLostError: the job is no longer RUNNING with this attempt.
            NotFoundError: the study has no such job.
        """
        ...

    def finish(
        self, study_id: str, job_id: str, attempt: int, status: JobStatus, changes: dict[str, Any]
    ) -> JobRecord:
        """End the lease holder's attempt: the job becomes `status` and its lease is cleared.

        Args:
            attempt: the attempt number the holder's claim returned.
            status: SUCCEEDED, FAILED, CANCELLED, or QUEUED (preempted: it may be claimed again).
            changes: fields written with the transition, checked as for `update`.

        Returns:
            The record as written.

        Raises:
            BadInputError: `status` is RUNNING or not a status (`status`), or a field of
                `changes` is refused as by `update`; nothing is written.
            LeaseLostError: the job is no longer RUNNING with this attempt.
            NotFoundError: the study has no such job.
            CorruptRecordError: the stored record is corrupt.
        """
        ...

    def reset(
        self, study_id: str, job_id: str, from_statuses: Sequence[JobStatus], to: JobStatus, changes: dict[str, Any]
    ) -> bool:
        """The unfenced administrative transition (`submit retry`, `submit cancel`).

        Args:
            from_statuses: the statuses the job may be in; a status that cannot become `to` in
                `JobStatus.TRANSITIONS` is ignored.
            to: the new status.
            changes: fields written with the transition; identity fields, `status` and `attempt`
                are refused, lease fields may be cleared.

        Returns:
            True if the job moved; False, changing nothing, if it was in none of `from_statuses`.

        Raises:
            BadInputError: a field of `changes` is refused (`changes.<field>`); nothing is written.
            NotFoundError: the study has no such job.
        """
        ...

    def request_cancel(self, study_id: str, job_id: str) -> bool:
        """Flag a running job (`cancel_requested`) so that its worker stops at the next epoch.

        Returns:
            True if the job was RUNNING and is flagged; False, changing nothing, otherwise.

        Raises:
            NotFoundError: the study has no such job.
        """
        ...

    def put_epoch(self, record: EpochRecord) -> None:
        """Upsert one epoch's metrics, fenced like `update` by `record.attempt`.

        A redone epoch (the same number, after a preemption) replaces the earlier row.

        Raises:
            LeaseLostError: the job is no longer RUNNING with `record.attempt`; nothing is written.
            NotFoundError: the study has no such job.
        """
        ...

    def epochs(self, study_id: str, job_id: str) -> list[EpochRecord]:
        """A job's epoch rows in epoch order (none for an unknown job); corrupt ones left out (logged)."""
        ...

    def acquire_lock(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        """Take the store-wide lock `name` for `owner` until `now + ttl_s` (a conditional write).

        Nobody else may take it until then, whoever asks: not even `owner` itself, so a lock held
        is also a stamp of "done at most once per `ttl_s`" (the reconciler of idle workers). It is
        never released early; it lapses.

        Args:
            name: the lock's name, an identifier (`shared.paths.check_id`).
            owner: who takes it (a worker's name), kept for people to read.
            ttl_s: how long it holds (positive).
            now: the time of taking it (epoch seconds).

        Returns:
            True if `owner` holds it now; False, changing nothing, if it is held until after `now`.

        Raises:
            BadInputError: `name` is not an identifier (`name`) or `ttl_s` is not positive (`ttl_s`).
        """
        ...


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
    - `uri` is where a person finds the object (a file path, s3://bucket/key): for display only.
      Records and messages carry keys, never what `uri` returns.
    - `key_for` is the one parser from a location a user (or a record) gives to a key.
    """

    def put_file(self, local_path: Path, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool: ...
    def get_file(self, key: str, local_path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str) -> str: ...

    def key_for(self, location: str) -> str:
        """The key of an object of this store named by a user or a record.

        Args:
            location: a bare key ("weights/a.weights.h5"), `artifacts:<key>`, or, on a store in an
                S3 bucket, `s3://bucket/<root>/<key>` naming this store's bucket and a key under its
                root prefix (the form `uri` displays). A local path is never a key: nothing read
                through the store may come from an arbitrary file of the reader's machine.

        Returns:
            The key, checked by `shared.paths.check_key` (relative to the store's root: a prefixed
            store's root is not repeated).

        Raises:
            BadInputError: naming `location`, when this store cannot reach it: an unsafe key, an
                absolute path, an `s3://` location on a store that is not S3, another bucket, a key
                outside the store's root prefix, an unknown scheme.
        """
        ...


@dataclass
class Backend:
    """The three ports of one configured backend (`shared.backends.factory.open_backend`)."""

    queue: JobQueue
    store: JobStore
    artifacts: ArtifactStore
    name: str = "local"
