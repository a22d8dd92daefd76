"""Ranking finished jobs: the leaderboard's order and the follow-ups' choice of the top k.

Repeats of one configuration (same spec but seed) are ranked by their mean, with the std beside it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from shared.jobs import JobRecord
from shared.status import JobStatus

LOWER_IS_BETTER = {"val_loss", "loss", "test_loss", "train_seconds", "cost_usd"}


def metric_value(record: JobRecord, metric: str) -> float | None:
    if metric in ("train_seconds", "cost_usd", "epochs_run"):
        return float(getattr(record, metric))
    value = getattr(record.metrics, metric, None)
    if value is None:
        value = (record.metrics.model_extra or {}).get(metric)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Ranked:
    record: JobRecord  # the best repeat of its configuration
    score: float | None
    mean: float | None
    std: float | None
    repeats: int


def rank(records: Iterable[JobRecord], metric: str = "val_accuracy", kind: str | None = None) -> list[Ranked]:
    """Configurations best first by the mean of `metric` over their repeats; unscored ones last."""
    groups: dict[tuple[str, str], list[JobRecord]] = defaultdict(list)
    for record in records:
        if kind is None or record.kind == kind:
            groups[(record.kind, record.spec.config_key())].append(record)
    ranked = [_summarise(group, metric) for group in groups.values()]
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return sorted(ranked, key=lambda r: (r.mean is None, sign * (r.mean or 0.0), r.record.job_id))


def _summarise(group: list[JobRecord], metric: str) -> Ranked:
    scored = [(metric_value(r, metric), r) for r in group]
    values = [v for v, _ in scored if v is not None]
    if not values:
        return Ranked(group[0], None, None, None, len(group))
    better = min if metric in LOWER_IS_BETTER else max
    best_value, best = better(((v, r) for v, r in scored if v is not None), key=lambda pair: pair[0])
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Ranked(best, best_value, statistics.fmean(values), std, len(group))


def top_succeeded(records: Iterable[JobRecord], k: int, kind: str, metric: str = "val_accuracy") -> list[JobRecord]:
    """The best `k` succeeded jobs of one kind (one per configuration)."""
    succeeded = [r for r in records if r.status == JobStatus.SUCCEEDED]
    return [r.record for r in rank(succeeded, metric, kind) if r.mean is not None][:k]
