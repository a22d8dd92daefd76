"""The one place that maps how a job ended to what happens to its record and its message.

| outcome   | record                                        | message                                  |
|-----------|-----------------------------------------------|------------------------------------------|
| succeeded | RUNNING -> SUCCEEDED with the results          | delete, once the study is advanced (*)   |
| failed    | RUNNING -> FAILED with the error               | delete, once the study is advanced (*)   |
| cancelled | RUNNING -> CANCELLED                           | delete, once the study is advanced (*)   |
| preempted | RUNNING -> QUEUED, preemptions + 1             | send a fresh message, delete the old one |
| handoff   | RUNNING -> QUEUED, handoffs + 1                | send a fresh message, delete the old one |
| retry     | RUNNING -> QUEUED with the error, failures + 1 | release with backoff                     |
|   ...last | RUNNING -> FAILED at failures >= max_failures  | move to the dead-letter queue            |
| fatal     | RUNNING -> QUEUED with the error               | release at once; the worker stops        |
| breaker   | RUNNING -> QUEUED with the error               | release at once; the worker stops        |
| lease_lost| nothing: another worker owns the job (or may)  | nothing                                  |

(*) The study's search and follow-ups are advanced (shared.followups.advance_study) before the
message goes; when that fails, the message is released and its next receiver advances the study
(`advance_then_ack`).

A job's failures are counted in its record, by the fenced finish of the attempt that failed: only
its own errors count (retry). A preemption, a handoff, a fatal error of the worker, a cold stop,
a tripped circuit breaker or a lost lease is not the job's fault and never counts; nor does the
queue's receive count decide anything (the queue's redrive is only a backstop for messages that
kill every worker that takes them).

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
from shared.submission import enqueue_records

log = logging.getLogger("spotsweep.worker")

MAX_BACKOFF_S = 900
FORGIVE_LEASE_S = 2.0  # `forgive` holds a job this long at most: a receiver meanwhile waits about as long


class OutcomeKind(StrEnum):
    """How a job ended, as far as its record and its message are concerned (the table above)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    HANDOFF = "handoff"
    RETRY = "retry"
    FATAL = "fatal"
    BREAKER = "breaker"
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


def backoff_s(failures: int, base_s: float = 5.0) -> float:
    """Exponential backoff with full jitter, capped (SQS allows 12 h; we keep it short)."""
    return random.uniform(0, min(MAX_BACKOFF_S, base_s * 2 ** max(0, failures - 1)))


