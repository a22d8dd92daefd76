"""Synthetic flowers, prepare (the stratified split and its manifest), load_manifest and verify.
Real files on tmp_path throughout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.datasets import flower_types, load_manifest, prepare, synthesize, verify
from shared.datasets.synth import MAX_CLASSES
from shared.errors import BadInputError
from shared.manifest import MANIFEST_NAME


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format=fmt)
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return synthesize(tmp_path / "src", classes=3, per_class=10, size=16, seed=1)


# --- synthesize ---


def test_synth_draws_class_folders_of_pngs(tmp_path: Path) -> None:
    out = synthesize(tmp_path / "flowers", classes=4, per_class=3, size=32)
    class_dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in class_dirs] == [t.name for t in flower_types(4)]
    for class_dir in class_dirs:
        images = sorted(class_dir.iterdir())
        assert [p.name for p in images] == ["0000.png", "0001.png", "0002.png"]
        with Image.open(images[0]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"


def test_synth_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = _tree(synthesize(tmp_path / "a", classes=3, per_class=4, size=24, seed=5))
    second = _tree(synthesize(tmp_path / "b", classes=3, per_class=4, size=24, seed=5))
    other_seed = _tree(synthesize(tmp_path / "c", classes=3, per_class=4, size=24, seed=6))
    assert first == second
    assert first.keys() == other_seed.keys() and first != other_seed


def test_flower_types_are_distinct_and_readable() -> None:
    types = flower_types(MAX_CLASSES)
    assert len({(t.petals, t.colour, t.shape) for t in types}) == MAX_CLASSES
    assert [t.name for t in types] == sorted(t.name for t in types)  # folder order = class order
    assert types[0].name == "flower_000_3petal_red_round"
    assert flower_types(10)[3].name == "flower_03_6petal_blue_elongated"


def test_synth_rerun_is_idempotent_and_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    out = synthesize(tmp_path / "f", classes=2, per_class=2, size=16)
    before = _tree(out)
    assert _tree(synthesize(out, classes=2, per_class=2, size=16)) == before
    with pytest.raises(BadInputError, match="not empty"):
        synthesize(out, classes=3, per_class=2, size=16)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not empty"):
        synthesize(tmp_path / "other", classes=2, per_class=2, size=16)


@pytest.mark.parametrize(
    ("classes", "per_class", "size"), [(1, 5, 32), (MAX_CLASSES + 1, 5, 32), (3, 0, 32), (3, 5, 8), (3, 5, 2048)]
)
def test_synth_refuses_bad_arguments(tmp_path: Path, classes: int, per_class: int, size: int) -> None:
    with pytest.raises(BadInputError):
        synthesize(tmp_path / "x", classes=classes, per_class=per_class, size=size)
    assert not (tmp_path / "x").exists()


def test_synth_is_learnable_but_not_trivial(tmp_path: Path) -> None:
    """A nearest-centroid classifier on 8x8 thumbnails: far above chance (0.1), far from perfect."""
    out = synthesize(tmp_path / "f", classes=10, per_class=24, size=32, seed=3)
    features, labels = [], []
    for label, flower in enumerate(flower_types(10)):
        for path in sorted((out / flower.name).iterdir()):
            with Image.open(path) as image:
                features.append(np.asarray(image.resize((8, 8)), np.float32).ravel() / 255)
            labels.append(label)
    x, y = np.array(features), np.array(labels)
    train = np.arange(len(y)) % 4 != 0
    centroids = np.stack([x[train & (y == k)].mean(0) for k in range(10)])
    predicted = ((x[~train][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (predicted == y[~train]).mean()
    assert 0.3 < accuracy < 0.95


def test_synth_reports_progress(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    synthesize(tmp_path / "f", classes=2, per_class=3, size=16, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (6, 6) and [done for done, _ in calls] == sorted(done for done, _ in calls)


# --- prepare ---


def test_prepare_splits_each_class_and_writes_a_manifest(source: Path, tmp_path: Path) -> None:
    manifest = prepare(source, tmp_path / "out", test_fraction=0.2, seed=7, name="flowers")
    assert manifest.name == "flowers" and manifest.seed == 7 and manifest.test_fraction == 0.2
    assert manifest.classes == sorted(p.name for p in source.iterdir() if p.is_dir())
    for label in manifest.classes:
        tests = [f for f in manifest.split("test") if f.label == label]
        trains = [f for f in manifest.split("train") if f.label == label]
        assert (len(trains), len(tests)) == (8, 2)
    assert load_manifest(tmp_path / "out") == manifest
    verify(tmp_path / "out", manifest)  # every size and sha256 is right
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == sorted(
        f.path for f in manifest.files
    )


def test_prepare_is_deterministic_and_seeded(source: Path, tmp_path: Path) -> None:
    first = prepare(source, tmp_path / "a", seed=3)
    second = prepare(source, tmp_path / "b", seed=3)
    other = prepare(source, tmp_path / "c", seed=4)
    assert first.checksum == second.checksum and first.files == second.files
    assert (tmp_path / "a" / MANIFEST_NAME).read_bytes() == (tmp_path / "b" / MANIFEST_NAME).read_bytes()
    assert {f.path for f in other.split("test")} != {f.path for f in first.split("test")}


def test_prepare_small_classes_keep_train_images(tmp_path: Path) -> None:
    _image(tmp_path / "src" / "pair" / "a.png")
    _image(tmp_path / "src" / "pair" / "b.png")
    _image(tmp_path / "src" / "lone" / "only.png")
    manifest = prepare(tmp_path / "src", tmp_path / "out", test_fraction=0.1)
    by_label = {label: sorted(f.split for f in manifest.files if f.label == label) for label in manifest.classes}
    assert by_label == {"lone": ["train"], "pair": ["test", "train"]}


def test_prepare_reads_any_image_extension_and_ignores_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _image(src / "a" / "one.JPG", fmt="JPEG")
    _image(src / "a" / "two.jpeg", fmt="JPEG")
    _image(src / "a" / "nested" / "three.Png")
    _image(src / "a" / "four.bmp", fmt="BMP")
    _image(src / "a" / "five.gif", fmt="GIF")
    _image(src / "a" / ".hidden.png")
    _image(src / ".hidden_class" / "x.png")
    (src / "a" / "notes.txt").write_text("not an image")
    (src / "README").write_text("a file beside the class folders")
    manifest = prepare(src, tmp_path / "out")
    assert manifest.classes == ["a"]
    names = sorted(f.path.split("/", 2)[2] for f in manifest.files)
    assert names == ["five.gif", "four.bmp", "nested/three.Png", "one.JPG", "two.jpeg"]


def test_prepare_links_instead_of_copying_on_one_filesystem(source: Path, tmp_path: Path) -> None:
    manifest = prepare(source, tmp_path / "out")
    first = manifest.files[0]
    assert (tmp_path / "out" / first.path).stat().st_nlink == 2


def test_prepare_again_on_the_same_content_returns_the_manifest(source: Path, tmp_path: Path) -> None:
    manifest = prepare(source, tmp_path / "out", seed=2)
    assert prepare(source, tmp_path / "out", seed=2) == manifest


def test_prepare_refuses_an_output_holding_something_else(source: Path, tmp_path: Path) -> None:
    prepare(source, tmp_path / "out", seed=2)
    with pytest.raises(BadInputError, match="not empty"):
        prepare(source, tmp_path / "out", seed=3)  # another split: another content
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("precious")
    with pytest.raises(BadInputError, match="not empty"):
        prepare(source, tmp_path / "busy")
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "precious"


def test_an_interrupted_prepare_is_never_a_dataset(source: Path, tmp_path: Path) -> None:
    def stop_half_way(done: int, total: int) -> None:
        if done == total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(source, tmp_path / "out", progress=stop_half_way)
    assert any((tmp_path / "out").rglob("*.png")) and not (tmp_path / "out" / MANIFEST_NAME).exists()
    with pytest.raises(BadInputError, match="not a prepared dataset"):
        load_manifest(tmp_path / "out")
    with pytest.raises(BadInputError, match="not empty"):
        prepare(source, tmp_path / "out")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_prepare_refuses_a_test_fraction_outside_0_1(source: Path, tmp_path: Path, fraction: float) -> None:
    with pytest.raises(BadInputError, match="test fraction"):
        prepare(source, tmp_path / "out", test_fraction=fraction)
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        prepare(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    _image(tmp_path / "flat" / "loose.png")
    with pytest.raises(BadInputError, match="no class folders"):
        prepare(tmp_path / "flat", tmp_path / "out")
    _image(tmp_path / "src" / "good" / "a.png")
    (tmp_path / "src" / "empty").mkdir()
    (tmp_path / "src" / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(BadInputError, match="empty: no images"):
        prepare(tmp_path / "src", tmp_path / "out")
    with pytest.raises(BadInputError, match="must not contain"):
        prepare(tmp_path / "src", tmp_path / "src" / "out")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(BadInputError, match="is a file"):
        prepare(tmp_path / "src", tmp_path / "a_file")
    assert not (tmp_path / "out").exists()


# --- load_manifest and verify ---


def test_load_manifest_refuses_missing_and_invalid(source: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(BadInputError, match="no manifest.json"):
        load_manifest(source)
    manifest = prepare(source, tmp_path / "out")
    path = tmp_path / "out" / MANIFEST_NAME
    path.write_text("{not json")
    with pytest.raises(BadInputError, match="invalid manifest"):
        load_manifest(tmp_path / "out")
    document = json.loads(manifest.to_json())
    document["files"][0]["label"] = "not_a_class"
    path.write_text(json.dumps(document))
    with pytest.raises(BadInputError, match="does not match its split"):
        load_manifest(tmp_path / "out")
    document = json.loads(manifest.to_json())
    document["files"][0]["path"] = "../evil.png"
    path.write_text(json.dumps(document))
    with pytest.raises(BadInputError, match="unsafe key"):
        load_manifest(tmp_path / "out")


def test_verify_names_changed_and_missing_files(source: Path, tmp_path: Path) -> None:
    manifest = prepare(source, tmp_path / "out")
    changed, missing = manifest.files[0], manifest.files[1]
    target = tmp_path / "out" / changed.path
    data = bytearray(target.read_bytes())
    target.unlink()  # break the hard link: the source stays intact
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    os.remove(tmp_path / "out" / missing.path)
    with pytest.raises(BadInputError, match="2 file") as error:
        verify(tmp_path / "out")
    assert changed.path in str(error.value) and missing.path in str(error.value)
