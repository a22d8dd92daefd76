"""Evaluation: the parent's best model predicts the held-out test split, once.

Evaluation is the only job kind that opens the test split (`data.check_split_access`).
test_accuracy is computed from the same predictions that the CSV lists, so it always equals the
share of CSV rows whose predicted class is the true class. test_loss is the mean cross-entropy
of those predictions (without the head's regularization penalties, which Keras adds to val_loss).
`test_correct.bin` holds which test images the model got right, in the CSV's row order, named by
the hash of those rows' `file` paths (`shared.stats.encode_correct`): what `submit compare
--split test` pairs, and `test_examples` (the split's size) is what the test interval is over.
"""

from __future__ import annotations

import csv
import io
import json
import time

import keras
import numpy as np

from shared.errors import PermanentError
from shared.manifest import Manifest
from shared.stats import encode_correct, examples_id
from worker.training import data
from worker.job import JobContext, JobOutcome, JobResult, StopReason
from worker.training.inputs import load_parent, parent_checkpoint_key
from worker.training.models import count_params
from worker.training.stopping import StopPoller, StopRequested

EPSILON = 1e-7  # Keras's clipping of probabilities in cross-entropy


def evaluate(ctx: JobContext, manifest: Manifest, started: float) -> JobResult:
    model = load_parent(ctx)
    files = data.split_files(manifest, "test", ctx.spec.kind)
    num_classes = model.output_shape[-1]
    if num_classes != len(manifest.classes):
        raise PermanentError(f"the model predicts {num_classes} classes, the dataset has {len(manifest.classes)}")
    try:
        images = data.load_images(
            ctx.dataset_dir, manifest, "test", model.input_shape[1], ctx.local_cache_dir, ctx.should_stop,
            reader=ctx.spec.kind,
        )
        batches = data.Batches(images, files.labels, ctx.spec.training.batch_size).in_order()
        probabilities = model.predict(batches, callbacks=[StopPoller(ctx.should_stop)], verbose=0)
    except StopRequested as stop:
        return _stopped(ctx, model, stop.reason, started)
    scores = score(probabilities, files.labels)
    artifacts = _write_reports(ctx, manifest, files, probabilities, scores)
    total, trainable = count_params(model)
    return JobResult(
        outcome=JobOutcome.COMPLETED,
        stop_reason=None,
        epochs_run=0,
        best_epoch=None,
        metrics={"test_accuracy": scores["accuracy"], "test_loss": scores["loss"], "test_examples": len(files.paths)},
        seconds=time.monotonic() - started,
        total_params=total,
        trainable_params=trainable,
        checkpoint=parent_checkpoint_key(ctx),
        artifacts=artifacts,
    )


def score(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    true_probability = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1.0)
    return {"accuracy": float(np.mean(predicted == labels)), "loss": float(np.mean(-np.log(true_probability)))}


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix  # rows: true class, columns: predicted class


def _write_reports(
    ctx: JobContext, manifest: Manifest, files: data.SplitFiles, probabilities: np.ndarray, scores: dict[str, float]
) -> dict[str, str]:
    classes = manifest.classes
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(files.labels, predicted, len(classes))
    support = matrix.sum(axis=1)
    per_class = {name: (float(matrix[i, i] / support[i]) if support[i] else None) for i, name in enumerate(classes)}
    keys = {  # under the attempt's folder: a fenced-out evaluation never rewrites the recorded one
        "predictions_csv": f"{ctx.attempt_prefix}/predictions.csv",
        "confusion_matrix": f"{ctx.attempt_prefix}/confusion_matrix.json",
        "per_class_accuracy": f"{ctx.attempt_prefix}/per_class_accuracy.json",
        "test_correct": f"{ctx.attempt_prefix}/test_correct.bin",
    }
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "true_class", "predicted_class", "probability"])
    for path, label, guess, row in zip(files.paths, files.labels, predicted, probabilities):
        writer.writerow([path, classes[label], classes[guess], f"{row[guess]:.6f}"])
    ctx.artifacts.put_bytes(keys["predictions_csv"], out.getvalue().encode())
    confusion = {"classes": classes, "matrix": matrix.tolist()}
    ctx.artifacts.put_bytes(keys["confusion_matrix"], json.dumps(confusion).encode())
    ctx.artifacts.put_bytes(keys["per_class_accuracy"], json.dumps(per_class, indent=1).encode())
    correct = encode_correct(predicted == files.labels, examples_id(files.paths))  # the CSV's rows, in order
    ctx.artifacts.put_bytes(keys["test_correct"], correct)
    return keys


def _stopped(ctx: JobContext, model: keras.Model, reason: StopReason, started: float) -> JobResult:
    total, trainable = count_params(model)
    return JobResult(JobOutcome.STOPPED, reason, 0, None, {}, time.monotonic() - started, total, trainable, None, {})
