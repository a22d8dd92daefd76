"""Housekeeping of the worker's cache (worker.housekeeping) on real files, real flocks and real
processes: what a SIGKILL leaves, what another live worker holds, and the cache bound."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.backends.local import LocalArtifactStore
from shared.datasets import prepare, sync, synthesize, upload
from shared.manifest import MANIFEST_NAME
from worker.housekeeping import (
    CACHE_GRACE_S, IN_USE_LOCK, TEMP_GRACE_S, UNMARKED_WORK_DIR_S, Housekeeper, hold_work_dir, sweep,
)

HOLDER = """
import sys, time
from pathlib import Path
from worker.housekeeping import hold_work_dir
with hold_work_dir(Path(sys.argv[1])) as path:
    (path / "state.json").write_text("{}")
    print("held", flush=True)
    time.sleep(600)
"""


def age(path: Path, seconds: float) -> None:
    """Make `path` look untouched for `seconds`."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def holder(work_dir: Path) -> subprocess.Popen:
    """Another worker process on this host with a job running in `work_dir`."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


# --- temp files ---


def test_stale_temp_files_go_and_fresh_ones_stay(tmp_path: Path) -> None:
    stale = [
        write(tmp_path / "images" / ".tmp-a.npy", 10),
        write(tmp_path / "datasets" / "0123" / "train" / "a" / ".tmp-b", 10),
        write(tmp_path / "images" / "features" / "k" / ".tmp-c-features.npy", 10),
    ]
    for path in stale:
        age(path, TEMP_GRACE_S + 5)
    fresh = write(tmp_path / "images" / ".tmp-d.npy", 10)  # a live writer keeps touching it
    kept = write(tmp_path / "images" / "images-x.npy", 10)
    age(kept, TEMP_GRACE_S + 5)
    report = sweep(tmp_path)
    assert report.temp_files == 3 and not any(path.exists() for path in stale)
    assert fresh.exists() and kept.exists()


# --- work dirs ---


def test_a_work_dir_left_by_a_killed_worker_goes_and_a_held_one_stays(tmp_path: Path) -> None:
    work = tmp_path / "work"
    killed, running = holder(work / "job-a-1"), holder(work / "job-b-1")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        for path in (work / "job-a-1", work / "job-b-1"):
            age(path, TEMP_GRACE_S + 5)
        report = sweep(tmp_path)
        assert report.work_dirs == 1
        assert not (work / "job-a-1").exists()
        assert (work / "job-b-1" / "state.json").exists()  # another live worker's job: untouched
    finally:
        running.kill()
        running.wait()
    age(work / "job-b-1", TEMP_GRACE_S + 5)
    assert sweep(tmp_path).work_dirs == 1 and not (work / "job-b-1").exists()  # its holder is gone now


def test_a_new_work_dir_is_left_alone_until_it_is_older_than_the_grace(tmp_path: Path) -> None:
    path = tmp_path / "work" / "job-a-1"
    with hold_work_dir(path):
        pass
    assert (path / IN_USE_LOCK).exists()
    assert sweep(tmp_path).work_dirs == 0 and path.exists()  # maybe between its mkdir and its lock
    assert sweep(tmp_path, now=time.time() + TEMP_GRACE_S + 5).work_dirs == 1 and not path.exists()


def test_a_work_dir_without_a_lock_goes_only_once_nothing_changed_for_a_day(tmp_path: Path) -> None:
    path = tmp_path / "work" / "job-a-1"
    state = write(path / "state" / "state.json", 10)
    age(path, UNMARKED_WORK_DIR_S + 5)
    age(path / "state", UNMARKED_WORK_DIR_S + 5)
    assert sweep(tmp_path).work_dirs == 0  # its job wrote a file recently: maybe still running
    age(state, UNMARKED_WORK_DIR_S + 5)
    assert sweep(tmp_path).work_dirs == 1 and not path.exists()


# --- the cache bound ---


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    store = LocalArtifactStore(tmp_path / "store")
    for seed in (1, 2):
        source = synthesize(tmp_path / f"src{seed}", classes=2, per_class=4, size=16, seed=seed)
        prepare(source, tmp_path / f"prepared{seed}")
        upload(tmp_path / f"prepared{seed}", store, f"datasets/d{seed}")
    return store


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_the_bound_evicts_least_recently_used_first_and_keeps_recent_ones(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    old_dataset = sync(store, "datasets/d1", cache / "datasets").local_dir
    new_dataset = sync(store, "datasets/d2", cache / "datasets").local_dir
    images = write(cache / "images" / "images-abc-train-32.npy", 50_000)
    features = write(cache / "images" / "features" / "key1" / "features-t.npy", 30_000)
    for path, hours in ((images, 5), (features.parent, 4), (old_dataset, 3), (new_dataset, 2)):
        age(path, hours * 3600)
    keep = tree_bytes(old_dataset) + tree_bytes(new_dataset)
    report = sweep(cache, max_bytes=keep)
    assert (report.evicted, report.evicted_bytes, report.cache_bytes) == (2, 80_000, keep)
    assert not images.exists() and not features.parent.exists() and old_dataset.exists()
    report = sweep(cache, max_bytes=keep - 1)  # one byte over: the older dataset goes next
    assert report.evicted == 1 and not old_dataset.exists() and (new_dataset / MANIFEST_NAME).exists()


def test_entries_used_within_the_grace_or_locked_are_never_evicted(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    recent = write(cache / "images" / "images-recent.npy", 1000)  # a job may be decoding from it
    dataset = sync(store, "datasets/d1", cache / "datasets").local_dir
    age(dataset, CACHE_GRACE_S + 5)
    with open(dataset.with_name(f"{dataset.name}.lock"), "a") as lock:  # a sync is running
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = sweep(cache, max_bytes=0)
    assert report.evicted == 0 and recent.exists() and (dataset / MANIFEST_NAME).exists()
    assert sweep(cache, max_bytes=0).evicted == 1 and not dataset.exists()  # the sync ended


def test_files_shared_by_dataset_versions_are_counted_once(store: LocalArtifactStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "datasets"
    first = sync(store, "datasets/d1", cache).local_dir
    twin = first.with_name("f" * 16)  # a second version sharing every image (hard links, as sync makes them)
    for path in first.rglob("*.png"):
        (twin / path.relative_to(first)).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, twin / path.relative_to(first))
    age(first, CACHE_GRACE_S + 10)
    age(twin, CACHE_GRACE_S + 5)
    report = sweep(tmp_path / "cache", max_bytes=10**9)
    assert report.cache_bytes == tree_bytes(first) and report.evicted == 0
    pngs, first_bytes = sum(p.stat().st_size for p in first.rglob("*.png")), tree_bytes(first)
    report = sweep(tmp_path / "cache", max_bytes=pngs)  # the older goes, but frees only its own files
    assert (report.evicted, report.evicted_bytes, report.cache_bytes) == (1, first_bytes - pngs, pngs)
    assert not first.exists() and sum(p.stat().st_size for p in twin.rglob("*.png")) == pngs


def test_a_sync_touches_its_dataset(store: LocalArtifactStore, tmp_path: Path) -> None:
    dataset = sync(store, "datasets/d1", tmp_path / "cache").local_dir
    age(dataset, CACHE_GRACE_S + 5)
    sync(store, "datasets/d1", tmp_path / "cache")
    assert dataset.stat().st_mtime > time.time() - 60


def test_the_decoded_image_cache_is_touched_on_use(tiny_dataset: Path, tmp_path: Path) -> None:
    from worker.training import data

    manifest = data.load_manifest(tiny_dataset)
    first = data.load_images(tiny_dataset, manifest, "train", 16, tmp_path / "images")
    [cached] = (tmp_path / "images").glob("images-*.npy")
    age(cached, CACHE_GRACE_S + 5)
    again = data.load_images(tiny_dataset, manifest, "train", 16, tmp_path / "images")
    assert np.array_equal(first, again) and cached.stat().st_mtime > time.time() - 60
    assert not list((tmp_path / "images").glob(".tmp-*"))


# --- the worker's use of it ---


def test_housekeeping_that_fails_is_one_log_line_and_never_stops_the_worker(tmp_path: Path, caplog) -> None:
    cache = write(tmp_path / "cache", 1)  # a file where the cache folder should be
    assert Housekeeper(cache, 100).sweep() is None
    [line] = [r for r in caplog.records if "housekeeping failed" in r.getMessage()]
    assert "NotADirectoryError" in line.getMessage()


def test_sweeps_between_jobs_are_spaced_by_the_interval(tmp_path: Path) -> None:
    keeper = Housekeeper(tmp_path, None, interval_s=3600)
    assert keeper.sweep_if_due() is not None
    assert keeper.sweep_if_due() is None


def test_worker_run_cleans_what_a_killed_worker_left_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cache = home / "cache"
    left = [write(cache / "images" / ".tmp-x.npy", 10), write(cache / "work" / "job-a-3" / IN_USE_LOCK, 0)]
    for path in (left[0], left[1].parent):
        age(path, TEMP_GRACE_S + 5)
    env = {**os.environ, "SPOTSWEEP_HOME": str(home), "SPOTSWEEP_BACKEND": "local", "SPOTSWEEP_POLL_WAIT_S": "0"}
    result = subprocess.run([sys.executable, "-m", "worker", "run", "--until-empty"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not left[0].exists() and not left[1].parent.exists()
    assert "housekeeping: removed 1 temp files, 1 work dirs" in result.stderr
