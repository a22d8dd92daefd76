"""The one place that maps how a job ended to what happens to its record and its message.

| outcome   | record                                   | message                                   |
|-----------|------------------------------------------|-------------------------------------------|
| succeeded | RUNNING -> SUCCEEDED with the results     | delete                                    |
| failed    | RUNNING -> FAILED with the error          | delete                                    |
| cancelled | RUNNING -> CANCELLED                      | delete                                    |
| preempted | RUNNING -> QUEUED, preemptions + 1        | send a fresh message, delete the old one  |
| retry     | RUNNING -> QUEUED with the error          | release with backoff (the redrive counts) |
|   ...last | RUNNING -> FAILED (receives exhausted)    | move to the dead-letter queue             |
| fatal     | RUNNING -> QUEUED                         | release at once; the worker stops         |
| lease_lost| nothing: another worker owns the job      | nothing                                   |

Every record write is fenced by the attempt number, so a fenced-out worker changes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, assert_never

from shared.errors import LeaseLostError
from shared.followups import advance_study
from shared.jobs import JobRecord
from shared.paths import job_prefix
from shared.ports import ArtifactStore, Delivery, JobQueue, JobStore
from shared.status import JobStatus
from shared.submission import enqueue_record

log = logging.getLogger("spotsweep.worker")

MAX_BACKOFF_S = 900


class OutcomeKind(StrEnum):
    """How a job ended, as far as its record and its message are concerned (the table above)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    RETRY = "retry"
    FATAL = "fatal"
    LEASE_LOST = "lease_lost"


@dataclass
class Outcome:
    kind: OutcomeKind
    changes: dict[str, Any] = field(default_factory=dict)  # record fields to write with the transition
    error: str | None = None
    traceback: str | None = None

    def __post_init__(self) -> None:
        self.kind = OutcomeKind(self.kind)  # a value outside the table is a ValueError, never a guess


Handler = Callable[[JobRecord, Delivery, Outcome], None]


def backoff_s(receive_count: int, base_s: float = 5.0) -> float:
    """Exponential backoff with full jitter, capped (SQS allows 12 h; we keep it short)."""
    return random.uniform(0, min(MAX_BACKOFF_S, base_s * 2 ** max(0, receive_count - 1)))


@dataclass
class Settler:
    queue: JobQueue
    store: JobStore
    artifacts: ArtifactStore
    max_receives: int
    backoff_base_s: float = 5.0

    def settle(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        extra = {"event": outcome.kind, "job_id": record.job_id, "attempt": record.attempt}
        log.info("job %s%s", outcome.kind, f": {outcome.error}" if outcome.error else "", extra=extra)
        try:
            self._handler(outcome.kind)(record, delivery, outcome)
        except LeaseLostError:
            log.warning("fenced out while settling; another worker owns the job", extra=extra)

    def _handler(self, kind: OutcomeKind) -> Handler:
        match kind:
            case OutcomeKind.SUCCEEDED:
                return self._succeeded
            case OutcomeKind.FAILED:
                return self._failed
            case OutcomeKind.CANCELLED:
                return self._cancelled
            case OutcomeKind.PREEMPTED:
                return self._preempted
            case OutcomeKind.RETRY:
                return self._retry
            case OutcomeKind.FATAL:
                return self._fatal
            case OutcomeKind.LEASE_LOST:
                return self._lease_lost
            case _:  # the type checker proves this unreachable; at run time it is loud
                assert_never(kind)

    def _finish(self, record: JobRecord, status: JobStatus, outcome: Outcome, **more: Any) -> None:
        changes = {**outcome.changes, **more}
        if outcome.error is not None:
            changes["error"] = outcome.error
        if status.finished:
            changes.setdefault("finished_at", time.time())
        self.store.finish(record.study_id, record.job_id, record.attempt, status, changes)

    def _succeeded(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._finish(record, JobStatus.SUCCEEDED, outcome, error=None)
        self.queue.delete([delivery.receipt])
        self._advance(record)

    def _failed(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._save_traceback(record, outcome)
        self._finish(record, JobStatus.FAILED, outcome)
        self.queue.delete([delivery.receipt])
        self._advance(record)

    def _cancelled(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._finish(record, JobStatus.CANCELLED, outcome)
        self.queue.delete([delivery.receipt])
        self._advance(record)

    def _preempted(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        # A fresh message, not a release: preemptions must never count towards the dead-letter queue.
        self._finish(record, JobStatus.QUEUED, outcome, preemptions=record.preemptions + 1)
        enqueue_record(self.queue, record)
        self.queue.delete([delivery.receipt])

    def _retry(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._save_traceback(record, outcome)
        if delivery.receive_count >= self.max_receives:
            outcome.error = f"gave up after {delivery.receive_count} attempts: {outcome.error}"
            self._finish(record, JobStatus.FAILED, outcome)
            self.queue.dead_letter(delivery, outcome.error)
            self._advance(record)
            return
        self._finish(record, JobStatus.QUEUED, outcome)
        self.queue.release(delivery.receipt, backoff_s(delivery.receive_count, self.backoff_base_s))

    def _fatal(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._finish(record, JobStatus.QUEUED, outcome)
        self.queue.release(delivery.receipt, 0)

    def _lease_lost(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        """Another worker took the job over: its writes win, ours would be refused anyway."""

    def _save_traceback(self, record: JobRecord, outcome: Outcome) -> None:
        if not outcome.traceback:
            return
        key = f"{job_prefix(record.study_id, record.job_id)}/errors/attempt-{record.attempt}.txt"
        try:
            self.artifacts.put_bytes(key, outcome.traceback.encode())
            outcome.changes.setdefault("artifacts", dict(record.artifacts))["traceback"] = key
        except Exception:  # the error itself matters more than its traceback file
            log.warning("could not store traceback", exc_info=True)

    def _advance(self, record: JobRecord) -> None:
        try:
            stages = advance_study(self.store, self.queue, record.study_id)
        except Exception:  # the next finishing job (or `submit finetune/evaluate`) advances it
            log.warning("could not advance study", exc_info=True, extra={"event": "advance_failed"})
            return
        for stage, count in stages.items():
            log.info("study %s: %d %s jobs enqueued", record.study_id, count, stage, extra={"event": "followups", "study_id": record.study_id})
