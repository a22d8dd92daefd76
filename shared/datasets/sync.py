"""Moving prepared datasets between a local directory and the artifact store.

Remote layout (an artifact-store prefix, e.g. `datasets/flowers`):

    <prefix>/manifest.json      uploaded last: its presence means the upload finished
    <prefix>/<path>             every file the manifest lists

Local cache layout (a worker's `cache_dir`, the EBS data volume on AWS):

    <cache_dir>/<checksum[:16]>/            one directory per dataset *content* (manifest checksum)
        manifest.json                       written last: the directory is complete
        .verified.json                      {path: [size, mtime_ns, sha256]}: files already hashed
        train/..., test/...
    <cache_dir>/<checksum[:16]>.lock        flock held while one process syncs that directory

Directories are content-addressed, so a new version of a dataset never changes files under a job
still training on the old one; files the versions share are hard-linked from the older directory
instead of downloaded, so re-syncing a changed dataset still moves only the changed bytes. Each
sync touches its directory (mtime = last use): the worker's cache bound evicts the least
recently used directories whose lock is free (`worker.housekeeping`).

A sync polls its caller's `should_stop` (a callable returning a reason or None) while it waits
for the lock and between files, and raises `StopRequestedError(reason)` on a reason. A dataset
re-uploaded under the same prefix while a sync runs (an upload takes the old manifest down
first, then replaces objects) is a RetryableError, not a permanent one: a file missing or wrong
is PermanentError only when the store's manifest is still the one the sync follows.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from shared.datasets._files import Progress, link_or_copy, report, sha256_file, write_atomic
from shared.datasets.prepare import check_contained, load_manifest, parse_manifest, write_manifest
from shared.errors import (
    BadInputError, NotFoundError, PermanentError, RetryableError, SpotsweepError, StopRequestedError,
)
from shared.manifest import MANIFEST_NAME, Manifest, ManifestFile
from shared.paths import check_key, safe_join
from shared.ports import ArtifactStore

STAMP_NAME = ".verified.json"
DOWNLOAD_TRIES = 2  # a second checksum mismatch is not bad luck: fail the job
LOCK_POLL_S = 0.2  # how often a sync waiting for another one's lock asks whether to stop

ShouldStop = Callable[[], object]  # a reason to stop (e.g. the worker's StopReason), or None


@dataclass(frozen=True)
class UploadReport:
    uploaded: int  # files sent
    skipped: int  # files already in the store with the same checksum and size
    bytes_uploaded: int
    seconds: float


@dataclass(frozen=True)
class SyncReport:
    downloaded: int  # files fetched from the store
    skipped: int  # files already present and verified in local_dir
    bytes_downloaded: int
    seconds: float
    local_dir: Path
    reused: int = 0  # files hard-linked from another cached version of the dataset


# --- upload ---


def upload(
    dataset_dir: Path, artifacts: ArtifactStore, prefix: str, workers: int = 8, progress: Progress | None = None
) -> UploadReport:
    """Upload a prepared dataset to `prefix/`, skipping files the store already holds, manifest last."""
    started = time.monotonic()
    dataset_dir, prefix = Path(dataset_dir), clean_prefix(prefix)
    manifest = load_manifest(dataset_dir)
    check_contained(dataset_dir, manifest)  # before anything is sent: a link never leaves the machine
    remote_sha256 = _remote_checksums(artifacts, prefix)
    remote_sizes = {info.key: info.size for info in artifacts.list(f"{prefix}/")}
    todo = [
        file for file in manifest.files
        if not (remote_sha256.get(file.path) == file.sha256 and remote_sizes.get(f"{prefix}/{file.path}") == file.size)
    ]
    if any(remote_sha256.get(file.path, file.sha256) != file.sha256 for file in todo):
        # Objects the old manifest vouches for are about to change: take it down first, so that a
        # worker syncing meanwhile finds no dataset rather than a mix of two versions.
        artifacts.delete(f"{prefix}/{MANIFEST_NAME}")
    skipped, total = len(manifest.files) - len(todo), len(manifest.files)
    send = partial(_send, dataset_dir, artifacts, prefix)
    sent = run_parallel(send, todo, workers, lambda done: report(progress, skipped + done, total))
    artifacts.put_bytes(f"{prefix}/{MANIFEST_NAME}", manifest.to_json().encode())  # last: the upload is complete
    return UploadReport(len(todo), skipped, sum(sent), time.monotonic() - started)


def _send(dataset_dir: Path, artifacts: ArtifactStore, prefix: str, file: ManifestFile) -> int:
    local = safe_join(dataset_dir, file.path)
    if sha256_file(local) != file.sha256:  # never publish bytes the manifest does not vouch for
        raise BadInputError(f"dataset {dataset_dir}: {file.path} changed since it was prepared (sha256 differs)")
    artifacts.put_file(local, f"{prefix}/{file.path}")
    return file.size


def _remote_checksums(artifacts: ArtifactStore, prefix: str) -> dict[str, str]:
    """{path: sha256} from the last finished upload's manifest; empty when absent or unreadable
    (then everything is uploaded again: the safe direction)."""
    try:
        remote = parse_manifest(artifacts.get_bytes(f"{prefix}/{MANIFEST_NAME}"), prefix)
    except (NotFoundError, BadInputError):
        return {}
    return {file.path: file.sha256 for file in remote.files}


# --- sync ---


def sync(
    artifacts: ArtifactStore, prefix: str, cache_dir: Path, workers: int = 8, progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> SyncReport:
    """Bring `prefix`'s dataset into cache_dir/<checksum[:16]>/, downloading only what is missing
    or wrong, verifying every download. `workers=1` is the sequential mode.

    Raises StopRequestedError when `should_stop` returns a reason (polled between files);
    RetryableError when the dataset is being uploaded again meanwhile; NotFoundError or
    PermanentError when it is absent, or a file is missing or wrong under a stable manifest."""
    started = time.monotonic()
    prefix, cache_dir = clean_prefix(prefix), Path(cache_dir)
    check_stop(should_stop)
    manifest = _manifest_to_sync(artifacts, prefix)
    local_dir = cache_dir / manifest.checksum[:16]
    targets = {file.path: safe_join(local_dir, file.path) for file in manifest.files}  # all checked before any write
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f"{local_dir.name}.lock", should_stop):  # one syncer per dataset per host
        _remove_temp_files(local_dir)
        stamps = _read_stamps(local_dir)
        todo = [file for file in manifest.files if not _stamped(file, targets[file.path], stamps)]
        skipped, total = len(manifest.files) - len(todo), len(manifest.files)
        fetch = _Fetcher(artifacts, prefix, cache_dir, local_dir, targets, should_stop) if todo else None
        try:
            outcomes = run_parallel(fetch, todo, workers, lambda done: report(progress, skipped + done, total))
        except (NotFoundError, _ChecksumMismatch) as exc:
            raise _unless_changed(exc, artifacts, prefix, manifest) from None
        stamps.update({outcome.path: outcome.stamp for outcome in outcomes})
        write_atomic(local_dir / STAMP_NAME, json.dumps(stamps, sort_keys=True).encode())
        write_manifest(local_dir, manifest)  # last: local_dir is a complete dataset
        os.utime(local_dir)  # last use, for the cache bound's least-recently-used eviction
    return _sync_report(outcomes, skipped, time.monotonic() - started, local_dir)


def check_stop(should_stop: ShouldStop | None) -> None:
    """Raise StopRequestedError if `should_stop` returns a reason."""
    reason = should_stop() if should_stop is not None else None
    if reason is not None:
        raise StopRequestedError(reason)


def _manifest_to_sync(artifacts: ArtifactStore, prefix: str) -> Manifest:
    """The remote manifest; a prefix that holds objects but no manifest is an upload in progress
    (upload puts the manifest last, and takes the old one down first): RetryableError."""
    try:
        return fetch_manifest(artifacts, prefix)
    except NotFoundError as exc:
        if next(iter(artifacts.list(f"{prefix}/")), None) is None:
            raise  # nothing there: not uploaded (or deleted), for good
        raise RetryableError(
            f"dataset {artifacts.uri(prefix)}: no {MANIFEST_NAME} yet, but objects under it: an upload "
            "in progress (or abandoned); retrying"
        ) from exc


def _unless_changed(exc: PermanentError, artifacts: ArtifactStore, prefix: str, manifest: Manifest) -> SpotsweepError:
    """What a missing or wrong file means: the dataset changed during the sync (RetryableError)
    if the store's manifest is no longer the one the sync follows, else `exc` (for good)."""
    if not _manifest_moved_on(artifacts, prefix, manifest):
        return exc
    return RetryableError(f"dataset {artifacts.uri(prefix)} changed during sync ({exc}); retrying")


