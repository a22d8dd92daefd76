"""Housekeeping of a worker's local cache: what killed workers left behind, and a bound on the
caches.

The cache (`WorkerSettings.resolved_cache_dir`, the EBS data volume on AWS):

    datasets/<checksum16>/     synced datasets; <checksum16>.lock is held while one syncs
    images/images-*.npy        decoded-image caches (worker.training.data)
    images/features/<key>/     this host's copies of feature-cache entries (worker.training.features)
    work/<job>-<attempt>/      a job's scratch; its .in-use.lock is held while the job runs
    .../.tmp-*                 files being written, renamed into place when complete

A sweep (at worker start, and between jobs when due) removes:
1. `.tmp-*` files untouched for TEMP_GRACE_S: a writer killed before its rename left them (live
   writers keep touching theirs).
2. Work dirs nobody holds: `hold_work_dir` takes an flock that the kernel releases when the
   holder dies, so a free lock is a dir left by a killed worker, while one held by another
   worker process on this host survives. A dir younger than TEMP_GRACE_S is left alone (it may
   be between its creation and its lock); one without a lock file (an older worker's) only
   once nothing in it changed for UNMARKED_WORK_DIR_S.
3. With `max_bytes`: cache entries (a dataset, a decoded-image file, a feature entry) until the
   caches fit, least recently used first. Their users touch them on every use (mtime = last
   use). An entry used within `grace_s` is never removed, nor a dataset whose sync lock is held
   (it is removed under that lock, so no sync runs in a half-removed directory). A job that
   already has an evicted file open or memory-mapped keeps reading it (Linux frees the data at
   the last close); its space comes back when the job ends. Hard-linked files (dataset
   versions share them) are counted once, and an entry frees only the files no other entry
   links to.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shared.manifest import MANIFEST_NAME

log = logging.getLogger("spotsweep.worker")

DATASETS, IMAGES, FEATURES, WORK = "datasets", "images", "images/features", "work"
IN_USE_LOCK = ".in-use.lock"
TEMP_PREFIX = ".tmp-"
TEMP_GRACE_S = 600.0  # a temp file this long untouched has no live writer
UNMARKED_WORK_DIR_S = 24 * 3600.0  # longer than any attempt runs without writing (handoff at 11.5 h)
CACHE_GRACE_S = 3600.0  # an entry used this recently stays, bound or not (a job may be decoding it)
SWEEP_INTERVAL_S = 600.0  # between jobs, at most one sweep this often (a sweep stats every cached file)

Inode = tuple[int, int]  # (device, inode)


@dataclass(frozen=True)
class SweepReport:
    temp_files: int = 0  # stale .tmp-* files removed
    work_dirs: int = 0  # unused work dirs removed
    evicted: int = 0  # cache entries removed to fit the bound
    evicted_bytes: int = 0
    cache_bytes: int | None = None  # the caches' size after the sweep (None: no bound, not measured)


@contextmanager
def hold_work_dir(path: Path) -> Iterator[Path]:
    """Create the work dir `path` and hold its in-use lock until the block ends: meanwhile no
    sweep (in any process on this host) removes it; once it is let go, or its holder dies, the
    next sweep does."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / IN_USE_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def touch(path: Path) -> None:
    """Mark a cache entry used now (its mtime): the bound evicts the least recently used first."""
    try:
        os.utime(path)
    except FileNotFoundError:  # evicted meanwhile: whoever has it open or mapped still reads it
        pass


def sweep(
    cache_dir: Path, max_bytes: int | None = None, now: float | None = None, grace_s: float = CACHE_GRACE_S
) -> SweepReport:
    """One pass of housekeeping over `cache_dir` (the module docstring); `now` in epoch seconds."""
    cache_dir, now = Path(cache_dir), time.time() if now is None else now
    temps = remove_stale_temp_files(cache_dir, now)
    work_dirs = remove_unused_work_dirs(cache_dir / WORK, now)
    if max_bytes is None:
        return SweepReport(temps, work_dirs)
    evicted, freed, size = bound_caches(cache_dir, max_bytes, now, grace_s)
    return SweepReport(temps, work_dirs, evicted, freed, size)


