"""Resumable training state: progress, early stopping and the best epoch's model, kept in the artifact store.

At the end of every epoch the job saves the model it trains (weights and optimizer state, as a
`.keras` file named after the epoch) and then a JSON of its progress that names that file, both
under its own attempt's folder (`{job}/attempt-{n}/state/`), both written once and never again.
The commit point is not in the artifact store: it is the loop's fenced record write of the
epoch (`epochs_run` with `state_key`, the JSON's key). A resumed attempt loads the state that
its record names, from whichever attempt wrote it, and writes only under its own folder.

Why this cannot be overwritten or deleted under the job's owner:
- A worker that lost its lease may still write, but only new keys under its own attempt's
  folder, which no committed state names (its commit is refused by the fence).
- Files are deleted only after the commit that supersedes them succeeded (`discard`): a fenced
  worker never gets there. A worker whose commit went through just before another took the
  job over deletes only what that commit superseded, and the new owner read its record (the
  state to load) after that commit, since the claim comes after it.

The state keeps two model files at most: the last epoch's (to resume from) and the best epoch's
(from which `best.keras` is published once, when the job completes, under the attempt's
folder). Keras's own EarlyStopping/ModelCheckpoint keep their state in memory for one `fit`
call; here that state (wait counter, best values, best epoch, every epoch's metrics) travels in
the JSON so that a job resumed on another host behaves as if it had never stopped.

State saved by the earlier layout (`{job}/state/state.json`, committed in the artifact store)
still loads when the record names no state: such a job resumes, and moves to the new layout.

What is recorded (`recorded_metrics`): `loss` and `val_loss` are the plain cross-entropy, the
quantity evaluation's `test_loss` is, and what early stopping on `val_loss` follows. Keras's own
`loss` adds the head's regularisation penalties (L2 on the kernel, L1 on the activity: with the
default head, most of the value), which shrink as training goes on whatever the accuracy does;
that part is recorded on its own, as `penalty` and `val_penalty`.

A fine-tuning job starts from its parent's score (`Progress.start_from`): epoch 0 is the
parent's model, measured on the same validation split, and stays the best epoch (the model
published) until an epoch beats it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from shared.errors import NotFoundError, PermanentError
from shared.jobs import EarlyStopping
from shared.ports import ArtifactStore


CROSS_ENTROPY = "ce"  # the metric every model is compiled with (sessions.compile_model)
_KERAS_NAMES = frozenset({"loss", "val_loss", CROSS_ENTROPY, f"val_{CROSS_ENTROPY}"})
BEST_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")  # what a job's record keeps of its best epoch


def recorded_metrics(logs: Mapping[str, float]) -> dict[str, float]:
    """Keras's logs of one epoch (or evaluation) under the names a job records: `loss`/`val_loss`
    the cross-entropy, `penalty`/`val_penalty` what Keras's loss adds to it (the regularisers).
    Logs without the cross-entropy metric are returned as they are."""
    recorded = {name: float(value) for name, value in logs.items() if name not in _KERAS_NAMES}
    for prefix in ("", "val_"):
        if f"{prefix}{CROSS_ENTROPY}" in logs:
            cross_entropy = float(logs[f"{prefix}{CROSS_ENTROPY}"])
            recorded[f"{prefix}loss"] = cross_entropy
            if f"{prefix}loss" in logs:
                recorded[f"{prefix}penalty"] = float(logs[f"{prefix}loss"]) - cross_entropy
        elif f"{prefix}loss" in logs:
            recorded[f"{prefix}loss"] = float(logs[f"{prefix}loss"])
    return recorded


@dataclass(frozen=True)
class Monitor:
    """What "better" means: for the best checkpoint and for early stopping."""

    name: str = "val_accuracy"
    mode: Literal["min", "max"] = "max"
    min_delta: float = 0.0
    patience: int | None = None  # None: no early stopping

    @classmethod
    def from_spec(cls, spec: EarlyStopping | None) -> Monitor:
        if spec is None:
            return cls()
        mode = spec.mode
        if mode == "auto":  # Keras's rule: accuracy-like metrics grow, everything else shrinks
            mode = "max" if "acc" in spec.monitor or spec.monitor.startswith("fmeasure") else "min"
        return cls(spec.monitor, mode, spec.min_delta, spec.patience)

    def improves(self, value: float, reference: float | None, min_delta: float = 0.0) -> bool:
        if math.isnan(value):
            return False
        if reference is None:
            return True
        return value - min_delta > reference if self.mode == "max" else value + min_delta < reference

    def value(self, metrics: dict[str, float]) -> float:
        if self.name not in metrics:
            logged = sorted(metrics)
            raise PermanentError(f"early stopping monitors {self.name!r}, which training does not log ({logged})")
        return metrics[self.name]


@dataclass
class Progress:
    """Everything about a job's training that is not in the model file."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)  # one row per completed epoch
    best_epoch: int | None = None
    best_value: float | None = None  # the best checkpoint's monitored value
    stop_reference: float | None = None  # early stopping's best (improvements count beyond min_delta)
    wait: int = 0  # early stopping: epochs since the last improvement
    stopped_early: bool = False
    model_key: str | None = None  # the saved training model of the last completed epoch
    best_model_key: str | None = None  # the saved training model of the best epoch
    feature_cache: str | None = None  # the feature-cache entry that head-only training reads
    rng: list[list[int]] = field(default_factory=list)  # the model's seed-generator states (Dropout)
    # Fine-tuning: the parent's validation metrics (epoch 0, see `start_from`); None otherwise.
    reference: dict[str, float] | None = None
    job_metrics: dict[str, float] = field(default_factory=dict)  # of the job, not of an epoch (unfrozen_share)

    def start_from(self, monitor: Monitor, reference: dict[str, float]) -> None:
        """Make the parent's validation metrics epoch 0: the best checkpoint and early stopping
        both start from its score, so a fine-tuning epoch replaces the parent's weights only by
        beating them. A monitor the reference lacks (a training metric) starts from nothing."""
        self.reference = dict(reference)
        if monitor.name in reference and not math.isnan(reference[monitor.name]):
            self.best_epoch, self.best_value = 0, reference[monitor.name]
            self.stop_reference = reference[monitor.name]

    def record(self, monitor: Monitor, metrics: dict[str, float], seconds: float) -> bool:
        """Account for one completed epoch; True when it is the best so far (a new checkpoint)."""
        self.epoch += 1
        self.history.append({"epoch": self.epoch, **metrics, "seconds": seconds})
        value = monitor.value(metrics)
        improved = monitor.improves(value, self.best_value)
        if improved:
            self.best_epoch, self.best_value = self.epoch, value
        if monitor.patience is not None:
            self._early_stopping(monitor, value)
        return improved

    def _early_stopping(self, monitor: Monitor, value: float) -> None:
        # keras.callbacks.EarlyStopping's rule, with 1-based epochs (it never stops after the first).
        self.wait += 1
        if monitor.improves(value, self.stop_reference, monitor.min_delta):
            self.stop_reference, self.wait = value, 0
        elif self.wait >= (monitor.patience or 0) and self.epoch > 1:
            self.stopped_early = True

    def finished(self, max_epochs: int) -> bool:
        return self.stopped_early or self.epoch >= max_epochs

    def best_metrics(self) -> dict[str, float]:
        """The best epoch's metrics (epoch 0: the parent's), with the job's own; a fine-tuning
        job adds the parent's (`parent_val_accuracy`...) and whether it beat them (`beats_parent`)."""
        if self.best_epoch is None:
            return dict(self.job_metrics)
        row = (self.reference or {}) if self.best_epoch == 0 else self.history[self.best_epoch - 1]
        metrics = {k: row[k] for k in BEST_METRICS if k in row}
        if self.reference is not None:
            metrics.update({f"parent_{k}": self.reference[k] for k in BEST_METRICS if k in self.reference})
            metrics["beats_parent"] = float(self.best_epoch > 0)
        return {**metrics, **self.job_metrics}

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Progress:
        known = {f.name for f in fields(cls)}  # tolerate fields written by a newer worker
        return cls(**{k: v for k, v in json.loads(data).items() if k in known})


