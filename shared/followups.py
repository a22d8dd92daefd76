"""Follow-up jobs: fine-tuning the best models and evaluating them once on the test split.

Both `submit finetune|evaluate` and the automatic follow-ups of a study (`"finetune"` and
`"evaluate"` in the study file) come through here. Job ids are deterministic in (study, parent,
settings), and `submit_jobs` creates only missing records, so however many workers race to
advance a study, each follow-up job exists and is enqueued once.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.errors import BadInputError
from shared.jobs import EarlyStopping, JobRecord, JobSpec, job_id_for
from shared.optimizers import OptimizerSpec, Sgd
from shared.ports import JobQueue, JobStore
from shared.ranking import top_succeeded
from shared.study import StudySpec
from shared.submission import SubmitReport, submit_jobs

FINETUNE_OPTIMIZER = Sgd(learning_rate=1e-4, momentum=0.9)


def finetune_spec(
    parent: JobRecord,
    unfreeze_from: int | str | None = None,
    optimizer: OptimizerSpec = FINETUNE_OPTIMIZER,
    epochs: int | None = None,
    early_stopping: EarlyStopping | None = EarlyStopping(),
) -> JobSpec:
    if parent.spec.model.architecture == "benchmark":
        raise BadInputError(f"job {parent.job_id} is the benchmark CNN: there is no base to unfreeze", "job")
    training = parent.spec.training.model_copy(
        update={"epochs": epochs or parent.spec.training.epochs, "early_stopping": early_stopping, "feature_cache": False}
    )
    return parent.spec.model_copy(
        update={
            "kind": "finetune",
            "optimizer": optimizer,
            "training": training,
            "parent_job_id": parent.job_id,
            "unfreeze_from": unfreeze_from,
        }
    )


def evaluate_spec(target: JobRecord) -> JobSpec:
    return target.spec.model_copy(update={"kind": "evaluate", "parent_job_id": target.job_id, "unfreeze_from": None})


def with_ids(study_id: str, specs: Sequence[JobSpec]) -> list[tuple[str, JobSpec]]:
    return [(job_id_for(study_id, spec), spec) for spec in specs]


def evaluation_candidates(jobs: Sequence[JobRecord], top: int) -> list[JobRecord]:
    """The best `top` trained models of the study, fine-tuned or not, by val_accuracy."""
    finished = [j for j in jobs if j.kind in ("train", "finetune")]
    ranked = top_succeeded(finished, len(finished), "finetune") + top_succeeded(finished, len(finished), "train")
    ranked.sort(key=lambda r: -(r.metrics.val_accuracy or 0.0))
    return ranked[:top]


def _all_finished(jobs: Sequence[JobRecord], kinds: tuple[str, ...]) -> bool:
    relevant = [j for j in jobs if j.kind in kinds]
    return bool(relevant) and all(j.status.finished for j in relevant)


def advance_study(store: JobStore, queue: JobQueue, study_id: str) -> list[str]:
    """Enqueue the study's automatic follow-ups whose turn has come. Returns the stages enqueued."""
    study = store.get_study(study_id)
    if study is None:
        return []
    spec = StudySpec.model_validate(study.spec)
    jobs = store.list_jobs(study_id)
    done: list[str] = []
    finetune_enqueued = "finetune" in study.stages
    if spec.finetune and not finetune_enqueued and _all_finished(jobs, ("train",)):
        parents = [p for p in top_succeeded(jobs, spec.finetune.top, "train") if p.spec.model.architecture != "benchmark"]
        follow = spec.finetune
        specs = [finetune_spec(p, follow.unfreeze_from, follow.optimizer, follow.epochs, follow.early_stopping) for p in parents]
        submit_jobs(store, queue, study_id, with_ids(study_id, specs))
        if store.mark_stage(study_id, "finetune"):
            done.append("finetune")
        finetune_enqueued = True
        jobs = store.list_jobs(study_id)
    ready_for_eval = _all_finished(jobs, ("train", "finetune")) and (not spec.finetune or finetune_enqueued)
    if spec.evaluate and "evaluate" not in study.stages and ready_for_eval:
        specs = [evaluate_spec(t) for t in evaluation_candidates(jobs, spec.evaluate.top)]
        submit_jobs(store, queue, study_id, with_ids(study_id, specs))
        if store.mark_stage(study_id, "evaluate"):
            done.append("evaluate")
    return done


def enqueue_followups(store: JobStore, queue: JobQueue, study_id: str, specs: Sequence[JobSpec]) -> SubmitReport:
    return submit_jobs(store, queue, study_id, with_ids(study_id, specs))

