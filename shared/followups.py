"""Follow-up jobs: fine-tuning the best models and evaluating them once on the test split.

Both `submit finetune|evaluate` and the automatic follow-ups of a study (`"finetune"` and
`"evaluate"` in the study file) come through here, so that "the best K" means the same in both:
for fine-tuning, the best K training jobs that CAN be fine-tuned (the benchmark CNN has no base to
unfreeze, so it is passed over, not counted). Job ids are deterministic in (study, parent,
settings), and `submit_jobs` creates only missing records, so however many workers race to
advance a study, each follow-up job exists once (a race may send a duplicate message: harmless).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from shared.architectures import ARCHITECTURES
from shared.errors import BadInputError
from shared.jobs import EarlyStopping, JobRecord, JobSpec, first_error, job_id_for
from shared.optimizers import OptimizerSpec, Sgd
from shared.ports import JobQueue, JobStore
from shared.ranking import TRAINED_KINDS, top_succeeded
from shared.search import next_jobs, search_complete, windowed
from shared.study import FinetuneFollowUp, StudySpec
from shared.submission import SubmitReport, submit_jobs

FINETUNE_OPTIMIZER = Sgd(learning_rate=1e-4, momentum=0.9)
MAX_SEARCH_ROUNDS = 1000  # one settlement's decisions: far more than a rung's promotions due at once
SEARCH_STAGE = "search"  # a windowed search (shared.search) has nothing more to enqueue
CANCELLED_STAGE = "cancelled"  # `submit cancel` marks the study: no follow-up starts after it


def finetune_spec(
    parent: JobRecord,
    unfreeze_from: int | str | None = None,
    optimizer: OptimizerSpec = FINETUNE_OPTIMIZER,
    epochs: int | None = None,
    early_stopping: EarlyStopping | None = EarlyStopping(),
) -> JobSpec:
    if not can_finetune(parent):
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


def can_finetune(record: JobRecord) -> bool:
    """Whether the job's model has a pretrained base to unfreeze (the benchmark CNN has none)."""
    return not ARCHITECTURES[record.spec.model.architecture].is_benchmark


def finetune_candidates(jobs: Sequence[JobRecord], top: int) -> list[JobRecord]:
    """The best `top` succeeded training configurations that can be fine-tuned, by the mean
    val_accuracy over repeats (shared/ranking.py: one rule for every selection), each one's best
    repeat: a benchmark CNN ranked first is skipped, and the next transfer model takes its place."""
    ranked = top_succeeded(jobs, len(jobs), "train")
    return [record for record in ranked if can_finetune(record)][:top]


def evaluation_candidates(jobs: Sequence[JobRecord], top: int) -> list[JobRecord]:
    """The best `top` trained configurations of the study, fine-tuned or not, ranked together by
    the mean val_accuracy over repeats (the leaderboard's rule), each one's best repeat."""
    return top_succeeded(jobs, top, TRAINED_KINDS)


def finetune_settings(top: int, unfreeze_from: int | str | None = None) -> FinetuneFollowUp:
    """`submit finetune`'s options as the study file's `"finetune"` block (same defaults, same caps).

    Raises:
        BadInputError: naming the option (`--top`, `--unfreeze-from`) that is out of range.
    """
    try:
        return FinetuneFollowUp(top=top, unfreeze_from=unfreeze_from)
    except ValidationError as exc:
        message, path = first_error(exc)
        raise BadInputError(message, "--" + path.split(".")[0].replace("_", "-")) from None


def enqueue_finetune(store: JobStore, queue: JobQueue, study_id: str, settings: FinetuneFollowUp) -> SubmitReport:
    """Create and enqueue the fine-tuning of the study's `settings.top` best transfer models."""
    parents = finetune_candidates(store.list_jobs(study_id), settings.top)
    specs = [
        finetune_spec(p, settings.unfreeze_from, settings.optimizer, settings.epochs, settings.early_stopping)
        for p in parents
    ]
    return submit_jobs(store, queue, study_id, with_ids(study_id, specs))


