"""The job loop: stop check, dequeue, claim, execute under a heartbeat, settle.

    while not stopping and the breaker holds:
        delivery = receive()                  # long poll; nothing: reconciler, housekeeping, when due
        message  = validate(delivery)         # invalid (or a bad id) -> dead-letter, carry on
        record   = claim(message)             # conditional write; attempt + 1 is the fencing token;
                                              # a corrupt record -> dead-letter, carry on
        with heartbeat(record):               # renews lease and visibility, surviving errors
            outcome = train(record)           # resumes from the record's committed state
        outcome = breaker(outcome)            # the host's fault or the job's?
        settle(record, outcome)               # worker.outcomes: ack / retry / fail / put back

Fencing reaches the artifact store: a job's attempt writes its files under its own attempt
folder, and the fenced record write of each epoch (`epochs_run` with `state_key`) is the commit
point of its training state (worker.training.state). The published model is named by the fenced
finish (`checkpoint`), so it always matches the recorded metrics.

The circuit breaker (worker.breaker) watches the settled outcomes: after `breaker_threshold`
failures in a row on different jobs the worker puts the last job back without counting it,
takes back the failures it counted for the others, stops with a "fatal: circuit breaker" reason
(exit status 1) and leaves its autoscaling group on AWS.

A duplicate delivery of a job under a live lease is released until the lease could have lapsed,
but never for longer than the longest lease a claim grants (`longest_lease_s`) plus the
visibility margin: a lease that claims to end later was not written by the claim protocol (a
broken or hostile writer, or a clock far ahead). One that ends more than `suspicious_lease_s`
from now (twice the longest lease: room for clocks that disagree by up to a lease; one rule,
`shared.reconcile.lease_suspicious`, by which the reconciler also re-sends its message) is taken
back: a fenced finish as QUEUED by the record's own attempt (refused if anyone claimed the job
meanwhile), which fences its holder out at its next write, and then the ordinary claim.

Between jobs and while idle, the worker sweeps its cache when due (worker.housekeeping: what
killed workers left behind, and the caches cut to `cache_max_bytes`).
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

from shared.datasets import resolve_dataset
from shared.errors import BadInputError, CorruptRecordError, FatalError, LeaseLostError, PermanentError, StopRequestedError
from shared.jobs import EpochRecord, JobMessage, JobRecord, parse_message
from shared.paths import check_id, job_prefix, safe_join
from shared.ports import Backend, Delivery
from shared.reconcile import ReconcilePolicy, lease_suspicious, longest_lease_s, reconcile_if_due
from shared.status import JobStatus
from worker.breaker import CircuitBreaker
from worker.housekeeping import Housekeeper, hold_work_dir
from worker.joblog import JobLog
from worker.job import EpochReport, JobContext, JobOutcome, JobResult, StopReason
from worker.lease import Clock, Lease, visibility_margin_s
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
        clock: Clock = time.time,
    ) -> None:
        self.backend, self.settings, self.run_job = backend, settings, run_job
        self.stop = stop or StopFlag()
        self.price_per_hour = price_per_hour
        self.on_idle_exit = on_idle_exit  # leave the autoscaling group (AWS)
        self.protect = protect or (lambda on: None)  # scale-in protection while a job runs (AWS)
        self.clock = clock  # epoch seconds: claims, leases, message ages (tests pass their own)
        self.settler = Settler(
            backend.queue, backend.store, backend.artifacts, settings.max_failures, settings.retry_backoff_s, clock
        )
        self.breaker = CircuitBreaker(settings.breaker_threshold)
        self._counted: Counter[tuple[str, str]] = Counter()  # failures settled in the breaker's current run
        self._reconciled_at: float | None = None
        self.housekeeper = Housekeeper(settings.resolved_cache_dir, settings.cache_max_bytes)
        self._left = False  # the breaker tripped and the worker is on its way out
        self.processed = 0

    # --- the loop ---

    def work(self, policy: Policy = Policy()) -> int:
        log.info("worker %s started", self.settings.worker_id, extra={"event": "worker_started", "worker": self.settings.worker_id})
        idle_since = time.monotonic()
        try:
            while not self.stop.requested:
                received_at = self.clock()  # before the long poll: never later than the receipt
                delivery = self._dequeue()
                if delivery is not None:
                    self.execute(delivery, received_at)
                    idle_since = time.monotonic()
                    if policy.max_jobs and self.processed >= policy.max_jobs:
                        break
                elif self._should_leave(policy, time.monotonic() - idle_since):
                    break
                else:
                    self._reconcile_when_due()
                    self.housekeeper.sweep_if_due()  # never raises
        finally:
            self.teardown()
        return self.processed

    def _dequeue(self) -> Delivery | None:
        deliveries = self.backend.queue.receive(max_messages=1, wait_s=self.settings.poll_wait_s)
        return deliveries[0] if deliveries else None

    def _reconcile_when_due(self) -> None:
        """While idle, every `reconcile_interval_s`: repair what strands jobs (shared.reconcile).
        A store lock lets one idle worker at a time do it; a failure is one log line."""
        now = self.clock()
        if self._reconciled_at is not None and now - self._reconciled_at < self.settings.reconcile_interval_s:
            return
        self._reconciled_at = now
        policy = ReconcilePolicy.for_config(self.settings)
        try:
            reconcile_if_due(self.backend, self.settings.worker_id, policy, now, self.settings.reconcile_interval_s)
        except Exception as exc:  # a repair that fails must never stop a worker: the next idle one retries
            log.warning("reconciler failed: %s", _one_line(exc), extra={"event": "reconcile_failed"})

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

    def execute(self, delivery: Delivery, received_at: float | None = None) -> None:
        """Claim, run and settle one delivery; `received_at` (by `clock`) defaults to now."""
        received_at = self.clock() if received_at is None else received_at
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
        try:
            with JobLog(self.backend.artifacts, record, self.settings.worker_id):  # the job's log lines, kept in the artifact store
                outcome = self._judge(record, self._attempt(record, delivery, work_dir, received_at))
                self.settler.settle(record, delivery, outcome)
        finally:
            self.protect(False)  # only once the job is settled: a scale-in before that could lose its result
        if outcome.kind is OutcomeKind.FATAL:
            self.stop.request(f"fatal: {outcome.error}")
        if self.breaker.tripped:
            self._trip()
        self.housekeeper.sweep_if_due()  # what a killed worker left, between jobs; never raises

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
        store, queue, now = self.backend.store, self.backend.queue, self.clock()
        current = store.get_job(message.study_id, message.job_id)
        if current is None:
            self._reject(delivery, f"unknown job {message.job_id} in study {message.study_id}")
            return None
        if current.status.finished:  # a duplicate, or a settlement's message kept until its study advances
            self.settler.advance_then_ack(message.study_id, delivery)
            return None
        if lease_suspicious(current, self.settings.lease_s, now):
            self._take_back(current, now)
        record = store.claim(message.study_id, message.job_id, self.settings.worker_id, self.settings.lease_s, now)
        if record is None:
            # Leased by a live worker: a duplicate delivery. Never delete it (it may be the job's
            # only message if that worker dies); look again once the lease could have lapsed, and
            # no later than any lease a claim grants could (a longer one is no live worker's).
            lease_s = self.settings.lease_s
            wait_s = min((current.lease_expires_at or now) - now, longest_lease_s(lease_s)) + visibility_margin_s(lease_s)
            queue.release(delivery.receipt, max(1.0, wait_s))
            return None
        log.info("claimed %s", record.spec.kind, extra={"event": "claimed", "job_id": record.job_id, "attempt": record.attempt})
        return record

    def _take_back(self, current: JobRecord, now: float) -> None:
        """Free a job whose lease ends further ahead than any claim grants (the module docstring):
        a fenced finish as QUEUED by its current attempt, so the claim that follows takes it."""
        log.warning(
            "lease of %s by %s ends %.0f s from now, longer than any claim grants: taking the job back",
            current.job_id, current.lease_owner, (current.lease_expires_at or now) - now,
            extra={"event": "suspicious_lease", "job_id": current.job_id, "attempt": current.attempt},
        )
        try:
            self.backend.store.finish(current.study_id, current.job_id, current.attempt, JobStatus.QUEUED, {})
        except LeaseLostError:  # claimed (or finished) meanwhile: the claim below decides
            pass

    def _work_dir(self, record: JobRecord) -> Path:
        """`cache/work/{job_id}-{attempt}`, from a checked id by a safe join: whatever a record
        says, the worker never creates or deletes anything outside its cache."""
        job_id = check_id(record.job_id, "job id")
        return safe_join(self.settings.resolved_cache_dir / "work", f"{job_id}-{record.attempt}")

    # --- the circuit breaker ---

    def _judge(self, record: JobRecord, outcome: Outcome) -> Outcome:
        """Tell the breaker how the attempt ended; the failure that trips it is the host's, not
        the job's: it is settled as `breaker` (put back, not counted)."""
        key = (record.study_id, record.job_id)
        match outcome.kind:
            case OutcomeKind.RETRY | OutcomeKind.FATAL:
                self.breaker.record_failure(record.job_id, outcome.error or "no error message")
                if outcome.kind is OutcomeKind.RETRY:
                    if self.breaker.tripped:
                        return Outcome(OutcomeKind.BREAKER, outcome.changes, outcome.error, outcome.traceback)
                    self._counted[key] += 1  # settled as the job's failure: taken back if the breaker trips
            case OutcomeKind.LEASE_LOST:
                pass  # says nothing about the host or the job
            case _:
                self.breaker.record_success(record.job_id)
                self._counted.clear()
        return outcome

    def _trip(self) -> None:
        """Stop taking work: the failures counted in this run were the host's, so take them back
        (the jobs are already queued for healthy workers), then leave."""
        if self._left:
            return
        self._left = True
        log.error("%s", self.breaker.reason, extra={"event": "breaker_tripped", "worker": self.settings.worker_id})
        for (study_id, job_id), count in self._counted.items():
            for _ in range(count):
                self._forgive(study_id, job_id)
        self._counted.clear()
        self.stop.request(f"fatal: {self.breaker.reason}")
        if self.on_idle_exit:
            self.on_idle_exit()  # on AWS: leave the group, so that a fresh host replaces this one

    def _forgive(self, study_id: str, job_id: str) -> None:
        try:
            self.settler.forgive(study_id, job_id, self.settings.worker_id)
        except Exception as exc:  # the job still runs elsewhere; its count is one too high at worst
            log.warning("could not take back a failure of %s: %s", job_id, _one_line(exc), extra={"event": "forgive_failed"})

    # --- running the job ---

    def _attempt(self, record: JobRecord, delivery: Delivery, work_dir: Path, received_at: float) -> Outcome:
        """Run the job under its lease and scale-in protection; its scratch goes in every case
        (everything that matters is in the artifact store)."""
        self.protect(True)
        lease = Lease(
            self.backend.queue, self.backend.store, record, delivery.receipt, self.settings.lease_s,
            clock=self.clock, received_at=received_at, max_message_age_s=self.settings.max_message_age_s,
        )
        try:
            with hold_work_dir(work_dir), lease:  # held: no housekeeping sweep removes the job's scratch
                return self._run(record, lease, work_dir)
        except ColdStop:
            self.settler.settle(record, delivery, Outcome(OutcomeKind.FATAL, error="cold stop"))
            raise
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _run(self, record: JobRecord, lease: Lease, work_dir: Path) -> Outcome:
        started = time.monotonic()
        try:
            result = self.run_job(self._context(record, lease, work_dir))
        except LeaseLostError:
            return Outcome(OutcomeKind.LEASE_LOST)
        except StopRequestedError as stop:  # the dataset sync heard a stop request, as training would
            return Outcome(stopped_kind(StopReason(stop.reason)), self._cost(record, time.monotonic() - started))
        except Exception as exc:
            if lease.lost:  # whatever it was, another worker owns the job now: write nothing
                return Outcome(OutcomeKind.LEASE_LOST, error=_one_line(exc))
            return self._error_outcome(_error_kind(exc), record, exc, started)
        if lease.lost:
            return Outcome(OutcomeKind.LEASE_LOST)
        return self._result_outcome(record, result)

    def _context(self, record: JobRecord, lease: Lease, work_dir: Path) -> JobContext:
        cache_dir = self.settings.resolved_cache_dir
        spec = record.spec
        return JobContext(
            study_id=record.study_id,
            job_id=record.job_id,
            spec=spec,
            dataset_dir=self._dataset_dir(record, lease, cache_dir / "datasets"),
            work_dir=_fresh_dir(work_dir),
            artifacts=self.backend.artifacts,
            prefix=job_prefix(record.study_id, record.job_id),
            attempt=record.attempt,
            state_key=self._starting_state(record),
            parent_checkpoint=self._parent_checkpoint(record),
            on_epoch=lambda report: self._record_epoch(record, lease, report),
            should_stop=lambda: self._stop_reason(lease),
            cache_dir=cache_dir / "images",
        )

    def _dataset_dir(self, record: JobRecord, lease: Lease, datasets_dir: Path) -> Path:
        """The job's dataset, synced into this host's cache when it lives in the artifact store.
        Logged when it starts and when it is ready: how long a sync took, or that it never ended."""
        job = {"job_id": record.job_id, "attempt": record.attempt}
        log.info("dataset sync", extra={"event": "dataset_sync", **job})
        started = time.monotonic()
        path = resolve_dataset(
            record.spec.dataset, self.backend.artifacts, datasets_dir, should_stop=lambda: self._stop_reason(lease)
        )
        seconds = time.monotonic() - started
        log.info("dataset ready (%.1f s)", seconds, extra={"event": "dataset_ready", **job, "data": {"seconds": round(seconds, 3)}})
        return path

    def _starting_state(self, record: JobRecord) -> str | None:
        """The training state a job resumes: its own committed one, or, for an ASHA promotion
        (a training job with a parent) that has none yet, its parent rung's: the promotion
        continues from the rung's checkpoint instead of redoing its epochs."""
        if record.state_key is not None or record.spec.kind != "train" or record.spec.parent_job_id is None:
            return record.state_key
        parent = self.backend.store.get_job(record.study_id, record.spec.parent_job_id)
        if parent is None or parent.state_key is None:
            raise PermanentError(f"promotion of {record.spec.parent_job_id}: the parent rung has no committed training state")
        return parent.state_key

    def _parent_checkpoint(self, record: JobRecord) -> str | None:
        """The model a finetune/evaluate job starts from: what its parent's record names (the
        model its parent published with its metrics), never a fixed key."""
        parent_id = record.spec.parent_job_id
        if parent_id is None:
            return None
        parent = self.backend.store.get_job(record.study_id, parent_id)
        return parent.checkpoint if parent is not None else None

    def _stop_reason(self, lease: Lease) -> StopReason | None:
        if lease.lost:
            return StopReason.LEASE_LOST
        if lease.cancel_requested:
            return StopReason.CANCELLED
        if self.stop.requested:
            return StopReason.PREEMPTED
        return StopReason.HANDOFF if lease.handoff_due else None

    def _record_epoch(self, record: JobRecord, lease: Lease, report: EpochReport) -> None:
        """The epoch's commit point: one fenced write of `epochs_run` with the state that holds
        it (and this attempt's log). Refused once the lease is lost, even where the store would
        still take it (a lapsed lease that nobody claimed yet)."""
        if lease.lost:
            raise LeaseLostError(f"lease of {record.job_id} attempt {record.attempt} lost before epoch {report.epoch}")
        store = self.backend.store
        epoch = EpochRecord(
            study_id=record.study_id, job_id=record.job_id, epoch=report.epoch, attempt=record.attempt,
            metrics=report.metrics, seconds=report.seconds, recorded_at=self.clock(),
        )
        store.put_epoch(epoch)
        changes: dict[str, Any] = {"epochs_run": report.epoch}
        if report.state_key is not None:
            changes["state_key"] = report.state_key
        if report.artifacts:
            changes["artifacts"] = {**record.artifacts, **report.artifacts}
        store.update(record.study_id, record.job_id, record.attempt, changes)
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


def _error_kind(exc: Exception) -> OutcomeKind:
    if isinstance(exc, PermanentError):
        return OutcomeKind.FAILED
    if isinstance(exc, FatalError):
        return OutcomeKind.FATAL
    return OutcomeKind.RETRY  # anything else may be transient (OOM, network): retry, counted in the record


def stopped_kind(reason: StopReason | None) -> OutcomeKind:
    """What a job that stopped when asked to becomes: every reason is named, none is a default."""
    match reason:
        case StopReason.PREEMPTED:
            return OutcomeKind.PREEMPTED
        case StopReason.CANCELLED:
            return OutcomeKind.CANCELLED
        case StopReason.LEASE_LOST:
            return OutcomeKind.LEASE_LOST
        case StopReason.HANDOFF:
            return OutcomeKind.HANDOFF
        case None:
            raise ValueError("a stopped job result names no stop reason")
        case _:
            assert_never(reason)


def _fresh_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _one_line(exc: BaseException) -> str:
    lines = f"{type(exc).__name__}: {exc}".splitlines()
    return lines[0][:300] if lines else type(exc).__name__
