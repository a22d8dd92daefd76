"""The documented shape of every `--format json` output (`submit ... --format json`, `worker predict`).

These models are the contract for scripts: fields are only ever added, never renamed or removed,
without a new `schema_version`. `submit schema NAME` prints one as JSON Schema; tests validate
the real outputs against them. Every table-like document carries its rows under `rows` (the same
rows `--format csv` prints); unknown fields are refused, so the models stay complete.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.jobs import JobRecord


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- submit status ---


class RunningJob(_Doc):
    """A RUNNING job: its progress and its lease's health."""

    job_id: str
    kind: str = Field(description="train, finetune or evaluate")
    architecture: str
    optimizer: str
    attempt: int = Field(description="the claim count (fencing token)")
    epoch: int = Field(description="epochs completed so far")
    epochs: int = Field(description="the job's maximum epochs")
    val_accuracy: float | None = Field(description="best validation accuracy so far")
    worker: str | None = Field(description="the lease owner")
    heartbeat_age_s: float | None = Field(description="seconds since the last heartbeat; null: never")
    stale: bool = Field(description="heartbeat older than the stale threshold, or lease expired")


class QueueDepth(_Doc):
    visible: int = Field(description="messages waiting")
    in_flight: int = Field(description="messages received, not yet deleted")
    dead_lettered: int = Field(description="messages in the dead-letter queue")


class StatusDocument(_Doc):
    """`submit status --format json`."""

    study_id: str
    name: str
    counts: dict[str, int] = Field(description="jobs per state: QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED")
    total: int
    train_seconds: float
    cost_usd: float
    queue: QueueDepth
    stale: int = Field(description="running jobs with a stale lease")
    finished: bool = Field(description="every job is SUCCEEDED, FAILED or CANCELLED")
    eta_s: float | None = Field(description="rough seconds left; null: unknown yet")
    running: list[RunningJob]
    rows: list[RunningJob] = Field(description="the running jobs again, as table rows")


# --- submit leaderboard ---


class LeaderboardRow(_Doc):
    """One configuration (repeats folded): its best repeat's job, with mean and std of the metric."""

    rank: int
    job_id: str
    kind: str
    status: str
    architecture: str
    weights: str
    optimizer: str
    optimizer_params: str = Field(description="the optimizer's parameters, as compact JSON")
    batch_size: int
    image_size: int
    data_fraction: float
    augmentation: bool
    val_accuracy: float | None
    val_loss: float | None
    test_accuracy: float | None
    test_loss: float | None
    score: float | None = Field(description="the best repeat's value of the ranking metric")
    mean: float | None
    std: float | None
    repeats: int
    best_epoch: int | None
    epochs_run: int
    train_seconds: float
    cost_usd: float
    total_params: int | None
    trainable_params: int | None
    attempts: int
    preemptions: int
    parent_job_id: str | None
    checkpoint: str | None = Field(description="the artifact-store key of the best model (`submit export` reads it)")
    checkpoint_uri: str | None = Field(
        description="where a person finds that model (a file path, or s3://bucket/key): for display only"
    )


class LeaderboardDocument(_Doc):
    """`submit leaderboard --format json`."""

    study_id: str
    by: str = Field(description="the ranking metric")
    rows: list[LeaderboardRow]


class MatrixDocument(_Doc):
    """`submit leaderboard --matrix ROW COL --format json`: one row per ROW value, with the ROW
    field and one field per COL value holding the best metric (null: no job of that pair)."""

    study_id: str
    matrix: list[str] = Field(min_length=2, max_length=2, description="[ROW, COL]")
    metric: str
    rows: list[dict[str, Any]]


# --- submit studies / show / study ---


class StudySummary(_Doc):
    study_id: str
    name: str
    jobs: int
    succeeded: int
    failed: int
    best_val_accuracy: float | None
    cost_usd: float


class StudiesDocument(_Doc):
    """`submit studies --format json`."""

    rows: list[StudySummary]


class EpochRow(BaseModel):
    """One epoch of one attempt; the metrics Keras logged (loss, accuracy, val_loss, val_accuracy...)."""

    model_config = ConfigDict(extra="allow")

    epoch: int
    attempt: int
    seconds: float


class ShowDocument(_Doc):
    """`submit show JOB --format json`. The record holds artifact-store keys (`checkpoint`,
    `artifacts`); beside it, where a person finds each of them."""

    job: JobRecord
    checkpoint_uri: str | None = Field(description="the display URI of `job.checkpoint`; null: none")
    artifact_uris: dict[str, str | None] = Field(
        description="the display URI of each of `job.artifacts`, by name; null: not in this store"
    )
    rows: list[EpochRow]


class SubmitDocument(_Doc):
    """`submit study FILE --format json`."""

    study_id: str
    jobs: int
    created: int
    existing: int
    sent: int


class DryRunDocument(_Doc):
    """`submit study FILE --dry-run --format json`."""

    study_id: str
    name: str
    job_count: int
    estimate: dict[str, Any]
    dry_run: bool
    jobs: list[dict[str, Any]]


# --- submit report / export / predict ---


class ReportDocument(_Doc):
    """`submit report --format json`."""

    study_id: str
    out: str
    html: str
    files: list[str] = Field(description="every file written: the PNG plots, then report.html")


class ExportDocument(_Doc):
    """`submit export JOB --format json`."""

    job_id: str
    path: str
    classes_file: str | None
    classes: list[str] | None


class ClassProbability(_Doc):
    class_: str = Field(alias="class")
    index: int
    probability: float = Field(ge=0, le=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ImagePrediction(_Doc):
    image: str
    top: list[ClassProbability]


class PredictionDocument(_Doc):
    """`worker predict` (and `submit predict --format json`, which adds the flattened `rows`)."""

    model: str
    job_id: str | None
    image_size: int
    classes: list[str]
    top: int
    predictions: list[ImagePrediction]
    rows: list[dict[str, Any]] | None = None


DOCUMENTS: dict[str, type[BaseModel]] = {
    "status": StatusDocument,
    "leaderboard": LeaderboardDocument,
    "matrix": MatrixDocument,
    "studies": StudiesDocument,
    "show": ShowDocument,
    "study": SubmitDocument,
    "dry-run": DryRunDocument,
    "report": ReportDocument,
    "export": ExportDocument,
    "predict": PredictionDocument,
}
