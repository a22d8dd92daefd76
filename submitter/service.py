"""What the `submit` commands do, as functions of the backend. The CLI only parses and renders."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared import search
from shared.ports import ArtifactStore, Backend
from shared.errors import BadInputError, NotFoundError
from shared.followups import (
    CANCELLED_STAGE,
    enqueue_finetune,
    enqueue_followups,
    evaluate_spec,
    evaluation_candidates,
    finetune_settings,
    with_ids,
)
from shared.jobs import JobRecord, StudyRecord
from shared.manifest import MANIFEST_NAME
from shared.reconcile import ReconcilePolicy, ReconcileReport, cancel_jobs, needs_cancel, reconcile
from shared.search import TrialView
from shared.status import JobStatus
from shared.study import ADAPTIVE_METHODS, MAX_STUDY_BYTES, StudySpec, job_count, parse_study, study_warnings
from shared.submission import SubmitReport, enqueue_records, submit_jobs

if TYPE_CHECKING:
    import pandas as pd

CLOCK_SKEW_S = 300.0  # how far ahead of ours a teammate's clock may be before a stamp is implausible
CANCEL_PASSES = 10  # `cancel` passes at most: each one acts on what moved during the last
# `submit` repairs are asked for by a person: a message sent before now may be the lost one.
ON_DEMAND = ReconcilePolicy(resend_grace_s=0.0)


# --- studies ---------------------------------------------------------------------------------


def load_study_file(path: Path) -> StudySpec:
    """Read, validate and resolve a study file. The dataset becomes an absolute location."""
    try:
        with Path(path).open("rb") as file:  # parse_study decodes: a file that is not UTF-8 is bad input
            # One byte past the limit is enough for parse_study to refuse it: `/dev/zero` or a
            # huge file is never read whole.
            text = file.read(MAX_STUDY_BYTES + 1)
    except OSError as exc:
        raise BadInputError(f"cannot read study file: {exc.strerror}", str(path)) from None
    spec = parse_study(text, source=str(path))
    return spec.model_copy(update={"dataset": resolve_dataset_location(spec.dataset, Path(path).parent)})


def resolve_dataset_location(dataset: str, study_dir: Path) -> str:
    if "://" in dataset or dataset.startswith("artifacts:"):
        return dataset
    for base in (Path.cwd(), study_dir):
        candidate = (base / dataset).resolve()
        if (candidate / MANIFEST_NAME).is_file():
            return str(candidate)
    raise BadInputError(
        f"{dataset} is not a prepared dataset (no {MANIFEST_NAME}); run `submit dataset prepare SRC {dataset}`",
        "dataset",
    )


@dataclass
class Plan:
    study_id: str
    job_count: int
    jobs: list[dict[str, Any]]
    estimate: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # shared.study.study_warnings: what can only give noise
    search: dict[str, Any] | None = None  # `search_plan`: adaptive methods and budgets


def plan_study(spec: StudySpec, backend: Backend | None, price_per_hour: float | None) -> Plan:
    """The dry run: the jobs `submit study` would enqueue now (`shared.search.initial_jobs`), the
    cost estimate and, for adaptive searches and budgets, the search's upper bound."""
    jobs = [{"job_id": job_id, **job_parameters(job)} for job_id, job in search.initial_jobs(spec)]
    estimate = estimate_cost(spec, backend, price_per_hour)
    plan = search_plan(spec, jobs, estimate) if search.windowed(spec) else None  # tpe, asha, budgets: not all at once
    return Plan(spec.study_id, len(jobs), jobs, estimate, study_warnings(spec), plan)


