"""Feature cache on vs off: 8 head-training jobs of one study sharing one architecture.

The same study (8 optimizer settings, same seed) is expanded twice, with
`training.feature_cache` true and false, and every job runs through `run_job` with its own
LocalArtifactStore (one per mode, so the "off" run shares nothing with the "on" run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import Dataset, Row, ratio

ARCH, IMAGE_SIZE, EPOCHS, BATCH = "mobilenet_v2", 64, 3, 16


def study_text(cache: bool) -> str:
    return json.dumps({
        "name": f"bench-fc-{'on' if cache else 'off'}",
        "dataset": "bench-flowers",
        "image_size": IMAGE_SIZE,
        "seed": 11,
        "parameters": {
            "architecture": [ARCH],
            "weights": [None],
            "optimizer": [
                {"name": "sgd", "learning_rate": [0.1, 0.03, 0.01, 0.003], "momentum": [0.0, 0.9]},
            ],
            "batch_size": [BATCH],
            "augmentation": [False],
        },
        "training": {"epochs": EPOCHS, "early_stopping": None, "feature_cache": cache},
    })


def run_study(workdir: Path, dataset: Dataset, cache: bool) -> tuple[float, list[float], list[bool]]:
    from shared.backends.local import LocalArtifactStore
    from shared.paths import job_prefix
    from shared.study import expand, parse_study
    from worker.training import JobContext, run_job
    from worker.training.features import applies

    spec = parse_study(study_text(cache), "bench")
    jobs = list(expand(spec))
    assert len(jobs) == 8, len(jobs)
    mode = "on" if cache else "off"
    store = LocalArtifactStore(workdir / mode / "artifacts")
    accuracies, applied, total = [], [], 0.0
    for job_id, job in jobs:
        ctx = JobContext(
            study_id=spec.study_id, job_id=job_id, spec=job, dataset_dir=dataset.prepared,
            work_dir=workdir / mode / "work" / job_id, artifacts=store,
            prefix=job_prefix(spec.study_id, job_id), cache_dir=workdir / mode / "decoded",
        )
        started = time.perf_counter()
        result = run_job(ctx)
        total += time.perf_counter() - started
        assert result.outcome == "completed", result
        accuracies.append(float(result.metrics["val_accuracy"]))
        applied.append(applies(job))
    return total, accuracies, applied


def run(workdir: Path, dataset: Dataset) -> list[Row]:
    off_s, off_acc, _ = run_study(workdir, dataset, cache=False)
    on_s, on_acc, applied = run_study(workdir, dataset, cache=True)
    diff = max(abs(a - b) for a, b in zip(on_acc, off_acc))
    speedup = ratio(off_s, on_s)
    setup = f"8 jobs {ARCH} weights=None {IMAGE_SIZE}px {EPOCHS} epochs, cache applied to {sum(applied)}/8"
    return [
        Row("feature cache: worker time, 8-job study (s)", on_s, off_s, "s", speedup, ">= 5x", speedup >= 5,
            setup, {"on_s": on_s, "off_s": off_s}),
        Row("feature cache: max |val_accuracy diff|", diff, 0.0, "", None, "<= 0.01", diff <= 0.01,
            "", {"val_accuracy_on": on_acc, "val_accuracy_off": off_acc}),
    ]
