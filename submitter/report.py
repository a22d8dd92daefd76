"""`submit report`: a study's plots (PNG) and one self-contained HTML page with its leaderboard;
`submit export`: a job's best checkpoint copied out of the artifact store.

Everything here reads the store and the artifact store only; no TensorFlow. Missing data (no
finished jobs yet, no evaluations, no per-example files) gives a page that says so, never an error.

The report never selects on the test split: the leaderboard, the interval plot and the "best
evaluated model" all rank by validation (the mean over repeats, shared/ranking.py), and the test
score is reported for the model validation chose.
"""

from __future__ import annotations

import base64
import bisect
import html
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from shared.ports import Backend
from shared.errors import BadInputError, NotFoundError
from shared.jobs import JobRecord
from shared.datasets.sync import dataset_classes
from shared.paths import check_id
from shared.ranking import TRAINED_KINDS, rank
from shared.status import JobStatus
from shared import search
from shared.search import TrialView
from shared.study import StudySpec
from submitter import plots, service
from submitter.compare import compare_jobs, evaluation_of, read_artifact
from submitter.leaderboard import (
    TIE_MARK, example_count, for_table, job_row, leaderboard, matrix, models_seen_test, table_notes, wilson,
)
from submitter.render import html_table

HTML_NAME = "report.html"
SWEPT = ("batch_size", "data_fraction")  # one plot each when the study tried more than one value
MAX_TABLE_ROWS = 200


# --- export ------------------------------------------------------------------------------------


@dataclass
class Export:
    job_id: str
    path: Path
    classes_file: Path | None
    classes: list[str] | None


def export_model(backend: Backend, job_id: str, out: Path) -> Export:
    """Copy the job's best checkpoint out of the artifact store to `out` (a .keras file, or a
    directory to put `<job>.keras` in) with `<name>.classes.json` beside it: the class names,
    image size and job. Only the configured store is read, never a file a record points at."""
    record = backend.store.find_job(check_id(job_id, "job id"))
    if record is None:
        raise BadInputError(f"unknown job {job_id!r}", "JOB")
    if not record.checkpoint:
        raise NotFoundError(f"job {job_id} has no checkpoint yet (status {record.status.value})")
    key = backend.artifacts.key_for(record.checkpoint)
    out = Path(out)
    if out.is_dir():
        out = out / f"{check_id(record.job_id, 'job id')}.keras"
    if out.suffix != ".keras":
        raise BadInputError(f"{out} must end in .keras (Keras loads models by their extension)", "--out")
    backend.artifacts.get_file(key, out)
    try:
        classes: list[str] | None = dataset_classes(record.spec.dataset, backend.artifacts)
    except (NotFoundError, BadInputError, OSError):
        classes = None  # the dataset moved: the model is still exported, without names
    classes_file = None
    if classes is not None:
        classes_file = out.with_name(out.stem + ".classes.json")
        classes_file.write_text(json.dumps({
            "job_id": record.job_id, "study_id": record.study_id, "classes": classes,
            "image_size": record.spec.model.image_size, "architecture": record.spec.model.architecture,
            "dataset": record.spec.dataset,
        }, indent=1))
    return Export(record.job_id, out, classes_file, classes)


# --- the report --------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table_html: str | None = None


@dataclass
class Report:
    study_id: str
    out_dir: Path
    files: list[Path]
    html: Path
    data: dict[str, Any]  # what each plot drew, by plot name (for checks)


def _finished_runs(records: Sequence[JobRecord]) -> list[JobRecord]:
    return [
        r for r in records
        if r.status == JobStatus.SUCCEEDED and r.kind in ("train", "finetune") and r.metrics.val_accuracy is not None
    ]


def epoch_frame(backend: Backend, record: JobRecord) -> pd.DataFrame:
    """One row per epoch (the latest attempt's row when an epoch was redone)."""
    rows: dict[int, tuple[int, dict[str, float]]] = {}
    for epoch in backend.store.epochs(record.study_id, record.job_id):
        if epoch.epoch not in rows or epoch.attempt >= rows[epoch.epoch][0]:
            rows[epoch.epoch] = (epoch.attempt, {"epoch": epoch.epoch, **epoch.metrics})
    return pd.DataFrame([rows[e][1] for e in sorted(rows)])


