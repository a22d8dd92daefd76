"""A dataset sync hears stop requests: between files, and while it waits for another sync's
lock. It raises StopRequestedError with the caller's reason, and what it leaves behind is
resumed by the next sync. Real LocalArtifactStore on tmp_path, real flock."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

import pytest

from shared.backends.local import LocalArtifactStore
from shared.datasets import load_manifest, prepare, resolve_dataset, sync, synthesize, upload, verify
from shared.errors import StopRequestedError
from shared.manifest import MANIFEST_NAME

PREFIX = "datasets/flowers"
FILES = 18


class StopAfter:
    """A `should_stop` that answers `reason` from its `calls`-th call on, and counts its calls."""

    def __init__(self, calls: int, reason: str = "preempted") -> None:
        self.calls_left, self.reason, self.calls = calls, reason, 0

    def __call__(self) -> str | None:
        self.calls += 1
        self.calls_left -= 1
        return self.reason if self.calls_left < 0 else None


class CountingStore(LocalArtifactStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets = 0

    def get_file(self, key: str, local_path: Path) -> None:
        self.gets += 1
        super().get_file(key, local_path)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    source = synthesize(tmp_path / "src", classes=3, per_class=6, size=16, seed=2)
    prepare(source, tmp_path / "prepared")
    store = CountingStore(tmp_path / "store")
    upload(tmp_path / "prepared", store, PREFIX)
    return store


def test_a_stop_between_files_ends_the_sync_and_the_next_sync_resumes(store: CountingStore, tmp_path: Path) -> None:
    stop = StopAfter(6)  # the check before the manifest, then five files
    with pytest.raises(StopRequestedError) as raised:
        sync(store, PREFIX, tmp_path / "cache", workers=1, should_stop=stop)
    assert raised.value.reason == "preempted" and store.gets == 5
    local_dir = tmp_path / "cache" / load_manifest(tmp_path / "prepared").checksum[:16]
    assert not (local_dir / MANIFEST_NAME).exists()  # not a complete dataset
    report = sync(store, PREFIX, tmp_path / "cache", should_stop=lambda: None)
    assert (report.downloaded, report.skipped) == (FILES - 5, 5)
    verify(report.local_dir)


def test_a_stop_ends_a_parallel_sync_before_every_file_is_fetched(store: CountingStore, tmp_path: Path) -> None:
    with pytest.raises(StopRequestedError):
        sync(store, PREFIX, tmp_path / "cache", workers=4, should_stop=StopAfter(3))
    assert store.gets < FILES


def test_a_stop_is_heard_while_waiting_for_another_syncs_lock(store: CountingStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    name = load_manifest(tmp_path / "prepared").checksum[:16]
    with open(cache / f"{name}.lock", "a") as held:  # another process is syncing this dataset
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(StopRequestedError):
            sync(store, PREFIX, cache, should_stop=StopAfter(4, "cancelled"))
        waited_s = time.monotonic() - started
    assert waited_s < 5 and store.gets == 0


def test_resolve_dataset_passes_the_stop_to_the_sync(store: CountingStore, tmp_path: Path) -> None:
    with pytest.raises(StopRequestedError, match="stop requested: cancelled"):
        resolve_dataset(f"artifacts:{PREFIX}", store, tmp_path / "cache", should_stop=lambda: "cancelled")
    assert store.gets == 0
