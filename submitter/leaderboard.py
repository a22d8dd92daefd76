"""Leaderboard rows and the architecture x optimizer matrix, as pandas DataFrames.

Every accuracy carries how far it can be trusted (shared/stats.py):
- `val_accuracy_ci_low/high`: Wilson's 95% interval of the row's job over its `val_examples`
  (and `test_accuracy_ci_low/high` over `test_examples`), from the counts in the records' metrics;
- `val_accuracy_mean` with `val_accuracy_mean_ci_low/high`: the mean over a configuration's
  repeats (what it is ranked by, shared/ranking.py) with a t-interval over seeds;
- `tied_with_best`: not significantly different from #1 by the exact McNemar test on the same
  validation examples, Holm-corrected over the rows shown (submitter/compare.py);
- `val_test_gap` and `gap_warning`: once a row's model was evaluated, its validation minus test
  accuracy, and whether the test score lies outside the validation interval (selection overfitted it).

Jobs of a sampled or adaptive search (shared/search.py) carry their `trial` number, the `rung` their
job reached with its `rung_epochs` (ASHA; rung 0 otherwise) and `stopped_early`: ASHA ended the
trial at that rung. Ranking keeps a trial's latest rung only (shared.ranking), so a stopped trial
ranks by its last rung's score; the terminal marks it.
Values a record cannot support (no example counts, no per-example file) are null, never guessed.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from shared.jobs import JobRecord, Metrics
from shared.optimizers import CONCRETE_CLASSES
from shared.ports import ArtifactStore
from shared.ranking import LOWER_IS_BETTER, Ranked, rank, scored_repeats
from shared.status import JobStatus
from submitter.render import short_number

if TYPE_CHECKING:
    from shared.search import TrialView
    from submitter.compare import Tie

COLUMNS = [
    "rank", "job_id", "kind", "status", "trial", "rung", "rung_epochs", "stopped_early",
    "architecture", "weights", "optimizer", "optimizer_params",
    "batch_size", "image_size", "data_fraction", "augmentation",
    "val_accuracy", "val_examples", "val_accuracy_ci_low", "val_accuracy_ci_high",
    "val_accuracy_mean", "val_accuracy_mean_ci_low", "val_accuracy_mean_ci_high", "tied_with_best", "tie_p_value",
    "val_loss", "test_accuracy", "test_examples", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_loss",
    "evaluation_job_id", "val_test_gap", "gap_warning",
    "score", "mean", "std", "repeats", "best_epoch", "epochs_run",
    "train_seconds", "cost_usd", "total_params", "trainable_params", "attempts", "preemptions",
    "parent_job_id", "checkpoint",
]
CONFIDENCE = 0.95
TIE_MARK = "\u2248"  # "≈": not significantly different from #1
NO_FILE_MARK = "?"  # no per-example results to compare with #1
STOPPED_MARK = "\u2020"  # "†": ASHA stopped the trial at its rung


# What a person reads in a terminal (short headers); json/csv/markdown carry every column.
TABLE_COLUMNS = {
    "rank": "#", "tie": TIE_MARK, "job_id": "job", "kind": "kind", "status": "status", "trial": "trial",
    "rung_cell": "rung", "architecture": "arch",
    "optimizer": "opt", "params": "params", "batch_size": "batch", "data_fraction": "frac", "val_accuracy": "val_acc",
    "val_interval": "95%", "repeats": "reps", "val_loss": "val_loss", "test_accuracy": "test_acc",
    "test_interval": "test 95%", "val_test_gap": "gap", "best_epoch": "best", "epochs_run": "epochs",
    "train_seconds": "seconds", "cost_usd": "cost", "attempts": "tries", "preemptions": "preempt",
}
ALWAYS = {"rank", "job_id", "status", "architecture", "optimizer", "val_accuracy"}


def for_table(frame: pd.DataFrame, by: str = "val_accuracy") -> pd.DataFrame:
    """The leaderboard for a person (the terminal and report.html): short headers, non-default
    optimizer parameters as `k=v`, and only the columns that say something (and those a reader
    always looks for).

    What is sorted by is what is shown: `val_acc` (and the `by` column) hold the mean over each
    configuration's repeats, `val 95%` that mean's t-interval where there are repeats and the
    run's Wilson interval where there is one run (shown as its half-width); the tie mark flags
    the rows tied with #1. The std of repeats is left to json and csv: the interval says more."""
    shown = frame.assign(
        params=[_short_params(o, p) for o, p in zip(frame["optimizer"], frame["optimizer_params"])],
        tie=[_tie_mark(row.rank, row.tied_with_best, row.val_accuracy_mean) for row in frame.itertuples(index=False)],
        val_accuracy=frame["val_accuracy_mean"],
        val_interval=[_val_interval(row) for row in frame.itertuples(index=False)],
        test_interval=_pairs(frame["test_accuracy_ci_low"], frame["test_accuracy_ci_high"]),
        rung_cell=[_rung_cell(row.rung, row.rung_epochs, row.stopped_early) for row in frame.itertuples(index=False)],
    )
    if by in shown.columns and by != "val_accuracy":
        shown[by] = frame["mean"]  # the sort key, as val_acc is
    ties_known = bool(frame["tied_with_best"].notna().any())
    shown_anyway = {"tie": ties_known, "rung_cell": bool(frame["stopped_early"].eq(True).any())}  # the stopped mark
    keep = [c for c in TABLE_COLUMNS if c in ALWAYS or shown_anyway.get(c) or _says_something(shown[c])]
    return shown[keep].rename(columns=TABLE_COLUMNS)


