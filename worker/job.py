"""The seam between the job loop and training: what the loop hands a job (`JobContext`), what
the job reports after every epoch (`EpochReport`) and what it returns (`JobResult`).

Plain dataclasses and enums, without TensorFlow: the loop owns the queue, the store and the
lease; training only sees the artifact store, the local dataset and two callables (progress
out, stop requests in). Importing this module never imports `worker.training`, so the loop and
its tests type the seam without loading Keras.

The closed sets are enums, checked again when a `JobResult` is built: a misspelt stop reason
is an error where it is made, never a silent preemption (which would re-enqueue the job
forever without counting towards the dead-letter queue).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from shared.jobs import JobSpec
from shared.ports import ArtifactStore


class StopReason(StrEnum):
    """Why the loop asks a running job to stop (polled through `JobContext.should_stop`)."""

    PREEMPTED = "preempted"  # a spot notice or a first signal: checkpoint, put the job back
    CANCELLED = "cancelled"  # `submit cancel`: the job ends CANCELLED
    LEASE_LOST = "lease lost"  # another worker owns the job now (or may): write nothing more
    HANDOFF = "handoff"  # the message nears the queue's visibility limit: put the job back on a fresh one


class JobOutcome(StrEnum):
    """How `run_job` ended: the job is done, or it stopped early because it was asked to."""

    COMPLETED = "completed"
    STOPPED = "stopped"


@dataclass
class EpochReport:
    """One completed epoch. The loop records it with a fenced write of the job's record, and that
    write is the commit point of the epoch's training state: `state_key` names the state that a
    resumed attempt loads (see worker.training.state); `artifacts` are record artifacts to point
    at from now on (this attempt's `log_csv`)."""

    epoch: int  # 1-based, the epoch just completed
    metrics: dict[str, float]  # loss, accuracy, val_loss, val_accuracy (+ anything else Keras logs)
    seconds: float
    state_key: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)


ShouldStop = Callable[[], StopReason | None]


def _no_report(report: EpochReport) -> None:
    return None


def _never_stop() -> StopReason | None:
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
    attempt: int = 1  # the claim's attempt number: this attempt writes only under `attempt_prefix`
    state_key: str | None = None  # the record's committed training state (from any attempt); None: none yet
    parent_checkpoint: str | None = None  # finetune/evaluate: the parent record's `checkpoint` key
    on_epoch: Callable[[EpochReport], None] = _no_report  # after each epoch, AFTER its state is saved: the commit
    should_stop: ShouldStop = _never_stop  # polled after every batch; a reason stops the job
    feature_cache_prefix: str = "feature-cache"
    cache_dir: Path | None = None  # where decoded-image caches live (default: dataset_dir/.cache)

    @property
    def attempt_prefix(self) -> str:
        """Where this attempt writes its files: a worker fenced out of the job keeps writing (if
        at all) under its own attempt's folder, never over what the new owner reads."""
        return f"{self.prefix}/attempt-{self.attempt}"

    @property
    def local_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.dataset_dir) / ".cache"


@dataclass
class JobResult:
    """What one attempt of a job produced. `stop_reason` is set exactly when `outcome` is
    STOPPED. Plain strings are accepted and converted (a value outside the enum raises
    ValueError here, at the one place a result is made)."""

    outcome: JobOutcome
    stop_reason: StopReason | None
    epochs_run: int  # epochs completed in total (across attempts)
    best_epoch: int | None
    metrics: dict[str, float]  # train/finetune: the best epoch's metrics; evaluate: test_accuracy, test_loss
    seconds: float  # wall time spent in this attempt
    total_params: int | None
    trainable_params: int | None
    checkpoint: str | None  # artifact key of the best model (.keras), published by a completed job
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> artifact key (or prefix)

    def __post_init__(self) -> None:
        self.outcome = JobOutcome(self.outcome)
        self.stop_reason = None if self.stop_reason is None else StopReason(self.stop_reason)
        if (self.outcome is JobOutcome.STOPPED) != (self.stop_reason is not None):
            raise ValueError(f"a {self.outcome} job result with stop reason {self.stop_reason!r}")
