"""Upload and sync of prepared datasets through a real LocalArtifactStore on tmp_path.

Misbehaving stores are real subclasses of LocalArtifactStore (corrupting, slow, failing), not mocks.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from shared.backends.local import LocalArtifactStore
from shared.datasets import load_manifest, prepare, resolve_dataset, sync, synthesize, upload, verify
from shared.datasets.sync import STAMP_NAME
from shared.errors import BadInputError, NotFoundError, PermanentError, RetryableError
from shared.manifest import MANIFEST_NAME, Manifest

PREFIX = "datasets/flowers"


class RecordingStore(LocalArtifactStore):
    """Remembers the order of puts and counts gets."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []
        self.gets = 0

    def put_file(self, local_path: Path, key: str) -> str:
        self.puts.append(key)
        return super().put_file(local_path, key)

    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        self.puts.append(key)
        return super().put_bytes(key, data, if_absent)

    def get_file(self, key: str, local_path: Path) -> None:
        self.gets += 1
        super().get_file(key, local_path)


class CorruptingStore(LocalArtifactStore):
    """Delivers flipped bytes for `key` on its first `times` downloads (a bad disk, a bad proxy)."""

    def __init__(self, root: Path, key: str, times: int) -> None:
        super().__init__(root)
        self.key, self.times_left, self.downloads = key, times, 0

    def get_file(self, key: str, local_path: Path) -> None:
        super().get_file(key, local_path)
        if key == self.key:
            self.downloads += 1
            if self.times_left > 0:
                self.times_left -= 1
                data = bytearray(Path(local_path).read_bytes())
                data[len(data) // 2] ^= 0xFF
                Path(local_path).write_bytes(bytes(data))


class FailingStore(LocalArtifactStore):
    """The connection drops after `good` downloads."""

    def __init__(self, root: Path, good: int) -> None:
        super().__init__(root)
        self.good = good

    def get_file(self, key: str, local_path: Path) -> None:
        if self.good == 0:
            raise ConnectionError("connection reset")
        self.good -= 1
        super().get_file(key, local_path)


class SlowStore(LocalArtifactStore):
    """Each download takes a little while, so that two concurrent syncs really overlap."""

    def get_file(self, key: str, local_path: Path) -> None:
        time.sleep(0.01)
        super().get_file(key, local_path)


class InterruptedStore(LocalArtifactStore):
    """Runs `meanwhile()` once, just before the first download: someone else acting on the store
    (a re-upload) while a sync is under way."""

    def __init__(self, root: Path, meanwhile) -> None:
        super().__init__(root)
        self.meanwhile = meanwhile

    def get_file(self, key: str, local_path: Path) -> None:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        super().get_file(key, local_path)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    source = synthesize(tmp_path / "src", classes=3, per_class=6, size=16, seed=2)
    prepare(source, tmp_path / "prepared")
    return tmp_path / "prepared"


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(tmp_path / "store")


def _total_bytes(manifest: Manifest) -> int:
    return sum(f.size for f in manifest.files)


def _repaint(path: Path) -> None:
    """Give one source image new content (a new version of the dataset)."""
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)


def _changed_dataset(tmp_path: Path) -> tuple[Path, str]:
    """A new version of the dataset with one training image changed; returns (dir, changed path)."""
    manifest = load_manifest(tmp_path / "prepared")
    changed = manifest.split("train")[0]
    source = tmp_path / "src" / changed.label / changed.path.rsplit("/", 1)[1]
    source.unlink()  # break the hard link into the first prepared copy
    _repaint(source)
    prepare(tmp_path / "src", tmp_path / "prepared2")
    return tmp_path / "prepared2", changed.path


# --- upload ---


def test_upload_sends_every_file_then_the_manifest(dataset: Path, store: RecordingStore) -> None:
    manifest = load_manifest(dataset)
    progress: list[tuple[int, int]] = []
    report = upload(dataset, store, PREFIX, progress=lambda done, total: progress.append((done, total)))
    assert (report.uploaded, report.skipped, report.bytes_uploaded) == (18, 0, _total_bytes(manifest))
    assert store.puts[-1] == f"{PREFIX}/{MANIFEST_NAME}" and len(store.puts) == 19
    assert sorted(store.puts[:-1]) == sorted(f"{PREFIX}/{f.path}" for f in manifest.files)
    assert progress[-1] == (18, 18)
    assert Manifest.model_validate_json(store.get_bytes(f"{PREFIX}/{MANIFEST_NAME}")) == manifest


def test_a_second_upload_of_an_unchanged_dataset_sends_nothing(dataset: Path, store: RecordingStore) -> None:
    upload(dataset, store, PREFIX)
    store.puts.clear()
    report = upload(dataset, store, f"/{PREFIX}/")  # slashes around a prefix do not matter
    assert (report.uploaded, report.skipped, report.bytes_uploaded) == (0, 18, 0)
    assert store.puts == [f"{PREFIX}/{MANIFEST_NAME}"]


