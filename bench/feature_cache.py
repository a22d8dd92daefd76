"""Feature cache on vs off: 8 head-training jobs of one study sharing one architecture.

The same study (8 optimizer settings, same seed) is expanded twice, with
`training.feature_cache` true and false, and every job runs through `run_job` with its own
LocalArtifactStore (one per mode, so the "off" run shares nothing with the "on" run).

The base is frozen, as in every head-training job, and has weights that make its features worth
training on, so that the val_accuracy comparison means something (a random frozen MobileNetV2
gives chance accuracy: its activations collapse). ImageNet weights cannot be downloaded here, so
the bench makes a weights file: a random init (seed 0) whose BatchNormalization statistics are
calibrated on 256 training images (no labels), a data-dependent init.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import Dataset, Row, ratio

ARCH, IMAGE_SIZE, EPOCHS, BATCH = "mobilenet_v2", 96, 6, 32
PER_CLASS = 200  # 5 classes: 800 train images (640 to train on, 160 to validate), 200 test
WEIGHTS_KEY = f"bench/{ARCH}-calibrated.weights.h5"


def study_text(cache: bool) -> str:
    return json.dumps({
        "name": f"bench-fc-{'on' if cache else 'off'}",
        "dataset": "bench-flowers",
        "image_size": IMAGE_SIZE,
        "seed": 11,
        "parameters": {
            "architecture": [ARCH],
            "weights": [WEIGHTS_KEY],
            "optimizer": [
                {"name": "sgd", "learning_rate": [0.1, 0.03, 0.01, 0.003], "momentum": [0.0, 0.9]},
            ],
            "batch_size": [BATCH],
            "augmentation": [False],
        },
        "training": {"epochs": EPOCHS, "early_stopping": None, "feature_cache": cache},
    })


def calibrated_weights(dataset: Dataset, path: Path) -> Path:
    """A random-init base with its BatchNormalization statistics set from 256 training images
    (`worker.training.calibrate`, the code behind `worker weights calibrate`)."""
    from worker.training.calibrate import write_calibrated_weights

    return write_calibrated_weights(dataset.prepared, ARCH, IMAGE_SIZE, path, path.parent / "decoded", seed=0)


def run_study(
    workdir: Path, dataset: Dataset, weights: Path, cache: bool
) -> tuple[float, list[float], list[bool]]:
    from shared.backends.local import LocalArtifactStore
    from shared.paths import job_prefix
    from shared.study import expand, parse_study
    from worker.training import JobContext, JobRunner
    from worker.training.features import applies

    spec = parse_study(study_text(cache), "bench")
    jobs = list(expand(spec))
    assert len(jobs) == 8, len(jobs)
    mode = "on" if cache else "off"
    store = LocalArtifactStore(workdir / mode / "artifacts")
    store.put_file(weights, WEIGHTS_KEY)
    accuracies, applied, total = [], [], 0.0
    run_job = JobRunner()  # as a worker process runs them: consecutive jobs share the entry's base
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
    from bench.common import make_dataset

    dataset = make_dataset(workdir / "dataset", per_class=PER_CLASS)
    weights = calibrated_weights(dataset, workdir / "weights" / "base.weights.h5")
    off_s, off_acc, _ = run_study(workdir, dataset, weights, cache=False)
    on_s, on_acc, applied = run_study(workdir, dataset, weights, cache=True)
    diff = max(abs(a - b) for a, b in zip(on_acc, off_acc))
    speedup = ratio(off_s, on_s)
    setup = (
        f"8 jobs {ARCH} (frozen, BN-calibrated random weights) {IMAGE_SIZE}px, {EPOCHS} epochs, batch {BATCH}, "
        f"{PER_CLASS * 5} images; cache applied to {sum(applied)}/8; best val_accuracy off "
        f"{min(off_acc):.2f}..{max(off_acc):.2f}"
    )
    return [
        Row("feature cache: worker time, 8-job study (s)", on_s, off_s, "s", speedup, ">= 5x", speedup >= 5,
            setup, {"on_s": on_s, "off_s": off_s}),
        Row("feature cache: max |val_accuracy diff|", diff, 0.0, "", None, "<= 0.01", diff <= 0.01,
            "", {"val_accuracy_on": on_acc, "val_accuracy_off": off_acc}),
    ]
