"""The job loop: stop check, dequeue, claim, execute under a heartbeat, settle.

    while not stopping:
        delivery = receive()                  # long poll
        message  = validate(delivery)         # invalid (or a bad id) -> dead-letter, carry on
        record   = claim(message)             # conditional write; attempt + 1 is the fencing token;
                                              # a corrupt record -> dead-letter, carry on
        with heartbeat(record):               # extends visibility and lease every lease/3
            outcome = train(record)           # resumes from the job's last checkpoint
        settle(record, outcome)               # worker.outcomes: ack / retry / fail
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

from shared.datasets import resolve_dataset
from shared.errors import BadInputError, CorruptRecordError, FatalError, LeaseLostError, PermanentError
from shared.jobs import EpochRecord, JobMessage, JobRecord, parse_message
from shared.paths import check_id, job_prefix, safe_join
from shared.ports import Backend, Delivery
from worker.job import EpochReport, JobContext, JobOutcome, JobResult, StopReason
from worker.lease import Lease, visibility_margin_s
from worker.outcomes import Outcome, OutcomeKind, Settler
from worker.settings import WorkerSettings
from worker.stop import ColdStop, StopFlag

log = logging.getLogger("spotsweep.worker")

RunJob = Callable[[JobContext], JobResult]  # worker.training.JobRunner


@dataclass
class Policy:
    """When the loop ends on its own."""

    until_empty: bool = False
    max_jobs: int | None = None
    idle_timeout_s: float | None = None


class Worker:
    def __init__(
        self,
        backend: Backend,
        settings: WorkerSettings,
        run_job: RunJob,
        stop: StopFlag | None = None,
        price_per_hour: float = 0.0,
        on_idle_exit: Callable[[], None] | None = None,
        protect: Callable[[bool], None] | None = None,
    ) -> None:
        self.backend, self.settings, self.run_job = backend, settings, run_job
        self.stop = stop or StopFlag()
        self.price_per_hour = price_per_hour
        self.on_idle_exit = on_idle_exit  # leave the autoscaling group (AWS)
        self.protect = protect or (lambda on: None)  # scale-in protection while a job runs (AWS)
        self.settler = Settler(backend.queue, backend.store, backend.artifacts, settings.max_receives, settings.retry_backoff_s)
        self.processed = 0

    # --- the loop ---

    def work(self, policy: Policy = Policy()) -> int:
        log.info("worker %s started", self.settings.worker_id, extra={"event": "worker_started", "worker": self.settings.worker_id})
        idle_since = time.monotonic()
        try:
            while not self.stop.requested:
                delivery = self._dequeue()
                if delivery is not None:
                    self.execute(delivery)
                    idle_since = time.monotonic()
                    if policy.max_jobs and self.processed >= policy.max_jobs:
                        break
                elif self._should_leave(policy, time.monotonic() - idle_since):
                    break
        finally:
            self.teardown()
        return self.processed

    def _dequeue(self) -> Delivery | None:
        deliveries = self.backend.queue.receive(max_messages=1, wait_s=self.settings.poll_wait_s)
        return deliveries[0] if deliveries else None

    def _should_leave(self, policy: Policy, idle_s: float) -> bool:
        if policy.until_empty and self.backend.queue.counts().backlog == 0:
            log.info("queue is empty", extra={"event": "queue_empty"})
            return True
        if policy.idle_timeout_s is not None and idle_s >= policy.idle_timeout_s:
            log.info("idle for %.0f s", idle_s, extra={"event": "idle_exit"})
            if self.on_idle_exit:
                self.on_idle_exit()
            return True
        return False

    def teardown(self) -> None:
        self.protect(False)
        log.info("worker stopped after %d jobs (%s)", self.processed, self.stop.reason or "done", extra={"event": "worker_stopped"})

    # --- one message ---

    def execute(self, delivery: Delivery) -> None:
        message = self._parse(delivery)
        record = self._claim(message, delivery) if message is not None else None
        if record is None:
            return
        self.processed += 1
        try:
            work_dir = self._work_dir(record)
        except BadInputError as exc:  # a record the store should have refused: nothing created, nothing removed
            self._reject(delivery, f"corrupt record: {exc}")
            return
        outcome = self._attempt(record, delivery, work_dir)
        self.settler.settle(record, delivery, outcome)
        if outcome.kind is OutcomeKind.FATAL:
            self.stop.request(f"fatal: {outcome.error}")

    def _parse(self, delivery: Delivery) -> JobMessage | None:
        """The message, with ids safe to use as keys and paths; None once a bad one is set aside."""
        try:
            message = parse_message(delivery.body)
            check_id(message.study_id, "study id")
            check_id(message.job_id, "job id")
            return message
        except BadInputError as exc:  # PoisonMessage included
            self._reject(delivery, str(exc))
        except Exception as exc:  # RecursionError on deep nesting, or any other parser failure: poison, not a crash
            self._reject(delivery, f"unparsable message: {type(exc).__name__}: {exc}"[:500])
        return None

    def _reject(self, delivery: Delivery, reason: str) -> None:
        log.error("poison message %s: %s", delivery.message_id, reason, extra={"event": "poison", "reason": reason})
        self.backend.queue.dead_letter(delivery, reason)

    def _claim(self, message: JobMessage, delivery: Delivery) -> JobRecord | None:
        """The claimed record, or None when there is nothing to run: the job is unknown,
        finished, leased by a live worker, or its record is corrupt (set aside with the message:
        it can never run as stored, and retrying it would only meet it again)."""
        try:
            return self._claim_record(message, delivery)
        except CorruptRecordError as exc:
            self._reject(delivery, f"corrupt record: {exc}"[:500])
            return None

    def _claim_record(self, message: JobMessage, delivery: Delivery) -> JobRecord | None:
        store, queue, now = self.backend.store, self.backend.queue, time.time()
        current = store.get_job(message.study_id, message.job_id)
        if current is None:
            self._reject(delivery, f"unknown job {message.job_id} in study {message.study_id}")
            return None
        if current.status.finished:
            queue.delete([delivery.receipt])  # a duplicate of a job that already has its one result
            return None
        record = store.claim(message.study_id, message.job_id, self.settings.worker_id, self.settings.lease_s, now)
        if record is None:
            # Leased by a live worker: a duplicate delivery. Never delete it (it may be the job's
            # only message if that worker dies); look again once the lease could have lapsed.
            wait_s = (current.lease_expires_at or now) - now + visibility_margin_s(self.settings.lease_s)
            queue.release(delivery.receipt, max(1.0, wait_s))
            return None
        log.info("claimed %s", record.spec.kind, extra={"event": "claimed", "job_id": record.job_id, "attempt": record.attempt})
        return record

    def _work_dir(self, record: JobRecord) -> Path:
        """`cache/work/{job_id}-{attempt}`, from a checked id by a safe join: whatever a record
        says, the worker never creates or deletes anything outside its cache."""
        job_id = check_id(record.job_id, "job id")
        return safe_join(self.settings.resolved_cache_dir / "work", f"{job_id}-{record.attempt}")

    # --- running the job ---

    def _attempt(self, record: JobRecord, delivery: Delivery, work_dir: Path) -> Outcome:
        """Run the job under its lease and scale-in protection; its scratch goes in every case
        (everything that matters is in the artifact store)."""
        self.protect(True)
        try:
            with Lease(self.backend.queue, self.backend.store, record, delivery.receipt, self.settings.lease_s) as lease:
                return self._run(record, lease, work_dir)
        except ColdStop:
            self.settler.settle(record, delivery, Outcome(OutcomeKind.FATAL, error="cold stop"))
            raise
        finally:
            self.protect(False)
            shutil.rmtree(work_dir, ignore_errors=True)

    def _run(self, record: JobRecord, lease: Lease, work_dir: Path) -> Outcome:
        started = time.monotonic()
        try:
            result = self.run_job(self._context(record, lease, work_dir))
        except LeaseLostError:
            return Outcome(OutcomeKind.LEASE_LOST)
        except PermanentError as exc:
            return self._error_outcome(OutcomeKind.FAILED, record, exc, started)
        except FatalError as exc:
            return self._error_outcome(OutcomeKind.FATAL, record, exc, started)
        except Exception as exc:  # anything else may be transient (OOM, network): retry, the DLQ bounds it
            return self._error_outcome(OutcomeKind.RETRY, record, exc, started)
        return self._result_outcome(record, result)

    def _context(self, record: JobRecord, lease: Lease, work_dir: Path) -> JobContext:
        cache_dir = self.settings.resolved_cache_dir
        spec = record.spec
        return JobContext(
            study_id=record.study_id,
            job_id=record.job_id,
            spec=spec,
            dataset_dir=resolve_dataset(spec.dataset, self.backend.artifacts, cache_dir / "datasets"),
            work_dir=_fresh_dir(work_dir),
            artifacts=self.backend.artifacts,
            prefix=job_prefix(record.study_id, record.job_id),
            parent_prefix=job_prefix(record.study_id, spec.parent_job_id) if spec.parent_job_id else None,
            on_epoch=lambda report: self._record_epoch(record, report),
            should_stop=lambda: self._stop_reason(lease),
            cache_dir=cache_dir / "images",
        )

    def _stop_reason(self, lease: Lease) -> StopReason | None:
        if lease.lost:
            return StopReason.LEASE_LOST
        if lease.cancel_requested:
            return StopReason.CANCELLED
        return StopReason.PREEMPTED if self.stop.requested else None

    def _record_epoch(self, record: JobRecord, report: EpochReport) -> None:
        store = self.backend.store
        epoch = EpochRecord(
            study_id=record.study_id, job_id=record.job_id, epoch=report.epoch, attempt=record.attempt,
            metrics=report.metrics, seconds=report.seconds, recorded_at=time.time(),
        )
        store.put_epoch(epoch)
        store.update(record.study_id, record.job_id, record.attempt, {"epochs_run": report.epoch})
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(report.metrics.items()))
        log.info("epoch %d %s (%.1f s)", report.epoch, metrics, report.seconds,
                 extra={"event": "epoch", "job_id": record.job_id, "attempt": record.attempt, "epoch": report.epoch, "data": {"metrics": report.metrics}})

    def _cost(self, record: JobRecord, seconds: float) -> dict[str, float]:
        total_s = record.train_seconds + seconds
        return {"train_seconds": total_s, "cost_usd": total_s * self.price_per_hour / 3600}

    def _error_outcome(self, kind: OutcomeKind, record: JobRecord, exc: BaseException, started: float) -> Outcome:
        changes = self._cost(record, time.monotonic() - started)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        return Outcome(kind, changes, error=error, traceback=traceback.format_exc())

    def _result_outcome(self, record: JobRecord, result: JobResult) -> Outcome:
        changes: dict[str, Any] = {**self._cost(record, result.seconds), "epochs_run": result.epochs_run}
        if result.outcome is JobOutcome.STOPPED:
            return Outcome(stopped_kind(result.stop_reason), changes)
        changes.update(
            best_epoch=result.best_epoch,
            metrics={**record.metrics.model_dump(exclude_none=True), **result.metrics},
            total_params=result.total_params,
            trainable_params=result.trainable_params,
            checkpoint=result.checkpoint,  # records hold artifact-store keys; `uri(key)` is for display
            artifacts={**record.artifacts, **result.artifacts},
        )
        return Outcome(OutcomeKind.SUCCEEDED, changes)


def stopped_kind(reason: StopReason | None) -> OutcomeKind:
    """What a job that stopped when asked to becomes: every reason is named, none is a default."""
    match reason:
        case StopReason.PREEMPTED:
            return OutcomeKind.PREEMPTED
        case StopReason.CANCELLED:
            return OutcomeKind.CANCELLED
        case StopReason.LEASE_LOST:
            return OutcomeKind.LEASE_LOST
        case None:
            raise ValueError("a stopped job result names no stop reason")
        case _:
            assert_never(reason)


def _fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
