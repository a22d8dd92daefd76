"""The worker loop sweeps its cache between jobs and while idle (worker.housekeeping), at most
once per interval: a `.tmp-` file left by a killed writer, and a work dir no live process holds,
disappear without a restart. Real files on disk, the embedded backend, a stand-in for training."""

from __future__ import annotations

import os
import time
from pathlib import Path

from shared.ports import Backend
from shared.submission import submit_jobs
from tests.integration.test_worker_protocol import STUDY, FakeTraining, make_jobs, settings_for
from worker.housekeeping import TEMP_GRACE_S
from worker.loop import Policy, Worker


def leftover(cache: Path, name: str) -> Path:
    """A temp file a killed writer left in the dataset cache, untouched for longer than the grace."""
    path = cache / "datasets" / "0123456789abcdef" / f".tmp-{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a file")
    old = time.time() - TEMP_GRACE_S - 60
    os.utime(path, (old, old))
    return path


def test_a_sweep_after_a_job_at_most_once_per_interval(local_backend: Backend, tiny_dataset: Path, tmp_path: Path) -> None:
    jobs = make_jobs(tiny_dataset, 3)
    submit_jobs(local_backend.store, local_backend.queue, STUDY, jobs)
    settings = settings_for(tmp_path / "home", cache_dir=tmp_path / "cache")
    worker = Worker(local_backend, settings, FakeTraining())
    cache = settings.resolved_cache_dir

    first = leftover(cache, "first")
    worker.execute(local_backend.queue.receive(max_messages=1, wait_s=1)[0])
    assert worker.processed == 1 and not first.exists()  # the first job ended with a sweep

    second = leftover(cache, "second")
    worker.execute(local_backend.queue.receive(max_messages=1, wait_s=1)[0])
    assert worker.processed == 2 and second.exists()  # not due yet: one sweep per interval

    worker.housekeeper.interval_s = 0.0  # as if the interval had passed
    worker.execute(local_backend.queue.receive(max_messages=1, wait_s=1)[0])
    assert worker.processed == 3 and not second.exists()


def test_an_idle_worker_sweeps_next_to_the_reconciler(local_backend: Backend, tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "home", cache_dir=tmp_path / "cache")
    cache = settings.resolved_cache_dir
    stale = leftover(cache, "idle")
    orphan = cache / "work" / "job-1"  # a killed worker's scratch: no lock file, untouched for a day
    orphan.mkdir(parents=True)
    day_ago = time.time() - 25 * 3600
    os.utime(orphan, (day_ago, day_ago))

    worker = Worker(local_backend, settings, FakeTraining())
    worker.work(Policy(idle_timeout_s=0.5))  # nothing to do: idle until it leaves

    assert worker.processed == 0
    assert not stale.exists() and not orphan.exists()