def search_plan(spec: StudySpec, jobs: list[dict[str, Any]], estimate: dict[str, Any]) -> dict[str, Any]:
    """What an adaptive search or a budget may cost at most: the trials and jobs planned, how many
    are decided only as results arrive (TPE's proposals, ASHA's later trials and promotions), and
    the upper bound on epochs, GPU-hours and dollars: the estimate from observed seconds per
    epoch, capped by the budget where it has a cap (running jobs still finish past a cap)."""
    bound = search.upper_bound(spec)
    budget = spec.budget.model_dump() if spec.budget else None
    started = {job["trial"] for job in jobs if job["trial"] is not None}
    hours = None if estimate["seconds"] is None else round(estimate["seconds"] / 3600, 4)
    price = estimate["price_per_hour"]
    usd = estimate["cost_usd"] if price else None  # no price: no dollars, rather than $0
    caps = budget or {"gpu_hours": None, "usd": None}
    return {
        "method": spec.search.method, "trials": bound.trials, "jobs": bound.jobs, "epochs": bound.epochs,
        "initial_jobs": len(jobs), "trials_decided_later": max(0, bound.trials - len(started)),
        "jobs_decided_later": max(0, bound.jobs - len(jobs)),
        "gpu_hours": hours, "usd": usd, "budget": budget,
        "gpu_hours_bound": _smallest(hours, caps["gpu_hours"], _times(caps["usd"], 1 / price if price else None)),
        "usd_bound": _smallest(usd, caps["usd"], _times(caps["gpu_hours"], price)),
    }


def _times(value: float | None, factor: float | None) -> float | None:
    return None if value is None or factor is None else round(value * factor, 4)


def _smallest(*values: float | None) -> float | None:
    """The smallest of the values that are known (an estimate, a cap, a cap in other units)."""
    known = [value for value in values if value is not None]
    return min(known) if known else None


def job_parameters(job: Any) -> dict[str, Any]:
    return {
        "trial": job.trial.index if job.trial else None,
        "rung": job.trial.rung if job.trial else None,
        "epochs": job.training.epochs,
        "architecture": job.model.architecture,
        "weights": job.model.weights,
        "image_size": job.model.image_size,
        "optimizer": job.optimizer.name,
        "optimizer_params": job.optimizer.model_dump(exclude={"name"}),
        "batch_size": job.training.batch_size,
        "data_fraction": job.training.data_fraction,
        "augmentation": job.training.augmentation is not None,
        "repeat": job.repeat,
        "seed": job.training.seed,
    }


def plan_frame(jobs: list[dict[str, Any]], search_plan: dict[str, Any] | None = None) -> pd.DataFrame:
    """The dry run as a table: only the columns and optimizer parameters that vary across jobs
    and, for a search that enqueues as it goes (`search_plan`), a last row for the jobs and
    trials decided later."""
    import pandas as pd

    from submitter.render import short_number

    varying = {k for j in jobs for k, v in j["optimizer_params"].items() if any(o["optimizer_params"].get(k) != v for o in jobs)}
    rows = [{**{k: v for k, v in j.items() if k != "optimizer_params"},
             "params": " ".join(f"{k}={short_number(v)}" for k, v in sorted(j["optimizer_params"].items())
                                if k in varying)} for j in jobs]
    frame = pd.DataFrame(rows)
    kept = ("job_id", "architecture", "optimizer") + (("trial",) if search_plan else ())
    fixed = [c for c in frame.columns if c not in kept and frame[c].astype(str).nunique() <= 1]
    frame = frame.drop(columns=fixed)
    later = _later_row(jobs, search_plan) if search_plan else None
    return frame if later is None else pd.concat([frame, pd.DataFrame([later])], ignore_index=True)


def _later_row(jobs: list[dict[str, Any]], search_plan: dict[str, Any]) -> dict[str, Any] | None:
    """The dry run's last row: `+N jobs`, the trials `k-M` and when they are decided."""
    if not search_plan["jobs_decided_later"]:
        return None
    first = max((j["trial"] for j in jobs if j["trial"] is not None), default=-1) + 1
    last = search_plan["trials"] - 1
    adaptive = search_plan["method"] in ADAPTIVE_METHODS
    how = "decided as results arrive" if adaptive else "enqueued as earlier jobs finish"
    return {"job_id": f"+{search_plan['jobs_decided_later']} jobs", "trial": f"{first}-{last}" if last >= first else "",
            "note": how}


