"""The reconciler: the store is the source of truth, and every unfinished job gets a message.

The invariant: every unfinished job has a live lease or a message on the queue. A crash between
two steps, a lost response, a purged queue, SQS's silent retention expiry and the queue's own
redrive each break it; `reconcile` repairs it from the records (never from a queue's bodies), in
this order:

1. Dead letters, paged through until none is left (`JobQueue.receive_dead`). For a job message
   whose job is unfinished: while the job's own `failures` are below `max_failures`, a fresh
   message is sent (re-driven: the kills that pushed it there were not its fault); at the limit,
   the job is recorded FAILED with "dead-lettered after N own failures: <its last error>". Then
   the dead letter is deleted, as is one of a finished job or of a job a live worker holds (its
   message is in flight). What is no job's message (unparsable, an unknown or corrupt job) stays
   in the dead-letter queue for people to look at. A job under a suspicious lease (2d) is held by
   nobody: its dead letter is re-driven, not dropped.
2. Messages. A job needs one when it is QUEUED, or RUNNING with a lease lapsed for more than
   `expired_margin_s` (its worker died and nobody took the message over). One is sent when:
   a. none was ever sent: no `enqueued_at`, and created more than `resend_grace_s` ago;
   b. RUNNING and lapsed, and nothing was sent since its lease lapsed (the message may have
      died with the worker: deleted, or redriven);
   c. its message may be gone: sent before the queue's retention less `retention_margin_s`; or
      the queue holds fewer messages (visible + in flight) than there are unfinished jobs
      (QUEUED + RUNNING, over every study the queue serves: a purge, a deleted message) and it
      was sent more than `resend_grace_s` ago (so that a message just sent is not doubled).
   d. RUNNING under a suspicious lease (`lease_suspicious`: one that ends further ahead than any
      claim grants, written by a broken or hostile writer or a clock far ahead): nobody holds the
      job, since the first worker that receives its message takes it back (worker.loop), so it is
      treated as QUEUED: sent when none was ever sent, or by (c). Rule (b) cannot apply to it: its
      lease would not lapse for ages.
   Never a healthy backlog on every run: each send stamps `enqueued_at`, so (a) and (b) fire
   once per job, and (c)'s count rule only while the queue holds fewer messages than jobs, which
   one re-send ends. A queue as full as the store is never sent to: the autoscaling metric (the
   backlog) is not inflated run after run.
3. Cancelled studies (`submit cancel` marked them): nothing is sent; their QUEUED jobs become
   CANCELLED, lapsed RUNNING ones are taken over and finished CANCELLED, live ones are flagged.
4. Follow-ups: `advance_study` for every study (idempotent), so that a fine-tuning or evaluation
   that the last worker failed to start still starts.

Duplicates are harmless by the claim protocol (a second delivery finds the job running or
finished) and a missing message strands a job, so each rule errs on the side of sending.

No RUNNING job is moved without a fence: to finish a lapsed one (FAILED, CANCELLED) the
reconciler claims it, which the claim protocol allows for a lapsed lease (attempt + 1), and
finishes it with that attempt; a worker that comes back to it is fenced out. Stopped between
the claim and the finish, the job is RUNNING under the reconciler's short lease, which lapses,
and the next run finishes it.

Each step is idempotent, so a run stopped anywhere is finished by the next one.
`reconcile_if_due` runs it in at most one idle worker per interval, by a store lock.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from shared.config import BackendConfig
from shared.errors import CorruptRecordError, LeaseLostError
from shared.followups import CANCELLED_STAGE, advance_study
from shared.jobs import JobRecord, PoisonMessage, StudyRecord, parse_message
from shared.ports import Backend, Delivery, JobStore
from shared.status import JobStatus
from shared.submission import enqueue_records

log = logging.getLogger("spotsweep.reconcile")

LOCK_NAME = "reconciler"
OWNER = "reconciler"  # the lease owner of a job the reconciler takes over to finish it
TAKEOVER_LEASE_S = 60.0  # how long that takeover holds the job: a claim and a finish
LINE_IDS = 5  # ids named per action in a report's human lines


def longest_lease_s(lease_s: float) -> float:
    """The longest lease any claim grants: a worker's (`lease_s`) or the reconciler's takeover."""
    return max(lease_s, TAKEOVER_LEASE_S)


def suspicious_lease_s(lease_s: float) -> float:
    """How far ahead a lease may end before the job counts as held by nobody: twice the longest
    lease, room for clocks that disagree by up to a lease."""
    return 2 * longest_lease_s(lease_s)


def lease_suspicious(record: JobRecord, lease_s: float, now: float) -> bool:
    """RUNNING under a lease that ends more than `suspicious_lease_s` from `now`: no claim
    granted it, so no live worker holds the job. The one rule for the worker loop (which takes
    such a job back) and the reconciler (which sends it a message)."""
    return record.status is JobStatus.RUNNING and (record.lease_expires_at or now) - now > suspicious_lease_s(lease_s)


@dataclass(frozen=True)
class ReconcilePolicy:
    """When the reconciler acts (see the module docstring for the rules)."""

    max_failures: int = 3  # a dead-lettered job with this many own failures is FAILED, not re-driven
    resend_grace_s: float = 120.0  # a message sent (or a record created) this recently is not sent again
    expired_margin_s: float = 60.0  # a lease lapsed this long with nobody taking the job over
    retention_s: float | None = None  # how long the queue keeps a message; None: what the queue says
    retention_margin_s: float = 3600.0  # re-send this long before the retention drops a message
    # A dead letter taken stays hidden this long: longer than a run takes to page through the DLQ,
    # short enough that poison left there stays visible to people and to the DLQ alarm.
    dead_hide_s: float = 60.0
    lease_s: float = BackendConfig.model_fields["lease_s"].default  # the workers' lease: bounds a suspicious one

    @classmethod
    def for_config(cls, config: BackendConfig, **overrides: Any) -> ReconcilePolicy:
        """The policy of a configured backend, with `overrides`: its `max_failures`, and margins
        no longer than its lease (a message sent a lease ago has been counted, and delivered if
        a worker was up; a lease lapsed that long was not taken over)."""
        lease_s = config.lease_s
        scaled = {"resend_grace_s": min(cls.resend_grace_s, lease_s), "expired_margin_s": min(cls.expired_margin_s, lease_s)}
        scaled["lease_s"] = lease_s
        return cls(**{"max_failures": config.max_failures, **scaled, **overrides})


@dataclass
class ReconcileReport:
    """What one run did: job ids for each action (dead-letter message ids for `poison`)."""

    redriven: list[str] = field(default_factory=list)  # dead-lettered, sent again
    failed: list[str] = field(default_factory=list)  # dead-lettered at max_failures: recorded FAILED
    dead_dropped: list[str] = field(default_factory=list)  # dead letters of finished or live jobs, deleted
    poison: list[str] = field(default_factory=list)  # dead letters left for people (message ids)
    sent_unsent: list[str] = field(default_factory=list)  # rule (a): never sent
    sent_lapsed: list[str] = field(default_factory=list)  # rule (b): lapsed lease, nothing sent since
    resent: list[str] = field(default_factory=list)  # rule (c): the message may be gone
    sent_suspicious: list[str] = field(default_factory=list)  # rule (d): a lease no claim granted, message missing
    cancelled: list[str] = field(default_factory=list)  # jobs of cancelled studies: cancelled or flagged
    advanced: dict[str, dict[str, int]] = field(default_factory=dict)  # study -> stage -> jobs created
    errors: list[str] = field(default_factory=list)  # one line per study or message it could not handle

    @property
    def changed(self) -> bool:
        """Whether the run changed anything (poison left where it was and errors are no change)."""
        return any(getattr(self, f.name) for f in fields(self) if f.name not in ("poison", "errors"))

    def document(self) -> dict[str, Any]:
        """The report as JSON: each action's ids and their count."""
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            doc[f.name] = value if isinstance(value, dict) else {"count": len(value), "ids": value}
        return doc

    def lines(self) -> list[str]:
        """One human line per action that happened (the first ids of each)."""
        out = []
        for f in fields(self):
            ids = getattr(self, f.name)
            if ids and isinstance(ids, list) and f.name != "errors":  # errors are lines of their own
                shown = ", ".join(ids[:LINE_IDS]) + (" ..." if len(ids) > LINE_IDS else "")
                out.append(f"{f.name.replace('_', ' ')}: {len(ids)} ({shown})")
        out += [f"advanced {study}: " + ", ".join(f"{n} {stage}" for stage, n in stages.items())
                for study, stages in self.advanced.items()]
        return out


