"""Keys and paths that come from outside (manifests, messages, buckets) never escape their root."""

from __future__ import annotations

import re
from pathlib import Path

from shared.errors import BadInputError

# Study and job ids are generated (`StudySpec.study_id`, `job_id_for`): lower-case slugs and hex.
# Anything else in a message or a record was written by someone else and is refused.
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative POSIX key, else raise BadInputError."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise BadInputError(f"unsafe key {key!r}: must be a relative path")
    if any(part in ("..", ".", "") for part in parts[:-1]) or parts[-1] in ("..", ".") or ":" in parts[0]:
        raise BadInputError(f"unsafe key {key!r}: must not contain '..' or '.' or a drive")
    return key


def check_id(value: str, what: str = "id") -> str:
    """Return `value` if it is a well-formed study or job id (a lower-case slug of at most 80
    characters: safe as a path segment, a key segment and a table key), else raise BadInputError."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise BadInputError(f"invalid {what} {value!r}: expected lower-case letters, digits and '-'")
    return value


def safe_join(root: Path, key: str) -> Path:
    """`root / key`, guaranteed to stay inside `root`."""
    target = (root / check_key(key)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise BadInputError(f"unsafe key {key!r}: resolves outside {root}")
    return target


def job_prefix(study_id: str, job_id: str) -> str:
    """Where a job's artifacts live in the artifact store."""
    return f"studies/{study_id}/jobs/{job_id}"
