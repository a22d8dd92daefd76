"""Resumable training state: progress, early stopping and the best epoch's model, kept in the artifact store.

At the end of every epoch the job saves the model it trains (weights and optimizer state, as a
`.keras` file named after the epoch) and then `state/state.json`, which names that file: the
JSON is the commit point, so a worker killed at any instant leaves either the previous complete
state or the new one. The state keeps two model files at most: the last epoch's (to resume
from) and the best epoch's (from which `best.keras` is published once, when the job
completes). Keras's own EarlyStopping/ModelCheckpoint keep their state in memory for one `fit`
call; here that state (wait counter, best values, best epoch, every epoch's metrics)
travels in the JSON so that a job resumed on another host behaves as if it had never stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from shared.errors import NotFoundError, PermanentError
from shared.jobs import EarlyStopping
from shared.ports import ArtifactStore


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
        if self.best_epoch is None:
            return {}
        row = self.history[self.best_epoch - 1]
        return {k: row[k] for k in ("val_accuracy", "val_loss", "accuracy", "loss") if k in row}

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Progress:
        known = {f.name for f in fields(cls)}  # tolerate fields written by a newer worker
        return cls(**{k: v for k, v in json.loads(data).items() if k in known})


class StateStore:
    """A job's `state/` folder in the artifact store."""

    def __init__(self, artifacts: ArtifactStore, prefix: str, work_dir: Path) -> None:
        self.artifacts = artifacts
        self.prefix = f"{prefix}/state"
        self.work_dir = Path(work_dir) / "state"

    @property
    def state_key(self) -> str:
        return f"{self.prefix}/state.json"

    def load(self) -> Progress | None:
        try:
            return Progress.from_json(self.artifacts.get_bytes(self.state_key))
        except NotFoundError:
            return None

    def model_path(self, progress: Progress, key: str | None = None) -> Path:
        """A saved training model (by default the last completed epoch's), downloaded."""
        key = key or progress.model_key
        assert key is not None, "a saved state always names its model"
        local = self.work_dir / Path(key).name
        self.artifacts.get_file(key, local)
        return local

    def save(self, progress: Progress, model: keras.Model) -> None:
        """Commit the epoch just recorded in `progress`, keeping the best epoch's model file
        (named by `best_model_key`) beside the last one and deleting any other."""
        superseded = {progress.model_key, progress.best_model_key}
        name = f"epoch-{progress.epoch:04d}.keras"
        local = self.work_dir / name
        local.parent.mkdir(parents=True, exist_ok=True)
        model.save(local)  # a compiled model: weights AND optimizer state (iterations, moments)
        progress.rng = rng_state(model)
        progress.model_key = f"{self.prefix}/{name}"
        if progress.best_epoch == progress.epoch:
            progress.best_model_key = progress.model_key
        self.artifacts.put_file(local, progress.model_key)
        self.artifacts.put_bytes(self.state_key, progress.to_json())  # the commit point
        local.unlink(missing_ok=True)
        for key in superseded - {progress.model_key, progress.best_model_key, None}:
            self.artifacts.delete(key)


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
