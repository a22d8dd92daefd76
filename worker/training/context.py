"""What the worker loop hands a job (`JobContext`) and what it gets back (`JobResult`, `EpochReport`).

Plain dataclasses: the loop owns the queue, the store and the lease; training only sees the
artifact store, the local dataset and two callables (progress out, stop requests in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared.jobs import JobSpec
from shared.ports import ArtifactStore


@dataclass
class EpochReport:
    epoch: int  # 1-based, the epoch just completed
    metrics: dict[str, float]  # loss, accuracy, val_loss, val_accuracy (+ anything else Keras logs)
    seconds: float


def _no_report(report: EpochReport) -> None:
    return None


def _never_stop() -> str | None:
    return None


@dataclass
class JobContext:
    study_id: str
    job_id: str
    spec: JobSpec
    dataset_dir: Path  # a prepared dataset synced locally: manifest.json, train/<class>/..., test/<class>/...
    work_dir: Path  # local scratch for this job (may hold files from an earlier attempt on this host)
    artifacts: ArtifactStore
    prefix: str  # this job's artifact key prefix (shared.paths.job_prefix)
    parent_prefix: str | None = None  # finetune/evaluate: the parent's best model is f"{parent_prefix}/best.keras"
    on_epoch: Callable[[EpochReport], None] = _no_report  # after each epoch, AFTER its state is saved
    should_stop: Callable[[], str | None] = _never_stop  # polled after every batch; a reason stops the job
    feature_cache_prefix: str = "feature-cache"
    cache_dir: Path | None = None  # where decoded-image caches live (default: dataset_dir/.cache)

    @property
    def local_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.dataset_dir) / ".cache"


@dataclass
class JobResult:
    outcome: Literal["completed", "stopped"]
    stop_reason: str | None
    epochs_run: int  # epochs completed in total (across attempts)
    best_epoch: int | None
    metrics: dict[str, float]  # train/finetune: the best epoch's metrics; evaluate: test_accuracy, test_loss
    seconds: float  # wall time spent in this attempt
    total_params: int | None
    trainable_params: int | None
    checkpoint: str | None  # artifact key of the best model (.keras)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> artifact key (or prefix)