def test_upload_sends_only_changed_and_missing_objects(dataset: Path, store: RecordingStore, tmp_path: Path) -> None:
    upload(dataset, store, PREFIX)
    newer, changed_path = _changed_dataset(tmp_path)
    lost = load_manifest(newer).files[-1].path
    store.delete(f"{PREFIX}/{lost}")  # an object someone deleted by hand
    store.puts.clear()
    report = upload(newer, store, PREFIX)
    assert report.uploaded == 2 and report.skipped == 16
    assert sorted(store.puts[:-1]) == sorted([f"{PREFIX}/{changed_path}", f"{PREFIX}/{lost}"])


def test_upload_without_a_remote_manifest_sends_everything(dataset: Path, store: RecordingStore) -> None:
    upload(dataset, store, PREFIX)
    store.delete(f"{PREFIX}/{MANIFEST_NAME}")  # an upload that died before its manifest
    assert upload(dataset, store, PREFIX).uploaded == 18


def test_upload_refuses_a_file_changed_since_prepare(dataset: Path, store: RecordingStore) -> None:
    victim = dataset / load_manifest(dataset).files[3].path
    victim.unlink()
    _repaint(victim)
    with pytest.raises(BadInputError, match="changed since it was prepared"):
        upload(dataset, store, PREFIX)
    assert not store.exists(f"{PREFIX}/{MANIFEST_NAME}")


def test_upload_refuses_an_unprepared_directory(tmp_path: Path, store: RecordingStore) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(BadInputError, match="not a prepared dataset"):
        upload(tmp_path / "raw", store, PREFIX)


# --- sync ---


def test_sync_downloads_verifies_and_writes_the_manifest_last(dataset: Path, store: RecordingStore, tmp_path: Path) -> None:
    manifest = load_manifest(dataset)
    upload(dataset, store, PREFIX)
    report = sync(store, PREFIX, tmp_path / "cache")
    assert report.local_dir == tmp_path / "cache" / manifest.checksum[:16]
    assert (report.downloaded, report.skipped, report.bytes_downloaded) == (18, 0, _total_bytes(manifest))
    assert load_manifest(report.local_dir) == manifest
    verify(report.local_dir, manifest)
    assert not list(report.local_dir.rglob(".tmp-*"))


def test_a_second_sync_of_an_unchanged_dataset_downloads_nothing(
    dataset: Path, store: RecordingStore, tmp_path: Path
) -> None:
    upload(dataset, store, PREFIX)
    sync(store, PREFIX, tmp_path / "cache")
    store.gets = 0
    report = sync(store, PREFIX, tmp_path / "cache", workers=1)
    assert (report.downloaded, report.skipped, report.bytes_downloaded, store.gets) == (0, 18, 0, 0)


def test_sync_trusts_its_stamps_and_rehashes_only_touched_files(
    dataset: Path, store: RecordingStore, tmp_path: Path
) -> None:
    upload(dataset, store, PREFIX)
    local_dir = sync(store, PREFIX, tmp_path / "cache").local_dir
    files = load_manifest(local_dir).files
    touched = local_dir / files[0].path
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new mtime: rehashed, kept
    broken = local_dir / files[1].path
    broken.write_bytes(b"truncated")  # new size: downloaded again
    report = sync(store, PREFIX, tmp_path / "cache")
    assert (report.downloaded, report.skipped) == (1, 17)
    verify(local_dir)
    stamps = json.loads((local_dir / STAMP_NAME).read_text())
    assert stamps[files[0].path][1] == touched.stat().st_mtime_ns


def test_a_changed_remote_file_is_downloaded_and_the_rest_reused(
    dataset: Path, store: RecordingStore, tmp_path: Path
) -> None:
    upload(dataset, store, PREFIX)
    old_dir = sync(store, PREFIX, tmp_path / "cache").local_dir
    old_copy = {p: p.read_bytes() for p in old_dir.rglob("*.png")}
    newer, changed_path = _changed_dataset(tmp_path)
    upload(newer, store, PREFIX)
    report = sync(store, PREFIX, tmp_path / "cache")
    assert report.local_dir != old_dir  # a job still training on the old version keeps its files
    assert (report.downloaded, report.reused, report.bytes_downloaded) == (
        1, 17, (newer / changed_path).stat().st_size
    )
    verify(report.local_dir)
    assert {p: p.read_bytes() for p in old_dir.rglob("*.png")} == old_copy


