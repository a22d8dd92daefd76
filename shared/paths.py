"""Keys and paths that come from outside (manifests, messages, buckets) never escape their root."""

from __future__ import annotations

import re
from pathlib import Path

from shared.errors import BadInputError

# Study and job ids are generated (`StudySpec.study_id`, `job_id_for`): lower-case slugs and hex.
# Anything else in a message or a record was written by someone else and is refused.
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")
# A class name becomes a folder (train/<class>/) and a key segment: any printable text but a
# separator, at most 255 characters (NAME_MAX on every common file system).
_UNSAFE_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
MAX_CLASS_NAME_CHARS = 255
# The forms a user may give for a file in the artifact store; the key part is checked like any key.
_LOCATION = re.compile(r"(?:s3://[^/]*/|artifacts:)?(?P<key>.*)", re.DOTALL)


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


def check_class_name(name: str) -> str:
    """Return `name` if it is safe as one path segment (a dataset's class folder), else raise
    BadInputError: no `/`, `\\`, NUL or control character, not `.` or `..`, 1-255 characters."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_CLASS_NAME_CHARS:
        raise BadInputError(f"invalid class name {name!r}: must be 1-{MAX_CLASS_NAME_CHARS} characters")
    if name in (".", "..") or _UNSAFE_IN_NAME.search(name):
        raise BadInputError(f"invalid class name {name!r}: must be one folder name (no '/', '\\' or control characters)")
    return name


def check_location(location: str, what: str = "location") -> str:
    """Return `location` if what it names lies inside an artifact store, else raise BadInputError.

    A location is a key, `artifacts:<key>` or `s3://<bucket>/<key>`. This only refuses what no
    store may reach (`..`, an absolute path, a drive, a backslash); turning a location into a key
    of the configured store is `ArtifactStore.key_for`'s job.
    """
    match = _LOCATION.fullmatch(location)
    try:
        check_key(match["key"] if match else location)
    except BadInputError:
        raise BadInputError(f"unsafe {what} {location!r}: must name a file in the artifact store (no '..', no leading '/')") from None
    return location


def safe_join(root: Path, key: str) -> Path:
    """`root / key`, guaranteed to stay inside `root`."""
    target = (root / check_key(key)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise BadInputError(f"unsafe key {key!r}: resolves outside {root}")
    return target


def job_prefix(study_id: str, job_id: str) -> str:
    """Where a job's artifacts live in the artifact store."""
    return f"studies/{study_id}/jobs/{job_id}"
