"""Dataset sync: parallel (workers=8) vs sequential (workers=1) into an empty cache, and a
second sync of the unchanged dataset (bytes downloaded must be 0).

The store is S3 on a moto server (real HTTP, so per-request latency is visible); if moto cannot
start, a LocalArtifactStore (labelled as such).
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Dataset, Row, ratio

PREFIX = "datasets/bench-flowers"


def run(workdir: Path, dataset: Dataset) -> list[Row]:
    from shared.datasets.sync import sync, upload

    cleanup_args = None
    try:
        from bench.aws import moto_backend

        backend, session, config = moto_backend()
        store, label = backend.artifacts, "S3 on moto server"
        cleanup_args = (config, session)
    except Exception as exc:  # noqa: BLE001
        from shared.backends.local import LocalArtifactStore

        store, label = LocalArtifactStore(workdir / "store"), f"LocalArtifactStore (moto failed: {exc!r:.80})"
    try:
        upload(dataset.prepared, store, PREFIX)
        seq = sync(store, PREFIX, workdir / "cache-seq", workers=1)
        par = sync(store, PREFIX, workdir / "cache-par", workers=8)
        again = sync(store, PREFIX, workdir / "cache-par", workers=8)
    finally:
        if cleanup_args:
            from bench.aws import cleanup

            cleanup(*cleanup_args)
    files = seq.downloaded
    speedup = ratio(seq.seconds, par.seconds)
    setup = f"{files} files, {seq.bytes_downloaded / 1e6:.1f} MB, store: {label}"
    return [
        Row("dataset sync: workers=8 vs workers=1 (s)", par.seconds, seq.seconds, "s", speedup, "(info) > 1x",
            None, setup, {"parallel_files": par.downloaded, "sequential_files": seq.downloaded}),
        Row("dataset sync: re-sync unchanged, bytes downloaded", again.bytes_downloaded, par.bytes_downloaded, "B",
            None, "== 0", again.bytes_downloaded == 0, f"{again.skipped} files skipped in {again.seconds:.2f}s"),
    ]
