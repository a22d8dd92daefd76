"""Exactly once with no head node: racing workers, and a crash between deciding and sending.

Several threads call `advance_study` at once for the same study after each round of settlements
(a barrier lines them up), or run whole driver loops side by side, until the search completes,
on the embedded SQLite backend and, once, on AWS over moto's server. However they interleave, a
study with `count: N` ends with exactly N trials 0..N-1, one job per (trial, rung), each ASHA
promotion made once and resuming its trial's previous rung, and a message for every job.

A crash after the records are created and before their messages are sent (an injected send
failure, a lost response, a process SIGKILLed mid-promotion) leaves QUEUED records with no
message: the search stalls on them until the reconciler sends them, and still ends with N trials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shared.errors import RetryableError
from shared.followups import advance_study
from shared.jobs import JobRecord
from shared.ports import Backend
from shared.reconcile import ReconcilePolicy, reconcile
from shared.search import next_jobs, summary
from shared.status import JobStatus
from tests.aws_support import fresh_aws_backend
from tests.faults import INJECTED, LOST, FaultPlan, faulty_backend, timed_out
from tests.search_support import ROOT, Driver, assert_exactly_once, study, submit, train_jobs

JOIN_TIMEOUT_S = 120.0
# rungs at 1, 2, 4, 8 and 9 epochs (tests.search_support.study trains 9)
ASHA = {"method": "asha", "count": 12, "seed": 7, "min_epochs": 1, "reduction_factor": 2, "parallel": 4}
TPE = {"method": "tpe", "count": 8, "seed": 7, "startup": 3, "parallel": 3}
RANDOM = {"method": "random", "count": 10, "seed": 7, "parallel": 3}


def in_threads(target: Any, count: int) -> list[Any]:
    """Run `target()` in `count` threads started together; their results (any error re-raised)."""
    barrier = threading.Barrier(count)
    results: list[Any] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(target())
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def race(driver: Driver, racers: int, per_round: int = 2, max_rounds: int = 300) -> None:
    """Settle `per_round` jobs, then let `racers` threads advance the study at once; until a round
    finds the queue dry (the advance after the last settlement has run: nothing more comes)."""
    for _ in range(max_rounds):
        settled = sum(driver.step(advance=False) for _ in range(per_round))
        in_threads(driver.advance, racers)
        if not settled:
            return
    raise AssertionError("the study never ends")


@pytest.mark.parametrize(("search", "racers"), [(ASHA, 5), (TPE, 4), (RANDOM, 6)], ids=["asha", "tpe", "random"])
def test_racing_advances_make_exactly_count_trials_on_sqlite(local_backend, search, racers):
    spec = study(search)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec)
    race(driver, racers)
    jobs = driver.jobs()
    assert driver.complete()
    assert_exactly_once(jobs, search["count"], driver.received)
    if search is ASHA:
        # Settled before each race, every racer decides from the same records: each rung fills exactly
        # to its cap, floor(N / eta**i) (12 trials at eta 2: none reaches the 5th rung).
        assert [rung.finished for rung in summary(spec, jobs).rungs] == [12, 6, 3, 1, 0]


def test_workers_racing_through_a_whole_asha_study_make_each_trial_and_promotion_once(local_backend):
    spec = study(ASHA)
    submit(local_backend, spec)
    drivers = [Driver(local_backend, spec) for _ in range(3)]
    idle = list(drivers)
    in_threads(lambda: work_until_complete(idle.pop()), 3)
    driver = Driver(local_backend, spec)
    received = sum((d.received for d in drivers), driver.received)
    assert driver.complete() and driver.run() == 0
    assert_exactly_once(driver.jobs(), ASHA["count"], received)


def work_until_complete(driver: Driver, deadline_s: float = 60.0) -> Driver:
    """A worker's loop: settle whatever comes, advancing each time, until the search is complete."""
    deadline = time.monotonic() + deadline_s
    while not driver.complete():
        if not driver.step():
            time.sleep(0.005)
        assert time.monotonic() < deadline, "the study never ends"
    return driver


@pytest.fixture
def aws_backend(request: pytest.FixtureRequest) -> Any:
    yield from fresh_aws_backend(request, lease_s=60.0, max_receives=5)


@pytest.mark.aws
def test_racing_advances_make_exactly_count_trials_on_aws(aws_backend):
    search = {**ASHA, "count": 6, "parallel": 3}
    spec = study(search, training={"epochs": 4})  # rungs 1, 2, 4
    submit(aws_backend, spec)
    driver = Driver(aws_backend, spec)
    race(driver, racers=3, per_round=3)
    assert driver.complete()
    assert_exactly_once(driver.jobs(), 6, driver.received)


# --- a crash between deciding and sending ---------------------------------------------------------

LATER_S = 1000.0  # past the reconciler's grace for records created without a message


def settle_until_a_promotion_is_due(driver: Driver) -> None:
    """Settle rung-0 jobs without advancing until the study's next decision holds a promotion."""
    while not any(job.trial.rung for _, job in next_jobs(driver.spec, driver.jobs())):  # type: ignore[union-attr]
        assert driver.step(advance=False), "no promotion ever came due"


def is_promotion(job: JobRecord) -> bool:
    return job.spec.trial is not None and job.spec.trial.rung > 0


def unsent(driver: Driver) -> list[str]:
    return [j.job_id for j in driver.jobs() if j.status is JobStatus.QUEUED and j.enqueued_at is None]


