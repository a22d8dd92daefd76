"""Hostile images: decompression bombs and formats in disguise, refused from the header.

Refused at `dataset prepare` (one line naming the file, nothing written) and, when a hostile
teammate uploads such a dataset anyway, on the worker before TensorFlow decodes anything: the job
fails with one line naming the file, and the worker's peak memory stays that of a clean run
(measured with ru_maxrss of the real `worker run` process, in the slow test at the end).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from shared.datasets import DEFAULT_MAX_PIXELS, check_image, flower_types, prepare, set_pixel_limit, synthesize
from shared.errors import BadInputError
from shared.manifest import MANIFEST_NAME

BOMB_SIDE = 20_000  # 400 megapixels: 1.2 GB as RGB uint8, from a file of about 50 KB
CLASS = flower_types(2)[0].name


def make_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A mostly-zero PNG claiming side x side pixels (1-bit, so making it takes side^2/8 bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (side, side)).save(path, format="PNG")
    return path


def make_eps(path: Path, marker: Path) -> Path:
    """PostScript named like a PNG; if Ghostscript ever ran it, `marker` would say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%% {marker}\nshowpage\n")
    return path


@pytest.fixture
def fake_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `gs` first on PATH that only leaves a marker: Pillow's EPS loader would run it."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "ghostscript-ran"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return marker


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return synthesize(tmp_path / "src", classes=2, per_class=4, size=16, seed=1)


# --- the header check ---


def test_a_bomb_is_refused_from_its_header_naming_the_file(tmp_path: Path) -> None:
    bomb = make_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 400_000
    with pytest.raises(BadInputError, match=r"bomb\.png: more than 50,000,000 pixels"):
        check_image(bomb)
    small = make_bomb(tmp_path / "small.png", side=3_000)  # 9 MP: under the default, over 5 MP
    assert check_image(small).pixels == 9_000_000
    with pytest.raises(BadInputError, match=r"small\.png: 3000 x 3000 pixels, over the limit of 5,000,000"):
        check_image(small, max_pixels=5_000_000)


