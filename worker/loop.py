"""The job loop: stop check, dequeue, claim, execute under a heartbeat, settle.

    while not stopping:
        delivery = receive()                  # long poll
        message  = validate(delivery)         # invalid -> dead-letter, carry on
        record   = claim(message)             # conditional write; attempt + 1 is the fencing token
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
from typing import Any

from shared.ports import Backend
from shared.datasets import resolve_dataset
from shared.errors import FatalError, LeaseLostError, PermanentError
from shared.jobs import EpochRecord, JobMessage, JobRecord, PoisonMessage, parse_message
from shared.paths import job_prefix
from shared.ports import Delivery
from worker.lease import Lease, visibility_margin_s
from worker.outcomes import Outcome, Settler
from worker.settings import WorkerSettings
from worker.stop import ColdStop, StopFlag

log = logging.getLogger("spotsweep.worker")

RunJob = Callable[[Any], Any]  # worker.training.run_job: JobContext -> JobResult


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
        try:
            message = parse_message(delivery.body)
        except PoisonMessage as exc:
            self._reject(delivery, str(exc))
            return
        record = self._claim(message, delivery)
        if record is None:
            return
        self.processed += 1
        self.protect(True)
        try:
            with Lease(self.backend.queue, self.backend.store, record, delivery.receipt, self.settings.lease_s) as lease:
                outcome = self._run(record, lease)
        except ColdStop:
            self.settler.settle(record, delivery, Outcome("fatal", error="cold stop"))
            raise
        finally:
            self.protect(False)
            shutil.rmtree(self._work_dir(record), ignore_errors=True)  # everything that matters is in the artifact store
        self.settler.settle(record, delivery, outcome)
        if outcome.kind == "fatal":
            self.stop.request(f"fatal: {outcome.error}")

    def _reject(self, delivery: Delivery, reason: str) -> None:
        log.error("poison message %s: %s", delivery.message_id, reason, extra={"event": "poison", "reason": reason})
        self.backend.queue.dead_letter(delivery, reason)

    def _claim(self, message: JobMessage, delivery: Delivery) -> JobRecord | None:
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

    # --- running the job ---

    def _run(self, record: JobRecord, lease: Lease) -> Outcome:
        started = time.monotonic()
        try:
            result = self.run_job(self._context(record, lease))
        except LeaseLostError:
            return Outcome("lease_lost")
        except PermanentError as exc:
            return self._error_outcome("failed", record, exc, started)
        except FatalError as exc:
            return self._error_outcome("fatal", record, exc, started)
        except Exception as exc:  # anything else may be transient (OOM, network): retry, the DLQ bounds it
            return self._error_outcome("retry", record, exc, started)
        return self._result_outcome(record, result)

    def _context(self, record: JobRecord, lease: Lease) -> Any:
        from worker.training.context import JobContext

        cache_dir = self.settings.resolved_cache_dir
        spec = record.spec
        return JobContext(
            study_id=record.study_id,
            job_id=record.job_id,
            spec=spec,
            dataset_dir=resolve_dataset(spec.dataset, self.backend.artifacts, cache_dir / "datasets"),
            work_dir=_fresh_dir(self._work_dir(record)),
            artifacts=self.backend.artifacts,
            prefix=job_prefix(record.study_id, record.job_id),
            parent_prefix=job_prefix(record.study_id, spec.parent_job_id) if spec.parent_job_id else None,
            on_epoch=lambda report: self._record_epoch(record, report),
            should_stop=lambda: self._stop_reason(lease),
            cache_dir=cache_dir / "images",
        )

    def _work_dir(self, record: JobRecord) -> Path:
        return self.settings.resolved_cache_dir / "work" / f"{record.job_id}-{record.attempt}"

    def _stop_reason(self, lease: Lease) -> str | None:
        if lease.lost:
            return "lease lost"
        if lease.cancel_requested:
            return "cancelled"
        return "preempted" if self.stop.requested else None

    def _record_epoch(self, record: JobRecord, report: Any) -> None:
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

    def _error_outcome(self, kind: str, record: JobRecord, exc: BaseException, started: float) -> Outcome:
        changes = self._cost(record, time.monotonic() - started)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        return Outcome(kind, changes, error=error, traceback=traceback.format_exc())  # type: ignore[arg-type]

    def _result_outcome(self, record: JobRecord, result: Any) -> Outcome:
        changes: dict[str, Any] = {**self._cost(record, result.seconds), "epochs_run": result.epochs_run}
        if result.outcome == "stopped":
            kind = {"cancelled": "cancelled", "lease lost": "lease_lost"}.get(result.stop_reason or "", "preempted")
            return Outcome(kind, changes)  # type: ignore[arg-type]
        artifacts = self.backend.artifacts
        changes.update(
            best_epoch=result.best_epoch,
            metrics={**record.metrics.model_dump(exclude_none=True), **result.metrics},
            total_params=result.total_params,
            trainable_params=result.trainable_params,
            checkpoint=artifacts.uri(result.checkpoint) if result.checkpoint else None,
            artifacts={**record.artifacts, **{name: artifacts.uri(key) for name, key in result.artifacts.items()}},
        )
        return Outcome("succeeded", changes)


def _fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