def bound_frame(search_plan: dict[str, Any]) -> pd.DataFrame:
    """The dry run's upper bound as a table: what the search may run at most (GPU-hours and
    dollars from observed seconds per epoch), the budget's caps, and the smaller of the two."""
    import pandas as pd

    budget = search_plan["budget"] or {}
    counts = {name: search_plan[name] for name in ("trials", "jobs", "epochs")}
    return pd.DataFrame([
        {"": "search at most", **counts, "gpu_hours": search_plan["gpu_hours"], "usd": search_plan["usd"]},
        {"": "budget caps", "trials": None, "jobs": budget.get("jobs"), "epochs": None,
         "gpu_hours": budget.get("gpu_hours"), "usd": budget.get("usd")},
        {"": "upper bound", **counts, "gpu_hours": search_plan["gpu_hours_bound"], "usd": search_plan["usd_bound"]},
    ])


def estimate_cost(spec: StudySpec, backend: Backend | None, price_per_hour: float | None) -> dict[str, Any]:
    """Seconds per epoch observed for these architectures in earlier studies (their mean), times
    the most epochs the study can train (`shared.search.upper_bound`: every job to its maximum)."""
    observed = observed_seconds_per_epoch(backend) if backend else {}
    per_arch = [observed.get(a) for a in spec.parameters.architecture]
    bound = search.upper_bound(spec)
    known = {"jobs": bound.jobs, "max_epochs": spec.training.epochs, "price_per_hour": price_per_hour}
    if not per_arch or any(s is None for s in per_arch):
        return {**known, "basis": "no earlier jobs of these architectures", "seconds": None, "cost_usd": None}
    seconds = sum(per_arch) / len(per_arch) * bound.epochs  # type: ignore[arg-type]
    cost = seconds * (price_per_hour or 0.0) / 3600
    return {**known, "basis": "observed seconds per epoch (upper bound: no early stop)",
            "seconds": round(seconds, 1), "cost_usd": round(cost, 4)}


def observed_seconds_per_epoch(backend: Backend) -> dict[str, float]:
    """Per architecture, the mean seconds per epoch of the succeeded training jobs of up to 20
    studies. An ASHA promotion's `epochs_run` counts its parent's epochs, which it resumed and did
    not pay for: only the epochs it trained are counted."""
    totals: dict[str, list[float]] = {}
    for study in backend.store.list_studies()[:20]:
        jobs = backend.store.list_jobs(study.study_id, JobStatus.SUCCEEDED)
        resumed = {job.job_id: job.epochs_run for job in jobs}
        for job in jobs:
            parent = job.spec.parent_job_id if job.spec.trial else None  # a promotion; a finetune's parent is no resume
            trained = job.epochs_run - resumed.get(parent or "", 0)
            if job.kind == "train" and trained > 0:
                totals.setdefault(job.spec.model.architecture, []).append(job.train_seconds / trained)
    return {arch: sum(v) / len(v) for arch, v in totals.items()}


def check_store_references(spec: StudySpec, backend: Backend) -> None:
    """Refuse, before anything is written, what the study names in the store but a worker could not
    read: a weights file outside the store or missing from it (`parameters.weights[i]`), a dataset
    location the configured backend cannot reach or that holds no uploaded dataset (`dataset`).
    Each would otherwise fail later, on a worker, once per job."""
    from shared.datasets.sync import is_store_location, store_prefix  # pillow: only when submitting

    for index, weights in enumerate(spec.parameters.weights):
        if weights is not None and weights != "imagenet":
            _check_object(backend.artifacts, weights, f"parameters.weights[{index}]", "weights file")
    if is_store_location(spec.dataset):
        try:
            prefix = store_prefix(spec.dataset, backend.artifacts)
        except BadInputError as exc:
            raise BadInputError(str(exc), "dataset") from None
        _check_object(backend.artifacts, f"{prefix}/{MANIFEST_NAME}", "dataset", "uploaded dataset (manifest)")
    elif backend.name != "local":
        raise BadInputError(
            f"{spec.dataset} is a local directory, which workers of the {backend.name} backend cannot read: "
            "upload it with `submit dataset upload DIR s3://BUCKET/PREFIX` and name that", "dataset",
        )