def test_a_new_version_syncs_after_the_old_one_was_deleted(
    dataset: Path, store: RecordingStore, tmp_path: Path
) -> None:
    upload(dataset, store, PREFIX)
    old_dir = sync(store, PREFIX, tmp_path / "cache").local_dir
    newer, _ = _changed_dataset(tmp_path)
    upload(newer, store, PREFIX)
    for png in old_dir.rglob("*.png"):  # a cache cleaner removed the files, left the stamps
        png.unlink()
    report = sync(store, PREFIX, tmp_path / "cache")
    assert (report.downloaded, report.reused) == (18, 0)
    verify(report.local_dir)


def test_a_corrupted_download_is_fetched_again(dataset: Path, tmp_path: Path) -> None:
    upload(dataset, LocalArtifactStore(tmp_path / "store"), PREFIX)
    victim = load_manifest(dataset).files[4].path
    flaky = CorruptingStore(tmp_path / "store", f"{PREFIX}/{victim}", times=1)
    report = sync(flaky, PREFIX, tmp_path / "cache")
    assert flaky.downloads == 2 and report.downloaded == 18
    verify(report.local_dir)


@pytest.mark.parametrize("workers", [1, 4])
def test_a_second_checksum_mismatch_fails_for_good(dataset: Path, tmp_path: Path, workers: int) -> None:
    upload(dataset, LocalArtifactStore(tmp_path / "store"), PREFIX)
    victim = load_manifest(dataset).files[4].path
    broken = CorruptingStore(tmp_path / "store", f"{PREFIX}/{victim}", times=2)
    with pytest.raises(PermanentError, match=f"checksum mismatch for {victim} after 2 downloads"):
        sync(broken, PREFIX, tmp_path / "cache", workers=workers)
    local_dir = tmp_path / "cache" / load_manifest(dataset).checksum[:16]
    assert not (local_dir / victim).exists()  # a bad file never reaches its final path
    assert not (local_dir / MANIFEST_NAME).exists()  # and the directory is not a dataset
    assert not list(local_dir.rglob(".tmp-*"))


def test_a_missing_object_fails_for_good(dataset: Path, store: RecordingStore, tmp_path: Path) -> None:
    upload(dataset, store, PREFIX)
    lost = load_manifest(dataset).files[0].path
    store.delete(f"{PREFIX}/{lost}")
    with pytest.raises(NotFoundError, match=f"{lost} is in the manifest but not in the store"):
        sync(store, PREFIX, tmp_path / "cache")


def test_a_re_upload_during_sync_is_retryable_and_the_retry_gets_the_new_version(
    dataset: Path, tmp_path: Path
) -> None:
    plain = LocalArtifactStore(tmp_path / "store")
    upload(dataset, plain, PREFIX)
    newer, changed_path = _changed_dataset(tmp_path)
    moving = InterruptedStore(tmp_path / "store", lambda: upload(newer, plain, PREFIX))
    with pytest.raises(RetryableError, match="changed during sync .checksum mismatch for " + changed_path):
        sync(moving, PREFIX, tmp_path / "cache", workers=1)
    report = sync(plain, PREFIX, tmp_path / "cache")  # the job's next attempt
    assert load_manifest(report.local_dir) == load_manifest(newer)
    verify(report.local_dir)


def test_a_prefix_cleared_for_a_new_upload_during_sync_is_retryable(dataset: Path, tmp_path: Path) -> None:
    plain = LocalArtifactStore(tmp_path / "store")
    upload(dataset, plain, PREFIX)
    last = load_manifest(dataset).files[-1].path

    def clear_for_upload() -> None:  # the uploader took the manifest down and removed an object
        plain.delete(f"{PREFIX}/{MANIFEST_NAME}")
        plain.delete(f"{PREFIX}/{last}")

    with pytest.raises(RetryableError, match=f"changed during sync .*{last} is in the manifest but not in the store"):
        sync(InterruptedStore(tmp_path / "store", clear_for_upload), PREFIX, tmp_path / "cache", workers=1)


def test_a_sync_starting_mid_upload_is_retryable(dataset: Path, store: RecordingStore, tmp_path: Path) -> None:
    upload(dataset, store, PREFIX)
    store.delete(f"{PREFIX}/{MANIFEST_NAME}")  # objects, no manifest: the upload's last step is to come
    with pytest.raises(RetryableError, match="no manifest.json yet, but objects under it: an upload in progress"):
        sync(store, PREFIX, tmp_path / "cache")
    upload(dataset, store, PREFIX)
    verify(sync(store, PREFIX, tmp_path / "cache").local_dir)


def test_a_sync_cut_short_resumes_without_downloading_again(dataset: Path, tmp_path: Path) -> None:
    upload(dataset, LocalArtifactStore(tmp_path / "store"), PREFIX)
    with pytest.raises(ConnectionError):
        sync(FailingStore(tmp_path / "store", good=5), PREFIX, tmp_path / "cache", workers=1)
    report = sync(LocalArtifactStore(tmp_path / "store"), PREFIX, tmp_path / "cache")
    assert (report.downloaded, report.skipped) == (13, 5)  # the 5 finished files were hashed, not fetched
    verify(report.local_dir)