# --- the run ---


def reconcile(
    backend: Backend, policy: ReconcilePolicy, now: float, study_ids: Collection[str] | None = None
) -> ReconcileReport:
    """Repair the invariant for the studies `study_ids` (None: every study); see the module docstring.

    The queue's counts are compared with the unfinished jobs of every study whatever the scope:
    the queue serves them all.
    """
    report = ReconcileReport()
    scope = set(study_ids) if study_ids is not None else None
    handle_dead_letters(backend, policy, now, scope, report)
    studies = backend.store.list_studies()
    unfinished = {s.study_id: _unfinished(backend.store, s.study_id) for s in studies}
    cancelled = {s.study_id for s in studies if CANCELLED_STAGE in s.stages}
    counts = backend.queue.counts()
    expected = sum(len(jobs) for study_id, jobs in unfinished.items() if study_id not in cancelled)
    rules = _SendRules(policy, now, policy.retention_s or counts.retention_s, short=counts.backlog < expected)
    for study in _in_scope(studies, scope):
        jobs = unfinished[study.study_id]
        if study.study_id in cancelled:
            report.cancelled += cancel_jobs(backend.store, jobs, now)
        else:
            _send_missing(backend, jobs, rules, report)
    _advance(backend, _in_scope(studies, scope), report)
    return report