def _tie_mark(position: int, tied: bool | None, val_accuracy: float | None) -> str:
    """The tie mark of a row: blank for #1, for rows without a validation score (evaluations) and
    for rows that differ from #1; `?` where a scored row has no comparable per-example file."""
    if position == 1 or val_accuracy is None or pd.isna(val_accuracy):
        return ""
    return NO_FILE_MARK if tied is None or pd.isna(tied) else (TIE_MARK if tied else "")


def _rung_cell(rung: Any, epochs: Any, stopped: Any) -> str | None:
    """`2 (9 ep)`, with the stopped mark where ASHA stopped the trial there; None off a search."""
    if rung is None or pd.isna(rung):
        return None
    return f"{int(rung)} ({int(epochs)} ep)" + (f" {STOPPED_MARK}" if stopped is True else "")


def _val_interval(row: Any) -> tuple[float, float] | None:
    """The interval of what `val_acc` shows: the mean's t-interval (repeats), else the run's Wilson interval."""
    if not pd.isna(row.val_accuracy_mean_ci_low):
        return (row.val_accuracy_mean_ci_low, row.val_accuracy_mean_ci_high)
    return None if pd.isna(row.val_accuracy_ci_low) else (row.val_accuracy_ci_low, row.val_accuracy_ci_high)


def _pairs(lows: pd.Series, highs: pd.Series) -> list[tuple[float, float] | None]:
    return [None if pd.isna(low) else (low, high) for low, high in zip(lows, highs)]


def table_notes(frame: pd.DataFrame, by: str = "val_accuracy") -> list[str]:
    """The lines under the table that say how to read it: what it is sorted by and what the
    intervals are, what the tie mark means, and the validation-test gap warning."""
    if frame.empty:
        return []
    notes = []
    if (frame["repeats"] > 1).any():
        notes.append(f"sorted by the mean {by} over repeats (reps); 95%: \u00b1 half-width, "
                     "t over seeds if reps > 1, else Wilson")
    elif frame["val_accuracy_ci_low"].notna().any():
        notes.append(f"sorted by {by}; 95%: \u00b1 half-width of Wilson's score interval over the examples")
    compared = int(frame["tie_p_value"].notna().sum())
    if compared:
        notes.append(f"{TIE_MARK}: tied with #1 (exact McNemar on the same validation examples, Holm over {compared} "
                     f"comparisons); {NO_FILE_MARK}: no per-example file")
    if frame["stopped_early"].eq(True).any():
        notes.append(f"{STOPPED_MARK}: stopped early at its rung (ASHA), ranked by that rung's score")
    warning = gap_warning(frame)
    return notes + ([warning] if warning else [])


def gap_warning(frame: pd.DataFrame) -> str | None:
    """One line when an evaluated model's test accuracy lies outside its validation interval (the
    gap is larger than the interval's half-width on that side), naming the largest such gap."""
    flagged = frame[frame["gap_warning"].eq(True)]  # null: no evaluation or no interval
    if flagged.empty:
        return None
    evaluated = int(frame["val_test_gap"].notna().sum())
    worst = flagged.loc[flagged["val_test_gap"].abs().idxmax()]
    return (f"warning: {len(flagged)} of {evaluated} evaluated models fall outside their validation interval on test "
            f"(job {worst['job_id']}: gap {worst['val_test_gap']:.3f})")