def search_progress(records: Sequence[JobRecord]) -> pd.DataFrame:
    """The study's training jobs in the order they finished, with the GPU-hours and dollars spent
    up to and including each (every finished job costs, a failed one too), its val_accuracy
    (succeeded jobs only) and the best of those so far."""
    finished = sorted((r for r in records if r.kind == "train" and r.status.finished and r.finished_at is not None),
                      key=lambda r: (r.finished_at or 0.0, r.job_id))
    frame = pd.DataFrame({
        "job_id": [r.job_id for r in finished],
        "finished_at": [r.finished_at for r in finished],
        "val_accuracy": [r.metrics.val_accuracy if r.status == JobStatus.SUCCEEDED else None for r in finished],
        "train_seconds": [r.train_seconds for r in finished],
        "cost_usd": [r.cost_usd for r in finished],
    }).astype({"val_accuracy": float, "train_seconds": float, "cost_usd": float})
    frame["gpu_hours"] = frame["train_seconds"].cumsum() / 3600
    frame["usd"] = frame["cost_usd"].cumsum()
    frame["best_so_far"] = frame["val_accuracy"].cummax().ffill()  # a job without a score keeps the best
    return frame


def rung_frame(
    backend: Backend, records: Sequence[JobRecord], trials: Mapping[str, TrialView], rungs: Sequence[int]
) -> pd.DataFrame:
    """One row per epoch of each ASHA trial, from its furthest rung's job back through the rungs it
    resumed: the val_accuracy, the rung whose segment holds the epoch (epochs up to rungs[0] are
    rung 0's) and whether the trial stopped early."""
    by_id = {r.job_id: r for r in records}
    furthest: dict[int, JobRecord] = {}
    for record in records:
        view = trials.get(record.job_id)
        if view is not None and (view.index not in furthest or view.rung > trials[furthest[view.index].job_id].rung):
            furthest[view.index] = record
    frames = [_trial_curve(resumed_epochs(backend, record, by_id), trials[record.job_id], rungs)
              for record in furthest.values()]
    columns = ["trial", "epoch", "val_accuracy", "rung", "stopped_early"]
    frame = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=columns)], ignore_index=True)
    return frame.sort_values(["trial", "epoch"], ignore_index=True)


def _trial_curve(epochs: pd.DataFrame, view: TrialView, rungs: Sequence[int]) -> pd.DataFrame:
    if "val_accuracy" not in epochs:
        return pd.DataFrame()
    return pd.DataFrame({
        "trial": view.index, "epoch": epochs["epoch"].astype(int), "val_accuracy": epochs["val_accuracy"],
        "rung": [bisect.bisect_left(list(rungs), int(epoch)) for epoch in epochs["epoch"]],
        "stopped_early": view.stopped_early,
    })


def resumed_epochs(backend: Backend, record: JobRecord, by_id: Mapping[str, JobRecord]) -> pd.DataFrame:
    """A training job's epochs with those of the rung jobs it resumed (an ASHA promotion continues
    its parent's training, so its own records start past its parent's epochs): the whole curve."""
    frames, job = [], record
    while job is not None:
        frames.append(epoch_frame(backend, job))
        parent = job.spec.parent_job_id if job.spec.trial is not None else None  # a finetune starts afresh
        job = by_id.get(parent) if parent else None
    whole = pd.concat([frame for frame in reversed(frames) if len(frame)] or [pd.DataFrame()], ignore_index=True)
    return whole.drop_duplicates("epoch", keep="last", ignore_index=True) if len(whole) else whole


