"""The heartbeat: while a job runs, renew its lease in the store and extend its message's visibility.

The message stays invisible a margin longer than the lease, so that when a worker dies its
lease has always lapsed by the time the message reappears and the next receiver can claim it.

A heartbeat survives errors. Every error of `store.renew` or `queue.extend` (throttling, a
timeout, a dropped connection, anything else) is retried with a short backoff, again and again,
until it succeeds or the lease runs out:
- `LeaseLostError` from `renew` means another worker owns the job: `lost` at once.
- A lease that could not be renewed before it expired is `lost` too (someone may claim it from
  that instant on). `lost` is computed from the clock at every check, so a job polling
  `should_stop` after every batch stops within one batch of the deadline, even if the heartbeat
  thread itself is stuck in a call that never returns.
- While renewals fail, each failed beat reads the record (a plain read, often served when a
  conditional write is throttled): a cancel request still reaches the job, and a record that
  another attempt has taken over ends it at once.
- A failed `extend` only costs time: the store's lease, not the message, decides who owns the
  job (a receiver that meets a live lease releases the message again).

Long jobs: SQS keeps a message invisible for at most 12 hours from its receipt and refuses an
extension beyond that (`VisibilityLimitError`). Before that, `max_message_age_s` after the receipt,
or at once when the queue refuses, `handoff_due` asks the job to hand itself to a fresh message.

Time is passed in (`clock`, epoch seconds) so that all of this is testable without sleeping;
the thread waits in real seconds between beats.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shared.errors import LeaseLostError, VisibilityLimitError
from shared.jobs import JobRecord
from shared.ports import JobQueue, JobStore
from shared.status import JobStatus

log = logging.getLogger("spotsweep.worker.lease")

Clock = Callable[[], float]
RETRY_FIRST_S = 0.25  # the first retry after an error; doubled per error, capped by RETRY_SHARE
RETRY_SHARE = 0.25  # ...at this share of the beat interval: many tries fit in one lease


def visibility_margin_s(lease_s: float) -> float:
    return max(2.0, lease_s * 0.1)


class Lease:
    """Context manager running the heartbeat thread for one claimed job (see the module docstring).

    `received_at` is when the message was received (by `clock`); `max_message_age_s` None: no
    handoff by age.
    """

    def __init__(
        self,
        queue: JobQueue,
        store: JobStore,
        record: JobRecord,
        receipt: str,
        lease_s: float,
        clock: Clock = time.time,
        received_at: float | None = None,
        max_message_age_s: float | None = None,
    ) -> None:
        self.queue, self.store, self.record, self.receipt = queue, store, record, receipt
        self.lease_s, self.clock = lease_s, clock
        self.received_at = clock() if received_at is None else received_at
        self.max_message_age_s = max_message_age_s
        self.expires_at = record.lease_expires_at if record.lease_expires_at is not None else self.received_at + lease_s
        self.cancel_requested = record.cancel_requested
        self.limit_reached = False  # the queue refused to hide the message any longer
        self._fenced = False  # the store says another attempt owns the job
        self._expired = False  # latched: once lost, a late renewal never makes the lease valid again
        self._stale_receipt = False
        self._errors = 0  # consecutive failed beats
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{record.job_id}", daemon=True)

    @property
    def interval_s(self) -> float:
        return self.lease_s / 3

    @property
    def lost(self) -> bool:
        """Another worker owns the job, or may: fenced out, or the lease ran out unrenewed."""
        if not self._expired and self.clock() >= self.expires_at:
            self._expired = True
            self._warn("lease_lost", "the lease expired before it could be renewed", always=True)
        return self._fenced or self._expired

    @property
    def handoff_due(self) -> bool:
        """The message is about to outlive the queue's visibility limit (or already did)."""
        if self.limit_reached:
            return True
        return self.max_message_age_s is not None and self.clock() - self.received_at >= self.max_message_age_s

    def __enter__(self) -> Lease:
        if not self._extend():  # a first extension that fails is retried by the thread, at once
            self._errors = 1
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.lease_s)

    def _run(self) -> None:
        wait_s = self._retry_s() if self._errors else self.interval_s
        while not self._done.wait(wait_s) and not self.lost:
            wait_s = self.beat()

    def beat(self) -> float:
        """One heartbeat: renew the lease, then extend the message. Never raises.

        Returns:
            Seconds until the next beat: a third of the lease after a success, a short and
            growing backoff after an error.
        """
        renewed = self._renew()
        extended = self._extend() if not self._fenced else True
        self._errors = 0 if renewed and extended else self._errors + 1
        return self.interval_s if not self._errors else self._retry_s()

    def _retry_s(self) -> float:
        return min(self.interval_s * RETRY_SHARE, RETRY_FIRST_S * 2 ** (self._errors - 1))

    def _renew(self) -> bool:
        record = self.record
        try:
            renewed = self.store.renew(record.study_id, record.job_id, record.attempt, self.lease_s, self.clock())
        except LeaseLostError:
            self._fence("lease lost")
            return False
        except Exception as exc:  # any error is retried until the lease runs out (then `lost`)
            self._warn("heartbeat_failed", f"lease renewal failed ({_one_line(exc)}); retrying until it expires")
            self._read_record()
            return False
        self.expires_at = renewed.lease_expires_at if renewed.lease_expires_at is not None else self.expires_at
        self.cancel_requested = renewed.cancel_requested
        return True

    def _read_record(self) -> None:
        """While renewals fail: pick up a cancel request, and notice a takeover."""
        record = self.record
        try:
            current = self.store.get_job(record.study_id, record.job_id)
        except Exception:  # the next beat tries the renewal (and this read) again
            return
        if current is None or current.status is not JobStatus.RUNNING or current.attempt != record.attempt:
            self._fence("job taken over")
            return
        self.cancel_requested = current.cancel_requested

    def _extend(self) -> bool:
        """Extend the message's visibility; False when that should be tried again soon."""
        if self._stale_receipt:
            return True  # the message was received again: nothing to extend, the store's lease rules
        try:
            current = self.queue.extend(self.receipt, self.lease_s + visibility_margin_s(self.lease_s))
        except VisibilityLimitError as exc:
            if not self.limit_reached:
                self._warn("visibility_limit", f"the queue will not hide the message longer ({_one_line(exc)})", always=True)
            self.limit_reached = True
            return True
        except Exception as exc:  # retried; the lease in the store still protects the job
            self._warn("extend_failed", f"message extension failed ({_one_line(exc)}); retrying")
            return False
        if not current:
            self._stale_receipt = True
            self._warn("receipt_stale", "message receipt is stale", always=True)
        return True

    def _fence(self, why: str) -> None:
        self._fenced = True
        self._warn("lease_lost", why, always=True)

    def _warn(self, event: str, message: str, always: bool = False) -> None:
        """One line; while beats keep failing, only at exponentially spaced ones (no flood)."""
        errors = self._errors
        if always or (errors & (errors - 1)) == 0:
            record = self.record
            log.warning(message, extra={"event": event, "job_id": record.job_id, "attempt": record.attempt})


def _one_line(exc: BaseException) -> str:
    lines = f"{type(exc).__name__}: {exc}".splitlines()
    return lines[0][:300] if lines else type(exc).__name__
