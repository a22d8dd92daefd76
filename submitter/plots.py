"""The report's plots: plain data in, one PNG out, the plotted data back (so tests can check it).

Figures are made with `matplotlib.figure.Figure` and its Agg canvas directly, never pyplot:
no GUI backend, no global state, safe in any process (and headless servers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols)
    return figure, axes


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


# --- learning curves ---------------------------------------------------------------------------


def learning_curves(curves: Mapping[str, pd.DataFrame], path: Path, title: str = "learning curves") -> dict[str, pd.DataFrame]:
    """Train (solid) and validation (dashed) accuracy and loss per epoch, one colour per job.

    `curves` maps a label to a frame with an `epoch` column and any of accuracy, val_accuracy,
    loss, val_loss. Returns exactly the data drawn (label -> frame)."""
    figure, (acc_ax, loss_ax) = _figure(12, 4.4, ncols=2)
    drawn: dict[str, pd.DataFrame] = {}
    for index, (label, frame) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "loss")):
            for prefix, style in (("", "-"), ("val_", "--")):
                column = prefix + metric
                if column in frame and frame[column].notna().any():
                    first = ax is acc_ax and prefix == "val_"  # one legend entry per job
                    ax.plot(frame["epoch"], frame[column], style, color=colour, marker="o", markersize=3,
                            label=label if first else "_nolegend_")
        drawn[label] = frame
    for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: train (solid), validation (dashed)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if curves:
        figure.legend(loc="outside right upper", fontsize="small", title="job (rank by val_accuracy)")
    figure.suptitle(title)
    _save(figure, path)
    return drawn


# --- the matrix heatmap ------------------------------------------------------------------------


def heatmap(
    frame: pd.DataFrame, row: str, column: str, path: Path, metric: str = "val_accuracy", title: str | None = None
) -> pd.DataFrame:
    """The `leaderboard --matrix ROW COL` frame (ROW column + one column per COL value), drawn
    with every cell annotated. Returns the grid drawn (index: ROW values; NaN: no job)."""
    grid = frame.set_index(row).astype(float) if len(frame) else pd.DataFrame()
    grid.index = [str(i) for i in grid.index]
    rows, cols = grid.shape if not grid.empty else (0, 0)
    figure, ax = _figure(max(5.0, 1.1 * cols + 3), max(3.0, 0.55 * rows + 2))
    values = grid.to_numpy(dtype=float) if rows else np.zeros((0, 0))
    low, high = (float(np.nanmin(values)), float(np.nanmax(values))) if np.isfinite(values).any() else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", vmin=low, vmax=high)
    ax.set_xticks(range(cols), list(grid.columns), rotation=30, ha="right")
    ax.set_yticks(range(rows), list(grid.index))
    ax.set_xlabel(column)
    ax.set_ylabel(row)
    for i in range(rows):
        for j in range(cols):
            value = values[i, j]
            if math.isnan(value):
                ax.text(j, i, "n/a", ha="center", va="center", color="grey", fontsize=9)
                continue
            light = high == low or (value - low) / (high - low) > 0.6
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="black" if light else "white", fontsize=10)
    figure.colorbar(image, ax=ax, label=metric)
    ax.set_title(title or f"best {metric}")
    _save(figure, path)
    return grid


# --- accuracy against cost / time, with the Pareto front ---------------------------------------


def pareto_front(frame: pd.DataFrame, x: str, y: str = "val_accuracy") -> pd.DataFrame:
    """The rows no other row beats: lower-or-equal `x` and higher `y` (x minimised, y maximised)."""
    points = frame.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    front, best = [], -math.inf
    for index, value in points[y].items():
        if value > best:
            front.append(index)
            best = value
    return points.loc[front]


def scatter_pareto(frame: pd.DataFrame, x: str, path: Path, y: str = "val_accuracy", label: str = "architecture",
                   xlabel: str | None = None) -> pd.DataFrame:
    """`y` against `x`, one colour per `label` value, the Pareto front joined and circled.
    Returns the front (the rows of `frame` on it)."""
    figure, ax = _figure(7, 4.8)
    points = frame.dropna(subset=[x, y])
    for index, (name, group) in enumerate(points.groupby(label, sort=True)):
        ax.scatter(group[x], group[y], color=f"C{index % 10}", label=str(name), alpha=0.8, s=30)
    front = pareto_front(points, x, y)
    if len(front):
        ax.step(front[x], front[y], where="post", color="black", linewidth=1, alpha=0.7)
        ax.scatter(front[x], front[y], s=140, facecolors="none", edgecolors="red", linewidths=1.5, label="Pareto front")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"{y} against {xlabel or x}")
    _save(figure, path)
    return front


# --- evaluation ---------------------------------------------------------------------------------


def confusion(classes: Sequence[str], matrix: Sequence[Sequence[int]], path: Path, title: str = "confusion matrix") -> np.ndarray:
    """Rows: true class, columns: predicted class; counts annotated. Returns the matrix drawn."""
    values = np.asarray(matrix, dtype=float)
    n = len(classes)
    figure, ax = _figure(max(4.5, 0.6 * n + 2.5), max(4.0, 0.6 * n + 1.8))
    image = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(n), list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = values.max() if values.size else 0
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(values[i, j])}", ha="center", va="center",
                        color="white" if top and values[i, j] > top / 2 else "black", fontsize=9)
    figure.colorbar(image, ax=ax)
    ax.set_title(title)
    _save(figure, path)
    return values


def per_class(accuracy: Mapping[str, float | None], path: Path, title: str = "per-class test accuracy") -> dict[str, float | None]:
    """One horizontal bar per class (classes without test images drawn as 'n/a')."""
    names = list(accuracy)
    values = [accuracy[n] if accuracy[n] is not None else 0.0 for n in names]
    figure, ax = _figure(7, max(3.0, 0.35 * len(names) + 1.5))
    bars = ax.barh(range(len(names)), values, color="C0")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("accuracy")
    for bar, name in zip(bars, names):
        text = "n/a" if accuracy[name] is None else f"{accuracy[name]:.2f}"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
    ax.set_title(title)
    _save(figure, path)
    return dict(accuracy)


# --- one hyperparameter swept -------------------------------------------------------------------


def sweep(frame: pd.DataFrame, parameter: str, path: Path, y: str = "val_accuracy") -> pd.DataFrame:
    """Best and mean `y` (bars, left axis) and mean train seconds (line, right axis) per value of
    `parameter`. Returns the table drawn (index: the setting)."""
    table = frame.dropna(subset=[y]).groupby(parameter).agg(
        best=(y, "max"), mean=(y, "mean"), train_seconds=("train_seconds", "mean"), jobs=(y, "size")
    )
    figure, ax = _figure(7, 4.2)
    positions = np.arange(len(table))
    ax.bar(positions - 0.2, table["best"], width=0.4, label=f"best {y}", color="C0")
    ax.bar(positions + 0.2, table["mean"], width=0.4, label=f"mean {y}", color="C9")
    ax.set_xticks(positions, [f"{v:g}" if isinstance(v, float) else str(v) for v in table.index])
    ax.set_xlabel(parameter)
    ax.set_ylabel(y)
    ax.set_ylim(0, max(1.0, float(table["best"].max()) * 1.1) if len(table) else 1.0)
    seconds = ax.twinx()
    seconds.plot(positions, table["train_seconds"], "o-", color="C3", label="mean train seconds")
    seconds.set_ylabel("train seconds")
    seconds.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + seconds.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize="small", loc="lower left")
    ax.set_title(f"{y} and time per {parameter}")
    _save(figure, path)
    return table


# --- accuracy with intervals --------------------------------------------------------------------


def accuracy_intervals(frame: pd.DataFrame, path: Path, title: str = "accuracy with 95% intervals") -> pd.DataFrame:
    """One line per configuration (best at the top): the validation accuracy it is ranked by with
    its 95% interval bar and, where its model was evaluated, the test accuracy with its own.

    `frame` has the columns label, val, val_low, val_high, test, test_low, test_high (NaN: unknown;
    a value without an interval is drawn as a point without a bar). Returns the frame drawn."""
    drawn = frame.reset_index(drop=True)
    rows = np.arange(len(drawn))
    figure, ax = _figure(9.5, max(3.0, 0.5 * len(drawn) + 1.6))
    for prefix, offset, colour, name in (("val", -0.12, "C0", "validation"), ("test", 0.12, "C3", "test")):
        known = drawn[prefix].notna().to_numpy()
        if not known.any():
            continue
        values = drawn[prefix].to_numpy(dtype=float)[known]
        below = np.nan_to_num(values - drawn[f"{prefix}_low"].to_numpy(dtype=float)[known])
        above = np.nan_to_num(drawn[f"{prefix}_high"].to_numpy(dtype=float)[known] - values)
        ax.errorbar(values, rows[known] + offset, xerr=[below, above], fmt="o", color=colour, capsize=4,
                    markersize=5, label=name)
    ax.set_yticks(rows, list(drawn["label"]))
    ax.invert_yaxis()  # #1 at the top, as in the leaderboard
    ax.set_xlabel("accuracy")
    ax.grid(axis="x", alpha=0.3)
    if len(drawn):
        figure.legend(loc="outside right upper", fontsize="small")  # beside the axes: never over a bar
    ax.set_title(title)
    _save(figure, path)
    return drawn


# --- adaptive search: what the budget bought, and ASHA's rungs -----------------------------------


def best_so_far(frame: pd.DataFrame, path: Path, title: str = "best val_accuracy so far") -> pd.DataFrame:
    """The best validation accuracy reached so far (a step line) and each job's own (points)
    against the GPU-hours spent, and against dollars in a second panel when costs are known.

    `frame` has one row per finished training job in the order they finished, with the columns
    gpu_hours and usd (cumulative, the job's own included), val_accuracy (NaN: no score) and
    best_so_far. Returns the rows drawn (those with a best so far)."""
    drawn = frame[frame["best_so_far"].notna()].reset_index(drop=True)
    axes_x = [("gpu_hours", "GPU-hours")] + ([("usd", "cost (USD)")] if bool((frame["usd"] > 0).any()) else [])
    figure, axes = _figure(6 * len(axes_x) + 1, 4.2, ncols=len(axes_x))
    for ax, (x, label) in zip(np.atleast_1d(axes), axes_x):
        ax.step(drawn[x], drawn["best_so_far"], where="post", color="C0", label="best so far")
        scored = drawn[drawn["val_accuracy"].notna()]
        ax.scatter(scored[x], scored["val_accuracy"], s=14, color="C7", alpha=0.7, label="each job")
        ax.set_xlabel(f"cumulative {label}")
        ax.set_ylabel("val_accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    figure.suptitle(title)
    _save(figure, path)
    return drawn


def rung_curves(
    frame: pd.DataFrame, rungs: Sequence[int], path: Path, title: str = "ASHA: each trial's rungs"
) -> pd.DataFrame:
    """Each trial's val_accuracy over epochs, coloured by the rung it reached, with the rungs'
    epochs as vertical lines: a promoted trial's line crosses a rung line, a stopped one ends on
    it with a cross.

    `frame` has the columns trial, epoch, val_accuracy, rung (of the rung segment the epoch
    belongs to) and stopped_early (the trial's). Returns the rows drawn, by trial then epoch."""
    drawn = frame.dropna(subset=["val_accuracy"]).sort_values(["trial", "epoch"]).reset_index(drop=True)
    figure, ax = _figure(8.5, 4.8)
    for epochs in rungs:
        ax.axvline(epochs, color="grey", linestyle=":", linewidth=1)
    reached: set[int] = set()
    for _, curve in drawn.groupby("trial", sort=True):
        top = int(curve["rung"].max())
        label = f"reached rung {top}" if top not in reached else "_nolegend_"
        reached.add(top)
        ax.plot(curve["epoch"], curve["val_accuracy"], "-o", color=f"C{top % 10}", alpha=0.8, linewidth=1.2,
                markersize=3, label=label)  # a point too: a trial stopped at rung 0 may have one epoch
        if bool(curve["stopped_early"].iloc[-1]):
            end = curve.iloc[-1:]
            ax.scatter(end["epoch"], end["val_accuracy"], marker="x", color="black", s=30, zorder=3)
    ax.set_xlabel("epoch (dotted: rungs)")
    ax.set_ylabel("val_accuracy")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(drawn):
        ax.legend(fontsize="small", loc="lower right", title="x: stopped early")
    ax.set_title(title)
    _save(figure, path)
    return drawn