def build_report(
    backend: Backend, study_id: str, out_dir: Path, top: int = 5, row: str = "architecture", column: str = "optimizer"
) -> Report:
    """Write the study's plots and report.html into `out_dir`; return what was written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = backend.store.get_study(study_id)
    records = backend.store.list_jobs(study_id)
    finished = _finished_runs(records)
    sections: list[Section] = []
    data: dict[str, Any] = {}
    files: list[Path] = []

    def add(section: Section, name: str, drawn: Any) -> None:
        path = out_dir / f"{name}.png"
        section.images.append(path)
        files.append(path)
        data[name] = drawn

    spec = service.stored_spec(study)
    trials = service.trials_of(spec, records)
    board = Section("Leaderboard")
    # ties: over the rows shown
    frame = leaderboard(records, top=MAX_TABLE_ROWS, artifacts=backend.artifacts, trials=trials)
    if frame.empty:
        board.notes.append("no jobs in this study")
    else:
        # the terminal's leaderboard: short headers, `k=v` parameters, its number formats and notes
        board.table_html = html_table(for_table(frame))
        board.notes.extend(table_notes(frame))
        configurations = len(rank(records))
        if configurations > MAX_TABLE_ROWS:
            board.notes.append(f"the best {MAX_TABLE_ROWS} of {configurations} configurations")
    if not finished:
        board.notes.append("no finished jobs yet: the plots appear once training jobs have succeeded")
    sections.append(board)

    if finished:
        sections.append(_intervals(backend, frame, top, out_dir, add))
        sections.append(_curves(backend, records, top, out_dir, add))
        sections.append(_heatmap(records, row, column, out_dir, add))
        sections.append(_tradeoffs(finished, out_dir, add))
        sweeps = _sweeps(finished, out_dir, add)
        if sweeps is not None:
            sections.append(sweeps)
        if spec is not None and service.is_search(spec):
            sections.append(_search(backend, spec, records, trials, out_dir, add))
    sections.append(_evaluation(backend, records, out_dir, add))

    page = out_dir / HTML_NAME
    page.write_text(_html(study_id, study.name if study else study_id, records, sections))
    files.append(page)
    return Report(study_id, out_dir, files, page, data)


def _label(position: int, record: JobRecord) -> str:
    spec = record.spec
    return f"#{position} {spec.model.architecture}/{spec.optimizer.name} bs{spec.training.batch_size} {record.job_id[:8]}"


def _intervals(backend: Backend, frame: pd.DataFrame, top: int, out_dir: Path, add: Any) -> Section:
    """The top configurations' accuracies with their interval bars, and the top two compared."""
    section = Section(f"Accuracy with 95% intervals: the top {top}")
    ranked = frame[frame["val_accuracy_mean"].notna() & frame["kind"].isin(TRAINED_KINDS)].head(top)
    drawn = plots.accuracy_intervals(_interval_rows(ranked), out_dir / "accuracy_intervals.png")
    add(section, "accuracy_intervals", drawn)
    section.notes.append("validation: the mean over repeats with its t-interval over seeds, or one run with Wilson's "
                         f"interval over its validation examples; test: the evaluated model's Wilson interval; "
                         f"{TIE_MARK}: tied with #1")
    if len(ranked) >= 2:
        section.notes.append(_top_two(backend, ranked["job_id"].iloc[0], ranked["job_id"].iloc[1]))
    return section


def _interval_rows(ranked: pd.DataFrame) -> pd.DataFrame:
    """The plot's rows from leaderboard rows: what is ranked by, with its interval, and the test score."""
    repeated = ranked["val_accuracy_mean_ci_low"].notna()
    low = ranked["val_accuracy_mean_ci_low"].where(repeated, ranked["val_accuracy_ci_low"])
    high = ranked["val_accuracy_mean_ci_high"].where(repeated, ranked["val_accuracy_ci_high"])
    return pd.DataFrame({
        "label": [f"#{row.rank} {row.architecture}/{row.optimizer} bs{row.batch_size} {row.job_id[:8]}"
                  + (f" ({row.repeats} seeds)" if row.repeats > 1 else "")
                  + (f" {TIE_MARK}" if row.tied_with_best is True and row.rank != 1 else "")
                  for row in ranked.itertuples(index=False)],
        "job_id": ranked["job_id"].to_numpy(),
        "val": ranked["val_accuracy_mean"].to_numpy(dtype=float),
        "val_low": low.to_numpy(dtype=float),
        "val_high": high.to_numpy(dtype=float),
        "test": ranked["test_accuracy"].to_numpy(dtype=float),
        "test_low": ranked["test_accuracy_ci_low"].to_numpy(dtype=float),
        "test_high": ranked["test_accuracy_ci_high"].to_numpy(dtype=float),
    })


def _top_two(backend: Backend, first: str, second: str) -> str:
    """The paired comparison of #1 and #2 on their validation examples, as a sentence."""
    try:
        sentence = compare_jobs(backend, first, second, "val").sentence()
        return f"#1 against #2 on the same validation examples: {sentence}"
    except (BadInputError, NotFoundError) as exc:  # no per-example files (older jobs): say so, draw the rest
        return f"#1 and #2 cannot be compared example by example: {exc}"


