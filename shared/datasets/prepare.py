"""Prepared datasets: split a folder of class-named image folders into train/ and test/ with a
manifest, load a manifest back, verify a directory against it.

A directory is a prepared dataset exactly when it holds `manifest.json`: `prepare` writes it
last and atomically, so an interrupted prepare never looks like a dataset.

The source is someone's folder, perhaps unpacked from an archive: every check happens before
anything is written. Symbolic links are refused (`_files.refuse_link` says why), and so is an
image that is not a JPEG, PNG, GIF or BMP by content or that claims more pixels than the limit
(`images.check_image`), each with one line naming the file.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from shared.datasets._files import (
    Progress,
    is_hidden,
    link_or_copy,
    refuse_link,
    refuse_links_below,
    report,
    sha256_file,
    write_atomic,
)
from shared.datasets.images import check_image
from shared.errors import BadInputError
from shared.manifest import MANIFEST_NAME, Manifest, ManifestFile
from shared.paths import check_class_name, check_key, safe_join

# Files with these names are the dataset's images; each must then be a JPEG, PNG, GIF or BMP by
# content (a .webp or .tiff is refused by name rather than silently left out).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class PlannedFile:
    """One source image and where the split puts it."""

    source: Path
    path: str  # "<split>/<class>/<name>", the manifest key
    split: str
    label: str


def prepare(
    src: Path,
    out: Path,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    progress: Progress | None = None,
    max_pixels: int | None = None,
) -> Manifest:
    """Split `src` (one folder per class) into out/train/<class>/ and out/test/<class>/ with a
    stratified, seeded holdout, and write out/manifest.json last.

    Re-running on an `out` that already holds a prepare of the same content returns its manifest.
    Refuses (BadInputError, nothing written) symbolic links, class folders whose name is not one
    safe folder name (`shared.paths.check_class_name`), and images that are not JPEG, PNG, GIF or
    BMP or claim more than `max_pixels` (default: `images.pixel_limit()`).
    """
    src, out = Path(src), Path(out)
    _check_prepare_args(src, out, test_fraction)
    plan = plan_split(src, test_fraction, seed)
    for planned in plan:
        check_image(planned.source, max_pixels)
    classes = sorted({planned.label for planned in plan})
    dataset_name = name or src.resolve().name
    if out.exists() and any(out.iterdir()):
        return _previous_prepare(out, plan, progress)
    files = _materialize(plan, out, progress)
    manifest = Manifest(name=dataset_name, classes=classes, files=files, seed=seed, test_fraction=test_fraction)
    write_manifest(out, manifest)
    return manifest


def _materialize(plan: list[PlannedFile], out: Path, progress: Progress | None) -> list[ManifestFile]:
    files = []
    for done, planned in enumerate(plan, start=1):
        target = safe_join(out, planned.path)
        link_or_copy(planned.source, target)
        files.append(_manifest_file(planned, target))  # hash the copy: that is what the manifest vouches for
        report(progress, done, len(plan))
    return files


def _check_prepare_args(src: Path, out: Path, test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise BadInputError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if not src.is_dir():
        raise BadInputError(f"source {src}: not found (expected a folder of class-named image folders)")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output {out} is a file, not a directory")
    src_real, out_real = src.resolve(), out.resolve()
    if out_real.is_relative_to(src_real) or src_real.is_relative_to(out_real):
        raise BadInputError(f"output {out} and source {src} must not contain one another")


def plan_split(src: Path, test_fraction: float, seed: int) -> list[PlannedFile]:
    """Per class, a seeded random `test_fraction` of the images (at least 1 when the class has 2).

    Every class folder's name is checked here, before anything is copied: a name the manifest
    would refuse (a control character, say) must not leave a half-written output behind.
    """
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not is_hidden(p, src))
    if not class_dirs:
        raise BadInputError(f"source {src}: no class folders (expected {src}/<class>/<image>)")
    for class_dir in class_dirs:
        refuse_link(class_dir)
        check_class_name(class_dir.name)
    plan = []
    for class_dir in class_dirs:
        images = _images_in(class_dir)
        # a string seed goes through SHA-512 in `random`: the same split on every run and platform
        test = set(random.Random(f"{seed}:{class_dir.name}").sample(images, _test_count(len(images), test_fraction)))
        for image in images:
            split = "test" if image in test else "train"
            key = f"{split}/{class_dir.name}/{image.relative_to(class_dir).as_posix()}"
            plan.append(PlannedFile(image, check_key(key), split, class_dir.name))
    return plan


def _images_in(class_dir: Path) -> list[Path]:
    """The images below `class_dir`, sorted; a symbolic link to a folder or an image is refused
    (the walk follows none: a link is never entered, so nothing outside the source is read)."""
    images = []
    for folder, subfolders, names in os.walk(class_dir, followlinks=False):
        here = Path(folder)
        subfolders[:] = [name for name in subfolders if not is_hidden(here / name, class_dir)]
        for name in subfolders:
            refuse_link(here / name)
        for path in (here / name for name in names):
            if path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path, class_dir):
                refuse_link(path)
                if path.is_file():  # not a FIFO or a device: reading one could hang
                    images.append(path)
    images.sort()
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise BadInputError(f"class folder {class_dir}: no images ({extensions})")
    return images


def _test_count(images: int, test_fraction: float) -> int:
    if images < 2:
        return 0  # a lone image must stay in train, or the class could not be learned
    return min(max(round(images * test_fraction), 1), images - 1)


def _manifest_file(planned: PlannedFile, path: Path) -> ManifestFile:
    return ManifestFile(
        path=planned.path, size=path.stat().st_size, sha256=sha256_file(path), split=planned.split, label=planned.label
    )


def _previous_prepare(out: Path, plan: list[PlannedFile], progress: Progress | None) -> Manifest:
    """`out` is not empty: accept it only if it is a finished prepare of exactly this content."""
    refusal = f"output {out} is not empty and not a prepared copy of this source: remove it or pick another"
    if not (out / MANIFEST_NAME).is_file():
        raise BadInputError(refusal)
    previous = load_manifest(out)
    files = []
    for done, planned in enumerate(plan, start=1):
        files.append(_manifest_file(planned, planned.source))
        report(progress, done, len(plan))
    classes = sorted({planned.label for planned in plan})
    current = Manifest(name=previous.name, classes=classes, files=files)
    if current.checksum != previous.checksum:
        raise BadInputError(refusal)
    return previous


def write_manifest(dataset_dir: Path, manifest: Manifest) -> None:
    write_atomic(Path(dataset_dir) / MANIFEST_NAME, manifest.to_json().encode())


def parse_manifest(data: bytes | str, where: str) -> Manifest:
    """A manifest from JSON, checked for consistency; BadInputError (naming `where`) otherwise."""
    try:
        manifest = Manifest.model_validate_json(data)
    except BadInputError as error:  # an unsafe key, raised by ManifestFile's path check
        raise BadInputError(f"{where}: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(document)"
        raise BadInputError(f"{where}: invalid manifest: {field}: {first['msg']}") from None
    check_manifest(manifest, where)
    return manifest


def check_manifest(manifest: Manifest, where: str) -> None:
    """Every file lies at <split>/<label>/..., under a listed class, once: the layout trainers read."""
    classes, seen = set(manifest.classes), set()
    for file in manifest.files:
        check_key(file.path)
        if not file.path.startswith(f"{file.split}/{file.label}/") or file.label not in classes:
            raise BadInputError(f"{where}: file {file.path!r} does not match its split {file.split!r} / class")
        if file.path in seen:
            raise BadInputError(f"{where}: file {file.path!r} is listed twice")
        seen.add(file.path)
    if manifest.classes != sorted(classes):
        raise BadInputError(f"{where}: classes must be sorted and unique")


def load_manifest(dataset_dir: Path) -> Manifest:
    """The manifest of a prepared dataset directory; BadInputError when missing or invalid."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise BadInputError(f"dataset {dataset_dir}: not found")
    path = dataset_dir / MANIFEST_NAME
    if not path.is_file():
        raise BadInputError(f"dataset {dataset_dir}: no {MANIFEST_NAME} (not a prepared dataset: run `submit dataset prepare`)")
    return parse_manifest(path.read_bytes(), str(path))


