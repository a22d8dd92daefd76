"""A tiny synthetic prepared dataset and job contexts for the training tests (real files, no mocks).

Each class is one coloured shape (circle, square, triangle...) at a random place and size on a
noisy background: easy enough that a tiny model learns something in a few epochs. Most images
are PNG, every third one is JPEG, so both decoders are exercised.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shared.backends.local import LocalArtifactStore
from shared.jobs import JobSpec
from shared.manifest import MANIFEST_NAME, Manifest, ManifestFile
from shared.paths import job_prefix
from worker.job import EpochReport, JobContext, StopReason

SHAPES = {
    "circle": (220, 40, 40),
    "square": (40, 200, 60),
    "triangle": (50, 80, 230),
    "diamond": (230, 200, 40),
}


def draw(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background, "RGB")
    pen = ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size // 2 + 1))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
    x1, y1 = x0 + extent, y0 + extent
    colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in SHAPES[shape])
    if shape == "circle":
        pen.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "square":
        pen.rectangle((x0, y0, x1, y1), fill=colour)
    elif shape == "triangle":
        pen.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    else:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        pen.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    return image


def encode(image: Image.Image, jpeg: bool) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG" if jpeg else "PNG", **({"quality": 90} if jpeg else {}))
    return out.getvalue()


def write_dataset(
    root: Path,
    classes: Sequence[str] = ("circle", "square", "triangle"),
    train_per_class: int = 10,
    test_per_class: int = 4,
    size: int = 40,
    seed: int = 0,
) -> Manifest:
    """Write `root/train/<class>/*`, `root/test/<class>/*` and `root/manifest.json`."""
    rng = np.random.default_rng(seed)
    files: list[ManifestFile] = []
    for label in sorted(classes):
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for i in range(count):
                jpeg = i % 3 == 2
                rel = f"{split}/{label}/{label}-{i:03d}.{'jpg' if jpeg else 'png'}"
                payload = encode(draw(label, size, rng), jpeg)
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(payload)
                digest = hashlib.sha256(payload).hexdigest()
                files.append(ManifestFile(path=rel, size=len(payload), sha256=digest, split=split, label=label))
    manifest = Manifest(name=root.name, classes=sorted(classes), files=files, seed=seed)
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def tiny_spec(architecture: str = "benchmark", image_size: int = 32, **overrides: Any) -> JobSpec:
    """A small job: batch 8, 3 epochs, no early stopping unless asked, SGD by default."""
    training = {"batch_size": 8, "epochs": 3, "early_stopping": None, "seed": 3, **overrides.pop("training", {})}
    model = {"architecture": architecture, "image_size": image_size, **overrides.pop("model", {})}
    return JobSpec.model_validate(
        {"dataset": "tiny", "model": model, "training": training, "optimizer": {"name": "adam"}, **overrides}
    )


def context(
    tmp: Path,
    spec: JobSpec,
    dataset_dir: Path,
    job_id: str = "job-1",
    artifacts: LocalArtifactStore | None = None,
    work_dir: Path | None = None,
    **fields: Any,
) -> JobContext:
    """A JobContext over a local artifact store in `tmp/artifacts`."""
    store = artifacts or LocalArtifactStore(tmp / "artifacts")
    return JobContext(
        study_id="study-1",
        job_id=job_id,
        spec=spec,
        dataset_dir=dataset_dir,
        work_dir=work_dir or tmp / "work" / job_id,
        artifacts=store,
        prefix=job_prefix("study-1", job_id),
        **fields,
    )


class StopInEpoch:
    """Records epoch reports and asks the job to stop a few polls into epoch `epoch` (1-based):
    pass `on_epoch=stop.on_epoch, should_stop=stop.should_stop`."""

    def __init__(self, epoch: int, polls: int = 2, reason: StopReason = StopReason.PREEMPTED) -> None:
        self.epoch, self.polls, self.reason = epoch, polls, reason
        self.reports: list[EpochReport] = []
        self._polled = 0

    def on_epoch(self, report: EpochReport) -> None:
        self.reports.append(report)
        self._polled = 0

    def should_stop(self) -> StopReason | None:
        if len(self.reports) != self.epoch - 1:
            return None
        self._polled += 1
        return self.reason if self._polled > self.polls else None

    def fields(self) -> dict[str, Any]:
        return {"on_epoch": self.on_epoch, "should_stop": self.should_stop}


try:  # a fixture the training test modules share (import it into the module to use it)
    import pytest

    @pytest.fixture(scope="module")
    def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
        """3 classes x (10 train + 4 test) images of 40 px, with manifest.json."""
        root = tmp_path_factory.mktemp("datasets") / "tiny"
        write_dataset(root)
        return root

except ImportError:  # pragma: no cover - pytest is a dev dependency
    pass