def test_sync_of_a_prefix_without_a_dataset_is_not_found(store: RecordingStore, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no manifest.json"):
        sync(store, "datasets/none", tmp_path / "cache")


@pytest.mark.parametrize(
    "evil_path", ["../evil.png", "/etc/passwd", "train/a/../../../evil.png", "train\\..\\evil.png", "c:/evil.png"]
)
def test_a_manifest_key_escaping_the_cache_is_refused(
    dataset: Path, store: RecordingStore, tmp_path: Path, evil_path: str
) -> None:
    upload(dataset, store, PREFIX)
    document = json.loads(store.get_bytes(f"{PREFIX}/{MANIFEST_NAME}"))
    document["files"][0]["path"] = evil_path
    store.put_bytes(f"{PREFIX}/{MANIFEST_NAME}", json.dumps(document).encode())
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(BadInputError, match="unsafe key"):
        sync(store, PREFIX, tmp_path / "deep" / "cache")
    assert sorted(tmp_path.rglob("*")) == before  # not even the cache directory was created
    assert store.gets == 0


def test_a_manifest_file_outside_its_split_folder_is_refused(
    dataset: Path, store: RecordingStore, tmp_path: Path
) -> None:
    upload(dataset, store, PREFIX)
    document = json.loads(store.get_bytes(f"{PREFIX}/{MANIFEST_NAME}"))
    document["files"][0]["path"] = MANIFEST_NAME  # a safe key, but it would clobber the manifest
    store.put_bytes(f"{PREFIX}/{MANIFEST_NAME}", json.dumps(document).encode())
    with pytest.raises(BadInputError, match="does not match its split"):
        sync(store, PREFIX, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def _sync_in_process(root: str, cache: str, barrier, results) -> None:  # noqa: ANN001 (multiprocessing objects)
    barrier.wait()
    report = sync(SlowStore(Path(root)), PREFIX, Path(cache), workers=4)
    results.put((report.downloaded, report.skipped, str(report.local_dir)))


def test_two_processes_syncing_one_dataset_share_one_copy(dataset: Path, tmp_path: Path) -> None:
    upload(dataset, LocalArtifactStore(tmp_path / "store"), PREFIX)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    args = (str(tmp_path / "store"), str(tmp_path / "cache"), barrier, results)
    processes = [context.Process(target=_sync_in_process, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert [(downloaded, skipped) for downloaded, skipped, _ in outcomes] == [(0, 18), (18, 0)]
    assert outcomes[0][2] == outcomes[1][2]
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == sorted([Path(outcomes[0][2]).name, Path(outcomes[0][2]).name + ".lock"])
    verify(Path(outcomes[0][2]))


def test_sequential_and_parallel_sync_give_the_same_directory(dataset: Path, store: RecordingStore, tmp_path: Path) -> None:
    upload(dataset, store, PREFIX)
    sequential = sync(store, PREFIX, tmp_path / "one", workers=1)
    parallel = sync(store, PREFIX, tmp_path / "many", workers=8)
    tree = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*.png")}  # noqa: E731
    assert tree(sequential.local_dir) == tree(parallel.local_dir) and len(tree(parallel.local_dir)) == 18


# --- resolve_dataset ---


def test_resolve_uses_a_local_dataset_in_place(dataset: Path, store: RecordingStore, tmp_path: Path) -> None:
    assert resolve_dataset(str(dataset), store, tmp_path / "cache") == dataset.resolve()
    assert not (tmp_path / "cache").exists()


def test_resolve_syncs_a_store_prefix(dataset: Path, store: RecordingStore, tmp_path: Path) -> None:
    # s3:// locations on a prefixed S3 store: tests/integration/test_store_keys_aws.py (moto)
    upload(dataset, store, PREFIX)
    by_prefix = resolve_dataset(f"artifacts:{PREFIX}", store, tmp_path / "cache")
    assert resolve_dataset(f"artifacts:{PREFIX}/", store, tmp_path / "cache") == by_prefix
    assert load_manifest(by_prefix) == load_manifest(dataset)


def test_resolve_refuses_what_it_cannot_find(dataset: Path, store: RecordingStore, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found .expected a prepared dataset directory"):
        resolve_dataset(str(tmp_path / "nowhere"), store, tmp_path / "cache")
    with pytest.raises(BadInputError, match="not found"):
        resolve_dataset(str(tmp_path / "src"), store, tmp_path / "cache")  # images, but not prepared
    with pytest.raises(BadInputError, match="not S3"):
        resolve_dataset(f"s3://team-bucket/{PREFIX}", store, tmp_path / "cache")
    with pytest.raises(BadInputError, match="must not be empty"):
        resolve_dataset("artifacts:/", store, tmp_path / "cache")