def repair_and_finish(driver: Driver, stranded: list[str], racers: int = 3) -> None:
    """The search stalls on the records never sent; the reconciler sends them; the study ends."""
    race(driver, racers)
    assert not driver.complete() and set(stranded) <= {j.job_id for j in driver.jobs() if j.status is JobStatus.QUEUED}
    report = reconcile(driver.backend, ReconcilePolicy(), time.time() + LATER_S, [driver.spec.study_id])
    assert set(stranded) <= set(report.sent_unsent) and not report.errors
    race(driver, racers)
    assert driver.complete()
    assert_exactly_once(driver.jobs(), driver.spec.search.count, driver.received)  # type: ignore[union-attr]


@pytest.mark.parametrize("fault", ["refused", "response-lost"])
def test_a_failed_send_during_an_advance_is_repaired_by_the_reconciler(local_backend, fault):
    spec = study(ASHA)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec)
    settle_until_a_promotion_is_due(driver)
    plan = FaultPlan()
    if fault == "refused":
        plan.fail("queue.send", timed_out("send"))
    else:
        plan.lose_response("queue.send")
    with pytest.raises(RetryableError):
        advance_study(*ports(faulty_backend(local_backend, plan)), spec.study_id)
    stranded = unsent(driver)
    assert stranded and any(is_promotion(j) for j in driver.jobs() if j.job_id in stranded)
    assert plan.outcomes("queue.send") == [LOST if fault == "response-lost" else INJECTED]
    if fault == "response-lost":  # sent, never stamped: the study ends; the reconciler finds nothing to send
        race(driver, 3)
        assert driver.complete()
        assert reconcile(local_backend, ReconcilePolicy(), time.time() + LATER_S).sent_unsent == []
        assert_exactly_once(driver.jobs(), ASHA["count"], driver.received)
    else:
        repair_and_finish(driver, stranded)


def ports(backend: Backend) -> tuple[Any, Any]:
    return backend.store, backend.queue


# A worker that settles a job and decides a promotion, SIGKILLed while its send is on the wire.
KILLED_WORKER = """
import sys, time
from pathlib import Path
from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.followups import advance_study
from tests.faults import FaultPlan, faulty_backend

home, study_id, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def stall(seconds):
    marker.write_text("sending")  # the records exist; the send has not happened
    time.sleep(seconds)

plan = FaultPlan(sleep=stall)
plan.delay("queue.send", 600.0)
backend = faulty_backend(open_local(BackendConfig(home=home)), plan)
advance_study(backend.store, backend.queue, study_id)
"""


def test_a_worker_sigkilled_mid_promotion_leaves_records_the_reconciler_sends(tmp_path, local_backend):
    home = tmp_path / "home"  # the local_backend fixture's home (tests/conftest.py)
    spec = study(ASHA)
    submit(local_backend, spec)
    driver = Driver(local_backend, spec)
    settle_until_a_promotion_is_due(driver)
    marker = tmp_path / "sending"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(home), spec.study_id, str(marker)], cwd=ROOT)
    try:
        wait_for(marker, child)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    stranded = unsent(driver)
    assert any(is_promotion(j) for j in driver.jobs() if j.job_id in stranded)
    repair_and_finish(driver, stranded)


def wait_for(marker: Path, child: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert child.poll() is None, "the worker ended before sending"
        assert time.monotonic() < deadline, "the worker never reached its send"
        time.sleep(0.02)


# --- two decisions from snapshots a settlement apart ------------------------------------------------

STALE_SCORES = {0: 0.9, 1: 0.5, 2: 0.95, 3: 0.99}  # rung 0, by trial: each later result beats the earlier ones


def settle(driver: Driver, index: int) -> None:
    """Claim and finish trial `index`'s rung-0 job directly (whatever the queue's order)."""
    jobs = [j for j in driver.jobs() if j.spec.trial and j.spec.trial.index == index and not is_promotion(j)]
    job_id = jobs[0].job_id
    claimed = driver.backend.store.claim(driver.spec.study_id, job_id, "driver", 60.0, time.time())
    assert claimed is not None
    driver.finish(claimed)


def test_a_stale_snapshot_never_promotes_past_the_rungs_cap(local_backend):
    spec = study({**ASHA, "count": 4, "parallel": 4}, training={"epochs": 2})  # rungs 1, 2: at most 4 // 2 promotions
    submit(local_backend, spec)
    driver = Driver(local_backend, spec, scorer=lambda job: STALE_SCORES[job.spec.trial.index])  # type: ignore
    settle(driver, 0)
    settle(driver, 1)
    driver.advance()  # trial 0 promoted: one slot left
    plan = FaultPlan()
    gate = plan.hold("store.create_jobs")
    settle(driver, 2)
    slow = threading.Thread(target=advance_study, args=(*ports(faulty_backend(local_backend, plan)), spec.study_id))
    slow.start()  # decides from a snapshot with trial 2 finished, 3 not: promotes 2
    gate.wait_entered()
    settle(driver, 3)
    driver.advance()  # a newer snapshot: 3 then 2 are the top two, one slot: promotes 3
    gate.release()
    slow.join(JOIN_TIMEOUT_S)
    promoted = [j.spec.trial.index for j in train_jobs(driver.jobs()) if is_promotion(j)]  # type: ignore[union-attr]
    assert len(promoted) <= 4 // 2, promoted
