"""Run every comparison in this process, print the table of ratios, write bench/results.json.

Exit status 0 even when a target is missed (this is a report); misses are printed as MISSED.
`python -m bench NAME...` runs only those comparisons (and writes bench/results-NAME....json).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.common import Row, make_dataset  # noqa: E402

COMPARISONS = ["input_pipeline", "sync", "submission", "feature_cache", "fixed_cost", "search"]
RESULTS = Path(__file__).resolve().parent / "results.json"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "B":
        return f"{int(value)} B"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip()


def met_text(row: Row) -> str:
    return "-" if row.met is None else ("yes" if row.met else "MISSED")


def print_table(rows: list[Row]) -> None:
    header = ["comparison", "measured", "baseline", "ratio", "target", "met"]
    cells = [
        [r.comparison, fmt(r.measured, r.unit), fmt(r.baseline, r.unit),
         "-" if r.ratio is None else f"{r.ratio:.1f}x", r.target, met_text(r)]
        for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="spotsweep bench")
        for name in header:
            table.add_column(name, justify="left" if name == "comparison" else "right")
        for row, cell in zip(rows, cells):
            style = "bold red" if row.met is False else None
            table.add_row(*cell, style=style)
        Console(width=160).print(table)
    except ImportError:
        widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
        for line in [header, *cells]:
            print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    for row in rows:
        if row.note:
            print(f"  - {row.comparison}: {row.note}")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    only = argv or COMPARISONS
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="spotsweep-bench-"))
    rows: list[Row] = []
    timings: dict[str, float] = {}
    try:
        dataset = make_dataset(workdir / "dataset")
        for name in only:
            print(f"[bench] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                module = importlib.import_module(f"bench.{name}")
                new = module.run(workdir / name, dataset)
                rows += new
                for row in new:
                    print(f"[bench]   {row.comparison}: {fmt(row.measured, row.unit)} vs {fmt(row.baseline, row.unit)} "
                          f"({met_text(row)})", flush=True)
            except Exception as exc:  # noqa: BLE001  one broken comparison must not hide the others
                traceback.print_exc()
                rows.append(Row(f"{name}: FAILED", float("nan"), float("nan"), "", None, "-", False, f"{exc!r:.200}"))
            timings[name] = time.perf_counter() - t0
            print(f"[bench] {name} done in {timings[name]:.1f}s", flush=True)
    finally:
        try:
            from bench.aws import stop

            stop()
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started
    print_table(rows)
    missed = [r.comparison for r in rows if r.met is False]
    print(f"total {total:.0f}s; " + (f"MISSED: {len(missed)} target(s): {'; '.join(missed)}" if missed else "all targets met"))
    results = RESULTS if not argv else RESULTS.with_name(f"results-{'-'.join(only)}.json")  # a partial run keeps the full one
    results.write_text(json.dumps({
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds": total, "seconds_by_comparison": timings,
        "rows": [r.as_json() for r in rows], "missed": missed,
    }, indent=2, default=str))
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
