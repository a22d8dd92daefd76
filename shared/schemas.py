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


class FailedJob(_Doc):
    """A FAILED job and why."""

    job_id: str
    kind: str
    failures: int = Field(description="the job's own errors counted in its record")
    error: str | None = Field(
        description="its last error; 'dead-lettered after N own failures: ...' when the reconciler recorded it"
    )


class RungCounts(_Doc):
    """One ASHA rung: its jobs by state, and how many of its finished trials went on to the next."""

    epochs: int = Field(description="the rung's cumulative epochs")
    finished: int = Field(description="trials whose job at this rung succeeded")
    running: int
    queued: int
    promoted: int = Field(description="trials promoted from this rung to the next")


class BudgetUse(_Doc):
    """A budget's limits beside what is spent: each as [used, limit], the limit null where the
    budget sets none. Once one is reached no job is enqueued; running jobs finish."""

    jobs: tuple[float, float | None] = Field(description="training jobs created")
    gpu_hours: tuple[float, float | None]
    usd: tuple[float, float | None]
    reached: bool


class SearchStatus(_Doc):
    """A search's progress (shared.search.summary): trials by where they stand."""

    method: str = Field(description="grid, random, sobol, tpe or asha")
    count: int = Field(description="trials planned in total")
    created: int = Field(description="trials with a job record")
    done: int = Field(description="trials finished (at their last rung, for ASHA)")
    running: int
    queued: int
    planned: int = Field(description="trials not created yet: count - created")
    complete: bool = Field(description="no job will be enqueued any more (every trial decided, or the budget reached)")
    epochs_trained: int = Field(description="epochs trained so far (a promotion's resumed epochs counted once)")
    budget: BudgetUse | None = Field(description="null: the study has no budget")
    rungs: list[RungCounts] = Field(description="ASHA's rungs, lowest first; empty for other methods")


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
    models_seen_test: int = Field(
        description="how many models of the study have seen the test split (distinct models of succeeded evaluations)"
    )
    running: list[RunningJob]
    failed: list[FailedJob] = Field(default_factory=list, description="the FAILED jobs with their reason")
    search: SearchStatus | None = Field(None, description="a sampled or adaptive search, or a budget: its trials")
    rows: list[RunningJob] = Field(description="the running jobs again, as table rows")


# --- submit leaderboard ---


class LeaderboardRow(_Doc):
    """One configuration (repeats folded): its best repeat's job, with mean and std of the ranking
    metric (configurations are ranked by the mean), and every accuracy with its 95% interval."""

    rank: int
    job_id: str
    kind: str
    status: str
    trial: int | None = Field(description="the search's trial number; null: a grid's job or a follow-up")
    rung: int | None = Field(description="the rung the row's job reached (ASHA; 0 for other searches)")
    rung_epochs: int | None = Field(description="that rung's cumulative epochs")
    stopped_early: bool | None = Field(
        description="ASHA stopped the trial at this rung: it ranks by this rung's score"
    )
    architecture: str
    weights: str
    optimizer: str
    optimizer_params: str = Field(description="the optimizer's parameters, as compact JSON")
    batch_size: int
    image_size: int
    data_fraction: float
    augmentation: bool
    val_accuracy: float | None = Field(description="the row's job's (the best repeat's) validation accuracy")
    val_examples: int | None = Field(description="the validation examples it was measured on; null: not recorded")
    val_accuracy_ci_low: float | None = Field(description="Wilson's 95% interval of val_accuracy over val_examples")
    val_accuracy_ci_high: float | None
    val_accuracy_mean: float | None = Field(description="the mean val_accuracy over the succeeded repeats")
    val_accuracy_mean_ci_low: float | None = Field(
        description="the 95% t-interval of that mean over seeds; null with fewer than 2 repeats"
    )
    val_accuracy_mean_ci_high: float | None
    tied_with_best: bool | None = Field(
        description="not significantly different from #1 (exact McNemar on the same validation examples, "
                    "Holm-corrected over the rows shown; ranked by val_accuracy only); #1 itself: true; "
                    "null: no comparable file"
    )
    tie_p_value: float | None = Field(description="the Holm-adjusted p-value of the comparison with #1")
    val_loss: float | None
    test_accuracy: float | None = Field(description="the test accuracy of the row's model (its evaluation's)")
    test_examples: int | None = Field(description="the test examples it was measured on; null: not recorded")
    test_accuracy_ci_low: float | None = Field(description="Wilson's 95% interval of test_accuracy over test_examples")
    test_accuracy_ci_high: float | None
    test_loss: float | None
    evaluation_job_id: str | None = Field(description="the evaluation that gave a trained model its test score")
    val_test_gap: float | None = Field(description="val_accuracy - test_accuracy of the evaluated model")
    gap_warning: bool | None = Field(description="the test accuracy lies outside the validation 95% interval")
    score: float | None = Field(description="the best repeat's value of the ranking metric")
    mean: float | None = Field(description="the mean of the ranking metric over the succeeded repeats: the sort key")
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
    gap_warning: str | None = Field(
        description="one line when evaluated models score outside their validation interval on the test split"
    )
    rows: list[LeaderboardRow]