def reconcile_if_due(
    backend: Backend, owner: str, policy: ReconcilePolicy, now: float, interval_s: float
) -> ReconcileReport | None:
    """Run `reconcile` unless a worker did within `interval_s`: None when it is not due.

    The store lock `reconciler` is taken for `interval_s` and left to lapse, so across every
    worker the reconciler runs at most once per interval. Stopped halfway (a crash, a throttled
    call), the next holder an interval later finishes the work: every step is idempotent.
    """
    if not backend.store.acquire_lock(LOCK_NAME, owner, interval_s, now):
        return None
    report = reconcile(backend, policy, now)
    if report.changed:
        log.info("reconciled: %s", "; ".join(report.lines()), extra={"event": "reconciled", "data": report.document()})
    return report


def _unfinished(store: JobStore, study_id: str) -> list[JobRecord]:
    return [job for job in store.list_jobs(study_id) if not job.status.finished]


def _in_scope(studies: list[StudyRecord], scope: set[str] | None) -> list[StudyRecord]:
    return [s for s in studies if scope is None or s.study_id in scope]


# --- 2. messages ---


class SendReason(StrEnum):
    """Why a job gets a message (rules a-d of the module docstring)."""

    UNSENT = "unsent"  # (a) none was ever sent
    LAPSED = "lapsed"  # (b) its worker died, nothing sent since
    RESENT = "resent"  # (c) its message may be gone
    SUSPICIOUS = "suspicious"  # (d) held by nobody (a lease no claim granted), its message missing


@dataclass(frozen=True)
class _SendRules:
    """Which jobs get a message now (rules a-d of the module docstring)."""

    policy: ReconcilePolicy
    now: float
    retention_s: float | None
    short: bool  # the queue holds fewer messages than there are unfinished jobs

    def lapsed(self, job: JobRecord) -> bool:
        """RUNNING with a lease lapsed for more than the margin: nobody took the job over."""
        expires_at = job.lease_expires_at
        return job.status is JobStatus.RUNNING and (expires_at is None or expires_at <= self.now - self.policy.expired_margin_s)

    def reason(self, job: JobRecord) -> SendReason | None:
        """Why `job` gets a message now; None: it needs none, or has one."""
        if lease_suspicious(job, self.policy.lease_s, self.now):
            return SendReason.SUSPICIOUS if job.enqueued_at is None or self.maybe_gone(job) else None
        if job.status is not JobStatus.QUEUED and not self.lapsed(job):
            return None
        if job.enqueued_at is None:
            if job.status is JobStatus.RUNNING:
                return SendReason.LAPSED
            return SendReason.UNSENT if job.created_at < self.now - self.policy.resend_grace_s else None
        if job.status is JobStatus.RUNNING and job.enqueued_at < (job.lease_expires_at or 0.0):
            return SendReason.LAPSED
        return SendReason.RESENT if self.maybe_gone(job) else None

    def maybe_gone(self, job: JobRecord) -> bool:
        """Rule (c): the message sent at `enqueued_at` may be gone (the queue's retention, or a
        queue short of messages and a send older than the grace)."""
        sent_at = job.enqueued_at or 0.0
        if self.retention_s and sent_at < self.now - max(0.0, self.retention_s - self.policy.retention_margin_s):
            return True
        return self.short and sent_at < self.now - self.policy.resend_grace_s


