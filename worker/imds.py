"""The EC2 instance metadata service (IMDSv2), and the spot watcher that polls it.

The endpoint is a setting (`SPOTSWEEP_METADATA_URL`) so tests run a small fake service.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from pathlib import Path

from worker.stop import StopFlag

log = logging.getLogger("spotsweep.worker.spot")

DEFAULT_METADATA_URL = "http://169.254.169.254"
TOKEN_TTL_S = 21600
MAX_BACKOFF_S = 30.0  # the longest wait between polls after failures (a notice gives 120 s)


class Imds:
    def __init__(self, base_url: str = DEFAULT_METADATA_URL, timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._token: str | None = None

    def _fetch_token(self) -> str:
        request = urllib.request.Request(
            f"{self.base_url}/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return response.read().decode()

    def get(self, path: str) -> str | None:
        """The text at `/latest/meta-data/<path>`, or None when it is absent (404)."""
        for _ in range(2):  # a second try with a fresh token if the first was refused
            self._token = self._token or self._fetch_token()
            request = urllib.request.Request(
                f"{self.base_url}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self._token}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code != 401:
                    raise
                self._token = None
        return None

    def spot_notice(self) -> str | None:
        """Why this instance is about to go, if it is: an interruption notice or a rebalance recommendation.

        The `instance-action` item exists only while an interruption is scheduled, so any
        answer there is a notice, even one whose body does not parse (the action is then
        unknown): a garbled notice still stops the worker warm rather than let the instance
        be reclaimed mid-epoch."""
        action = self.get("spot/instance-action")
        if action:
            return f"spot interruption: {_action(action)}"
        if self.get("events/recommendations/rebalance"):
            return "spot rebalance recommendation"
        return None


def _action(document: str) -> str:
    try:
        parsed = json.loads(document)
    except ValueError:
        return "unknown action"
    action = parsed.get("action") if isinstance(parsed, dict) else None
    return action if isinstance(action, str) else "unknown action"


def on_ec2() -> bool:
    """A cheap local check, so that the metadata service is never polled off EC2."""
    for path in ("/sys/hypervisor/uuid", "/sys/devices/virtual/dmi/id/board_asset_tag", "/sys/devices/virtual/dmi/id/sys_vendor"):
        try:
            text = Path(path).read_text().lower()
        except OSError:
            continue
        if text.startswith("ec2") or text.startswith("i-") or "amazon" in text:
            return True
    return False


class SpotWatcher:
    """Polls for a spot notice every `interval_s` and asks the worker to stop (warm) on one.

    The thread outlives every error a poll can meet (the service unreachable, a garbled
    answer, a bug in parsing one): a watcher that died would let a spot reclaim cut a job off
    mid-epoch. Each failure is one log line and a longer wait, doubling up to
    `max_backoff_s` (well inside the two minutes a notice gives); a good poll resets it.
    """

    def __init__(
        self, imds: Imds, stop: StopFlag, interval_s: float = 5.0, max_backoff_s: float = MAX_BACKOFF_S
    ) -> None:
        self.imds, self.stop, self.interval_s = imds, stop, interval_s
        self.max_backoff_s = max(max_backoff_s, interval_s)
        self.failures = 0  # consecutive failed polls
        self._thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)

    def start(self) -> SpotWatcher:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self.stop.wait(self._delay_s()):
            notice = self._poll()
            if notice:
                extra = {"event": "spot_notice", "reason": notice}
                log.warning("%s: stopping after the current batch", notice, extra=extra)
                self.stop.request(notice)

    def _poll(self) -> str | None:
        try:
            notice = self.imds.spot_notice()
        except Exception as exc:  # whatever a poll raises, the watcher must keep watching
            self.failures += 1
            log.warning(
                "spot watcher: metadata poll failed (%s: %s); next poll in %.0f s",
                type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", self._delay_s(),
                extra={"event": "spot_poll_failed"},
            )
            return None
        self.failures = 0
        return notice

    def _delay_s(self) -> float:
        return min(self.interval_s * 2 ** min(self.failures, 30), self.max_backoff_s)  # capped: no float overflow