def _check_object(artifacts: ArtifactStore, location: str, path: str, what: str) -> None:
    try:
        key = artifacts.key_for(location)
    except BadInputError as exc:
        raise BadInputError(str(exc), path) from None
    if not artifacts.exists(key):
        raise BadInputError(f"no {what} {artifacts.uri(key)} in the artifact store", path)


@dataclass
class StudySubmission(SubmitReport):
    repair: ReconcileReport | None = None  # what the reconciler did for a study submitted again
    warnings: list[str] = field(default_factory=list)  # shared.study.study_warnings: submitted all the same


def submit_study(
    backend: Backend,
    spec: StudySpec,
    price_per_hour: float | None = None,
    progress: Callable[[int], None] | None = None,
    policy: ReconcilePolicy = ON_DEMAND,
) -> StudySubmission:
    """Check what the study names in the artifact store, record the study and enqueue its missing
    jobs. Submitting again creates nothing new, and finishes what the study lacks: the reconciler
    runs for it (`report.repair`), so messages lost or never sent are sent.

    Raises:
        BadInputError: the study was cancelled (`name`): its jobs stay cancelled.
    """
    check_store_references(spec, backend)
    now = time.time()
    study = StudyRecord(
        study_id=spec.study_id, name=spec.name, created_at=now,
        spec=spec.model_dump(mode="json"), job_count=job_count(spec), price_per_hour=price_per_hour,
    )
    new = backend.store.put_study(study)
    if not new:
        _refuse_cancelled(backend, spec.study_id)
    report = StudySubmission(**vars(submit_jobs(backend.store, backend.queue, spec.study_id, search.initial_jobs(spec), progress, now)))
    report.warnings = study_warnings(spec)
    if not new:  # the same `now`: what submit_jobs just sent is not sent again
        report.repair = reconcile(backend, policy, now, [spec.study_id])
    return report


def _refuse_cancelled(backend: Backend, study_id: str) -> None:
    existing = backend.store.get_study(study_id)
    if existing is not None and CANCELLED_STAGE in existing.stages:
        raise BadInputError(f"study {study_id} was cancelled; its jobs stay cancelled (give the study a new name to run it again)", "name")


def repair(backend: Backend, study_id: str | None = None, policy: ReconcilePolicy = ON_DEMAND) -> ReconcileReport:
    """Run the reconciler now, for one study or (None) every study: `submit repair`."""
    return reconcile(backend, policy, time.time(), [study_id] if study_id else None)


def resolve_study_id(backend: Backend, study: str | None, now: float | None = None) -> str:
    """The named study (a full id, or the one study or the most recent of the studies an id prefix
    or the name matches), or the most recent one (`most_recent`)."""
    studies = backend.store.list_studies()
    if not studies:
        raise NotFoundError("no studies yet: submit one with `submit study FILE`")
    if study is not None:
        studies = [s for s in studies if s.study_id == study] or [
            s for s in studies if s.study_id.startswith(study) or s.name == study
        ]
        if not studies:
            raise BadInputError(f"unknown study {study!r}", "STUDY")
        if len(studies) == 1:
            return studies[0].study_id
    return most_recent(studies, time.time() if now is None else now).study_id