@dataclass
class Settler:
    queue: JobQueue
    store: JobStore
    artifacts: ArtifactStore
    max_failures: int
    backoff_base_s: float = 5.0
    clock: Callable[[], float] = time.time

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
            case OutcomeKind.HANDOFF:
                return self._handoff
            case OutcomeKind.RETRY:
                return self._retry
            case OutcomeKind.FATAL | OutcomeKind.BREAKER:
                return self._put_back
            case OutcomeKind.LEASE_LOST:
                return self._lease_lost
            case _:  # the type checker proves this unreachable; at run time it is loud
                assert_never(kind)

    def _finish(self, record: JobRecord, status: JobStatus, outcome: Outcome, **more: Any) -> None:
        changes = {**outcome.changes, **more}
        if outcome.error is not None:
            changes["error"] = outcome.error
        if status.finished:
            changes.setdefault("finished_at", self.clock())
        self.store.finish(record.study_id, record.job_id, record.attempt, status, changes)

    def _succeeded(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._finish(record, JobStatus.SUCCEEDED, outcome, error=None)
        self.advance_then_ack(record.study_id, delivery)

    def _failed(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._save_traceback(record, outcome)
        self._finish(record, JobStatus.FAILED, outcome)
        self.advance_then_ack(record.study_id, delivery)

    def _cancelled(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._finish(record, JobStatus.CANCELLED, outcome)
        self.advance_then_ack(record.study_id, delivery)

    def advance_then_ack(self, study_id: str, delivery: Delivery) -> None:
        """A finished job's message goes only once its study has been advanced: stopped in between
        (a crash, a throttled table), the message comes back, and whoever receives it finds the job
        finished and advances the study then (`Worker._claim_record`). The queue itself carries "a
        decision is due", so a search never waits on a fleet scaled to zero, nor on the
        reconciler's function, which ships no sampler."""
        if self.advance(study_id):
            self.queue.delete([delivery.receipt])
        else:
            self.queue.release(delivery.receipt, backoff_s(1, self.backoff_base_s))

    def _preempted(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._requeue(record, delivery, outcome, preemptions=record.preemptions + 1)

    def _handoff(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        self._requeue(record, delivery, outcome, handoffs=record.handoffs + 1)

    def _requeue(self, record: JobRecord, delivery: Delivery, outcome: Outcome, **counts: int) -> None:
        """Back to QUEUED on a fresh message, not a release: the old message may be near the
        queue's visibility limit, and nothing about it should count against the job. Stopped
        after the finish, the job is QUEUED with its old stamp and the reconciler sends again."""
        self._finish(record, JobStatus.QUEUED, outcome, **counts)
        enqueue_records(self.store, self.queue, [record], self.clock())
        self.queue.delete([delivery.receipt])

    def _retry(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        """The job's own error: counted in its record; FAILED (and dead-lettered, so that the
        alarm fires) once it has failed `max_failures` times, on whichever workers."""
        self._save_traceback(record, outcome)
        failures = record.failures + 1
        if failures >= self.max_failures:
            outcome.error = f"gave up after {failures} failures: {outcome.error}"
            self._finish(record, JobStatus.FAILED, outcome, failures=failures)
            self.advance(record.study_id)
            self.queue.dead_letter(delivery, outcome.error)
            return
        self._finish(record, JobStatus.QUEUED, outcome, failures=failures)
        self.queue.release(delivery.receipt, backoff_s(failures, self.backoff_base_s))

    def _put_back(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        """The worker's fault, not the job's (fatal, breaker): at once, for a healthy worker."""
        self._finish(record, JobStatus.QUEUED, outcome)
        self.queue.release(delivery.receipt, 0)

    def forgive(self, study_id: str, job_id: str, owner: str) -> bool:
        """Take back one failure that `settle` counted for a job, once the worker knows the failure
        was its host's (the circuit breaker tripped): claim the job for a moment and finish it
        QUEUED with `failures - 1`, both fenced, so the count is never written over a newer one.

        Returns:
            True if the count was taken back; False if the job is running elsewhere or finished
            (then its failure stays counted: the store has no unfenced way to change it).
        """
        claimed = self.store.claim(study_id, job_id, owner, FORGIVE_LEASE_S, self.clock())
        if claimed is None:
            return False
        changes = {"failures": max(0, claimed.failures - 1)}
        self.store.finish(study_id, job_id, claimed.attempt, JobStatus.QUEUED, changes)
        return True

    def _lease_lost(self, record: JobRecord, delivery: Delivery, outcome: Outcome) -> None:
        """Another worker owns the job, or may from now on: its writes win. Nothing is written,
        not even the message: it reappears when its visibility lapses (or is someone else's now)."""

    def _save_traceback(self, record: JobRecord, outcome: Outcome) -> None:
        if not outcome.traceback:
            return
        key = f"{job_prefix(record.study_id, record.job_id)}/errors/attempt-{record.attempt}.txt"
        try:
            self.artifacts.put_bytes(key, outcome.traceback.encode())
            outcome.changes.setdefault("artifacts", dict(record.artifacts))["traceback"] = key
        except Exception:  # the error itself matters more than its traceback file
            log.warning("could not store traceback", exc_info=True)

    def advance(self, study_id: str) -> bool:
        """Enqueue what the study wants next (its search's trials, its follow-ups); idempotent.
        False when that failed: the caller keeps the message that will ask again."""
        try:
            stages = advance_study(self.store, self.queue, study_id)
        except Exception:  # the job's message (kept), a later settlement or the reconciler advances it
            log.warning("could not advance study", exc_info=True, extra={"event": "advance_failed"})
            return False
        for stage, count in stages.items():
            log.info("study %s: %d %s jobs enqueued", study_id, count, stage, extra={"event": "followups", "study_id": study_id})
        return True
