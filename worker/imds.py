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
        """Why this instance is about to go, if it is: an interruption notice or a rebalance recommendation."""
        action = self.get("spot/instance-action")
        if action:
            return f"spot interruption: {json.loads(action).get('action', 'terminate')}"
        if self.get("events/recommendations/rebalance"):
            return "spot rebalance recommendation"
        return None


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
    """Polls for a spot notice every `interval_s` and asks the worker to stop (warm) on one."""

    def __init__(self, imds: Imds, stop: StopFlag, interval_s: float = 5.0) -> None:
        self.imds, self.stop, self.interval_s = imds, stop, interval_s
        self._thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)

    def start(self) -> SpotWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                notice = self.imds.spot_notice()
            except (OSError, urllib.error.URLError, ValueError):
                log.warning("metadata service unreachable", exc_info=True)
                continue
            if notice:
                log.warning("%s: stopping after the current batch", notice, extra={"event": "spot_notice", "reason": notice})
                self.stop.request(notice)
