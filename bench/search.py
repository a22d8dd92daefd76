"""Adaptive search on a real dataset made here: ASHA against the full grid, TPE against random.

The dataset is scikit-learn's handwritten digits written as class folders and prepared as any
spotsweep dataset (`tests.digits`, the same files the end-to-end tests train on). Every study is
a real study file, submitted with `submitter.service.submit_study` to the embedded (local)
backend, and drained by real worker processes (`worker run --concurrency 2 --until-empty`).
An adaptive study only moves on when a job settles (the settling worker enqueues the next trials
and promotions), so the workers are started again until `shared.search.search_complete` says
the study is done, not just until the queue was empty once (with `submit repair` between two
runs, as a person would; `rounds` in the results says whether that was ever needed).

(a) The grid: 27 configurations of the benchmark CNN (3 Adam learning rates x 3 batch sizes x 3
    data fractions), `GRID_EPOCHS` epochs each, early stopping off; ASHA over the same lists,
    count 27 (over a lists-only space ASHA samples distinct grid points, so it can reach every
    configuration), min_epochs 1, reduction_factor 3, parallel 2 (the two workers). Epochs
    trained (`shared.search.summary`) count per job its `epochs_run` less its parent's: a
    promotion resumes its parent's committed training state.
(b) TPE against random over distributions (log-uniform learning rate, int-uniform batch size,
    uniform data fraction), the same trial count and the same seeds (TPE's `startup` trials are
    the same seeded draws as random's first; TPE keeps 2 in flight); the mean of each seed's best
    val_accuracy is reported as measured, whichever wins, and the mean of every trial's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Dataset, Row

IMAGE_SIZE = 32  # the digits are 8x8: 32 px is the benchmark CNN's smallest side
GRID_EPOCHS = 9  # ASHA rungs 1, 3, 9 with reduction factor 3
LEARNING_RATES = [0.01, 0.001, 0.0001]
BATCH_SIZES = [16, 32, 64]
DATA_FRACTIONS = [1.0, 0.5, 0.25]
ASHA_SEED = 0
TPE_COUNT, TPE_STARTUP, TPE_EPOCHS, SEEDS = 16, 4, 3, (0, 1, 2, 3, 4)
WORKERS = 2  # `worker run --concurrency`: the machine's two cores
ROUNDS_MAX = 20  # worker runs per study before the bench gives up on it


@dataclass
class StudyRun:
    """One study run to completion: what its jobs scored and what they cost."""

    name: str
    best_val_accuracy: float
    mean_trial_val_accuracy: float  # each trial's best job, averaged: where the search spent its trials
    epochs_trained: int
    jobs: int
    trials: int
    wall_s: float
    rounds: int  # worker runs it took (an adaptive study may need several)


def base_study(name: str, dataset: Path, epochs: int) -> dict[str, Any]:
    return {
        "name": name, "dataset": str(dataset), "image_size": IMAGE_SIZE, "seed": 0, "validation_split": 0.2,
        "parameters": {"architecture": ["benchmark"], "weights": [None]},
        "training": {"epochs": epochs, "early_stopping": None},
    }


def grid_study(name: str, dataset: Path, search: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lists-only space of (a): a grid, or `search` over the same lists."""
    study = base_study(name, dataset, GRID_EPOCHS)
    study["parameters"] |= {
        "optimizer": [{"name": "adam", "learning_rate": LEARNING_RATES}],
        "batch_size": BATCH_SIZES, "data_fraction": DATA_FRACTIONS,
    }
    if search is not None:
        study["search"] = search
    return study


def sampled_study(name: str, dataset: Path, search: dict[str, Any]) -> dict[str, Any]:
    """The space of (b): distributions over the learning rate, batch size and data fraction."""
    study = base_study(name, dataset, TPE_EPOCHS)
    study["parameters"] |= {
        "optimizer": [{"name": "adam", "learning_rate": {"distribution": "log_uniform", "low": 1e-5, "high": 1e-1}}],
        "batch_size": {"distribution": "int_uniform", "low": 8, "high": 128},
        "data_fraction": {"distribution": "uniform", "low": 0.1, "high": 1.0},
    }
    study["search"] = search
    return study


