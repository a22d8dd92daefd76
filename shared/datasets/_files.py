"""Small file helpers shared by prepare, upload and sync: hashing, atomic writes, linking, and
the refusal of symbolic links in a dataset folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from shared.errors import BadInputError

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
    """Hard link when source and target share a filesystem (free), else copy. A source that is a
    symbolic link is linked or copied as the link itself, never as what it points to."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:  # EXDEV (another filesystem), EPERM (filesystems without links)
        shutil.copy2(source, target, follow_symlinks=False)


def refuse_link(path: Path) -> None:
    """BadInputError when `path` is a symbolic link.

    A dataset folder must hold its own files: a link may lead anywhere (a home directory,
    ~/.aws/credentials), and what it leads to would be copied into the dataset and uploaded to
    the team's bucket. Refused rather than skipped, because a dataset that silently lost a class
    or some images would train without a word of it.
    """
    if path.is_symlink():
        raise BadInputError(
            f"{path} is a symbolic link: refused (a dataset folder must hold its own files; "
            "copy them in, e.g. with `cp -rL`, if you trust where the link leads)"
        )


def refuse_links_below(root: Path, key: str) -> None:
    """`refuse_link` on every part of `root/key` below `root` (the folders on the way included),
    so that nothing it names resolves outside `root`."""
    path = Path(root)
    for part in PurePosixPath(key).parts:
        path = path / part
        refuse_link(path)


def is_hidden(path: Path, root: Path) -> bool:
    """True if any part of `path` below `root` is hidden (dot files such as .DS_Store, macOS litter)."""
    return any(part.startswith(".") or part == MACOS_LITTER for part in path.relative_to(root).parts)


def report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