def _curves(backend: Backend, records: Sequence[JobRecord], top: int, out_dir: Path, add: Any) -> Section:
    section = Section(f"Learning curves of the top {top}")
    ranked = leaderboard([r for r in _finished_runs(records)], top=top)
    by_id = {r.job_id: r for r in records}
    curves = {}
    for position, job_id in zip(ranked["rank"], ranked["job_id"]):
        epochs = resumed_epochs(backend, by_id[job_id], by_id)
        if len(epochs):
            curves[_label(int(position), by_id[job_id])] = epochs
    if not curves:
        section.notes.append("no per-epoch metrics recorded for the best jobs")
        return section
    add(section, "learning_curves", plots.learning_curves(curves, out_dir / "learning_curves.png"))
    return section


def _search(backend: Backend, spec: StudySpec, records: Sequence[JobRecord], trials: Mapping[str, TrialView],
            out_dir: Path, add: Any) -> Section:
    """What the search bought: the best score against the GPU-hours (and dollars) spent and, for
    ASHA, every trial's curve through the rungs."""
    section = Section(f"The search ({spec.search.method}): best val_accuracy so far against GPU-hours")
    progress = search_progress(records)
    add(section, "best_so_far", plots.best_so_far(progress, out_dir / "best_so_far.png"))
    hours = progress["train_seconds"].sum() / 3600
    section.notes.append(f"{len(progress)} training jobs in the order they finished; x: their train seconds summed "
                         f"(/3600), failed and stopped jobs included; {hours:.3f} GPU-hours in all")
    if spec.search.method == "asha":
        rungs = search.rungs(spec)
        curves = rung_frame(backend, records, trials, rungs)
        add(section, "rung_curves", plots.rung_curves(curves, rungs, out_dir / "rung_curves.png"))
        section.notes.append(f"ASHA rungs at {', '.join(map(str, rungs))} epochs (dotted): a line that crosses a rung "
                             "was promoted and resumed there; x: a trial stopped early at its rung")
    return section


def _heatmap(records: Sequence[JobRecord], row: str, column: str, out_dir: Path, add: Any) -> Section:
    section = Section(f"Best val_accuracy: {row} x {column}")
    grid = matrix(records, row, column, metric="val_accuracy")
    if grid.empty or len(grid.columns) < 2:
        section.notes.append("no validation accuracy recorded yet")
        return section
    section.notes.append(f"the values of `submit leaderboard --matrix {row} {column}`; n/a: no job of that pair")
    add(section, "heatmap", plots.heatmap(grid, row, column, out_dir / "heatmap.png"))
    return section


def _tradeoffs(finished: Sequence[JobRecord], out_dir: Path, add: Any) -> Section:
    section = Section("Accuracy against cost and time (Pareto front circled)")
    frame = pd.DataFrame([job_row(r) for r in finished])
    for name, x, label in (("pareto_cost", "cost_usd", "cost (USD)"), ("pareto_time", "train_seconds", "train seconds")):
        add(section, name, plots.scatter_pareto(frame, x, out_dir / f"{name}.png", xlabel=label))
    if not frame["cost_usd"].any():
        section.notes.append("every cost is 0: no price per hour was known (set SPOTSWEEP_PRICE_PER_HOUR)")
    return section


def _sweeps(finished: Sequence[JobRecord], out_dir: Path, add: Any) -> Section | None:
    frame = pd.DataFrame([job_row(r) for r in finished if r.kind == "train"])
    swept = [p for p in SWEPT if len(frame) and frame[p].nunique() > 1]
    if not swept:
        return None
    section = Section("Accuracy and time per setting")
    for parameter in swept:
        add(section, f"sweep_{parameter}", plots.sweep(frame, parameter, out_dir / f"sweep_{parameter}.png"))
    return section


def _evaluation(backend: Backend, records: Sequence[JobRecord], out_dir: Path, add: Any) -> Section:
    section = Section("Test-set evaluation")
    best = best_evaluated(records)
    if best is None:
        section.notes.append("no evaluations yet: run `submit evaluate STUDY` once training has finished")
        return section
    section.notes.append(_evaluated_note(records, best))
    seen = models_seen_test(records)
    section.notes.append(f"the test split has been seen by {seen} model{'s' if seen != 1 else ''} of this study: "
                         "the more models are evaluated, the more a choice among them would select on the test split")
    try:
        confusion = json.loads(read_artifact(backend.artifacts, best.artifacts["confusion_matrix"]))
        add(section, "confusion_matrix", plots.confusion(
            confusion["classes"], confusion["matrix"], out_dir / "confusion_matrix.png", f"confusion matrix (job {best.job_id[:8]})"
        ))
    except (KeyError, NotFoundError, BadInputError, ValueError, TypeError) as exc:
        section.notes.append(f"confusion matrix unavailable: {_reason(exc)}")
    try:
        accuracy = json.loads(read_artifact(backend.artifacts, best.artifacts["per_class_accuracy"]))
        add(section, "per_class_accuracy", plots.per_class(accuracy, out_dir / "per_class_accuracy.png"))
    except (KeyError, NotFoundError, BadInputError, ValueError, TypeError, AttributeError) as exc:
        section.notes.append(f"per-class accuracy unavailable: {_reason(exc)}")
    return section


