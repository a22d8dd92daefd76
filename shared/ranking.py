"""Ranking finished jobs: the leaderboard's order and every follow-up's choice of the top k.

One rule for repeats (jobs with the same spec but seed: one configuration), used by every selection
(the leaderboard, fine-tuning, evaluation, the report):

- configurations are ordered by the MEAN of the metric over their repeats, never by their luckiest
  seed: the best of three seeds is biased upwards, and the more seeds a configuration has, the more
  it would profit;
- the mean is taken over the SUCCEEDED repeats that have the metric; a configuration none of whose
  repeats succeeded yet is placed by what its jobs have so far (a running job's best epoch), so a
  failed repeat's partial score never drags a finished configuration down;
- the configuration is represented by its best repeat (`Ranked.record`): that job's model is the
  one fine-tuned, evaluated and exported, and the job a table row names.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.jobs import JobRecord
from shared.status import JobStatus

LOWER_IS_BETTER = {"val_loss", "loss", "test_loss", "train_seconds", "cost_usd"}
TRAINED_KINDS = ("train", "finetune")  # the kinds that produce a model with a validation score


def metric_value(record: JobRecord, metric: str) -> float | None:
    if metric in ("train_seconds", "cost_usd", "epochs_run"):
        return float(getattr(record, metric))
    value = getattr(record.metrics, metric, None)
    if value is None:
        value = (record.metrics.model_extra or {}).get(metric)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Ranked:
    """One configuration summarised by one metric: `mean` (what it is ranked by) and `std` over
    its scored repeats, `score` and `record` of the best of them, and every job of it (`members`)."""

    record: JobRecord  # the best repeat of its configuration: the job that stands for it
    score: float | None
    mean: float | None
    std: float | None
    repeats: int
    members: tuple[JobRecord, ...] = ()


def scored_repeats(members: Sequence[JobRecord], metric: str) -> list[tuple[float, JobRecord]]:
    """The repeats a configuration is judged by, with their `metric`: the succeeded ones that have
    it, or, while none has succeeded, every one that has it."""
    scored = [(value, r) for r in members if (value := metric_value(r, metric)) is not None]
    succeeded = [(value, r) for value, r in scored if r.status == JobStatus.SUCCEEDED]
    return succeeded or scored


def latest_rungs(records: Iterable[JobRecord]) -> list[JobRecord]:
    """`records` without the ASHA rung jobs that a later rung of their trial superseded (it
    SUCCEEDED, resuming them): one job speaks for each trial, the furthest it got. A trial
    stopped at a rung is ranked by that rung's score."""
    records = list(records)
    done = {(r.study_id, r.spec.trial.index, r.spec.trial.rung, r.spec.repeat) for r in records
            if r.spec.trial is not None and r.kind == "train" and r.status == JobStatus.SUCCEEDED}
    return [r for r in records if r.spec.trial is None or r.kind != "train"
            or (r.study_id, r.spec.trial.index, r.spec.trial.rung + 1, r.spec.repeat) not in done]


def rank(records: Iterable[JobRecord], metric: str = "val_accuracy", kind: str | None = None) -> list[Ranked]:
    """Configurations best first by the mean of `metric` over their repeats; unscored ones last."""
    groups: dict[tuple[str, str], list[JobRecord]] = defaultdict(list)
    for record in latest_rungs(records):
        if kind is None or record.kind == kind:
            groups[(record.kind, record.spec.config_key())].append(record)
    ranked = [_summarise(group, metric) for group in groups.values()]
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return sorted(ranked, key=lambda r: (r.mean is None, sign * (r.mean or 0.0), r.record.job_id))


def _summarise(group: list[JobRecord], metric: str) -> Ranked:
    scored = scored_repeats(group, metric)
    if not scored:
        return Ranked(group[0], None, None, None, len(group), tuple(group))
    values = [value for value, _ in scored]
    better = min if metric in LOWER_IS_BETTER else max
    best_value, best = better(scored, key=lambda pair: pair[0])
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Ranked(best, best_value, statistics.fmean(values), std, len(group), tuple(group))


def top_succeeded(
    records: Iterable[JobRecord], k: int, kinds: str | Sequence[str], metric: str = "val_accuracy"
) -> list[JobRecord]:
    """The best `k` configurations among the succeeded jobs of `kinds` (one kind, or several ranked
    together), by the mean over repeats; each one's best repeat."""
    wanted = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    succeeded = [r for r in records if r.status == JobStatus.SUCCEEDED and r.kind in wanted]
    return [r.record for r in rank(succeeded, metric) if r.mean is not None][:k]
