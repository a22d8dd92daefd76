"""Leaderboard rows and the architecture x optimizer matrix, as pandas DataFrames."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from shared.jobs import JobRecord
from shared.optimizers import CONCRETE_CLASSES
from shared.ranking import LOWER_IS_BETTER, Ranked, rank

COLUMNS = [
    "rank", "job_id", "kind", "status", "architecture", "weights", "optimizer", "optimizer_params",
    "batch_size", "image_size", "data_fraction", "augmentation", "val_accuracy", "val_loss",
    "test_accuracy", "test_loss", "score", "mean", "std", "repeats", "best_epoch", "epochs_run",
    "train_seconds", "cost_usd", "total_params", "trainable_params", "attempts", "preemptions",
    "parent_job_id", "checkpoint",
]


# What a person reads in a terminal (short headers); json/csv/markdown carry every column.
TABLE_COLUMNS = {
    "rank": "#", "job_id": "job", "kind": "kind", "status": "status", "architecture": "arch", "optimizer": "opt",
    "params": "params", "batch_size": "batch", "data_fraction": "frac", "val_accuracy": "val_acc",
    "val_loss": "val_loss", "test_accuracy": "test_acc", "std": "std", "best_epoch": "best", "epochs_run": "epochs",
    "train_seconds": "seconds", "cost_usd": "cost", "attempts": "tries", "preemptions": "preempt",
}
ALWAYS = {"rank", "job_id", "status", "architecture", "optimizer", "val_accuracy"}


def for_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard for a person (the terminal and report.html): short headers, non-default
    optimizer parameters as `k=v`, and only the columns that say something (and those a reader
    always looks for)."""
    shown = frame.assign(params=[_short_params(o, p) for o, p in zip(frame["optimizer"], frame["optimizer_params"])])
    keep = [c for c in TABLE_COLUMNS if c in ALWAYS or _says_something(shown[c])]
    return shown[keep].rename(columns=TABLE_COLUMNS)


def _says_something(values: pd.Series) -> bool:
    """False for a column that is empty, or holds one value on every row, or a zero on the rows
    that have one (`std` of single runs); True when rows differ, e.g. test accuracy on evaluations only."""
    present = values.dropna()
    if present.astype(str).nunique() > 1:
        return True
    return 0 < len(present) < len(values) and bool(present.iloc[0])


def _short_params(optimizer: str, params_json: str) -> str:
    defaults = CONCRETE_CLASSES[optimizer]().model_dump()
    params = json.loads(params_json) if params_json else {}
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()) if k == "learning_rate" or defaults.get(k) != v)


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