def best_evaluated(records: Sequence[JobRecord]) -> JobRecord | None:
    """The evaluation of the best model BY VALIDATION (the leaderboard's rule: configurations by the
    mean over repeats, then a configuration's evaluated repeats by their own validation accuracy),
    never the highest test score: choosing on the test split would overfit it like validation."""
    trained = [r for r in records if r.kind in TRAINED_KINDS and r.status == JobStatus.SUCCEEDED]
    for configuration in rank(trained):
        repeats = sorted(configuration.members, key=lambda r: -(r.metrics.val_accuracy or 0.0))
        for model in repeats:
            evaluation = evaluation_of(records, model)
            if evaluation is not None and evaluation.metrics.test_accuracy is not None:
                return evaluation
    return None


def _evaluated_note(records: Sequence[JobRecord], evaluation: JobRecord) -> str:
    """What the report says of the chosen model: how it was chosen, its validation and test scores."""
    model = next(r for r in records if r.job_id == evaluation.spec.parent_job_id)
    test = evaluation.metrics.test_accuracy or 0.0
    low, high = wilson(test, example_count(evaluation.metrics, "test_examples"))
    interval = f" (95% interval [{low:.3f}, {high:.3f}])" if low is not None else ""
    val = model.metrics.val_accuracy
    validation = f"validation accuracy {val:.4f}, " if val is not None else ""
    return (f"best evaluated model, chosen by validation: job {evaluation.job_id} (model of job {model.job_id}, "
            f"{model.spec.model.architecture}/{model.spec.optimizer.name}): {validation}test accuracy {test:.4f}"
            f"{interval}" + (f", test loss {loss:.4f}" if (loss := evaluation.metrics.test_loss) is not None else ""))


def _reason(exc: Exception) -> str:
    return f"no {exc.args[0]} artifact recorded" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__


# --- HTML ----------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; }
section { margin: 2em 0; } img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; display: block; }
.note { background: #f6f6f6; border-left: 4px solid #999; padding: 0.4em 0.8em; }
.wide { overflow-x: auto; }
table.board { border-collapse: collapse; font-size: 0.8em; }
.board th, .board td { padding: 3px 6px; border-bottom: 1px solid #eee; white-space: nowrap; }
.board .wrap { white-space: normal; min-width: 10em; }
.board th { background: #f4f4f4; border-bottom: 1px solid #ccc; } .board tbody tr:nth-child(even) { background: #fbfbfb; }
.board .text { text-align: left; } .board .num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _img(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    name = html.escape(path.name)
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{name}" data-file="{name}">'
            f'<figcaption><a href="{name}">{name}</a></figcaption></figure>')


def _html(study_id: str, name: str, records: Sequence[JobRecord], sections: Sequence[Section]) -> str:
    counts = pd.Series([r.status.value for r in records], dtype=object).value_counts().to_dict()
    summary = ", ".join(f"{count} {status.lower()}" for status, count in sorted(counts.items())) or "no jobs"
    spend = sum(r.cost_usd for r in records)
    seconds = sum(r.train_seconds for r in records)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>spotsweep report: {html.escape(name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(name)}</h1>",
        f'<p class="meta">study {html.escape(study_id)} &middot; {len(records)} jobs ({html.escape(summary)}) &middot; '
        f"spend ${spend:.4f} &middot; {seconds:.0f} s of training &middot; generated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
    ]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts.extend(f'<p class="note">{html.escape(note)}</p>' for note in section.notes)
        parts.extend(_img(path) for path in section.images)
        if section.table_html:
            parts.append(f'<div class="wide">{section.table_html}</div>')  # scrolls rather than cuts off
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
