"""The search across the queue: which jobs a study wants next, decided from the store alone.

There is no head node. Whoever settles a job (a worker), submits or repairs a study asks
`next_jobs(spec, jobs)` and enqueues the answer through `submit_jobs` (shared.followups.
advance_study does both). It is safe however many ask at once:
- trial k's job ids are deterministic in (study, k, repeat) (`trial_job_id`), never in what was
  proposed for it, and an ASHA promotion's in (study, rung, slot) (`promotion_job_id`); records
  are created only if absent: racing workers create each trial and each promotion once (a
  loser's proposal is dropped with its create), so a study with `count: N` ends with exactly N
  trials, and no rung takes more than its share;
- stopped between deciding and sending, the records exist unsent and the reconciler sends them;
  stopped before deciding, the settled job's message is still on the queue (a worker deletes it
  only after advancing the study, worker/outcomes.py), and whoever receives it decides.

A study enqueues everything at submission (a grid, a random or Sobol sample), or keeps a window
of `search.parallel` jobs in flight and tops it up as jobs settle: the adaptive methods (TPE
proposes from finished results; ASHA promotes), and any study with a budget or a `parallel`.
Once the budget is reached nothing new is enqueued; running jobs finish.

ASHA (asynchronous successive halving): trial k's rung i is its own job, trained to `rungs[i]`
epochs in total. When a rung's finished jobs number n, the top floor(n / eta) of them by
val_accuracy are promoted (promotions before new trials): the rung i+1 job continues from its
parent's committed training state (the worker resumes it; epochs are not redone). A trial not
promoted is stopped at its rung.
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.jobs import JobRecord, JobSpec, Trial, short_hash
from shared.study import (
    AshaSearch,
    SobolSearch,
    StudySpec,
    TpeSearch,
    active_dimensions,
    asha_rungs,
    choice_of,
    dimensions,
    distribution_paths,
    expand,
    grid_params,
    grid_size,
    is_sampled,
    job_count,
    selected_points,
    train_spec,
)
from shared.status import JobStatus

SCORE = "val_accuracy"  # what every method maximises
BUDGET_WINDOW = 4  # jobs in flight under a GPU-hours or dollar budget when the search names no `parallel`


def trial_job_id(study_id: str, index: int, repeat: int = 0) -> str:
    """Trial `index`'s first job (of `repeat`), deterministic in them: what a racing worker
    proposes for the trial never changes it (its promotions: `promotion_job_id`)."""
    return short_hash(f"{study_id}\ntrial {index}\nrepeat {repeat}")


def rungs(spec: StudySpec) -> list[int]:
    """Cumulative epochs at each rung: r, r*eta, r*eta**2, ... below `training.epochs`, then it."""
    return asha_rungs(spec)


def windowed(spec: StudySpec) -> bool:
    """Whether the study keeps a window of jobs in flight instead of enqueuing all at once."""
    return spec.search.method in ("tpe", "asha") or spec.budget is not None or spec.search.parallel is not None


def window(spec: StudySpec) -> int | None:
    """Jobs in flight at most (None: no limit), never fewer than one trial's repeats (created
    together: a smaller window would never start a trial). A time or money budget needs one: what
    is all enqueued at once can no longer be held back."""
    spends = spec.budget is not None and (spec.budget.gpu_hours is not None or spec.budget.usd is not None)
    parallel = spec.search.parallel if spec.search.parallel is not None else (BUDGET_WINDOW if spends else None)
    return None if parallel is None else max(parallel, _per_trial(spec))


def _per_trial(spec: StudySpec) -> int:
    """Jobs created together: a sampled trial's repeats (a grid's jobs come one at a time)."""
    return spec.training.repeats if is_sampled(spec) else 1


def trial_count(spec: StudySpec) -> int:
    """Trials the search runs: `count` (a list-only space caps it at the grid: trials are distinct)."""
    if not is_sampled(spec):
        return len(selected_points(spec))
    count = spec.search.count  # type: ignore[union-attr]
    return count if distribution_paths(spec) or isinstance(spec.search, SobolSearch) else min(count, grid_size(spec))


# --- drawing trials ---------------------------------------------------------------------------


def drawn_params(spec: StudySpec, index: int) -> dict[str, float]:
    """Trial `index`'s point when it does not depend on results: a seeded random draw (per trial,
    so racing workers draw the same), the Sobol sequence's point `index`, or, over a space of
    lists only, the `index`-th distinct grid point of a seeded permutation."""
    seed = spec.search.seed  # type: ignore[union-attr]
    if not distribution_paths(spec) and not isinstance(spec.search, SobolSearch):
        return grid_params(spec, _permutation(grid_size(spec), seed)[index])
    dims = dimensions(spec)
    if isinstance(spec.search, SobolSearch):
        unit = _sobol(len(dims), seed, trial_count(spec))[index]
    else:
        draw = random.Random(f"{seed}:{index}")  # a str seed is hashed with SHA-512: the same in every process
        unit = [draw.random() for _ in dims]
    params = {dim.name: dim.param(float(u)) for dim, u in zip(dims, unit)}
    return {dim.name: params[dim.name] for dim in active_dimensions(dims, params)}


@functools.lru_cache(maxsize=8)
def _permutation(size: int, seed: int) -> tuple[int, ...]:
    return tuple(random.Random(seed).sample(range(size), size))


@functools.lru_cache(maxsize=8)
def _sobol(dimensions_count: int, seed: int, count: int) -> Any:
    from scipy.stats import qmc

    with warnings.catch_warnings():  # balance needs a power of two; the first `count` points are as good
        warnings.simplefilter("ignore")
        return qmc.Sobol(dimensions_count, scramble=True, seed=seed).random(count)


def _tpe_params(spec: StudySpec, indices: Sequence[int], history: Sequence[JobRecord]) -> dict[int, dict[str, float]]:
    """Optuna's TPE proposals for `indices`, from an in-memory study rebuilt from the records:
    finished trials with their score, failed ones as failed, unfinished ones as running (the
    constant liar keeps parallel proposals apart)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Multivariate TPE is marked experimental; a filter, not catch_warnings: settling threads race here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    dims = {dim.name: dim for dim in dimensions(spec)}
    sampler = optuna.samplers.TPESampler(
        seed=_seed(spec.search.seed, indices[0]), n_startup_trials=0, constant_liar=True, multivariate=True, group=True  # type: ignore[union-attr]
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for record in history:
        _tell(study, record, dims, create_trial, TrialState)
    return {index: _ask(study, list(dims.values())) for index in indices}


def _tell(study: Any, record: JobRecord, dims: dict[str, Any], create_trial: Any, states: Any) -> None:
    """Add one record's trial to the in-memory study; one whose params do not fit the space (a
    record written by someone else) is left out rather than stopping every later proposal."""
    params = {k: v for k, v in record.spec.trial.params.items() if k in dims}  # type: ignore[union-attr]
    state, value = _optuna_state(record, states)
    try:
        trial = create_trial(params=_optuna_values(params, dims), distributions={k: dims[k].optuna() for k in params},
                             state=state, value=value)
        study.add_trial(trial)
    except ValueError:
        return


def _optuna_state(record: JobRecord, states: Any) -> tuple[Any, float | None]:
    score = record.metrics.val_accuracy
    if record.status is JobStatus.SUCCEEDED and score is not None and math.isfinite(score):
        return states.COMPLETE, score
    return (states.FAIL, None) if record.status.finished else (states.RUNNING, None)


def _optuna_values(params: dict[str, float], dims: dict[str, Any]) -> dict[str, Any]:
    # Categorical params are indices; integer distributions take ints.
    return {k: int(v) if dims[k].choices is not None or dims[k].distribution.is_int else v for k, v in params.items()}


def _ask(study: Any, dims: Sequence[Any]) -> dict[str, float]:
    """One proposal: the optimizer entry first, then only that entry's parameters."""
    trial = study.ask()
    params: dict[str, float] = {}
    for dim in dims:
        if not dim.varies or (dim.name.startswith("optimizer[") and not dim.name.startswith(f"optimizer[{int(params.get('optimizer', 0))}].")):
            continue
        value = trial._suggest(dim.name, dim.optuna())
        params[dim.name] = float(value)
    return params


def _seed(seed: int, index: int) -> int:
    return int(short_hash(f"{seed}:{index}", 8), 16)


# --- what comes next --------------------------------------------------------------------------


@dataclass
class _Trials:
    """A study's training jobs by trial and rung (trial jobs), and the rest (grid jobs)."""

    by_trial: dict[int, dict[int, list[JobRecord]]]
    grid_jobs: list[JobRecord]

    @classmethod
    def of(cls, jobs: Sequence[JobRecord]) -> _Trials:
        by_trial: dict[int, dict[int, list[JobRecord]]] = defaultdict(lambda: defaultdict(list))
        grid = []
        for job in jobs:
            if job.kind != "train":
                continue
            if job.spec.trial is None:
                grid.append(job)
            else:
                by_trial[job.spec.trial.index][job.spec.trial.rung].append(job)
        return cls(by_trial, grid)


def budget_used(jobs: Sequence[JobRecord]) -> dict[str, float]:
    """What the study spent: training jobs created, GPU-hours and dollars of every job so far."""
    return {
        "jobs": float(sum(1 for j in jobs if j.kind == "train")),
        "gpu_hours": sum(j.train_seconds for j in jobs) / 3600,
        "usd": sum(j.cost_usd for j in jobs),
    }


def budget_reached(spec: StudySpec, jobs: Sequence[JobRecord]) -> bool:
    if spec.budget is None:
        return False
    used = budget_used(jobs)
    used["jobs"] += _per_trial(spec) - 1  # reached when too few jobs are left for a trial's repeats
    return any(limit is not None and used[name] >= limit for name, limit in spec.budget.model_dump().items())


def _room(spec: StudySpec, jobs: Sequence[JobRecord]) -> int | None:
    """How many jobs may be created now: the window's free slots and the budget's jobs left
    (None: no limit); 0 once the budget is reached."""
    if budget_reached(spec, jobs):
        return 0
    limits = []
    parallel = window(spec)
    if parallel is not None:
        limits.append(parallel - sum(1 for j in jobs if j.kind == "train" and not j.status.finished))
    if spec.budget is not None and spec.budget.jobs is not None:
        limits.append(spec.budget.jobs - sum(1 for j in jobs if j.kind == "train"))
    return max(0, min(limits)) if limits else None


def promotions(spec: StudySpec, trials: _Trials) -> list[tuple[int, JobRecord]]:
    """ASHA: per rung, top rungs first, the best finished job in its rung's top 1/eta not yet
    promoted, with the slot it takes: the number of promotions into the next rung so far, below
    floor(count / eta**(i+1)).

    Why the cap: asynchronous promotion alone has no bound (when each new result beats the
    earlier ones, nearly every trial is in the top 1/eta when it finishes), and a study must say
    what it will cost at most (`upper_bound`) and keep to it. Why one per rung, keyed by slot: a
    worker deciding from a stale snapshot then aims at a slot that a newer decision filled, and
    its create finds the record there; the slots fill in order, so neither the cap nor "each
    trial promoted once" depends on who read the store when (`advance_search` asks again until
    nothing is due)."""
    if not isinstance(spec.search, AshaSearch):
        return []
    eta, count, due = spec.search.reduction_factor, trial_count(spec), []
    for rung in reversed(range(len(rungs(spec)) - 1)):
        promoted = sum(1 for by_rung in trials.by_trial.values() if rung + 1 in by_rung)
        waiting = _waiting(trials, rung, eta)
        if waiting and promoted < count // eta ** (rung + 1):
            due.append((promoted, waiting[0]))
    return due


def _waiting(trials: _Trials, rung: int, eta: int) -> list[JobRecord]:
    """The rung's finished jobs in its top floor(n / eta) whose trial has no next rung yet, best first."""
    scored = [(job.metrics.val_accuracy, -index, job) for index, by_rung in trials.by_trial.items()
              for job in by_rung.get(rung, []) if _scored(job)]
    best = sorted(scored, key=lambda item: item[:2], reverse=True)[: len(scored) // eta]
    return [job for _, _, job in best if rung + 1 not in trials.by_trial[job.spec.trial.index]]  # type: ignore[union-attr]


def _scored(job: JobRecord) -> bool:
    score = job.metrics.val_accuracy
    return job.status is JobStatus.SUCCEEDED and score is not None and math.isfinite(score)


def promotion(spec: StudySpec, study_id: str, parent: JobRecord, slot: int) -> tuple[str, JobSpec]:
    """The next rung's job of `parent`'s trial, in promotion `slot` of that rung: the same
    configuration, more epochs, resuming it."""
    trial = parent.spec.trial.model_copy(update={"rung": parent.spec.trial.rung + 1})  # type: ignore[union-attr]
    training = parent.spec.training.model_copy(update={"epochs": rungs(spec)[trial.rung]})
    job = parent.spec.model_copy(update={"trial": trial, "training": training, "parent_job_id": parent.job_id})
    return promotion_job_id(study_id, trial.rung, slot), job


def promotion_job_id(study_id: str, rung: int, slot: int) -> str:
    """Deterministic in (study, rung, slot): two decisions for one slot create one job."""
    return short_hash(f"{study_id}\nrung {rung}\npromotion {slot}")


def missing_trials(spec: StudySpec, trials: _Trials) -> list[int]:
    """Trial indices not created yet, in order (a gap left by a partial create comes first);
    under a budget on jobs only the indices that fit it, so that racing workers cannot pass it."""
    limit = trial_count(spec)
    if spec.budget is not None and spec.budget.jobs is not None:
        limit = min(limit, spec.budget.jobs // spec.training.repeats)
    return [k for k in range(limit) if k not in trials.by_trial]


def trial_jobs(spec: StudySpec, index: int, params: dict[str, float]) -> list[tuple[str, JobSpec]]:
    """Trial `index`'s first jobs (one per repeat; ASHA's first rung trains `rungs[0]` epochs)."""
    choice = choice_of(spec, params)
    out = []
    for repeat in range(spec.training.repeats):
        job = train_spec(spec, choice, repeat, Trial(index=index, params=params))
        if isinstance(spec.search, AshaSearch):  # ASHA is the early stopping; a rung trains its epochs
            job = job.model_copy(update={"training": job.training.model_copy(update={"epochs": rungs(spec)[0], "early_stopping": None})})
        out.append((trial_job_id(spec.study_id, index, repeat), job))
    return out


def _new_trials(spec: StudySpec, indices: list[int], jobs: Sequence[JobRecord]) -> list[tuple[str, JobSpec]]:
    proposed: dict[int, dict[str, float]] = {}
    startup = spec.search.startup if isinstance(spec.search, TpeSearch) else None
    drawn = [k for k in indices if startup is None or k < startup]
    proposed.update({k: drawn_params(spec, k) for k in drawn})
    asked = [k for k in indices if k not in proposed]
    if asked:
        history = [j for j in jobs if j.kind == "train" and j.spec.trial is not None]
        proposed.update(_tpe_params(spec, asked, history))
    return [job for k in indices for job in trial_jobs(spec, k, proposed[k])]


def _grid_jobs(spec: StudySpec, trials: _Trials, room: int | None) -> list[tuple[str, JobSpec]]:
    """A windowed grid or list-sampled study: its next jobs in order (created in order, so the
    created ones are a prefix; ids as `expand` gives them)."""
    existing = {job.job_id for job in trials.grid_jobs}
    most = spec.budget.jobs if spec.budget is not None and spec.budget.jobs is not None else None
    out: list[tuple[str, JobSpec]] = []
    for position, (job_id, job) in enumerate(expand(spec)):
        if (room is not None and len(out) >= room) or (most is not None and position >= most):
            break
        if job_id not in existing:
            out.append((job_id, job))
    return out


def next_jobs(spec: StudySpec, jobs: Sequence[JobRecord]) -> list[tuple[str, JobSpec]]:
    """The jobs to create and enqueue now (for a study that enqueues everything at submission,
    none after it): ASHA promotions, then new trials, within the window and the budget."""
    if not windowed(spec):
        return []
    room = _room(spec, jobs)
    if room == 0:
        return []
    if not is_sampled(spec):
        return _grid_jobs(spec, _Trials.of(jobs), room)
    trials = _Trials.of(jobs)
    due = [promotion(spec, spec.study_id, parent, slot) for slot, parent in promotions(spec, trials)]
    chosen = due if room is None else due[:room]
    slots = None if room is None else room - len(chosen)
    per_trial = spec.training.repeats
    indices = missing_trials(spec, trials)
    indices = indices if slots is None else indices[: slots // per_trial]
    return chosen + (_new_trials(spec, indices, jobs) if indices else [])


def initial_jobs(spec: StudySpec) -> Iterator[tuple[str, JobSpec]]:
    """What `submit study` enqueues: everything, or the first window."""
    if windowed(spec):
        yield from next_jobs(spec, [])
    elif not is_sampled(spec):
        yield from expand(spec)
    else:
        for index in range(trial_count(spec)):
            yield from trial_jobs(spec, index, drawn_params(spec, index))


def search_complete(spec: StudySpec, jobs: Sequence[JobRecord]) -> bool:
    """No training job unfinished and nothing more to enqueue (every trial and promotion made,
    or the budget reached): the follow-ups' turn."""
    train = [j for j in jobs if j.kind == "train"]
    if any(not j.status.finished for j in train):
        return False
    if not windowed(spec) or budget_reached(spec, jobs) or _room(spec, jobs) == 0:
        return True
    if not is_sampled(spec):
        return not _grid_jobs(spec, _Trials.of(jobs), 1)
    trials = _Trials.of(jobs)
    return not promotions(spec, trials) and not missing_trials(spec, trials)


# --- what people see --------------------------------------------------------------------------


@dataclass
class RungSummary:
    epochs: int
    finished: int = 0
    running: int = 0
    queued: int = 0
    promoted: int = 0


@dataclass
class SearchSummary:
    method: str
    count: int  # trials planned in total
    created: int
    done: int
    running: int
    queued: int
    planned: int  # trials not created yet
    complete: bool
    epochs_trained: int  # epochs actually trained (a promotion's resumed epochs counted once)
    budget: dict[str, Any] | None = None
    rungs: list[RungSummary] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def summary(spec: StudySpec, jobs: Sequence[JobRecord]) -> SearchSummary:
    """Trials done/running/queued/planned, the budget used against its limits, ASHA's rungs."""
    trials = _Trials.of(jobs)
    states = [_trial_state(by_rung) for by_rung in trials.by_trial.values()] if is_sampled(spec) else [
        job.status for job in trials.grid_jobs]
    count = trial_count(spec) if is_sampled(spec) else job_count(spec)
    return SearchSummary(
        method=spec.search.method, count=count, created=len(states),
        done=sum(1 for s in states if s.finished), running=states.count(JobStatus.RUNNING),
        queued=states.count(JobStatus.QUEUED), planned=max(0, count - len(states)),
        complete=search_complete(spec, jobs), epochs_trained=epochs_trained(jobs),
        budget=_budget_view(spec, jobs), rungs=_rung_summaries(spec, trials),
    )


def _trial_state(by_rung: dict[int, list[JobRecord]]) -> JobStatus:
    """A trial is where its latest rung's job is (its repeats: the least advanced of them)."""
    latest = by_rung[max(by_rung)]
    order = [JobStatus.RUNNING, JobStatus.QUEUED]
    return next((status for status in order if any(j.status is status for j in latest)), latest[0].status)


def epochs_trained(jobs: Sequence[JobRecord]) -> int:
    """Epochs trained by the study's training jobs; a promotion's resumed epochs are its parent's."""
    by_id = {job.job_id: job for job in jobs}
    total = 0
    for job in jobs:
        if job.kind == "train":
            parent = by_id.get(job.spec.parent_job_id or "")
            total += max(0, job.epochs_run - (parent.epochs_run if parent else 0))
    return total


def _budget_view(spec: StudySpec, jobs: Sequence[JobRecord]) -> dict[str, Any] | None:
    if spec.budget is None:
        return None
    used, limits = budget_used(jobs), spec.budget.model_dump()
    view: dict[str, Any] = {name: [round(used[name], 6), limits[name]] for name in used}
    view["reached"] = budget_reached(spec, jobs)
    return view


def _rung_summaries(spec: StudySpec, trials: _Trials) -> list[RungSummary]:
    if not isinstance(spec.search, AshaSearch):
        return []
    out = [RungSummary(epochs) for epochs in rungs(spec)]
    for by_rung in trials.by_trial.values():
        for rung, members in by_rung.items():
            for job in members:
                _count(out[rung], job.status)
                if rung + 1 in by_rung:
                    out[rung].promoted += 1
    return out


def _count(rung: RungSummary, status: JobStatus) -> None:
    if status.finished:
        rung.finished += 1
    elif status is JobStatus.RUNNING:
        rung.running += 1
    else:
        rung.queued += 1


@dataclass(frozen=True)
class TrialView:
    index: int
    rung: int
    rung_epochs: int
    stopped_early: bool  # its trial went no further than this rung, below the top one
    superseded: bool  # a later rung of its trial succeeded: that job speaks for the trial


def trial_view(spec: StudySpec, jobs: Sequence[JobRecord]) -> dict[str, TrialView]:
    """Per trial job (by job id): its trial, rung, the rung's epochs, and whether it stopped early
    (ASHA: succeeded at a rung below the top, not promoted, and none is due any more)."""
    trials, epochs = _Trials.of(jobs), rungs(spec)
    due = {job.job_id for _, job in promotions(spec, trials)}
    complete_or_due = search_complete(spec, jobs)
    views = {}
    for index, by_rung in trials.by_trial.items():
        for rung, members in by_rung.items():
            for job in members:
                stopped = (isinstance(spec.search, AshaSearch) and rung < len(epochs) - 1 and rung + 1 not in by_rung
                           and job.status is JobStatus.SUCCEEDED and job.job_id not in due and complete_or_due)
                superseded = any(j.status is JobStatus.SUCCEEDED for j in by_rung.get(rung + 1, []))
                views[job.job_id] = TrialView(index, rung, epochs[min(rung, len(epochs) - 1)], stopped, superseded)
    return views


@dataclass(frozen=True)
class Bound:
    trials: int
    jobs: int  # at most, promotions included
    epochs: int  # at most


def upper_bound(spec: StudySpec) -> Bound:
    """The most a study can run: for ASHA, floor(N / eta**i) trials reach rung i (`promotions`
    keeps to it), and each promotion trains only its rung's extra epochs; a budget on jobs caps
    the jobs."""
    count = trial_count(spec) * (spec.training.repeats if is_sampled(spec) else 1)
    epochs = rungs(spec)
    if isinstance(spec.search, AshaSearch):
        eta = spec.search.reduction_factor
        reaching = [count // eta**i for i in range(len(epochs))]
        jobs = sum(reaching)
        total_epochs = sum(n * (e - (epochs[i - 1] if i else 0)) for i, (n, e) in enumerate(zip(reaching, epochs)))
    else:
        jobs = count if is_sampled(spec) else job_count(spec)
        total_epochs = jobs * epochs[-1]
    if spec.budget is not None and spec.budget.jobs is not None and spec.budget.jobs < jobs:
        jobs = spec.budget.jobs
        total_epochs = min(total_epochs, jobs * epochs[-1])
    return Bound(trial_count(spec), jobs, total_epochs)