def enqueue_evaluate(store: JobStore, queue: JobQueue, study_id: str, top: int) -> SubmitReport:
    """Create and enqueue one test-split evaluation of each of the study's `top` best models."""
    targets = evaluation_candidates(store.list_jobs(study_id), top)
    return submit_jobs(store, queue, study_id, with_ids(study_id, [evaluate_spec(t) for t in targets]))


def _all_finished(jobs: Sequence[JobRecord], kinds: tuple[str, ...]) -> bool:
    relevant = [j for j in jobs if j.kind in kinds]
    return bool(relevant) and all(j.status.finished for j in relevant)


def advance_study(store: JobStore, queue: JobQueue, study_id: str) -> dict[str, int]:
    """Enqueue the study's automatic follow-ups whose turn has come; idempotent.

    Derived from the store alone, so any worker may call it any number of times: the one that
    settles the last job, and the reconciler of an idle worker when that one failed. A stage is
    two steps: create and enqueue its jobs (`submit_jobs`), then `mark_stage`. Stopped between
    them, the stage is not marked, and the next call creates nothing new, sends what was never
    sent and marks it. A cancelled study (`CANCELLED_STAGE`) advances no further.

    A study whose search keeps a window (shared.search) first tops it up ("search": the jobs
    created), and starts its follow-ups only once the search is complete.

    Returns:
        For each stage this call started ("search", "finetune", "evaluate"), the number of jobs
        it created and enqueued: 0 when no model qualified (say, every training job failed).
    """
    study = store.get_study(study_id)
    if study is None or CANCELLED_STAGE in study.stages:
        return {}
    spec = StudySpec.model_validate(study.spec)
    started: dict[str, int] = {}
    if windowed(spec) and SEARCH_STAGE not in study.stages and not _search_done(store, queue, spec, started):
        return started  # the follow-ups wait for the search's last trial
    finetune_due = spec.finetune is not None and "finetune" not in study.stages
    if not finetune_due and (spec.evaluate is None or "evaluate" in study.stages):
        return started  # nothing left to start: no need to read the jobs
    if spec.finetune and finetune_due and _all_finished(store.list_jobs(study_id), ("train",)):
        report = enqueue_finetune(store, queue, study_id, spec.finetune)
        if store.mark_stage(study_id, "finetune"):
            started["finetune"] = report.created
        finetune_due = False
    ready_for_eval = not finetune_due and _all_finished(store.list_jobs(study_id), ("train", "finetune"))
    if spec.evaluate and "evaluate" not in study.stages and ready_for_eval:
        report = enqueue_evaluate(store, queue, study_id, spec.evaluate.top)
        if store.mark_stage(study_id, "evaluate"):
            started["evaluate"] = report.created
    return started


def _search_done(store: JobStore, queue: JobQueue, spec: StudySpec, started: dict[str, int]) -> bool:
    """Top up a windowed search (counted in `started["search"]`); whether it is complete, marked
    then as a stage (final: no trial or budget comes back), so that later calls skip it."""
    searched = advance_search(store, queue, spec)
    if searched.created:
        started["search"] = searched.created
    if not search_complete(spec, store.list_jobs(spec.study_id)):
        return False
    store.mark_stage(spec.study_id, SEARCH_STAGE)
    return True


def advance_search(store: JobStore, queue: JobQueue, spec: StudySpec) -> SubmitReport:
    """Create and enqueue what the study's search wants next (shared.search.next_jobs): new
    trials, ASHA promotions, the next jobs of a window; asked again (a promotion is decided one
    per rung at a time) until a round creates nothing. Racing callers create each once.

    Returns:
        What was created and sent, over all rounds."""
    total = SubmitReport()
    for _ in range(MAX_SEARCH_ROUNDS):
        report = submit_jobs(store, queue, spec.study_id, next_jobs(spec, store.list_jobs(spec.study_id)))
        total.created, total.sent = total.created + report.created, total.sent + report.sent
        if not report.created:
            break
    return total


def enqueue_followups(store: JobStore, queue: JobQueue, study_id: str, specs: Sequence[JobSpec]) -> SubmitReport:
    return submit_jobs(store, queue, study_id, with_ids(study_id, specs))