def most_recent(studies: list[StudyRecord], now: float) -> StudyRecord:
    """The study created last, by `created_at`, among those not created in the future.

    `created_at` is written by whoever writes the table. A study stamped in the future (by a bad
    clock or on purpose) would otherwise stay "the most recent" for every command that defaults
    to it, forever; here it is never chosen by default, and a stamp of "now" is no better than a
    real submission: it loses to the next one. Clocks may differ by up to CLOCK_SKEW_S.
    """
    plausible = [s for s in studies if s.created_at <= now + CLOCK_SKEW_S]
    if not plausible:
        raise BadInputError(
            "every matching study claims to be created in the future: name one by its full id (`submit studies`)",
            "STUDY",
        )
    return max(plausible, key=lambda s: (s.created_at, s.study_id))


def display_uri(artifacts: ArtifactStore, key: str | None) -> str | None:
    """Where a person finds an artifact a record names (`ArtifactStore.uri` of its key); None when
    the record names none, or something this store cannot reach (never a local path)."""
    if not key:
        return None
    try:
        return artifacts.uri(artifacts.key_for(key))
    except BadInputError:
        return None


def artifact_uris(record: JobRecord, artifacts: ArtifactStore) -> dict[str, Any]:
    """The display URIs of a record's checkpoint and artifacts (the record itself holds keys)."""
    return {
        "checkpoint_uri": display_uri(artifacts, record.checkpoint),
        "artifact_uris": {name: display_uri(artifacts, key) for name, key in record.artifacts.items()},
    }


# --- status ----------------------------------------------------------------------------------


@dataclass
class StudyStatus:
    study_id: str
    name: str
    counts: dict[str, int]
    total: int
    train_seconds: float
    cost_usd: float
    queue: dict[str, int]
    running: list[dict[str, Any]] = field(default_factory=list)
    stale: int = 0
    finished: bool = False
    eta_s: float | None = None
    failed: list[dict[str, Any]] = field(default_factory=list)  # FAILED jobs with their reason
    search: dict[str, Any] | None = None  # shared.search.summary's JSON: sampled searches and budgets

    def document(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "running"} | {"running": self.running}


def study_status(backend: Backend, study_id: str, stale_after_s: float, now: float | None = None) -> StudyStatus:
    now = now or time.time()
    study = backend.store.get_study(study_id)
    jobs = backend.store.list_jobs(study_id)
    counts = Counter(j.status.value for j in jobs)
    running = [_running_row(j, now, stale_after_s) for j in jobs if j.status == JobStatus.RUNNING]
    queue = backend.queue.counts()
    status = StudyStatus(
        study_id=study_id, name=study.name if study else study_id,
        counts={s.value: counts.get(s.value, 0) for s in JobStatus}, total=len(jobs),
        train_seconds=round(sum(j.train_seconds for j in jobs), 2), cost_usd=round(sum(j.cost_usd for j in jobs), 6),
        queue={"visible": queue.visible, "in_flight": queue.in_flight, "dead_lettered": queue.dead},
        running=running, stale=sum(1 for r in running if r["stale"]),
        finished=bool(jobs) and all(j.status.finished for j in jobs),
        failed=[_failed_row(j) for j in jobs if j.status == JobStatus.FAILED],
    )
    status.eta_s = _eta(jobs)
    spec = stored_spec(study)
    status.search = search.summary(spec, jobs).as_json() if spec is not None and is_search(spec) else None
    return status


def stored_spec(study: StudyRecord | None) -> StudySpec | None:
    """The study file a study was submitted with (its record's `spec`), or None: no record, or a
    spec that no longer validates (a teammate's newer or older spotsweep wrote it)."""
    if study is None:
        return None
    try:
        return StudySpec.model_validate(study.spec)
    except ValidationError:
        return None


def is_search(spec: StudySpec) -> bool:
    """Whether the study has a search to show: a method other than the grid, or a window of jobs
    in flight (a budget, a `parallel`)."""
    return spec.search.method != "grid" or search.windowed(spec)