def test_every_frame_of_a_gif_counts(tmp_path: Path) -> None:
    frames = [Image.new("L", (100, 100), index * 8) for index in range(30)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert check_image(tmp_path / "anim.gif").frames == 30
    with pytest.raises(BadInputError, match=r"anim\.gif: 100 x 100 x 30 frames pixels"):
        check_image(tmp_path / "anim.gif", max_pixels=100_000)


def test_formats_are_told_by_content_never_by_name(tmp_path: Path, fake_ghostscript: Path) -> None:
    eps = make_eps(tmp_path / "photo.png", fake_ghostscript)
    with pytest.raises(BadInputError, match=r"photo\.png is EPS, not a JPEG, PNG, GIF or BMP image"):
        check_image(eps)
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.tif.png", format="TIFF")
    with pytest.raises(BadInputError, match="is TIFF"):
        check_image(tmp_path / "photo.tif.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "really-a-png.jpg", format="PNG")
    assert check_image(tmp_path / "really-a-png.jpg").format == "PNG"
    (tmp_path / "cut.png").write_bytes((tmp_path / "really-a-png.jpg").read_bytes()[:20])
    with pytest.raises(BadInputError, match=r"cut\.png"):
        check_image(tmp_path / "cut.png")
    assert not fake_ghostscript.exists()


def test_the_process_limit_is_pillows_too() -> None:
    before = Image.MAX_IMAGE_PIXELS
    try:
        set_pixel_limit(1_000)
        assert Image.MAX_IMAGE_PIXELS == 1_000
        with pytest.raises(BadInputError, match="positive"):
            set_pixel_limit(0)
    finally:
        set_pixel_limit(DEFAULT_MAX_PIXELS)
        Image.MAX_IMAGE_PIXELS = before


def test_the_worker_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.settings import WorkerSettings

    assert WorkerSettings().max_image_pixels == DEFAULT_MAX_PIXELS
    monkeypatch.setenv("SPOTSWEEP_MAX_IMAGE_PIXELS", "1000000")
    assert WorkerSettings().max_image_pixels == 1_000_000


# --- dataset prepare ---


@pytest.mark.parametrize("name", ["bomb.png", "photo.png", "photo.webp"])
def test_prepare_refuses_a_hostile_image_and_writes_nothing(
    tmp_path: Path, source: Path, fake_ghostscript: Path, name: str
) -> None:
    bad = source / CLASS / name
    if name == "bomb.png":
        make_bomb(bad)
    elif name == "photo.png":
        make_eps(bad, fake_ghostscript)
    else:
        Image.new("RGB", (8, 8)).save(bad, format="WEBP")
    out = tmp_path / "prepared"
    with pytest.raises(BadInputError, match=rf"image {bad}"):
        prepare(source, out)
    assert not out.exists() and not fake_ghostscript.exists()


def test_prepare_takes_a_pixel_limit(tmp_path: Path, source: Path) -> None:
    with pytest.raises(BadInputError, match="over the limit of 100"):
        prepare(source, tmp_path / "prepared", max_pixels=100)  # the synthetic images are 16 x 16
    assert len(prepare(source, tmp_path / "prepared", max_pixels=256).files) == 8


# --- on the worker: the dataset was uploaded anyway ---


def smuggle(prepared: Path, image: Path) -> str:
    """Add `image` to a prepared dataset's train split, manifest included, as a hostile
    teammate's upload would (prepare itself refuses it)."""
    key = f"train/{CLASS}/{image.name}"
    shutil.copy(image, prepared / key)
    document = json.loads((prepared / MANIFEST_NAME).read_text())
    data = image.read_bytes()
    document["files"].append(
        {"path": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "split": "train", "label": CLASS}
    )
    (prepared / MANIFEST_NAME).write_text(json.dumps(document))
    return key


def test_the_worker_refuses_before_decoding(tmp_path: Path, source: Path, fake_ghostscript: Path) -> None:
    from worker.training import data

    prepared = tmp_path / "prepared"
    prepare(source, prepared)
    key = smuggle(prepared, make_eps(tmp_path / "photo.png", fake_ghostscript))
    manifest = data.load_manifest(prepared)
    with pytest.raises(BadInputError, match=rf"image {prepared / key} is EPS"):
        data.load_images(prepared, manifest, "train", 16, tmp_path / "cache")
    assert not fake_ghostscript.exists()  # before: TensorFlow failed, then Pillow's EPS loader ran gs
    assert not list((tmp_path / "cache").glob("images-*.npy"))


# --- peak memory of the real worker process ---


def _study(path: Path, dataset: Path) -> Path:
    path.write_text(json.dumps({
        "name": "bomb", "dataset": str(dataset), "image_size": 32, "validation_split": 0.25, "seed": 1,
        "parameters": {
            "architecture": ["benchmark"], "weights": [None], "optimizer": [{"name": "adam"}], "batch_size": [8],
        },
        "training": {"epochs": 1, "early_stopping": None},
    }))
    return path


def _run_worker(tmp_path: Path, name: str, dataset: Path) -> tuple[int, str, str]:
    """Submit a one-job study on `dataset` and run `worker run --until-empty` on it:
    (the worker's peak RSS in KiB, the job's status, its error)."""
    from shared.backends.factory import open_local
    from shared.config import BackendConfig
    from tests.e2e.conftest import BIN, env_for, submit_json

    env = env_for(tmp_path / name)
    study_id = submit_json(env, "study", str(_study(tmp_path / f"{name}.json", dataset)))["study_id"]
    with open(tmp_path / f"{name}.log", "w") as log:
        worker = subprocess.Popen([str(BIN / "worker"), "run", "--until-empty"], env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(worker.pid, 0)  # this child's own rusage, not all children's
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    (record,) = open_local(BackendConfig(home=tmp_path / name)).store.list_jobs(study_id)
    return usage.ru_maxrss, str(record.status.value), record.error or ""


@pytest.mark.slow
def test_a_bomb_fails_the_job_naming_the_file_at_a_clean_runs_peak_memory(tmp_path: Path) -> None:
    source = synthesize(tmp_path / "src", classes=2, per_class=12, size=32, seed=2)
    clean, bombed = tmp_path / "clean", tmp_path / "bombed"
    prepare(source, clean)
    shutil.copytree(clean, bombed)
    key = smuggle(bombed, make_bomb(tmp_path / "bomb.png"))

    clean_kib, clean_status, _ = _run_worker(tmp_path, "clean-home", clean)
    bomb_kib, bomb_status, error = _run_worker(tmp_path, "bomb-home", bombed)
    print(f"\npeak RSS of `worker run`: clean {clean_kib / 1024:.0f} MiB, with the bomb {bomb_kib / 1024:.0f} MiB")
    assert clean_status == "SUCCEEDED"
    assert bomb_status == "FAILED" and key in error and "pixels" in error and "\n" not in error
    assert bomb_kib <= clean_kib + 300 * 1024