def _says_something(values: pd.Series) -> bool:
    """False for a column that is empty, or holds one value on every row, or a zero on the rows
    that have one (`std` of single runs); True when rows differ, e.g. test accuracy on evaluations only."""
    present = values.dropna()
    if present.astype(str).nunique() > 1:
        return True
    return 0 < len(present) < len(values) and bool(present.iloc[0])


def _short_params(optimizer: str, params_json: str) -> str:
    defaults = CONCRETE_CLASSES[optimizer]().model_dump()
    params = json.loads(params_json) if params_json else {}
    shown = sorted((k, v) for k, v in params.items() if k == "learning_rate" or defaults.get(k) != v)
    return " ".join(f"{k}={short_number(v)}" for k, v in shown)


def job_row(record: JobRecord) -> dict[str, Any]:
    spec = record.spec
    optimizer = spec.optimizer.model_dump(exclude={"name"})
    return {
        "job_id": record.job_id,
        "kind": spec.kind,
        "status": record.status.value,
        "architecture": spec.model.architecture,
        "weights": spec.model.weights or "none",
        "optimizer": spec.optimizer.name,
        "optimizer_params": json.dumps(optimizer, sort_keys=True, separators=(",", ":")),
        "batch_size": spec.training.batch_size,
        "image_size": spec.model.image_size,
        "data_fraction": spec.training.data_fraction,
        "augmentation": spec.training.augmentation is not None,
        "val_accuracy": record.metrics.val_accuracy,
        "val_loss": record.metrics.val_loss,
        "test_accuracy": record.metrics.test_accuracy,
        "test_loss": record.metrics.test_loss,
        "best_epoch": record.best_epoch,
        "epochs_run": record.epochs_run,
        "train_seconds": round(record.train_seconds, 2),
        "cost_usd": round(record.cost_usd, 6),
        "total_params": record.total_params,
        "trainable_params": record.trainable_params,
        "attempts": record.attempt,
        "preemptions": record.preemptions,
        "parent_job_id": spec.parent_job_id,
        "checkpoint": record.checkpoint,
    }


def leaderboard(
    records: Sequence[JobRecord], by: str = "val_accuracy", kind: str | None = None, top: int | None = None,
    artifacts: ArtifactStore | None = None, trials: Mapping[str, TrialView] | None = None,
) -> pd.DataFrame:
    """One row per configuration (repeats folded into their mean), best first by the mean of `by`.

    `records` are the whole study: an evaluation gives the row of the model it evaluated its test
    score. `kind` keeps the rows of one kind. With `artifacts`, ranked by val_accuracy, the rows
    shown (`top`) are compared with #1 on their per-example validation results. `trials`
    (`shared.search.trial_view`, by job id) gives a search's rows their trial and rung."""
    from submitter import compare  # scipy: loaded when a leaderboard is drawn, not by every command

    ranked = rank(records, by, kind)
    shown = ranked[:top] if top else ranked
    views = trials or {}
    rows = [_ranked_row(i + 1, r, compare.evaluation_of(records, r.record)) | _trial_fields(views.get(r.record.job_id))
            for i, r in enumerate(shown)]
    for row, tie in zip(rows, _ties(shown, by, artifacts)):
        row.update(tied_with_best=tie.tied, tie_p_value=tie.p_value)
    return pd.DataFrame(rows, columns=COLUMNS)


def _trial_fields(view: TrialView | None) -> dict[str, Any]:
    """A row's place in a search; null off one (a grid's job, a follow-up)."""
    if view is None:
        return dict.fromkeys(("trial", "rung", "rung_epochs", "stopped_early"))
    return {"trial": view.index, "rung": view.rung, "rung_epochs": view.rung_epochs,
            "stopped_early": view.stopped_early}


def _ranked_row(position: int, ranked: Ranked, evaluation: JobRecord | None) -> dict[str, Any]:
    validation = _val_uncertainty(ranked)
    return {**job_row(ranked.record), "rank": position, "score": ranked.score, "mean": ranked.mean,
            "std": ranked.std, "repeats": ranked.repeats, **validation,
            **_test_uncertainty(ranked.record, evaluation, validation)}


