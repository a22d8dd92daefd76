"""The spot watcher against a misbehaving metadata service (tests/fake_imds.py over HTTP): it
survives every failure of a poll (one log line each, a growing wait) and still stops the
worker when the notice comes."""

from __future__ import annotations

import logging
import time

import pytest

from tests.fake_imds import FakeImds
from worker.imds import Imds, SpotWatcher
from worker.stop import StopFlag


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("mode, error", [("garbage", "BadStatusLine"), ("truncated", "IncompleteRead")])
def test_the_watcher_survives_a_broken_service_and_still_sees_the_notice(mode, error, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="spotsweep.worker.spot")
    stop = StopFlag()
    with FakeImds() as imds:
        imds.break_metadata(mode)
        watcher = SpotWatcher(Imds(imds.url, timeout_s=2), stop, interval_s=0.02).start()
        try:
            assert wait_until(lambda: imds.polls("spot/instance-action") >= 4, 10), "the watcher stopped polling"
            assert watcher.alive and not stop.requested
            imds.heal()
            imds.arm_spot_notice()
            assert stop.wait(10), "the notice after the failures was missed"
        finally:
            stop.request("test over")
    assert stop.reason == "spot interruption: terminate"
    failures = [r for r in caplog.records if "metadata poll failed" in r.getMessage()]
    assert len(failures) >= 4 and all(error in r.getMessage() and r.exc_info is None for r in failures)


@pytest.mark.parametrize("body", ["[1, 2]", "null", "{not json", '{"action": 7}'])
def test_a_garbled_notice_is_still_a_notice(body: str) -> None:
    stop = StopFlag()
    with FakeImds() as imds:
        imds.arm_raw_notice(body)
        SpotWatcher(Imds(imds.url, timeout_s=2), stop, interval_s=0.02).start()
        try:
            assert stop.wait(10), f"a notice answered with {body!r} was missed"
        finally:
            stop.request("test over")
    assert stop.reason == "spot interruption: unknown action"


def test_the_wait_doubles_after_failures_up_to_its_cap_and_resets_on_success() -> None:
    stop = StopFlag()
    with FakeImds() as imds:
        watcher = SpotWatcher(Imds(imds.url, timeout_s=2), stop, interval_s=1.0, max_backoff_s=4.0)
        imds.break_metadata("garbage")
        delays = []
        for _ in range(4):
            watcher._poll()
            delays.append(watcher._delay_s())
        imds.heal()
        assert watcher._poll() is None
        assert delays == [2.0, 4.0, 4.0, 4.0] and watcher._delay_s() == 1.0
