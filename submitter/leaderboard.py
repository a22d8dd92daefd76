"""Leaderboard rows and the architecture x optimizer matrix, as pandas DataFrames."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from shared.jobs import JobRecord
from shared.ranking import LOWER_IS_BETTER, Ranked, rank

COLUMNS = [
    "rank", "job_id", "kind", "status", "architecture", "weights", "optimizer", "optimizer_params",
    "batch_size", "image_size", "data_fraction", "augmentation", "val_accuracy", "val_loss",
    "test_accuracy", "test_loss", "score", "mean", "std", "repeats", "best_epoch", "epochs_run",
    "train_seconds", "cost_usd", "total_params", "trainable_params", "attempts", "preemptions",
    "parent_job_id", "checkpoint",
]


def job_row(record: JobRecord) -> dict[str, Any]:
    spec = record.spec
    optimizer = spec.optimizer.model_dump(exclude={"name"})
    return {
        "job_id": record.job_id,
        "kind": spec.kind,
        "status": record.status.value,
        "architecture": spec.model.architecture,
        "weights": spec.model.weights or "none",
        "optimizer": spec.optimizer.name,
        "optimizer_params": json.dumps(optimizer, sort_keys=True, separators=(",", ":")),
        "batch_size": spec.training.batch_size,
        "image_size": spec.model.image_size,
        "data_fraction": spec.training.data_fraction,
        "augmentation": spec.training.augmentation is not None,
        "val_accuracy": record.metrics.val_accuracy,
        "val_loss": record.metrics.val_loss,
        "test_accuracy": record.metrics.test_accuracy,
        "test_loss": record.metrics.test_loss,
        "best_epoch": record.best_epoch,
        "epochs_run": record.epochs_run,
        "train_seconds": round(record.train_seconds, 2),
        "cost_usd": round(record.cost_usd, 6),
        "total_params": record.total_params,
        "trainable_params": record.trainable_params,
        "attempts": record.attempt,
        "preemptions": record.preemptions,
        "parent_job_id": spec.parent_job_id,
        "checkpoint": record.checkpoint,
    }


def _ranked_row(position: int, ranked: Ranked) -> dict[str, Any]:
    return {**job_row(ranked.record), "rank": position, "score": ranked.score, "mean": ranked.mean,
            "std": ranked.std, "repeats": ranked.repeats}


def leaderboard(
    records: Sequence[JobRecord], by: str = "val_accuracy", kind: str | None = None, top: int | None = None
) -> pd.DataFrame:
    """One row per configuration (repeats folded into mean +- std), best first by `by`."""
    ranked = rank(records, by, kind)
    rows = [_ranked_row(i + 1, r) for i, r in enumerate(ranked[:top] if top else ranked)]
    return pd.DataFrame(rows, columns=COLUMNS)


def matrix(records: Sequence[JobRecord], row: str, column: str, metric: str = "val_accuracy") -> pd.DataFrame:
    """The best `metric` of every (row, column) pair, e.g. architecture x optimizer."""
    frame = pd.DataFrame([job_row(r) for r in records])
    for name in (row, column, metric):
        if name not in frame.columns and len(frame):
            raise KeyError(name)
    if frame.empty or frame[metric].isna().all():
        return pd.DataFrame(columns=[row])
    best = "min" if metric in LOWER_IS_BETTER else "max"
    table = frame.pivot_table(index=row, columns=column, values=metric, aggfunc=best)
    table.columns = [str(c) for c in table.columns]
    return table.reset_index()
