"""Keys and paths that come from outside (manifests, messages, buckets) never escape their root."""

from __future__ import annotations

from pathlib import Path

from shared.errors import BadInputError


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative POSIX key, else raise BadInputError."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise BadInputError(f"unsafe key {key!r}: must be a relative path")
    if any(part in ("..", ".", "") for part in parts[:-1]) or parts[-1] in ("..", ".") or ":" in parts[0]:
        raise BadInputError(f"unsafe key {key!r}: must not contain '..' or '.' or a drive")
    return key


def safe_join(root: Path, key: str) -> Path:
    """`root / key`, guaranteed to stay inside `root`."""
    target = (root / check_key(key)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise BadInputError(f"unsafe key {key!r}: resolves outside {root}")
    return target


def job_prefix(study_id: str, job_id: str) -> str:
    """Where a job's artifacts live in the artifact store."""
    return f"studies/{study_id}/jobs/{job_id}"
