"""Putting jobs on the queue: records first, then messages, then the stamp; idempotently.

Every message of a job is sent by ONE function, `enqueue_records`: it sends, then stamps
`enqueued_at` on the records (`JobStore.mark_enqueued`). A study's jobs (`submit_jobs`), its
follow-ups, `submit retry`, a preempted or handed-off job and the reconciler all come through it,
and the store says what each step left behind (`shared.reconcile` repairs it):

- A record is created with no stamp before its message is sent, so a worker never receives a
  message for an unknown job.
- Stopped between creating and sending (a crash, Ctrl-C, a failed send): QUEUED records with no
  stamp. `submit_jobs` of the same jobs sends for them, so submitting a study again finishes it;
  the reconciler sends for them too.
- Stopped between sending and stamping: the same, and the repair sends a duplicate, which the
  claim protocol makes harmless (the second delivery finds the job running or finished).
- Stamping before sending would be worse: a stamp with no message hides a stranded job until
  the queue's counts give it away.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from shared.jobs import JobMessage, JobRecord, JobSpec
from shared.ports import JobQueue, JobStore
from shared.status import JobStatus

CHUNK = 500  # jobs handled per round: bounded memory however large the study
T = TypeVar("T")


@dataclass
class SubmitReport:
    created: int = 0
    existing: int = 0
    sent: int = 0
    resent: int = 0  # existing QUEUED jobs whose message had never been sent (an earlier submission stopped)

    @property
    def total(self) -> int:
        return self.created + self.existing


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def submit_jobs(
    store: JobStore,
    queue: JobQueue,
    study_id: str,
    jobs: Iterable[tuple[str, JobSpec]],
    progress: Callable[[int], None] | None = None,
    now: float | None = None,
) -> SubmitReport:
    """Create the records of `jobs` that do not exist yet and enqueue them; enqueue again the
    existing ones that are QUEUED and were never sent (no `enqueued_at`: a submission or a
    follow-up that stopped before sending). Running it again after any stop finishes the job."""
    now = time.time() if now is None else now
    report = SubmitReport()
    unsent: dict[str, JobRecord] | None = None  # read once, only if some jobs exist already
    for chunk in _chunks(jobs, CHUNK):
        records = {job_id: JobRecord(study_id=study_id, job_id=job_id, spec=spec, created_at=now) for job_id, spec in chunk}
        created = set(store.create_jobs(records.values()))
        existing = [job_id for job_id in records if job_id not in created]
        if existing and unsent is None:
            unsent = _unsent(store, study_id)
        again = [unsent[job_id] for job_id in existing if unsent and job_id in unsent]
        report.sent += enqueue_records(store, queue, [records[j] for j in records if j in created] + again, now)
        report.created += len(created)
        report.existing += len(existing)
        report.resent += len(again)
        if progress:
            progress(len(chunk))
    return report


def _unsent(store: JobStore, study_id: str) -> dict[str, JobRecord]:
    """The study's QUEUED jobs for which no message was ever sent, by id."""
    return {r.job_id: r for r in store.list_jobs(study_id, JobStatus.QUEUED) if r.enqueued_at is None}


def enqueue_records(store: JobStore, queue: JobQueue, records: Iterable[JobRecord], now: float) -> int:
    """Send one fresh message for each record, then stamp `enqueued_at = now` on those that are
    still unfinished: the one path of every job message.

    Args:
        records: existing records (the message is built from their ids and spec); any studies.
        now: the stamp (epoch seconds), taken before sending: never later than the send.

    Returns:
        How many messages were sent.

    Stopped between the send and the stamp, the records keep their earlier stamp or none, and the
    reconciler (or the caller, run again) sends again: a duplicate, harmless.
    """
    sent = 0
    for chunk in _chunks(records, CHUNK):
        bodies = [JobMessage(study_id=r.study_id, job_id=r.job_id, spec=r.spec).to_body() for r in chunk]
        sent += queue.send(bodies)
        for study_id, job_ids in _by_study(chunk).items():
            store.mark_enqueued(study_id, job_ids, now)
    return sent


def _by_study(records: list[JobRecord]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for record in records:
        grouped.setdefault(record.study_id, []).append(record.job_id)
    return grouped


def enqueue_record(queue: JobQueue, record: JobRecord) -> None:
    """Send a message for one record WITHOUT stamping it (kept for callers not yet moved to
    `enqueue_records`; the reconciler's rules cover the missing stamp). Prefer `enqueue_records`."""
    message = JobMessage(study_id=record.study_id, job_id=record.job_id, spec=record.spec)
    queue.send([message.to_body()])
