"""The search bench's study files are valid studies of the sizes it reports on (the bench itself,
minutes of training, is run with `python -m bench search`, not here)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import search as bench
from shared.search import initial_jobs, rungs, upper_bound
from shared.study import job_count, parse_study


def parsed(study: dict) -> object:
    return parse_study(json.dumps(study), "bench")


def test_the_grid_has_27_points_and_asha_searches_the_same_ones(tmp_path: Path) -> None:
    grid = parsed(bench.grid_study("g", tmp_path))
    assert job_count(grid) == 27 and len(list(initial_jobs(grid))) == 27
    search = {"method": "asha", "count": 27, "seed": 0, "min_epochs": 1, "reduction_factor": 3, "parallel": 2}
    asha = parsed(bench.grid_study("a", tmp_path, search))
    assert rungs(asha) == [1, 3, 9]
    first = list(initial_jobs(asha))
    assert len(first) == 2 and {job.training.epochs for _, job in first} == {1}  # the window, at rung 0
    assert upper_bound(asha).trials == 27


def test_tpe_and_random_draw_from_the_same_distributions(tmp_path: Path) -> None:
    random_search = parsed(bench.sampled_study("r", tmp_path, {"method": "random", "count": 16, "seed": 1}))
    tpe = parsed(bench.sampled_study("t", tmp_path, {"method": "tpe", "count": 16, "seed": 1, "startup": 4}))
    drawn = [job for _, job in initial_jobs(random_search)]
    assert len(drawn) == 16 and all(job.trial is not None for job in drawn)
    assert all(1e-5 <= job.optimizer.learning_rate <= 1e-1 and 8 <= job.training.batch_size <= 128 for job in drawn)
    first_tpe = [job for _, job in initial_jobs(tpe)]
    assert first_tpe[0].trial.params == drawn[0].trial.params  # the startup draws are random's


def test_the_readme_table_has_one_line_per_search() -> None:
    def one(name: str, best: float) -> bench.StudyRun:
        return bench.StudyRun(name, best, best - 0.2, 27, 27, 27, 10.0, 1)

    table = bench.markdown(one("g", 0.98), one("a", 0.97), {"random": [one("r", 0.9), one("r", 0.8)],
                                                              "tpe": [one("t", 0.95), one("t", 0.85)]})
    lines = table.splitlines()
    assert len(lines) == 6 and lines[1].startswith("|---")
    assert "| 0.8500 (0.9000, 0.8000) |" in lines[4] and "| 0.9000 (0.9500, 0.8500) |" in lines[5]