# --- temp files and work dirs ---


def remove_stale_temp_files(cache_dir: Path, now: float) -> int:
    """Remove `.tmp-*` files untouched for TEMP_GRACE_S anywhere in the cache but work dirs
    (removed whole); how many."""
    removed = 0
    for root, dirs, files in os.walk(cache_dir):
        if Path(root) == cache_dir:
            dirs[:] = [name for name in dirs if name != WORK]
        for name in files:
            if name.startswith(TEMP_PREFIX) and _unlink_if_older(Path(root) / name, now - TEMP_GRACE_S):
                removed += 1
    return removed


def _unlink_if_older(path: Path, cutoff: float) -> bool:
    try:
        if path.stat().st_mtime >= cutoff:
            return False
        path.unlink()
    except FileNotFoundError:  # renamed into place or removed by another sweep meanwhile
        return False
    return True


def remove_unused_work_dirs(work_root: Path, now: float) -> int:
    """Remove the work dirs no live process holds (see `hold_work_dir`); how many."""
    if not work_root.is_dir():
        return 0
    removed = 0
    for path in work_root.iterdir():
        try:
            if path.is_dir() and not path.is_symlink() and _remove_if_unused(path, now):
                removed += 1
        except OSError as exc:  # gone meanwhile (another sweep), or unreadable: leave it, carry on
            log.debug("work dir %s left: %s", path, exc)
    return removed


def _remove_if_unused(path: Path, now: float) -> bool:
    lock = path / IN_USE_LOCK
    if not lock.exists():
        if _newest_mtime(path) >= now - UNMARKED_WORK_DIR_S:
            return False
        shutil.rmtree(path)
        return True
    if path.stat().st_mtime >= now - TEMP_GRACE_S:
        return False  # maybe between hold_work_dir's mkdir and its lock
    with _lock_if_free(lock) as free:
        if free:
            shutil.rmtree(path)
        return free


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for root, _, files in os.walk(path):
        for name in [".", *files]:
            try:
                newest = max(newest, (Path(root) / name).stat().st_mtime)
            except FileNotFoundError:
                continue
    return newest


@contextmanager
def _lock_if_free(lock: Path) -> Iterator[bool]:
    """Hold `lock` for the block if no one else does (yield True), else yield False at once."""
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the cache bound ---


@dataclass
class CacheEntry:
    """One evictable unit: a dataset dir, a decoded-image file or a feature entry dir."""

    path: Path
    last_used: float  # mtime, touched by its users on every use
    lock: Path | None = None  # held by whoever writes it (a dataset's sync lock)
    sizes: dict[Inode, int] = field(default_factory=dict)  # every file in it, by inode
    private_bytes: int = 0  # what removing it frees: files no other entry links to


def cache_entries(cache_dir: Path) -> list[CacheEntry]:
    """Every evictable entry of the caches, measured."""
    entries = [
        CacheEntry(path, 0.0, path.with_name(f"{path.name}.lock"))
        for path in _children(cache_dir / DATASETS) if path.is_dir()
    ]
    entries += [CacheEntry(path, 0.0) for path in _children(cache_dir / IMAGES) if _is_image_cache(path)]
    entries += [CacheEntry(path, 0.0) for path in _children(cache_dir / FEATURES) if path.is_dir()]
    return [entry for entry in entries if _measure(entry)]


def _children(folder: Path) -> list[Path]:
    try:
        return [path for path in folder.iterdir() if not path.is_symlink()]
    except FileNotFoundError:
        return []


def _is_image_cache(path: Path) -> bool:
    return path.is_file() and path.name.startswith("images-") and path.suffix == ".npy"


