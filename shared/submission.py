"""Putting jobs on the queue: records first, then messages, in batches, idempotently.

Used by `submit study` and by whichever worker finishes a study's last training job (the
automatic follow-ups). A job's record is created before its message is sent, so a worker never
receives a message for an unknown job; a crash between the two leaves QUEUED records without
messages, which the next submission of the same study repairs (it re-sends for QUEUED records
it did not create only when asked to `resume`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from shared.jobs import JobMessage, JobRecord, JobSpec
from shared.ports import JobQueue, JobStore

CHUNK = 500  # jobs handled per round: bounded memory however large the study


@dataclass
class SubmitReport:
    created: int = 0
    existing: int = 0
    sent: int = 0

    @property
    def total(self) -> int:
        return self.created + self.existing


def _chunks(items: Iterable[tuple[str, JobSpec]], size: int) -> Iterator[list[tuple[str, JobSpec]]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def submit_jobs(
    store: JobStore,
    queue: JobQueue,
    study_id: str,
    jobs: Iterable[tuple[str, JobSpec]],
    progress: Callable[[int], None] | None = None,
) -> SubmitReport:
    """Create the records of `jobs` that do not exist yet and enqueue exactly those."""
    report = SubmitReport()
    now = time.time()
    for chunk in _chunks(jobs, CHUNK):
        records = (JobRecord(study_id=study_id, job_id=job_id, spec=spec, created_at=now) for job_id, spec in chunk)
        created = set(store.create_jobs(records))
        bodies = (
            JobMessage(study_id=study_id, job_id=job_id, spec=spec).to_body()
            for job_id, spec in chunk
            if job_id in created
        )
        report.sent += queue.send(bodies)
        report.created += len(created)
        report.existing += len(chunk) - len(created)
        if progress:
            progress(len(chunk))
    return report


def enqueue_record(queue: JobQueue, record: JobRecord) -> None:
    """Send a fresh message for an existing record (preemption re-enqueue, retry)."""
    message = JobMessage(study_id=record.study_id, job_id=record.job_id, spec=record.spec)
    queue.send([message.to_body()])
