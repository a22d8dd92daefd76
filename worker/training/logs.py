"""Per-job logs in the artifact store: `log.csv` and TensorBoard scalars.

The CSV is rewritten from the saved history after every epoch rather than appended to, so it
stays one continuous log across attempts and hosts: a redone epoch replaces nothing and is never
listed twice, and an epoch is never missing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import tensorflow as tf

from shared.ports import ArtifactStore

FIRST_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def csv_text(history: list[dict[str, float]]) -> str:
    """One row per epoch (1-based), the usual columns first, then anything else Keras logged."""
    extra = sorted({key for row in history for key in row} - set(FIRST_COLUMNS) - {"seconds"})
    columns = [c for c in FIRST_COLUMNS if any(c in row for row in history)] + extra + ["seconds"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({**row, "epoch": int(row["epoch"])})
    return out.getvalue()


class EpochLogs:
    def __init__(self, artifacts: ArtifactStore, prefix: str, work_dir: Path) -> None:
        self.artifacts = artifacts
        self.csv_key = f"{prefix}/log.csv"
        self.tensorboard_prefix = f"{prefix}/tensorboard"
        self.tensorboard_dir = Path(work_dir) / "tensorboard"
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def write_csv(self, history: list[dict[str, float]]) -> None:
        if history:
            self.artifacts.put_bytes(self.csv_key, csv_text(history).encode())

    def write_epoch(self, history: list[dict[str, float]]) -> None:
        """The CSV, and the last epoch's scalars under Keras's TensorBoard names
        (train/epoch_loss, validation/epoch_loss, ...), uploaded."""
        self.write_csv(history)
        row = history[-1]
        step = int(row["epoch"])
        for name, value in row.items():
            if name in ("epoch", "seconds"):
                continue
            run, metric = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            with self._writer(run).as_default():
                tf.summary.scalar(f"epoch_{metric}", value, step=step)
        with self._writer("train").as_default():
            tf.summary.scalar("epoch_seconds", row["seconds"], step=step)
        self._upload_tensorboard()

    def _writer(self, run: str) -> tf.summary.SummaryWriter:
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(str(self.tensorboard_dir / run))
        return self._writers[run]

    def _upload_tensorboard(self) -> None:
        for writer in self._writers.values():
            writer.flush()
        for path in sorted(self.tensorboard_dir.rglob("*")):
            if path.is_file():
                relative = path.relative_to(self.tensorboard_dir).as_posix()
                self.artifacts.put_file(path, f"{self.tensorboard_prefix}/{relative}")

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