def trials_of(spec: StudySpec | None, jobs: Sequence[JobRecord]) -> dict[str, TrialView]:
    """Where each trial job of the study stands (`shared.search.trial_view`), by job id; empty
    for a grid or a study whose spec is unknown."""
    return search.trial_view(spec, list(jobs)) if spec is not None and is_search(spec) else {}


def _failed_row(job: JobRecord) -> dict[str, Any]:
    """A FAILED job and why: its error, e.g. "dead-lettered after 3 own failures: ..." when the
    reconciler recorded it from the dead-letter queue."""
    return {"job_id": job.job_id, "kind": job.kind, "failures": job.failures, "error": job.error}


def _running_row(job: JobRecord, now: float, stale_after_s: float) -> dict[str, Any]:
    age = now - job.heartbeat_at if job.heartbeat_at else None
    return {
        "job_id": job.job_id, "kind": job.kind, "architecture": job.spec.model.architecture,
        "optimizer": job.spec.optimizer.name, "attempt": job.attempt, "epoch": job.epochs_run,
        "epochs": job.spec.training.epochs, "val_accuracy": job.metrics.val_accuracy, "worker": job.lease_owner,
        "heartbeat_age_s": round(age, 1) if age is not None else None,
        "stale": bool(age is None or age > stale_after_s or (job.lease_expires_at or 0) < now),
    }


def _eta(jobs: list[JobRecord]) -> float | None:
    """Remaining jobs x mean seconds of the finished ones / workers seen running (rough)."""
    done = [j.train_seconds for j in jobs if j.status == JobStatus.SUCCEEDED and j.train_seconds]
    left = sum(1 for j in jobs if not j.status.finished)
    if not done or not left:
        return 0.0 if not left else None
    workers = max(1, len({j.lease_owner for j in jobs if j.status == JobStatus.RUNNING}))
    return round(left * (sum(done) / len(done)) / workers, 1)


# --- follow-ups, retry, cancel ---------------------------------------------------------------


def check_top(top: int) -> int:
    if top < 1:
        raise BadInputError(f"must be at least 1, got {top}", "--top")
    return top


def finetune(backend: Backend, study_id: str, top: int, unfreeze_from: int | str | None) -> SubmitReport:
    report = enqueue_finetune(backend.store, backend.queue, study_id, finetune_settings(check_top(top), unfreeze_from))
    if not report.total:
        raise BadInputError("no succeeded transfer-learning training jobs to fine-tune yet", "STUDY")
    return report


@dataclass(frozen=True)
class Evaluation:
    """A model's evaluation on the test split, as its record stands: the recorded result once it
    SUCCEEDED, else its status (QUEUED, RUNNING, FAILED...) and error."""

    model_job_id: str
    evaluation_job_id: str
    status: str
    test_accuracy: float | None = None
    test_loss: float | None = None
    test_examples: int | None = None
    error: str | None = None

    @classmethod
    def of(cls, model_job_id: str, record: JobRecord) -> Evaluation:
        examples = (record.metrics.model_extra or {}).get("test_examples")
        return cls(model_job_id, record.job_id, record.status.value, record.metrics.test_accuracy,
                   record.metrics.test_loss, int(examples) if isinstance(examples, (int, float)) else None, record.error)


@dataclass
class EvaluateReport(SubmitReport):
    evaluations: list[Evaluation] = field(default_factory=list)  # one per model asked for, in order


def evaluate(backend: Backend, study_id: str, top: int, job_id: str | None = None) -> EvaluateReport:
    """Evaluate the study's best `top` models (or the model of job `job_id`) on the test split.

    A model is evaluated once: the evaluation's id follows from its model's, so asking again
    creates no job and reports the recorded result (or the evaluation's status, while it runs).
    An evaluate job named as `job_id` stands for its model.

    Raises:
        BadInputError: the job has not succeeded, or the study has no succeeded model yet.
    """
    targets = _evaluation_targets(backend, study_id, top, job_id)
    specs = [evaluate_spec(target) for target in targets]
    submitted = enqueue_followups(backend.store, backend.queue, study_id, specs)
    report = EvaluateReport(**vars(submitted))
    for target, (evaluation_id, _) in zip(targets, with_ids(study_id, specs)):
        record = backend.store.get_job(study_id, evaluation_id)
        if record is not None:  # None only if it was deleted between the two calls
            report.evaluations.append(Evaluation.of(target.job_id, record))
    return report


