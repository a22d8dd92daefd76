"""What the comparisons share: the result row, a timer, and the small synthetic dataset."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

CLASSES, PER_CLASS, SOURCE_SIZE = 5, 40, 128


@dataclass
class Row:
    comparison: str
    measured: float
    baseline: float
    unit: str
    ratio: float | None  # None: no ratio for this row (a bound, not a speed-up)
    target: str  # e.g. ">= 5x", "<= 0.01", "== 0"
    met: bool | None  # None: no target
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Dataset:
    source: Path  # class folders, as synthesized
    prepared: Path  # manifest.json, train/<class>/..., test/<class>/...


def make_dataset(root: Path, per_class: int = PER_CLASS) -> Dataset:
    from shared.datasets.prepare import prepare
    from shared.datasets.synth import synthesize

    source = synthesize(root / "synth", classes=CLASSES, per_class=per_class, size=SOURCE_SIZE, seed=0)
    prepared = root / "prepared"
    prepare(source, prepared, test_fraction=0.2, seed=0, name="bench-flowers")
    return Dataset(source, prepared)


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


def ratio(baseline: float, measured: float) -> float:
    return baseline / measured if measured > 0 else float("inf")
