"""Stop requests: a warm stop on the first SIGTERM/SIGINT or a spot notice, a cold stop on the second signal."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class ColdStop(BaseException):
    """Raised in the main thread on the second signal: abandon the job now (its lease will lapse)."""


class StopFlag:
    """Why the worker should stop, if it should. Thread-safe; the first reason wins."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self._signals = 0

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            self.request(f"signal {signal.Signals(signum).name}")
            return
        raise ColdStop(f"second signal {signal.Signals(signum).name}")

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle_signal)