def _send_missing(backend: Backend, jobs: Iterable[JobRecord], rules: _SendRules, report: ReconcileReport) -> None:
    chosen: list[JobRecord] = []
    lists = {SendReason.UNSENT: report.sent_unsent, SendReason.LAPSED: report.sent_lapsed,
             SendReason.RESENT: report.resent, SendReason.SUSPICIOUS: report.sent_suspicious}
    for job in jobs:
        reason = rules.reason(job)
        if reason is not None:
            chosen.append(job)
            lists[reason].append(job.job_id)
    if chosen:
        enqueue_records(backend.store, backend.queue, chosen, rules.now)


# --- 1. dead letters ---


class DeadLetter(StrEnum):
    """What becomes of one dead letter."""

    KEEP = "keep"  # no job's message (poison), another study's, or a job taken meanwhile: left there
    DROP = "drop"  # deleted: its job is finished, held by a live worker, re-driven already, or FAILED now
    REDRIVE = "redrive"  # a fresh message is sent for its job, then it is deleted


def handle_dead_letters(
    backend: Backend, policy: ReconcilePolicy, now: float, scope: set[str] | None, report: ReconcileReport
) -> None:
    """Page through the dead-letter queue until it is empty (or shows only what this run took).

    Each page: decide every message, send the re-driven jobs' fresh messages, then delete the
    dead letters that are done. Stopped between the send and the delete, the next run re-drives
    them again (a duplicate, harmless); what is not deleted comes back after `dead_hide_s`.
    """
    seen: set[str] = set()
    redriven: set[str] = set()  # jobs re-driven this run: a second dead letter of one is dropped
    while page := [d for d in backend.queue.receive_dead(10, policy.dead_hide_s) if d.message_id not in seen]:
        seen.update(d.message_id for d in page)
        send: list[JobRecord] = []
        done: list[str] = []
        for delivery in page:
            decision, record = decide_dead_letter(backend.store, policy, now, scope, delivery, redriven, report)
            if decision is DeadLetter.REDRIVE and record is not None:
                send.append(record)
            if decision is not DeadLetter.KEEP:
                done.append(delivery.receipt)
        enqueue_records(backend.store, backend.queue, send, now)
        backend.queue.delete_dead(done)


def decide_dead_letter(
    store: JobStore,
    policy: ReconcilePolicy,
    now: float,
    scope: set[str] | None,
    delivery: Delivery,
    redriven: set[str],
    report: ReconcileReport,
) -> tuple[DeadLetter, JobRecord | None]:
    """What to do with one dead letter (recorded in `report`); a job at its failure limit is
    recorded FAILED here, before its dead letter is deleted."""
    record = _dead_job(store, delivery, scope, report)
    if record is None:
        return DeadLetter.KEEP, None
    if record.status.finished or record.job_id in redriven or _held(record, policy, now):
        report.dead_dropped.append(record.job_id)
        return DeadLetter.DROP, record
    if record.failures >= policy.max_failures:
        if not fail_dead_lettered(store, record, now):
            return DeadLetter.KEEP, None  # a worker took it meanwhile: decided again next run
        report.failed.append(record.job_id)
        return DeadLetter.DROP, record
    redriven.add(record.job_id)
    report.redriven.append(record.job_id)
    return DeadLetter.REDRIVE, record


def _dead_job(store: JobStore, delivery: Delivery, scope: set[str] | None, report: ReconcileReport) -> JobRecord | None:
    """The job a dead letter is for, or None: poison (recorded), or another study's (left alone)."""
    try:
        message = parse_message(delivery.body)
    except PoisonMessage:
        report.poison.append(delivery.message_id)
        return None
    if scope is not None and message.study_id not in scope:
        return None
    try:
        record = store.get_job(message.study_id, message.job_id)
    except CorruptRecordError:
        record = None
    if record is None:
        report.poison.append(delivery.message_id)
    return record