def _val_uncertainty(ranked: Ranked) -> dict[str, Any]:
    """The row's validation intervals: Wilson over its job's examples, t over its repeats' mean."""
    from shared.stats import t_interval

    examples = example_count(ranked.record.metrics, "val_examples")
    low, high = wilson(ranked.record.metrics.val_accuracy, examples)
    values = [value for value, _ in scored_repeats(ranked.members, "val_accuracy")]
    mean = t_interval(values, CONFIDENCE) if len(values) > 1 else None
    return {
        "val_examples": examples, "val_accuracy_ci_low": low, "val_accuracy_ci_high": high,
        "val_accuracy_mean": statistics.fmean(values) if values else None,
        "val_accuracy_mean_ci_low": mean.low if mean else None,
        "val_accuracy_mean_ci_high": mean.high if mean else None,
    }


def _test_uncertainty(record: JobRecord, evaluation: JobRecord | None, validation: dict[str, Any]) -> dict[str, Any]:
    """The test score of the row's model (its evaluation's, or its own on an evaluate row) with
    its Wilson interval, and the gap to the validation score with its warning."""
    if evaluation is None:
        return dict.fromkeys(("test_examples", "test_accuracy_ci_low", "test_accuracy_ci_high",
                              "evaluation_job_id", "val_test_gap", "gap_warning"))
    test, val = evaluation.metrics.test_accuracy, record.metrics.val_accuracy
    examples = example_count(evaluation.metrics, "test_examples")
    low, high = wilson(test, examples)
    gap = None if test is None or val is None else val - test
    val_low, val_high = validation["val_accuracy_ci_low"], validation["val_accuracy_ci_high"]
    return {
        "test_accuracy": test, "test_loss": evaluation.metrics.test_loss, "test_examples": examples,
        "test_accuracy_ci_low": low, "test_accuracy_ci_high": high,
        "evaluation_job_id": None if evaluation is record else evaluation.job_id, "val_test_gap": gap,
        "gap_warning": None if gap is None or val_low is None else not val_low <= test <= val_high,
    }


def example_count(metrics: Metrics, name: str) -> int | None:
    """`val_examples` or `test_examples` from a record's metrics: a positive whole number, else None
    (records written before the counts were kept, or a value that is not a count)."""
    value = (metrics.model_extra or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not float(value).is_integer():
        return None
    return int(value)


def wilson(accuracy: float | None, examples: int | None) -> tuple[float | None, float | None]:
    """Wilson's 95% interval of `accuracy` measured on `examples` (correct = round(accuracy * n));
    (None, None) where either is unknown or the accuracy is not a share."""
    from shared.stats import wilson_interval

    if accuracy is None or examples is None or not 0.0 <= accuracy <= 1.0:
        return None, None
    low, high = wilson_interval(round(accuracy * examples), examples, CONFIDENCE)
    return low, high


def _ties(shown: Sequence[Ranked], by: str, artifacts: ArtifactStore | None) -> list[Tie]:
    """Each shown row against #1 on per-example validation results; only when ranked by
    val_accuracy (the test is about accuracy) and the files can be read. Otherwise null."""
    from submitter.compare import Tie, optional_val_results, ties_with_best

    if artifacts is None or by != "val_accuracy":
        return [Tie(None, None) for _ in shown]
    return ties_with_best([optional_val_results(artifacts, r.record) if r.mean is not None else None for r in shown])


def models_seen_test(records: Sequence[JobRecord]) -> int:
    """How many models of the study have seen the test split: the distinct models (parents) of its
    succeeded evaluations."""
    return len({r.spec.parent_job_id for r in records
                if r.kind == "evaluate" and r.status == JobStatus.SUCCEEDED and r.spec.parent_job_id})


def matrix(records: Sequence[JobRecord], row: str, column: str, metric: str = "val_accuracy") -> pd.DataFrame:
    """The best `metric` of every (row, column) pair, e.g. architecture x optimizer."""
    frame = pd.DataFrame([job_row(r) for r in records])
    for name in (row, column, metric):
        if name not in frame.columns and len(frame):
            raise KeyError(name)
    if frame.empty or frame[metric].isna().all():
        return pd.DataFrame(columns=[row])
    best = "min" if metric in LOWER_IS_BETTER else "max"
    table = frame.pivot_table(index=row, columns=column, values=metric, aggfunc=best)
    table.columns = [str(c) for c in table.columns]
    return table.reset_index()
