"""`worker predict`: a trained model's top-k classes for some images, as JSON.

The model is loaded with `safe_mode=True` (a checkpoint is data, never code); importing
`worker.training.models` first registers the custom preprocessing layers. Images are decoded and
resized exactly as for training (`worker.training.data.decode_image`) and fed as raw pixels: the
model does its own preprocessing.

Class names, first found wins: `--classes-from` (a prepared dataset directory with manifest.json,
or a classes JSON file: a list, or {"classes": [...]}), then `<model>.classes.json` beside the
model (what `submit export` writes), then the manifest of the job's dataset (`--job`). Without
any, classes are named by their index.

`--job` reads the job's checkpoint from the configured artifact store only (by its key), never
from a path a record names.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.ports import Backend
from shared.errors import BadInputError, NotFoundError
from shared.datasets.sync import dataset_classes
from shared.manifest import MANIFEST_NAME
from shared.paths import check_id, safe_join


@dataclass
class Source:
    model: Path
    job_id: str | None
    classes: list[str] | None


def classes_from(location: Path) -> list[str]:
    """Class names from a prepared dataset directory or a classes JSON file."""
    location = Path(location)
    if location.is_dir():
        from shared.datasets import load_manifest

        if not (location / MANIFEST_NAME).is_file():
            raise BadInputError(f"{location} has no {MANIFEST_NAME} (not a prepared dataset)", "--classes-from")
        return list(load_manifest(location).classes)
    try:
        data = json.loads(location.read_text())
    except OSError as exc:
        raise BadInputError(f"cannot read {location}: {exc.strerror}", "--classes-from") from None
    except ValueError:
        raise BadInputError(f"{location} is not JSON", "--classes-from") from None
    classes = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise BadInputError(f"{location}: expected a list of class names or {{\"classes\": [...]}}", "--classes-from")
    return classes


def job_source(backend: Backend, job_id: str, scratch: Path) -> Source:
    """A job's best checkpoint, fetched from the configured artifact store into `scratch`, and its
    classes. The record's checkpoint is a key: one that names a local path (or another bucket) is
    refused, so a record can never make predict load a file of this machine."""
    record = backend.store.find_job(check_id(job_id, "job id"))
    if record is None:
        raise BadInputError(f"unknown job {job_id!r}", "--job")
    if not record.checkpoint:
        raise NotFoundError(f"job {job_id} has no checkpoint yet (status {record.status.value})")
    key = backend.artifacts.key_for(record.checkpoint)
    path = safe_join(scratch, f"{check_id(record.job_id, 'job id')}.keras")
    backend.artifacts.get_file(key, path)
    try:
        classes: list[str] | None = dataset_classes(record.spec.dataset, backend.artifacts)
    except (NotFoundError, BadInputError, OSError):
        classes = None
    return Source(path, record.job_id, classes)


def resolve(
    backend_factory: Any, model: Path | None, job: str | None, classes_path: Path | None, scratch: Path
) -> Source:
    if model is None and job is None:
        raise BadInputError("give --model PATH or --job JOB", "--model")
    if model is not None:
        if not Path(model).is_file():
            raise BadInputError(f"no model file {model}", "--model")
        source = Source(Path(model), job, None)
        beside = Path(model).with_name(Path(model).stem + ".classes.json")
        if classes_path is None and beside.is_file():
            source.classes = classes_from(beside)
        elif classes_path is None and job is not None:
            source.classes = job_source(backend_factory(), job, scratch).classes
    else:
        source = job_source(backend_factory(), job, scratch)  # type: ignore[arg-type]
    if classes_path is not None:
        source.classes = classes_from(classes_path)
    return source


def load_images(paths: list[Path], size: int) -> Any:
    """(N, size, size, 3) float32 raw pixels, decoded and resized like the training data."""
    import numpy as np
    import tensorflow as tf

    from shared.datasets.images import check_image
    from worker.training.data import decode_image

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise BadInputError(f"no image file {path}", "IMAGE")
        check_image(Path(path))  # format and pixel limit from the header, before decoding
        try:
            images.append(decode_image(tf.constant(str(path)), size).numpy())
        except tf.errors.OpError:
            raise BadInputError(f"{path} is not a PNG, JPEG, GIF or BMP image", "IMAGE") from None
    return np.stack(images).astype("float32")


def predict(source: Source, images: list[Path], top: int) -> dict[str, Any]:
    """Top-`top` classes with probabilities for every image, as a JSON-ready document."""
    import numpy as np

    from worker.training.models import load_model  # registers the custom layers first

    if top < 1:
        raise BadInputError(f"must be at least 1, got {top}", "--top")
    try:
        model = load_model(source.model)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for a bad file
        raise BadInputError(f"cannot load model {source.model}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", "--model") from None
    size = int(model.input_shape[1])
    num_classes = int(model.output_shape[-1])
    classes = source.classes or [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise BadInputError(f"the model predicts {num_classes} classes, the class list has {len(classes)}", "--classes-from")
    probabilities = np.asarray(model.predict(load_images(images, size), verbose=0), dtype="float64")
    k = min(top, num_classes)
    predictions = []
    for path, row in zip(images, probabilities):
        order = np.argsort(-row, kind="stable")[:k]
        predictions.append({
            "image": str(path),
            "top": [{"class": classes[i], "index": int(i), "probability": round(float(row[i]), 6)} for i in order],
        })
    return {
        "model": str(source.model), "job_id": source.job_id, "image_size": size, "classes": classes,
        "top": k, "predictions": predictions,
    }


def run(backend_factory: Any, model: Path | None, job: str | None, classes_path: Path | None, images: list[Path], top: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="spotsweep-predict-") as scratch:
        source = resolve(backend_factory, model, job, classes_path, Path(scratch))
        return predict(source, images, top)