def _manifest_moved_on(artifacts: ArtifactStore, prefix: str, manifest: Manifest) -> bool:
    try:
        current = parse_manifest(artifacts.get_bytes(f"{prefix}/{MANIFEST_NAME}"), prefix)
    except (NotFoundError, BadInputError):  # taken down (an upload in progress), or replaced by a bad one
        return True
    return current.checksum != manifest.checksum


def _sync_report(outcomes: list[_Outcome], stamped: int, seconds: float, local_dir: Path) -> SyncReport:
    def count(kind: str) -> int:
        return sum(outcome.kind == kind for outcome in outcomes)

    return SyncReport(
        downloaded=count("downloaded"),
        skipped=stamped + count("skipped"),
        bytes_downloaded=sum(outcome.size for outcome in outcomes if outcome.kind == "downloaded"),
        seconds=seconds,
        local_dir=local_dir,
        reused=count("reused"),
    )


def fetch_manifest(artifacts: ArtifactStore, prefix: str) -> Manifest:
    """The remote manifest, validated: any unsafe key (`..`, absolute) is refused here."""
    try:
        data = artifacts.get_bytes(f"{prefix}/{MANIFEST_NAME}")
    except NotFoundError:
        raise NotFoundError(
            f"dataset {artifacts.uri(prefix)}: no {MANIFEST_NAME} (not uploaded, or an upload is in progress)"
        ) from None
    return parse_manifest(data, artifacts.uri(f"{prefix}/{MANIFEST_NAME}"))