def worker_env(home: Path) -> dict[str, str]:
    return {
        **os.environ, "SPOTSWEEP_HOME": str(home), "SPOTSWEEP_BACKEND": "local", "SPOTSWEEP_LEASE_S": "60",
        "SPOTSWEEP_POLL_WAIT_S": "0.5", "SPOTSWEEP_RETRY_BACKOFF_S": "0", "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "-1", "PYTHONUNBUFFERED": "1",
    }


def drain(home: Path, log: Path) -> None:
    """Real workers, in their own processes, until the queue has nothing visible or in flight."""
    worker = Path(sys.executable).parent / "worker"
    with log.open("a") as out:
        code = subprocess.run(
            [str(worker), "run", "--concurrency", str(WORKERS), "--until-empty", "--cache-dir", str(home / "cache")],
            env=worker_env(home), stdout=out, stderr=subprocess.STDOUT, timeout=3600,
        ).returncode
    if code != 0:
        raise RuntimeError(f"worker run exited {code}; see {log}: {log.read_text()[-2000:]}")


def run_study(workdir: Path, study: dict[str, Any]) -> StudyRun:
    """Write the study file, submit it to a fresh embedded backend, drain it with real workers
    until the search is complete."""
    from shared.backends.factory import open_local
    from shared.config import BackendConfig
    from shared.study import parse_study
    from submitter.service import submit_study

    home, name = workdir / study["name"], study["name"]
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"{name}.json"
    path.write_text(json.dumps(study, indent=2))
    spec = parse_study(path.read_text(), str(path))
    backend = open_local(BackendConfig(home=home / "home"))
    started = time.perf_counter()
    submit_study(backend, spec)
    records, rounds = drain_until_complete(backend, spec, home)
    return finished_run(name, spec, records, time.perf_counter() - started, rounds)


def drain_until_complete(backend: Any, spec: Any, home: Path) -> tuple[list[Any], int]:
    """Worker runs until the search is complete; between two runs, `submit repair` (the
    reconciler) for the study, as a person would, in case a settlement left nothing queued."""
    from shared.search import search_complete, summary
    from submitter.service import repair

    for rounds in range(1, ROUNDS_MAX + 1):
        drain(home / "home", home / "workers.log")
        records = backend.store.list_jobs(spec.study_id)
        if search_complete(spec, records):
            return records, rounds
        repair(backend, spec.study_id)
    problems = [line for line in (home / "workers.log").read_text().splitlines() if "warn" in line.lower() or "error" in line.lower()]
    statuses = sorted((r.job_id, r.status.value, r.enqueued_at is not None) for r in records if not r.status.finished)
    raise RuntimeError(f"{spec.name}: search not complete after {ROUNDS_MAX} worker runs: {summary(spec, records)}; "
                       f"unfinished {statuses}; worker log warnings: {problems[-10:]}")


def finished_run(name: str, spec: Any, records: list[Any], wall_s: float, rounds: int) -> StudyRun:
    from shared.search import summary
    from shared.status import JobStatus

    train = [r for r in records if r.kind == "train"]
    failed = [r.job_id for r in train if r.status is not JobStatus.SUCCEEDED]
    if failed:
        raise RuntimeError(f"{name}: {len(failed)} job(s) did not succeed: {failed[:3]}")
    by_trial: dict[Any, float] = {}
    for record in train:
        trial = record.spec.trial.index if record.spec.trial is not None else record.job_id
        by_trial[trial] = max(by_trial.get(trial, 0.0), float(record.metrics.val_accuracy or 0.0))
    done = summary(spec, records)
    return StudyRun(name, max(by_trial.values()), statistics.mean(by_trial.values()), done.epochs_trained,
                    len(train), done.created, wall_s, rounds)


def asha_against_grid(workdir: Path, dataset: Path) -> tuple[StudyRun, StudyRun, list[Row]]:
    """(a): the full grid, then ASHA over the same lists with one trial per grid point."""
    grid = run_study(workdir, grid_study("digits-grid", dataset))
    search = {"method": "asha", "count": grid.jobs, "seed": ASHA_SEED, "min_epochs": 1, "reduction_factor": 3,
              "parallel": WORKERS}
    asha = run_study(workdir, grid_study("digits-asha", dataset, search))
    gap = grid.best_val_accuracy - asha.best_val_accuracy
    share = asha.epochs_trained / grid.epochs_trained
    rows = [
        Row("search: ASHA best val_accuracy short of the grid's", gap, 0.0, "", None, "<= 0.01", gap <= 0.01,
            f"grid {grid.best_val_accuracy:.4f} ({grid.jobs} jobs), ASHA {asha.best_val_accuracy:.4f} "
            f"({asha.jobs} jobs, {asha.trials} trials)", {"grid": vars(grid), "asha": vars(asha)}),
        Row("search: ASHA epochs trained / grid's", share, 1 / 3, "", None, "<= 0.333", share <= 1 / 3,
            f"{asha.epochs_trained} of {grid.epochs_trained} epochs"),
    ]
    return grid, asha, rows