class StateStore:
    """A job's training states: read from the committed key, written under one attempt's folder."""

    def __init__(
        self, artifacts: ArtifactStore, attempt_prefix: str, work_dir: Path,
        committed: str | None = None, legacy_key: str | None = None,
    ) -> None:
        self.artifacts = artifacts
        self.prefix = f"{attempt_prefix}/state"
        self.work_dir = Path(work_dir) / "state"
        self.committed = committed  # the state the job's record names (None: no epoch committed yet)
        self.legacy_key = legacy_key  # where the earlier layout kept a job's state

    def load(self) -> Progress | None:
        """The committed state; None for a job with none. A committed key that is gone raises
        NotFoundError (permanent: what the record names must exist)."""
        if self.committed is not None:
            return Progress.from_json(self.artifacts.get_bytes(self.committed))
        if self.legacy_key is None:
            return None
        try:
            progress = Progress.from_json(self.artifacts.get_bytes(self.legacy_key))
        except NotFoundError:
            return None
        self.committed = self.legacy_key  # superseded (and deleted) by this attempt's first commit
        return progress

    def model_path(self, progress: Progress, key: str | None = None) -> Path:
        """A saved training model (by default the last completed epoch's), downloaded."""
        key = key or progress.model_key
        assert key is not None, "a saved state always names its model"
        local = self.work_dir / Path(key).name
        self.artifacts.get_file(key, local)
        return local

    def save(self, progress: Progress, model: keras.Model) -> Saved:
        """Write the epoch just recorded in `progress` under this attempt's folder: the model,
        then the JSON naming it (and the best epoch's model, kept). Nothing is committed or
        deleted here: the caller commits `Saved.key`, then `discard`s what it supersedes."""
        superseded = {progress.model_key, progress.best_model_key, self.committed}
        name = f"epoch-{progress.epoch:04d}"
        local = self.work_dir / f"{name}.keras"
        local.parent.mkdir(parents=True, exist_ok=True)
        model.save(local)  # a compiled model: weights AND optimizer state (iterations, moments)
        progress.rng = rng_state(model)
        progress.model_key = f"{self.prefix}/{name}.keras"
        if progress.best_epoch == progress.epoch:
            progress.best_model_key = progress.model_key
        self.artifacts.put_file(local, progress.model_key)
        key = f"{self.prefix}/{name}.json"
        self.artifacts.put_bytes(key, progress.to_json())
        local.unlink(missing_ok=True)
        kept = {progress.model_key, progress.best_model_key, key}
        return Saved(key, frozenset(k for k in superseded - kept if k is not None))

    def save_reference(self, progress: Progress, model: keras.Model) -> None:
        """Keep the parent's model as epoch 0's (`epoch-0000.keras`), the best epoch's until one
        beats it: then it is superseded like any other (see `save`). Not committed by itself:
        the first epoch's state names it."""
        local = self.work_dir / "epoch-0000.keras"
        local.parent.mkdir(parents=True, exist_ok=True)
        if model.optimizer is not None and not model.optimizer.built:
            # Its (zero) slots, saved: a file whose optimizer has fewer variables than the model
            # needs loads with a warning ("Skipping variable loading for optimizer").
            model.optimizer.build(model.trainable_variables)
        model.save(local)
        progress.best_model_key = f"{self.prefix}/epoch-0000.keras"
        self.artifacts.put_file(local, progress.best_model_key)
        local.unlink(missing_ok=True)

    def discard(self, saved: Saved) -> None:
        """After `saved.key` was committed: it is the state now, and what it superseded goes,
        except another job's files: an ASHA promotion starts from its parent rung's state, which
        stays its parent's (the parent's record names it)."""
        self.committed = saved.key
        own = self.prefix.rsplit("/attempt-", 1)[0] + "/"
        for key in sorted(saved.superseded):
            if key.startswith(own):
                self.artifacts.delete(key)


@dataclass(frozen=True)
class Saved:
    """A state written and not yet committed: its key, and the keys it supersedes once it is."""

    key: str
    superseded: frozenset[str]


def _seed_states(model: keras.Model) -> list[keras.Variable]:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def rng_state(model: keras.Model) -> list[list[int]]:
    """The states of the model's random seed generators (Dropout masks). A `.keras` file does
    not keep them (a loaded layer draws a fresh seed), so they travel in the state JSON: a
    resumed job then draws the same masks as one that never stopped."""
    return [[int(x) for x in keras.ops.convert_to_numpy(v)] for v in _seed_states(model)]


def restore_rng_state(model: keras.Model, states: list[list[int]]) -> None:
    variables = _seed_states(model)
    if len(variables) != len(states):
        return  # a state saved by another version of the model: keep the fresh seeds
    for variable, value in zip(variables, states):
        variable.assign(np.asarray(value, dtype=variable.dtype))
