"""Per-job logs in the artifact store: `log.csv`, TensorBoard scalars and the study's HParams table.

The CSV is rewritten from the saved history after every epoch rather than appended to, so it
stays one continuous log across attempts and hosts: a redone epoch replaces nothing and is never
listed twice, and an epoch is never missing. Each attempt writes its own copy under its attempt
folder (`attempt-{n}/log.csv`, starting from the committed history), so that a worker that lost
its lease never rewrites the log of the job's new owner; the record's `artifacts["log_csv"]`
names the current one.

TensorBoard: a job's `tensorboard/` folder (`studies/<study>/jobs/<job>/tensorboard`) holds
Keras's per-epoch scalars in `train/` and `validation/`, and is itself an HParams *session*:
the job's hyperparameters (`job_hparams`) and its final metrics (`best/val_accuracy`,
`best/val_loss`, `best/epoch`, `epochs_run`, rewritten every epoch so a stopped job shows its
latest). `tensorboard --logdir` on a study's `jobs/` folder then lists every job of the study in
the HParams dashboard's table and parallel-coordinates view.

No job writes the study's `hparams_config` (the experiment summary): the dashboard uses one
such summary as the whole column list, and no single job knows the study's columns (an SGD job
has no `beta_1`). Without one, TensorBoard builds the experiment from every session's
hyperparameters: the union of the columns, strings as discrete domains, numbers as intervals.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from shared.jobs import JobSpec
from shared.ports import ArtifactStore
from worker.job import JobContext
from worker.training.state import Monitor, Progress

FIRST_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
SESSION_RUN = ""  # the HParams session is the job's tensorboard folder itself; train/, validation/ are its groups

HParamValue = str | bool | int | float


def job_hparams(spec: JobSpec) -> dict[str, HParamValue]:
    """The job's row in the study's HParams table: what a study sweeps, flat, without None
    (TensorBoard takes strings, booleans and numbers). Optimizer parameters are prefixed
    `optimizer.`, so each optimizer brings its own columns."""
    optimizer = spec.optimizer.model_dump(exclude={"name"})
    values: dict[str, HParamValue] = {
        "kind": spec.kind,
        "architecture": spec.model.architecture,
        "weights": spec.model.weights or "none",
        "image_size": spec.model.image_size,
        "head.units": spec.model.head.units,
        "head.dropout": spec.model.head.dropout,
        "optimizer": spec.optimizer.name,
        **{f"optimizer.{name}": value for name, value in optimizer.items() if value is not None},
        "batch_size": spec.training.batch_size,
        "data_fraction": spec.training.data_fraction,
        "epochs": spec.training.epochs,
        "augmentation": spec.training.augmentation is not None,
        "seed": spec.training.seed,
        "repeat": spec.repeat,
    }
    if spec.unfreeze_from is not None:
        values["unfreeze_from"] = str(spec.unfreeze_from)  # a layer index or a layer name
    return values


def final_metrics(history: list[dict[str, float]], monitor: Monitor) -> dict[str, float]:
    """The HParams table's metrics: the best epoch's (as the job's record and its `best.keras`
    have them) and the epochs run. The history is replayed through `Progress`, the one rule for
    which epoch is best."""
    progress = Progress()
    for row in history:
        progress.record(monitor, {k: v for k, v in row.items() if k not in ("epoch", "seconds")}, row["seconds"])
    metrics = {f"best/{name}": value for name, value in progress.best_metrics().items()}
    if progress.best_epoch is not None:
        metrics["best/epoch"] = float(progress.best_epoch)
    return {**metrics, "epochs_run": float(progress.epoch)}


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
    """A job's `log.csv` and `tensorboard/`, written locally and uploaded after every epoch.
    With the job's spec (`for_job`), the tensorboard folder is also the job's HParams session."""

    def __init__(
        self, artifacts: ArtifactStore, prefix: str, work_dir: Path,
        spec: JobSpec | None = None, trial_id: str | None = None, csv_key: str | None = None,
    ) -> None:
        self.artifacts = artifacts
        self.csv_key = csv_key or f"{prefix}/log.csv"
        self.tensorboard_prefix = f"{prefix}/tensorboard"
        self.tensorboard_dir = Path(work_dir) / "tensorboard"
        self.spec = spec
        self.trial_id = trial_id
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._session_started = False

    @classmethod
    def for_job(cls, ctx: JobContext) -> EpochLogs:
        return cls(ctx.artifacts, ctx.prefix, ctx.work_dir, ctx.spec, ctx.job_id, cls.csv_key_for(ctx))

    @staticmethod
    def csv_key_for(ctx: JobContext) -> str:
        """The attempt's CSV log. TensorBoard stays one folder per job (the HParams session):
        every attempt adds event files of its own there and rewrites none."""
        return f"{ctx.attempt_prefix}/log.csv"

    @staticmethod
    def tensorboard_prefix_for(ctx: JobContext) -> str:
        return f"{ctx.prefix}/tensorboard"

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
        if self.spec is not None:
            self._write_session(self.spec, history, step)
        self._upload_tensorboard()

    def _write_session(self, spec: JobSpec, history: list[dict[str, float]], step: int) -> None:
        """The HParams session: the hyperparameters (once per attempt: each attempt writes its
        own event file, and they all say the same) and the final metrics as of this epoch
        (TensorBoard shows a metric's last value)."""
        with self._writer(SESSION_RUN).as_default():
            if not self._session_started:
                hp.hparams(job_hparams(spec), trial_id=self.trial_id)
                self._session_started = True
            monitor = Monitor.from_spec(spec.training.early_stopping)
            for name, value in final_metrics(history, monitor).items():
                tf.summary.scalar(name, value, step=step)

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