def tpe_against_random(workdir: Path, dataset: Path) -> tuple[dict[str, list[StudyRun]], list[Row]]:
    """(b): per seed, a random study and a TPE study of `TPE_COUNT` trials each (TPE's first
    `TPE_STARTUP` trials are the same seeded draws as random's first)."""
    runs: dict[str, list[StudyRun]] = {"random": [], "tpe": []}
    for seed in SEEDS:
        for method, search in (
            ("random", {"method": "random", "count": TPE_COUNT, "seed": seed}),
            ("tpe", {"method": "tpe", "count": TPE_COUNT, "seed": seed, "startup": TPE_STARTUP, "parallel": WORKERS}),
        ):
            runs[method].append(run_study(workdir, sampled_study(f"digits-{method}-{seed}", dataset, search)))
    tpe, rnd = (mean_of(runs[m], "best_val_accuracy") for m in ("tpe", "random"))
    winner = "TPE" if tpe > rnd else "random" if rnd > tpe else "neither"
    per_seed = "; ".join(f"seed {seed}: TPE {t.best_val_accuracy:.4f}, random {r.best_val_accuracy:.4f}"
                         for seed, t, r in zip(SEEDS, runs["tpe"], runs["random"]))
    return runs, [
        Row(f"search: TPE mean best val_accuracy vs random ({len(SEEDS)} seeds)", tpe, rnd, "", None, "as measured",
            None, f"{TPE_COUNT} trials x {TPE_EPOCHS} epochs each; {per_seed}; {winner} wins",
            {m: [vars(r) for r in runs[m]] for m in runs}),
        Row("search: TPE mean trial val_accuracy vs random", mean_of(runs["tpe"], "mean_trial_val_accuracy"),
            mean_of(runs["random"], "mean_trial_val_accuracy"), "", None, "as measured", None,
            "every trial's score averaged: how much of the budget went to good configurations"),
    ]


def mean_of(group: list[StudyRun], field: str) -> float:
    return statistics.mean(getattr(run, field) for run in group)


def markdown(grid: StudyRun, asha: StudyRun, runs: dict[str, list[StudyRun]]) -> str:
    """The README's table, as measured: one line per search (seeds averaged, listed in brackets)."""
    lines = [
        "| search | studies | trials | jobs | epochs trained | best val_accuracy | mean trial val_accuracy | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = (
        (f"grid, {GRID_EPOCHS} epochs", [grid]), (f"ASHA, 1/3/{GRID_EPOCHS} epochs, eta 3", [asha]),
        (f"random, {TPE_EPOCHS} epochs", runs["random"]), (f"TPE, {TPE_EPOCHS} epochs, startup {TPE_STARTUP}", runs["tpe"]),
    )
    for label, group in groups:
        best = f"{mean_of(group, 'best_val_accuracy'):.4f}"
        if len(group) > 1:
            best += " (" + ", ".join(f"{r.best_val_accuracy:.4f}" for r in group) + ")"
        lines.append(
            f"| {label} | {len(group)} | {sum(r.trials for r in group)} | {sum(r.jobs for r in group)} | "
            f"{sum(r.epochs_trained for r in group)} | {best} | {mean_of(group, 'mean_trial_val_accuracy'):.4f} | "
            f"{sum(r.wall_s for r in group):.0f} s |"
        )
    return "\n".join(lines)


def run(workdir: Path, dataset: Dataset) -> list[Row]:
    """Both comparisons on the digits (the synthetic `dataset` is not used: the digits are real)."""
    from tests.digits import prepare_digits

    digits, _ = prepare_digits(workdir / "digits", size=IMAGE_SIZE)
    grid, asha, rows = asha_against_grid(workdir, digits)
    runs, more = tpe_against_random(workdir, digits)
    table = markdown(grid, asha, runs)
    print(table, flush=True)
    rows += more
    rows[0].extra["markdown"] = table
    return rows