class MatrixDocument(_Doc):
    """`submit leaderboard --matrix ROW COL --format json`: one row per ROW value, with the ROW
    field and one field per COL value holding the best metric (null: no job of that pair)."""

    study_id: str
    matrix: list[str] = Field(min_length=2, max_length=2, description="[ROW, COL]")
    metric: str
    rows: list[dict[str, Any]]


class CompareDocument(_Doc):
    """`submit compare A B --format json`: the paired comparison of two jobs on the same examples."""

    split: str = Field(description="val (the jobs' best epochs) or test (their models' evaluations)")
    a_job_id: str
    b_job_id: str
    a_source_job_id: str = Field(description="the job whose per-example file was read for A (on test: its evaluation)")
    b_source_job_id: str
    a_accuracy: float = Field(description="A's accuracy on the compared examples")
    b_accuracy: float
    n: int = Field(description="examples compared")
    a_only: int = Field(description="examples only A got right")
    b_only: int = Field(description="examples only B got right")
    disagreements: int = Field(description="a_only + b_only")
    p_value: float = Field(ge=0, le=1, description="exact two-sided McNemar test (binomial on the disagreements)")
    sentence: str = Field(description="the same, in one plain sentence")


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


class ActionIds(_Doc):
    count: int
    ids: list[str]


class RepairDocument(_Doc):
    """`submit repair --format json`: what the reconciler did (shared/reconcile.py), job ids by action."""

    redriven: ActionIds = Field(description="dead-lettered jobs sent again (their own failures under the limit)")
    failed: ActionIds = Field(description="dead-lettered jobs at the failure limit, recorded FAILED with the reason")
    dead_dropped: ActionIds = Field(description="dead letters deleted: their job finished, held by a live worker, or done")
    poison: ActionIds = Field(description="dead letters left for people: no job's message (message ids)")
    sent_unsent: ActionIds = Field(description="jobs whose message was never sent")
    sent_lapsed: ActionIds = Field(description="RUNNING jobs whose worker died, with nothing sent since")
    resent: ActionIds = Field(description="jobs whose message may be gone (a purge, the queue's retention)")
    sent_suspicious: ActionIds = Field(
        description="RUNNING jobs holding a lease longer than any claim grants (a broken or hostile writer), sent again"
    )
    cancelled: ActionIds = Field(description="jobs of cancelled studies cancelled or asked to stop")
    advanced: dict[str, dict[str, int]] = Field(description="study -> follow-up stage started -> jobs created")
    errors: ActionIds = Field(description="one line per study the reconciler could not handle")


class SubmitDocument(_Doc):
    """`submit study FILE --format json`."""

    study_id: str
    jobs: int
    created: int
    existing: int
    sent: int
    resent: int = Field(0, description="existing jobs whose message had never been sent, sent now")
    repair: RepairDocument | None = Field(None, description="a study submitted before: what the reconciler did for it")
    warnings: list[str] = Field([], description="one line per way the study can only produce noise")


class SearchPlan(_Doc):
    """An adaptive search's or a budget's dry run: what is decided now, what later, and the most
    it can cost (running jobs still finish past a budget's cap)."""

    method: str
    trials: int = Field(description="trials the search may run in all")
    jobs: int = Field(description="the most jobs it may create (ASHA: every promotion counted)")
    epochs: int = Field(description="the most epochs it may train (shared.search.upper_bound)")
    initial_jobs: int = Field(description="jobs enqueued at submission (the `jobs` listed)")
    trials_decided_later: int = Field(description="trials proposed only as results arrive")
    jobs_decided_later: int = Field(description="jobs created only as results arrive (later trials, promotions)")
    gpu_hours: float | None = Field(description="epochs x seconds per epoch observed in earlier studies; null: none")
    usd: float | None = Field(description="gpu_hours x the price per hour; null: either unknown")
    budget: dict[str, float | None] | None = Field(description="the study's budget: jobs, gpu_hours, usd")
    gpu_hours_bound: float | None = Field(description="the smallest of the estimate and the budget's caps")
    usd_bound: float | None = Field(description="the smallest of the estimate and the budget's caps")


class DryRunDocument(_Doc):
    """`submit study FILE --dry-run --format json`."""

    study_id: str
    name: str
    job_count: int
    estimate: dict[str, Any]
    dry_run: bool
    jobs: list[dict[str, Any]]
    warnings: list[str] = Field([], description="one line per way the study can only produce noise")
    search: SearchPlan | None = Field(None, description="adaptive searches (tpe, asha) and budgets: the upper bound")


class EvaluationRow(_Doc):
    """One model's evaluation on the test split: its recorded result once SUCCEEDED, else its status."""

    model_job_id: str
    evaluation_job_id: str
    status: str
    test_accuracy: float | None
    test_loss: float | None
    test_examples: int | None
    error: str | None


class EvaluateDocument(_Doc):
    """`submit evaluate --format json`: a model already evaluated is not evaluated again (created 0)."""

    study_id: str
    created: int
    existing: int
    sent: int
    evaluations: list[EvaluationRow]


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
    "compare": CompareDocument,
    "studies": StudiesDocument,
    "show": ShowDocument,
    "study": SubmitDocument,
    "repair": RepairDocument,
    "dry-run": DryRunDocument,
    "evaluate": EvaluateDocument,
    "report": ReportDocument,
    "export": ExportDocument,
    "predict": PredictionDocument,
}