class _ChecksumMismatch(PermanentError):
    """A file's bytes never matched the manifest (two downloads)."""


@dataclass(frozen=True)
class _Outcome:
    path: str
    kind: str  # "downloaded" | "skipped" (present, hashed, right) | "reused" (linked from another version)
    size: int
    stamp: list[Any]  # [size, mtime_ns, sha256]


class _Fetcher:
    """Makes one file of local_dir right: keep it if its bytes match, else link it from another
    cached version with the same checksum, else download it (verified, retried once). Asks
    `should_stop` first: after a stop, each thread finishes at most the file it is on."""

    def __init__(
        self, artifacts: ArtifactStore, prefix: str, cache_dir: Path, local_dir: Path, targets: dict[str, Path],
        should_stop: ShouldStop | None = None,
    ) -> None:
        self.artifacts, self.prefix, self.targets, self.should_stop = artifacts, prefix, targets, should_stop
        self.elsewhere = _verified_elsewhere(cache_dir, local_dir)

    def __call__(self, file: ManifestFile) -> _Outcome:
        check_stop(self.should_stop)
        target = self.targets[file.path]
        if _matches(target, file):  # e.g. left by a sync that died before writing its stamps
            return _Outcome(file.path, "skipped", file.size, _stamp(target, file))
        if self._reuse(file, target):
            return _Outcome(file.path, "reused", file.size, _stamp(target, file))
        for _ in range(DOWNLOAD_TRIES):
            if _replace_with(target, lambda temp: self._get(file, temp), file):
                return _Outcome(file.path, "downloaded", file.size, _stamp(target, file))
        raise _ChecksumMismatch(f"checksum mismatch for {file.path} after {DOWNLOAD_TRIES} downloads")

    def _reuse(self, file: ManifestFile, target: Path) -> bool:
        source = self.elsewhere.get(file.sha256)
        try:
            return source is not None and _replace_with(target, lambda temp: link_or_copy(source, temp), file)
        except OSError:  # the other version was removed meanwhile: download instead
            return False

    def _get(self, file: ManifestFile, temp: Path) -> None:
        try:
            self.artifacts.get_file(f"{self.prefix}/{file.path}", temp)
        except NotFoundError:
            raise NotFoundError(
                f"dataset {self.artifacts.uri(self.prefix)}: {file.path} is in the manifest but not in the store"
            ) from None


