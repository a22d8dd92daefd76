"""Symbolic links in a dataset folder are refused, at `dataset prepare` and at `dataset upload`.

The proof of concept of issue 15, made small: a teammate's folder whose class folder links to a
home directory, or whose `roses/creds.png` links to `~/.aws/credentials`. Before the fix,
prepare copied what the links led to into the prepared dataset and upload sent it to the
bucket. Real files and links on tmp_path, a real LocalArtifactStore.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from shared.backends.local import LocalArtifactStore
from shared.datasets import flower_types, prepare, synthesize, upload
from shared.errors import BadInputError
from shared.manifest import MANIFEST_NAME

SECRET = b"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET"
CLASS = flower_types(2)[0].name


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home directory: a private photo and credentials, outside every dataset."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_bytes(b"[default]\n" + SECRET + b"\n")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(home / "private.png")
    return home


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return synthesize(tmp_path / "src", classes=2, per_class=4, size=16, seed=1)


def _leaks(root: Path, home: Path) -> list[Path]:
    """Files under `root` holding the secret or the private photo's bytes."""
    private = (home / "private.png").read_bytes()
    return [p for p in root.rglob("*") if p.is_file() and (SECRET in p.read_bytes() or p.read_bytes() == private)]


LINKS = {
    "a class folder linked to a home directory": ("zz-home", "."),
    "an image linked to ~/.aws/credentials": (f"{CLASS}/creds.png", ".aws/credentials"),
    "a subfolder linked to a home directory": (f"{CLASS}/more", "."),
}


@pytest.mark.parametrize("where, target", LINKS.values(), ids=LINKS.keys())
def test_prepare_refuses_a_link_naming_it_and_writes_nothing(
    tmp_path: Path, source: Path, home: Path, where: str, target: str
) -> None:
    os.symlink(home / target, source / where)
    out = tmp_path / "prepared"
    with pytest.raises(BadInputError, match=rf"{where.split('/')[-1]} is a symbolic link"):
        prepare(source, out)
    assert not out.exists()
    # The same folder, once the link is gone, prepares: nothing else was wrong with it.
    (source / where).unlink()
    prepare(source, out)
    assert _leaks(out, home) == []


def test_a_hidden_link_is_ignored_like_any_hidden_file(tmp_path: Path, source: Path, home: Path) -> None:
    os.symlink(home, source / CLASS / ".cache")
    os.symlink(home, source / ".trash")
    manifest = prepare(source, tmp_path / "prepared")
    assert len(manifest.files) == 8
    assert _leaks(tmp_path / "prepared", home) == []


def _tamper(prepared: Path, home: Path, link_folder: bool) -> str:
    """Make a prepared dataset hold a link to the secret, with a manifest vouching for it (a
    hostile teammate's prepared folder, or one made by a prepare that followed links)."""
    class_dir = prepared / "train" / CLASS
    victim = f"train/{CLASS}/{sorted(class_dir.iterdir())[0].name}"
    if link_folder:  # the class folder leads outside, to a copy of it with the secret in it
        outside = home / "photos"
        shutil.copytree(class_dir, outside)
        shutil.rmtree(class_dir)
        os.symlink(outside, class_dir)
        (outside / Path(victim).name).write_bytes(SECRET)
    else:
        (prepared / victim).unlink()
        os.symlink(home / ".aws" / "credentials", prepared / victim)
    document = json.loads((prepared / MANIFEST_NAME).read_text())
    data = (prepared / victim).read_bytes()
    for entry in document["files"]:
        if entry["path"] == victim:
            entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (prepared / MANIFEST_NAME).write_text(json.dumps(document))
    return victim


@pytest.mark.parametrize("link_folder", [False, True], ids=["linked file", "linked class folder"])
def test_upload_refuses_a_link_before_sending_anything(
    tmp_path: Path, source: Path, home: Path, link_folder: bool
) -> None:
    prepared = tmp_path / "prepared"
    prepare(source, prepared)
    victim = _tamper(prepared, home, link_folder)
    store = LocalArtifactStore(tmp_path / "store")
    linked = CLASS if link_folder else Path(victim).name
    with pytest.raises(BadInputError, match=rf"{linked} is a symbolic link"):
        upload(prepared, store, "datasets/flowers", workers=1)
    assert list(store.list("")) == []  # nothing sent, not even the files before the link
    assert _leaks(tmp_path / "store", home) == []


def test_the_proof_of_concept_leaks_nothing(tmp_path: Path, source: Path, home: Path) -> None:
    """The review's sequence: prepare a teammate's folder, then upload what prepare made."""
    os.symlink(home, source / "zz-home")
    os.symlink(home / ".aws" / "credentials", source / CLASS / "creds.png")
    prepared, store = tmp_path / "prepared", LocalArtifactStore(tmp_path / "store")
    with pytest.raises(BadInputError, match="symbolic link"):
        prepare(source, prepared)
        upload(prepared, store, "datasets/flowers", workers=1)
    assert list(store.list("")) == []
    assert _leaks(tmp_path / "store", home) == [] and not prepared.exists()


# --- the same folder, hostile by its names rather than its links ---

BAD_CLASS_NAMES = {
    "a control character": "bad\x01name",
    "a newline": "new\nline",
    "an escape sequence": "clear\x1b[2J",
    "a backslash": "back\\slash",
}


@pytest.mark.parametrize("name", BAD_CLASS_NAMES.values(), ids=BAD_CLASS_NAMES.keys())
def test_a_class_folder_that_is_not_one_folder_name_is_refused_before_anything_is_written(
    tmp_path: Path, source: Path, name: str
) -> None:
    # sorted after the good classes, so that a check made while copying would come too late
    shutil.copytree(source / CLASS, source / f"zz-{name}")
    out = tmp_path / "prepared"
    with pytest.raises(BadInputError, match="invalid class name") as info:
        prepare(source, out)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert not out.exists()
