"""What the `submit` commands do, as functions of the backend. The CLI only parses and renders."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.ports import ArtifactStore, Backend
from shared.errors import BadInputError, NotFoundError
from shared.followups import enqueue_finetune, enqueue_followups, evaluate_spec, evaluation_candidates, finetune_settings
from shared.jobs import JobRecord, StudyRecord
from shared.manifest import MANIFEST_NAME
from shared.status import JobStatus
from shared.study import StudySpec, expand, job_count, parse_study
from shared.submission import SubmitReport, enqueue_record, submit_jobs

if TYPE_CHECKING:
    import pandas as pd

CLOCK_SKEW_S = 300.0  # how far ahead of ours a teammate's clock may be before a stamp is implausible


# --- studies ---------------------------------------------------------------------------------


def load_study_file(path: Path) -> StudySpec:
    """Read, validate and resolve a study file. The dataset becomes an absolute location."""
    try:
        text = Path(path).read_bytes()  # parse_study decodes: a file that is not UTF-8 is bad input
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


def plan_study(spec: StudySpec, backend: Backend | None, price_per_hour: float | None) -> Plan:
    jobs = [{"job_id": job_id, **job_parameters(job)} for job_id, job in expand(spec)]
    return Plan(spec.study_id, len(jobs), jobs, estimate_cost(spec, backend, price_per_hour))


def job_parameters(job: Any) -> dict[str, Any]:
    return {
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


def plan_frame(jobs: list[dict[str, Any]]) -> pd.DataFrame:
    """The dry run as a table: only the columns and optimizer parameters that vary across jobs."""
    import pandas as pd

    varying = {k for j in jobs for k, v in j["optimizer_params"].items() if any(o["optimizer_params"].get(k) != v for o in jobs)}
    rows = [{**{k: v for k, v in j.items() if k != "optimizer_params"},
             "params": " ".join(f"{k}={v}" for k, v in sorted(j["optimizer_params"].items()) if k in varying)} for j in jobs]
    frame = pd.DataFrame(rows)
    fixed = [c for c in frame.columns if c not in ("job_id", "architecture", "optimizer") and frame[c].astype(str).nunique() <= 1]
    return frame.drop(columns=fixed)


def estimate_cost(spec: StudySpec, backend: Backend | None, price_per_hour: float | None) -> dict[str, Any]:
    """Seconds per epoch observed for these architectures in earlier studies, times epochs and jobs."""
    observed = observed_seconds_per_epoch(backend) if backend else {}
    per_arch = [observed.get(a) for a in spec.parameters.architecture]
    count = job_count(spec)
    if not per_arch or any(s is None for s in per_arch):
        return {"jobs": count, "max_epochs": spec.training.epochs, "basis": "no earlier jobs of these architectures",
                "seconds": None, "cost_usd": None, "price_per_hour": price_per_hour}
    seconds = count / len(per_arch) * sum(per_arch) * spec.training.epochs  # type: ignore[arg-type]
    cost = seconds * (price_per_hour or 0.0) / 3600
    return {"jobs": count, "max_epochs": spec.training.epochs, "basis": "observed seconds per epoch (upper bound: no early stop)",
            "seconds": round(seconds, 1), "cost_usd": round(cost, 4), "price_per_hour": price_per_hour}


def observed_seconds_per_epoch(backend: Backend) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for study in backend.store.list_studies()[:20]:
        for job in backend.store.list_jobs(study.study_id, JobStatus.SUCCEEDED):
            if job.kind == "train" and job.epochs_run:
                totals.setdefault(job.spec.model.architecture, []).append(job.train_seconds / job.epochs_run)
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


def submit_study(
    backend: Backend, spec: StudySpec, price_per_hour: float | None = None, progress: Callable[[int], None] | None = None
) -> SubmitReport:
    """Check what the study names in the artifact store, record the study and enqueue its missing
    jobs. Submitting again creates nothing new."""
    check_store_references(spec, backend)
    study = StudyRecord(
        study_id=spec.study_id, name=spec.name, created_at=time.time(),
        spec=spec.model_dump(mode="json"), job_count=job_count(spec), price_per_hour=price_per_hour,
    )
    backend.store.put_study(study)
    return submit_jobs(backend.store, backend.queue, spec.study_id, expand(spec), progress)


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
    )
    status.eta_s = _eta(jobs)
    return status


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


def evaluate(backend: Backend, study_id: str, top: int, job_id: str | None = None) -> SubmitReport:
    jobs = backend.store.list_jobs(study_id)
    if job_id:
        targets = [j for j in jobs if j.job_id == job_id and j.status == JobStatus.SUCCEEDED]
        if not targets:
            raise BadInputError(f"job {job_id} has not succeeded (or does not exist)", "JOB")
    else:
        targets = evaluation_candidates(jobs, check_top(top))
        if not targets:
            raise BadInputError("no succeeded jobs to evaluate yet", "STUDY")
    return enqueue_followups(backend.store, backend.queue, study_id, [evaluate_spec(t) for t in targets])


def parse_layer(value: str | None) -> int | str | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def retry(backend: Backend, study_id: str, failed: bool = True, dead_lettered: bool = False) -> list[str]:
    """Re-enqueue jobs from their records (never from a dead-letter body): FAILED ones, and with
    `dead_lettered` the unfinished jobs whose message the queue's redrive moved aside."""
    store, now = backend.store, time.time()
    dead = dead_letter_ids(backend) if dead_lettered else set()
    retried = []
    for job in store.list_jobs(study_id):
        if failed and job.status == JobStatus.FAILED:
            ok = store.reset(study_id, job.job_id, [JobStatus.FAILED], JobStatus.QUEUED, {"error": None})
        elif job.job_id in dead and job.status == JobStatus.QUEUED:
            ok = True
        elif job.job_id in dead and job.status == JobStatus.RUNNING and job.lease_expired(now):
            ok = store.reset(study_id, job.job_id, [JobStatus.RUNNING], JobStatus.QUEUED, {"lease_owner": None})
        else:
            continue
        if ok:
            enqueue_record(backend.queue, job)
            retried.append(job.job_id)
    return retried


def dead_letter_ids(backend: Backend) -> set[str]:
    ids = set()
    for body in backend.queue.dead_letters(limit=1000):
        try:
            ids.add(json.loads(body)["job_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def cancel(backend: Backend, study_id: str) -> dict[str, int]:
    """QUEUED jobs become CANCELLED (their messages are dropped on receipt); RUNNING ones stop at the next epoch."""
    store = backend.store
    cancelled = flagged = 0
    for job in store.list_jobs(study_id):
        if job.status == JobStatus.QUEUED:
            cancelled += store.reset(study_id, job.job_id, [JobStatus.QUEUED], JobStatus.CANCELLED, {"finished_at": time.time()})
        elif job.status == JobStatus.RUNNING and not job.cancel_requested:
            flagged += store.request_cancel(study_id, job.job_id)
    return {"cancelled": cancelled, "stopping": flagged}
