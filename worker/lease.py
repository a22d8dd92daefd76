"""The heartbeat: while a job runs, extend its message's visibility and its lease in the store.

The message stays invisible a margin longer than the lease, so that when a worker dies its
lease has always lapsed by the time the message reappears and the next receiver can claim it.
"""

from __future__ import annotations

import logging
import threading
import time

from shared.errors import LeaseLostError
from shared.jobs import JobRecord
from shared.ports import JobQueue, JobStore

log = logging.getLogger("spotsweep.worker.lease")


def visibility_margin_s(lease_s: float) -> float:
    return max(2.0, lease_s * 0.1)


class Lease:
    """Context manager running the heartbeat thread for one claimed job."""

    def __init__(self, queue: JobQueue, store: JobStore, record: JobRecord, receipt: str, lease_s: float) -> None:
        self.queue, self.store, self.record, self.receipt = queue, store, record, receipt
        self.lease_s = lease_s
        self.lost = False
        self.cancel_requested = record.cancel_requested
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{record.job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self.queue.extend(self.receipt, self.lease_s + visibility_margin_s(self.lease_s))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.lease_s)

    def _run(self) -> None:
        while not self._done.wait(self.lease_s / 3) and not self.lost:
            self.beat()

    def beat(self) -> None:
        record = self.record
        try:
            renewed = self.store.renew(record.study_id, record.job_id, record.attempt, self.lease_s, time.time())
        except LeaseLostError:
            log.warning("lease lost", extra={"event": "lease_lost", "job_id": record.job_id, "attempt": record.attempt})
            self.lost = True
            return
        except Exception:  # transient: the next beat tries again, well within the lease
            log.warning("heartbeat failed", exc_info=True, extra={"event": "heartbeat_failed", "job_id": record.job_id, "attempt": record.attempt})
            return
        self.cancel_requested = renewed.cancel_requested
        if not self.queue.extend(self.receipt, self.lease_s + visibility_margin_s(self.lease_s)):
            log.warning("message receipt is stale", extra={"event": "receipt_stale", "job_id": record.job_id, "attempt": record.attempt})