def check_contained(dataset_dir: Path, manifest: Manifest) -> None:
    """Every file `manifest` lists lies in `dataset_dir` itself: no symbolic link on its way
    (BadInputError naming the first), so an upload never sends what a link leads to."""
    for file in manifest.files:
        refuse_links_below(Path(dataset_dir), file.path)


def find_problems(dataset_dir: Path, manifest: Manifest, progress: Progress | None = None) -> list[str]:
    """What differs between `dataset_dir` and `manifest`: missing files, wrong sizes, wrong checksums."""
    problems = []
    for done, file in enumerate(manifest.files, start=1):
        path = safe_join(Path(dataset_dir), file.path)
        if not path.is_file():
            problems.append(f"{file.path}: missing")
        elif path.stat().st_size != file.size:
            problems.append(f"{file.path}: size {path.stat().st_size}, manifest says {file.size}")
        elif sha256_file(path) != file.sha256:
            problems.append(f"{file.path}: sha256 differs from the manifest")
        report(progress, done, len(manifest.files))
    return problems


def verify(dataset_dir: Path, manifest: Manifest | None = None, progress: Progress | None = None) -> Manifest:
    """Check every file of the dataset (hashing each); BadInputError naming the first problems."""
    manifest = manifest or load_manifest(dataset_dir)
    problems = find_problems(dataset_dir, manifest, progress)
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise BadInputError(f"dataset {dataset_dir}: {len(problems)} file(s) do not match the manifest: {shown}")
    return manifest