def _replace_with(target: Path, fill: Callable[[Path], None], file: ManifestFile) -> bool:
    """Fill a temp file beside `target`; move it into place only if its bytes match `file`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".tmp-{uuid.uuid4().hex}")
    try:
        fill(temp)
        if not _matches(temp, file):
            return False
        os.replace(temp, target)
        return True
    finally:
        temp.unlink(missing_ok=True)


def _matches(path: Path, file: ManifestFile) -> bool:
    try:
        return path.stat().st_size == file.size and sha256_file(path) == file.sha256
    except FileNotFoundError:
        return False


def _stamp(path: Path, file: ManifestFile) -> list[Any]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, file.sha256]


def _stamped(file: ManifestFile, target: Path, stamps: dict[str, list[Any]]) -> bool:
    """True when the file was verified before and has not been touched since (no rehash)."""
    try:
        stat = target.stat()
    except FileNotFoundError:
        return False
    return stamps.get(file.path) == [file.size, stat.st_mtime_ns, file.sha256] and stat.st_size == file.size


def _read_stamps(local_dir: Path) -> dict[str, list[Any]]:
    try:
        stamps = json.loads((local_dir / STAMP_NAME).read_text())
    except (FileNotFoundError, ValueError):
        return {}  # no stamps: files are hashed once and stamped again
    return stamps if isinstance(stamps, dict) else {}


def _verified_elsewhere(cache_dir: Path, local_dir: Path) -> dict[str, Path]:
    """{sha256: path} of untouched, verified files in the other cached datasets."""
    found: dict[str, Path] = {}
    for other in cache_dir.iterdir():
        if other == local_dir or not (other / MANIFEST_NAME).is_file():
            continue
        for path, stamp in _read_stamps(other).items():
            candidate = other / path
            try:
                stat = candidate.stat()
            except OSError:
                continue
            if not (isinstance(stamp, list) and len(stamp) == 3):
                continue
            if [stat.st_size, stat.st_mtime_ns] == stamp[:2] and candidate.resolve().is_relative_to(other.resolve()):
                found.setdefault(stamp[2], candidate)
    return found


def _remove_temp_files(local_dir: Path) -> None:
    """Temp files a killed sync left behind (we hold the lock: nobody else is writing here)."""
    if local_dir.is_dir():
        for temp in local_dir.rglob(".tmp-*"):
            temp.unlink(missing_ok=True)


@contextmanager
def _exclusive(lock_path: Path, should_stop: ShouldStop | None = None) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        _lock(handle, should_stop)  # released by the kernel too if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock(handle: Any, should_stop: ShouldStop | None) -> None:
    """Take the lock, asking `should_stop` every LOCK_POLL_S while another sync holds it."""
    if should_stop is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            check_stop(should_stop)
            time.sleep(LOCK_POLL_S)


def run_parallel(task: Callable[[Any], Any], items: list[Any], workers: int, on_done: Callable[[int], None]) -> list[Any]:
    """`task` over `items` on `workers` threads (inline for 1), results in completion order.
    The first failure cancels what has not started and is raised."""
    on_done(0)
    if workers <= 1 or len(items) <= 1:
        results = []
        for item in items:
            results.append(task(item))
            on_done(len(results))
        return results
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(task, item) for item in items]
        results = []
        try:
            for future in as_completed(futures):
                results.append(future.result())
                on_done(len(results))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


# --- dataset references ---


def clean_prefix(prefix: str) -> str:
    """`prefix` without surrounding slashes, checked like any key."""
    cleaned = prefix.strip("/")
    if not cleaned:
        raise BadInputError("dataset prefix must not be empty")
    return check_key(cleaned)


def is_store_location(dataset: str) -> bool:
    """Whether a study's `dataset` names an artifact-store prefix rather than a local directory."""
    return dataset.startswith(("s3://", "artifacts:"))


def store_prefix(location: str, artifacts: ArtifactStore) -> str:
    """The artifact-store key prefix of a dataset location (`artifacts:<prefix>`, a bare prefix, or
    `s3://bucket/<root>/<prefix>`), by the store's one parser `ArtifactStore.key_for`: another
    bucket, an s3:// location on the embedded backend, or a prefix outside the store's root is
    BadInputError. Trailing slashes are dropped (`s3://bucket/datasets/flowers/` is a prefix)."""
    stripped = location.rstrip("/")
    if stripped in ("", "artifacts:") or stripped.endswith("://"):
        raise BadInputError(f"dataset {location}: the dataset prefix must not be empty")
    return clean_prefix(artifacts.key_for(stripped))


def dataset_classes(dataset: str, artifacts: ArtifactStore) -> list[str]:
    """The class names (index = label) of a study's dataset, from its manifest alone (no image is
    fetched): the manifest under a store location, or in a prepared directory."""
    if is_store_location(dataset):
        return list(fetch_manifest(artifacts, store_prefix(dataset, artifacts)).classes)
    return list(load_manifest(Path(dataset).expanduser()).classes)


def resolve_dataset(
    dataset: str, artifacts: ArtifactStore, cache_dir: Path, workers: int = 8, progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """The local directory of a study's `dataset`: a prepared directory is used in place; an
    `s3://bucket/prefix` or `artifacts:<prefix>` is synced into `cache_dir` first (see `sync`
    for `should_stop` and what it raises)."""
    if is_store_location(dataset):
        return sync(artifacts, store_prefix(dataset, artifacts), cache_dir, workers, progress, should_stop).local_dir
    local = Path(dataset).expanduser()
    if (local / MANIFEST_NAME).is_file():
        load_manifest(local)  # a clear error now rather than a confusing one mid-training
        return local.resolve()
    raise BadInputError(
        f"dataset {dataset}: not found (expected a prepared dataset directory with {MANIFEST_NAME}, or s3://bucket/prefix)"
    )