def _measure(entry: CacheEntry) -> bool:
    """Fill in `entry`'s last use and sizes; False when it vanished meanwhile."""
    try:
        entry.last_used = entry.path.stat().st_mtime
    except FileNotFoundError:
        return False
    links: Counter[Inode] = Counter()
    nlinks: dict[Inode, int] = {}
    for path in _files(entry.path):
        try:
            stat = path.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        inode = (stat.st_dev, stat.st_ino)
        entry.sizes[inode], nlinks[inode] = stat.st_size, stat.st_nlink
        links[inode] += 1
    entry.private_bytes = sum(size for inode, size in entry.sizes.items() if links[inode] >= nlinks[inode])
    return True


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for root, _, files in os.walk(path):
        for name in files:
            yield Path(root) / name


def bound_caches(cache_dir: Path, max_bytes: int, now: float, grace_s: float = CACHE_GRACE_S) -> tuple[int, int, int]:
    """Evict least recently used entries until the caches hold at most `max_bytes`:
    (entries evicted, bytes freed, bytes left). Entries used within `grace_s`, or locked, stay."""
    entries = sorted(cache_entries(cache_dir), key=lambda entry: entry.last_used)
    size = sum({inode: size for entry in entries for inode, size in entry.sizes.items()}.values())  # links once
    evicted = freed = 0
    for entry in entries:
        if size <= max_bytes or entry.last_used >= now - grace_s:
            break  # the rest were used more recently still
        if _evict(entry, now - grace_s):
            evicted, freed, size = evicted + 1, freed + entry.private_bytes, size - entry.private_bytes
    return evicted, freed, size


def _evict(entry: CacheEntry, cutoff: float) -> bool:
    """Remove `entry` unless it is locked or was used since it was measured."""
    if entry.lock is None:
        return _remove_entry(entry, cutoff)
    try:
        with _lock_if_free(entry.lock) as free:
            return free and _remove_entry(entry, cutoff)
    except OSError:  # the dataset folder went meanwhile
        return False


def _remove_entry(entry: CacheEntry, cutoff: float) -> bool:
    try:
        if entry.path.stat().st_mtime >= cutoff:
            return False  # touched between the measure and now: in use again
        if entry.path.is_dir():
            (entry.path / MANIFEST_NAME).unlink(missing_ok=True)  # first: no longer a complete dataset
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink()
    except FileNotFoundError:
        return False
    log.info("cache: evicted %s (%d bytes)", entry.path, entry.private_bytes, extra={"event": "cache_evicted"})
    return True


# --- when the worker calls it ---


class Housekeeper:
    """What the worker calls: a sweep at start (`sweep`) and between jobs (`sweep_if_due`, at
    most every `interval_s`). Never raises: housekeeping that fails is one log line, and the
    worker carries on with a fuller disk."""

    def __init__(self, cache_dir: Path, max_bytes: int | None, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.cache_dir, self.max_bytes, self.interval_s = Path(cache_dir), max_bytes, interval_s
        self.swept_at: float | None = None  # time.monotonic() of the last sweep

    def sweep(self) -> SweepReport | None:
        self.swept_at = time.monotonic()
        try:
            report = sweep(self.cache_dir, self.max_bytes)
        except Exception as exc:  # best effort: a cache we cannot clean must not stop the worker
            log.warning("housekeeping failed: %s: %s", type(exc).__name__, exc, extra={"event": "housekeeping_failed"})
            return None
        if report.temp_files or report.work_dirs or report.evicted:
            log.info(
                "housekeeping: removed %d temp files, %d work dirs, %d cache entries (%d bytes)",
                report.temp_files, report.work_dirs, report.evicted, report.evicted_bytes,
                extra={"event": "housekeeping"},
            )
        return report

    def sweep_if_due(self) -> SweepReport | None:
        if self.swept_at is not None and time.monotonic() - self.swept_at < self.interval_s:
            return None
        return self.sweep()