def _held(record: JobRecord, policy: ReconcilePolicy, now: float) -> bool:
    """RUNNING under a live lease that a claim could have granted: its worker holds a message
    (this dead letter is a duplicate). A suspicious lease is nobody's: its job is re-driven."""
    live = record.status is JobStatus.RUNNING and not record.lease_expired(now)
    return live and not lease_suspicious(record, policy.lease_s, now)


def fail_dead_lettered(store: JobStore, record: JobRecord, now: float) -> bool:
    """Record a dead-lettered job FAILED with the reason; False if a worker holds it now."""
    reason = f"dead-lettered after {record.failures} own failures: {record.error or 'no error recorded'}"
    return finish_abandoned(store, record, JobStatus.FAILED, {"error": reason[:1000], "finished_at": now}, now)


def finish_abandoned(store: JobStore, record: JobRecord, status: JobStatus, changes: dict[str, Any], now: float) -> bool:
    """Finish a job nobody holds (QUEUED, or RUNNING with a lapsed lease) as `status`, fenced.

    The job is claimed (the claim protocol's takeover of a lapsed lease: attempt + 1) and finished
    with that attempt, so a worker that comes back to it is fenced out; no RUNNING row is ever
    reset without a fence. Stopped between the two, the job is RUNNING under this short lease,
    which lapses: the next run (or a worker's claim) takes it from there.

    Returns:
        True if it was finished; False if it was not claimable (a live worker holds it, or it
        finished meanwhile).
    """
    claimed = store.claim(record.study_id, record.job_id, OWNER, TAKEOVER_LEASE_S, now)
    if claimed is None:
        return False
    try:
        store.finish(record.study_id, record.job_id, claimed.attempt, status, changes)
    except LeaseLostError:  # only if this call outlived TAKEOVER_LEASE_S: whoever took it decides
        return False
    return True


# --- 3. cancelled studies ---


def needs_cancel(job: JobRecord, now: float) -> bool:
    """Whether a job of a cancelled study still needs `cancel_jobs`: QUEUED, RUNNING with a lapsed
    lease, or RUNNING and not yet asked to stop."""
    if job.status is JobStatus.QUEUED:
        return True
    return job.status is JobStatus.RUNNING and (job.lease_expired(now) or not job.cancel_requested)


def cancel_jobs(store: JobStore, jobs: Iterable[JobRecord], now: float) -> list[str]:
    """Cancel what is unfinished of a cancelled study: the ids of the jobs this changed.

    QUEUED -> CANCELLED (its message is dropped on receipt); RUNNING with a lapsed lease: taken over
    and finished CANCELLED (its worker is gone); RUNNING under a live lease: flagged, and its
    worker stops at the next epoch. A job that moved meanwhile (claimed, preempted) is left for
    the next pass: `needs_cancel` still says so.
    """
    changed = []
    for job in jobs:
        if job.status is JobStatus.QUEUED:
            done = store.reset(job.study_id, job.job_id, [JobStatus.QUEUED], JobStatus.CANCELLED, {"finished_at": now})
        elif job.status is JobStatus.RUNNING and job.lease_expired(now):
            done = finish_abandoned(store, job, JobStatus.CANCELLED, {"finished_at": now}, now)
        elif job.status is JobStatus.RUNNING and not job.cancel_requested:
            done = store.request_cancel(job.study_id, job.job_id)
        else:
            continue
        if done:
            changed.append(job.job_id)
    return changed


# --- 4. follow-ups ---


def _advance(backend: Backend, studies: Iterable[StudyRecord], report: ReconcileReport) -> None:
    for study in studies:
        try:
            stages = advance_study(backend.store, backend.queue, study.study_id)
        except Exception as exc:  # noqa: BLE001 - one study's failure (throttled, corrupt) must not stop the others
            report.errors.append(f"study {study.study_id}: follow-ups not advanced: {type(exc).__name__}: {exc}"[:500])
            log.warning("could not advance study %s", study.study_id, exc_info=True, extra={"event": "advance_failed"})
            continue
        if stages:
            report.advanced[study.study_id] = stages
