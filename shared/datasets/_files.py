"""Small file helpers shared by prepare, upload and sync: hashing, atomic writes, linking."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

Progress = Callable[[int, int], None]  # (done, total), for progress bars
MACOS_LITTER = "__MACOSX"  # the folder macOS zip tools add


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard link when source and target share a filesystem (free), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # EXDEV (another filesystem), EPERM (filesystems without links)
        shutil.copy2(source, target)


def is_hidden(path: Path, root: Path) -> bool:
    """True if any part of `path` below `root` is hidden (dot files such as .DS_Store, macOS litter)."""
    return any(part.startswith(".") or part == MACOS_LITTER for part in path.relative_to(root).parts)


def report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