def _evaluation_targets(backend: Backend, study_id: str, top: int, job_id: str | None) -> list[JobRecord]:
    """The models to evaluate: the named job's (an evaluation's parent), else the best `top`."""
    jobs = backend.store.list_jobs(study_id)
    if not job_id:
        targets = evaluation_candidates(jobs, check_top(top))
        if not targets:
            raise BadInputError("no succeeded jobs to evaluate yet", "STUDY")
        return targets
    named = next((j for j in jobs if j.job_id == job_id), None)
    if named is not None and named.kind == "evaluate":
        named = next((j for j in jobs if j.job_id == named.spec.parent_job_id), None)
    if named is None or named.status != JobStatus.SUCCEEDED:
        raise BadInputError(f"job {job_id} has not succeeded (or does not exist)", "JOB")
    return [named]


def parse_layer(value: str | None) -> int | str | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def retry(
    backend: Backend, study_id: str, failed: bool = True, dead_lettered: bool = False, policy: ReconcilePolicy = ON_DEMAND
) -> list[str]:
    """Re-enqueue jobs from their records (never from a dead-letter body); the ids re-enqueued.

    `failed`: FAILED jobs become QUEUED with their error and failure count cleared (a fresh
    budget of `max_failures`), then get one message each (`enqueue_records`). Stopped between the
    two, they are QUEUED with no message sent, which the reconciler (or this, run again) sends.
    `dead_lettered`: the study's repair (`repair`): dead letters re-driven, or recorded FAILED at
    their failure limit, and deleted, so running it again does nothing new.
    """
    reset = _reset_failed(backend, study_id) if failed else []
    enqueue_records(backend.store, backend.queue, reset, time.time())
    retried = [job.job_id for job in reset]
    if dead_lettered:
        retried += repair(backend, study_id, policy).redriven
    return retried


RETRY_CHANGES = {"error": None, "failures": 0, "enqueued_at": None, "finished_at": None}


def _reset_failed(backend: Backend, study_id: str) -> list[JobRecord]:
    """The study's FAILED jobs, moved back to QUEUED (one that moved meanwhile is left out)."""
    moved = []
    for job in backend.store.list_jobs(study_id, JobStatus.FAILED):
        if backend.store.reset(study_id, job.job_id, [JobStatus.FAILED], JobStatus.QUEUED, RETRY_CHANGES):
            moved.append(job)
    return moved


def cancel(backend: Backend, study_id: str, now: float | None = None) -> dict[str, int]:
    """Cancel a study: no follow-up starts after this; QUEUED jobs become CANCELLED (their
    messages are dropped on receipt), RUNNING ones stop at their next epoch (or, abandoned by
    their worker, are finished CANCELLED).

    It acts on fresh state: pass after pass until none finds a job left to act on (one claimed or
    preempted meanwhile is cancelled or flagged by the next pass); the reconciler cancels what
    arrives later (a follow-up started by a worker that had not seen the mark).
    """
    store, now = backend.store, time.time() if now is None else now
    store.mark_stage(study_id, CANCELLED_STAGE)
    for _ in range(CANCEL_PASSES):
        pending = [job for job in store.list_jobs(study_id) if needs_cancel(job, now)]
        if not pending:
            break
        cancel_jobs(store, pending, now)
    jobs = store.list_jobs(study_id)
    return {
        "cancelled": sum(1 for j in jobs if j.status is JobStatus.CANCELLED),
        "stopping": sum(1 for j in jobs if j.status is JobStatus.RUNNING and j.cancel_requested),
    }
