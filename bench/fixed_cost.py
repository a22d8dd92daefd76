"""A job's fixed cost through the real worker loop: claim -> first step, last step -> settled.

A promotion of an adaptive search resumes a checkpoint and many of its trials are short, so
what a job costs besides its training steps decides how much of a worker's time trains. Jobs go
through `worker.loop.Worker` on the embedded backend (SQLite queue and store, a local artifact
store, the dataset in the store as on AWS: scikit-learn's digits), one at a time, as a worker
process runs them (one `JobRunner`):

- cached head jobs: MobileNetV2 (random init) with the feature cache on, on two entries (two
  seeds) whose features earlier jobs built, so a job fits the head on cached features and
  publishes the entry's base with its best head. Three series: the job before was of the same
  entry; the worker alternates between the two entries; the entry's first job in this worker
  process (a new runner: the base must be built to publish);
- benchmark-CNN jobs, trained through the model on the decoded images (cached on disk).

Per job, from timestamps that change nothing the job does (wrappers around the loop's own
steps, put on for the run and taken off after it):
    pre   claim (the store's conditional write begins) -> the first training batch begins
          (a hook on the job's own StopPoller callback, `on_train_batch_begin`)
    post  the last training batch ends -> settled (record finished, message deleted)
    fixed = pre + post (wall seconds; the process's CPU seconds beside it); wall = claim ->
    `execute` returns. The first epoch's extra time (graph tracing) is reported, not included.
Medians per series; the parts say where the seconds go (the alternating head series against
the CNN's).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Dataset, Row

ARCH, IMAGE_SIZE, BATCH, EPOCHS = "mobilenet_v2", 96, 32, 2
CNN_IMAGE_SIZE, DIGIT_SIZE = 64, 32
JOBS = 5  # measured per series, after the warm-ups
TARGET_S = 2.0
STUDY = "bench-fixed-cost"
DATASET_PREFIX = "datasets/digits"
LEARNING_RATES = [0.1 / 1.1**i for i in range(3 + 6 * JOBS)]  # one per job: every job has its own id


Clock = tuple[float, float]  # (time.perf_counter(), time.process_time()): wall and this process's CPU


def now() -> Clock:
    return time.perf_counter(), time.process_time()


@dataclass
class Probe:
    """Spans (label, start, end) and marks (label, at) of the job being measured."""

    spans: list[tuple[str, Clock, Clock]] = field(default_factory=list)
    marks: list[tuple[str, Clock]] = field(default_factory=list)

    def clear(self) -> None:
        self.spans.clear()
        self.marks.clear()

    def timed(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = now()
            try:
                return function(*args, **kwargs)
            finally:
                self.spans.append((label, started, now()))

        return wrapper

    def mark(self, label: str) -> None:
        self.marks.append((label, now()))

    def first_mark(self, label: str) -> Clock:
        return min(at for name, at in self.marks if name == label)

    def last_mark(self, label: str) -> Clock:
        return max(at for name, at in self.marks if name == label)

    def within(self, label: str, after: Clock, before: Clock) -> float:
        """Wall seconds in the spans named `label` that lie between `after` and `before`."""
        return sum(end[0] - start[0] for name, start, end in self.spans
                   if name == label and start[0] >= after[0] and end[0] <= before[0])

    def edges(self, label: str) -> list[tuple[Clock, Clock]]:
        return [(start, end) for name, start, end in self.spans if name == label]


# What is timed: (module, class or None for a module function, attribute, label). The loop's
# own steps are timed on the Worker instance (WORKER_PROBES), the batches by StopPoller hooks.
MODULE_PROBES = [
    ("worker.lease", "Lease", "__enter__", "lease start"),
    ("worker.lease", "Lease", "__exit__", "lease stop"),
    ("worker.joblog", "JobLog", "__enter__", "job log"),
    ("worker.joblog", "JobLog", "flush", "job log"),
    ("worker.training.data", None, "load_manifest", "manifest load"),
    ("worker.training.runner", None, "open_session", "open session"),
    ("worker.training.sessions", None, "head_classifier", "model build"),
    ("worker.training.sessions", None, "build_model", "model build"),
    ("worker.training.sessions", None, "compile_model", "model compile"),
    ("worker.training.sessions", None, "_load_state_model", "state model load"),
    ("worker.training.features", "FeatureCache", "open", "feature cache open"),
    ("worker.training.data", None, "load_images", "images load"),
    ("worker.training.train", "EpochLogs", "for_job", "logs open"),
    ("worker.training.data", "Batches", "epoch", "batches"),
    ("worker.training.train", None, "_fit_one_epoch", "fit epoch"),
    ("worker.training.train", None, "publish_best", "publish best"),
    ("worker.training.train", None, "write_val_correct", "val_correct"),
    ("worker.training.train", None, "load_model", "best model load"),
    ("worker.training.features", None, "complete_model", "complete model"),
    ("worker.training.state", "StateStore", "save", "state save"),
    ("worker.training.state", "StateStore", "discard", "state discard"),
    ("worker.training.logs", "EpochLogs", "write_epoch", "epoch logs"),
    ("worker.training.logs", "EpochLogs", "close", "epoch logs"),
]
WORKER_PROBES = [("_claim", "claim"), ("_dataset_dir", "dataset resolve"), ("_parent_checkpoint", "parent lookup"),
                 ("_record_epoch", "epoch commit"), ("execute", "execute")]
# The steps that follow one another between the claim and the first batch, and between the last
# batch and the settlement (the others are inside one of them); what they leave is "other".
PRE_STEPS = ("claim", "lease start", "job log", "dataset resolve", "parent lookup", "manifest load", "open session",
             "logs open", "batches", "fit start (to first batch)")
POST_STEPS = ("fit end (validation)", "state save", "epoch commit", "state discard", "epoch logs", "publish best",
              "lease stop", "settle")
NESTED = ("feature cache open", "images load", "model build", "model compile", "state model load",
          "best model load", "val_correct", "complete model")
_MISSING = object()


def _wrap(owner: Any, attr: str, replacement: Callable[..., Any], saved: list[tuple[Any, str, Any]]) -> None:
    original = owner.__dict__.get(attr, _MISSING) if isinstance(owner, type) else getattr(owner, attr)
    saved.append((owner, attr, original))
    setattr(owner, attr, replacement)


@contextmanager
def instrumented(probe: Probe) -> Iterator[None]:
    """Time the steps of MODULE_PROBES and mark the training batches; everything restored after."""
    import importlib

    from worker.training.stopping import StopPoller

    saved: list[tuple[Any, str, Any]] = []
    for module_name, class_name, attr, label in MODULE_PROBES:
        module = importlib.import_module(module_name)
        owner = getattr(module, class_name) if class_name else module
        original = owner.__dict__[attr] if class_name else getattr(owner, attr)
        if isinstance(original, classmethod):
            _wrap(owner, attr, classmethod(probe.timed(label, original.__func__)), saved)
        else:
            _wrap(owner, attr, probe.timed(label, original), saved)
    poll = StopPoller.on_train_batch_end

    def batch_end(self: StopPoller, *args: Any, **kwargs: Any) -> None:
        probe.mark("batch end")
        poll(self, *args, **kwargs)

    _wrap(StopPoller, "on_train_batch_begin", lambda self, *args, **kwargs: probe.mark("batch begin"), saved)
    _wrap(StopPoller, "on_train_batch_end", batch_end, saved)
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            if original is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


def instrument_worker(worker: Any, probe: Probe) -> None:
    """Time the loop's own steps on this Worker instance (the class is untouched)."""
    for attr, label in WORKER_PROBES:
        setattr(worker, attr, probe.timed(label, getattr(worker, attr)))
    worker.settler.settle = probe.timed("settle", worker.settler.settle)


@dataclass
class JobTimes:
    pre_s: float  # claim begins -> the first training batch begins
    post_s: float  # the last training batch ends -> settled
    cpu_s: float  # this process's CPU seconds in those two windows (all threads)
    wall_s: float  # claim begins -> `execute` returns
    warm_up_s: float  # the first epoch's fit beyond the last one's: graph tracing, pipeline start
    parts: dict[str, float]

    @property
    def fixed_s(self) -> float:
        return self.pre_s + self.post_s


def job_times(probe: Probe) -> JobTimes:
    claim, settled = probe.edges("claim")[0][0], probe.edges("settle")[-1][1]
    first_step, last_step = probe.first_mark("batch begin"), probe.last_mark("batch end")
    fits = probe.edges("fit epoch")
    pre = {name: probe.within(name, claim, first_step) for name in PRE_STEPS + NESTED}
    pre["fit start (to first batch)"] = first_step[0] - fits[0][0][0]
    post = {name: probe.within(name, last_step, settled) for name in POST_STEPS + NESTED}
    post["fit end (validation)"] = fits[-1][1][0] - last_step[0]
    pre_s, post_s = first_step[0] - claim[0], settled[0] - last_step[0]
    pre["other"] = pre_s - sum(pre[name] for name in PRE_STEPS)
    post["other"] = post_s - sum(post[name] for name in POST_STEPS)
    parts = {f"pre: {k}": v for k, v in pre.items()} | {f"post: {k}": v for k, v in post.items()}
    cpu_s = (first_step[1] - claim[1]) + (settled[1] - last_step[1])
    durations = [end[0] - start[0] for start, end in fits]
    warm_up_s = max(0.0, durations[0] - durations[-1])
    return JobTimes(pre_s, post_s, cpu_s, probe.edges("execute")[-1][1][0] - claim[0], warm_up_s, parts)


def head_spec(dataset: str, learning_rate: float, seed: int) -> Any:
    """A head job on entry `seed` (a random-init base's entry is named by its seed)."""
    from shared.jobs import JobSpec, ModelSpec, TrainingSpec

    return JobSpec(
        dataset=dataset, model=ModelSpec(architecture=ARCH, image_size=IMAGE_SIZE),
        optimizer={"name": "sgd", "learning_rate": learning_rate},
        training=TrainingSpec(epochs=EPOCHS, batch_size=BATCH, early_stopping=None, feature_cache=True, seed=seed),
    )


def cnn_spec(dataset: str, learning_rate: float, seed: int) -> Any:
    from shared.jobs import JobSpec, ModelSpec, TrainingSpec

    return JobSpec(
        dataset=dataset, model=ModelSpec(architecture="benchmark", image_size=CNN_IMAGE_SIZE),
        optimizer={"name": "sgd", "learning_rate": learning_rate},
        training=TrainingSpec(epochs=EPOCHS, batch_size=BATCH, early_stopping=None, seed=seed),
    )


def run_one(worker: Any, probe: Probe, spec: Any) -> JobTimes:
    """Submit one job and let the worker loop take it, run it and settle it."""
    from shared.jobs import JobStatus, job_id_for
    from shared.submission import submit_jobs
    from worker.loop import Policy

    backend = worker.backend
    job_id = job_id_for(STUDY, spec)
    submit_jobs(backend.store, backend.queue, STUDY, [(job_id, spec)])
    probe.clear()
    worker.work(Policy(until_empty=True))
    record = backend.store.get_job(STUDY, job_id)
    assert record is not None and record.status is JobStatus.SUCCEEDED, record
    return job_times(probe)


def make_worker(home: Path, probe: Probe) -> Any:
    from shared.backends.factory import open_local
    from worker.loop import Worker
    from worker.settings import WorkerSettings
    from worker.training import JobRunner

    settings = WorkerSettings(home=home, lease_s=60.0, poll_wait_s=0.0, retry_backoff_s=0.0,
                              require_gpu=False, worker_id="bench-fixed-cost")
    worker = Worker(open_local(settings), settings, JobRunner())
    instrument_worker(worker, probe)
    return worker


def digits_in_store(workdir: Path, home: Path) -> str:
    """scikit-learn's digits (1,797 images, 10 classes) uploaded to the artifact store, as a
    study on AWS names its dataset: every job then resolves (syncs) it."""
    from shared.backends.factory import open_local
    from shared.config import BackendConfig
    from shared.datasets.sync import upload
    from tests.digits import prepare_digits

    prepared, _ = prepare_digits(workdir / "digits", size=DIGIT_SIZE)
    upload(prepared, open_local(BackendConfig(home=home)).artifacts, DATASET_PREFIX)
    return f"artifacts:{DATASET_PREFIX}"


def medians(times: list[JobTimes]) -> dict[str, float]:
    out = {"fixed": statistics.median(t.fixed_s for t in times), "pre": statistics.median(t.pre_s for t in times),
           "post": statistics.median(t.post_s for t in times), "cpu": statistics.median(t.cpu_s for t in times),
           "wall": statistics.median(t.wall_s for t in times), "warm-up": statistics.median(t.warm_up_s for t in times)}
    return out | {name: statistics.median(t.parts[name] for t in times) for name in times[0].parts}


def measure_all(workdir: Path) -> dict[str, dict[str, float]]:
    """The four series, on one worker, after warm-ups (each entry's features, the decoded images).
    Jobs of the series take turns, round after round, so that a change in the machine's load
    (other processes share its CPUs) weighs on every series alike."""
    from worker.training import JobRunner

    probe = Probe()
    home = workdir / "home"
    dataset = digits_in_store(workdir, home)
    rates = iter(LEARNING_RATES)
    series: dict[str, list[JobTimes]] = {"same entry": [], "alternating": [], "first on worker": [], "cnn": []}
    with instrumented(probe):
        worker = make_worker(home, probe)

        def job(spec: Callable[[str, float, int], Any], seed: int, into: str | None) -> None:
            times = run_one(worker, probe, spec(dataset, next(rates), seed))
            if into is not None:
                series[into].append(times)

        job(head_spec, 1, None)  # builds entry 1 (a random-init base's entry is named by its seed)
        job(head_spec, 2, None)  # builds entry 2
        job(cnn_spec, 1, None)  # decodes the images
        for _ in range(JOBS):
            worker.run_job = JobRunner()  # a new worker process's runner: it never built a base
            job(head_spec, 2, "first on worker")
            job(head_spec, 2, "same entry")
            job(head_spec, 1, "first on worker")  # entry 1, for the first time in this runner
            job(head_spec, 2, "alternating")  # entry 2 after entry 1, both run before in this runner
            job(head_spec, 1, "alternating")
            job(cnn_spec, 1, "cnn")
    return {name: medians(times) for name, times in series.items()}


HEAD_ROWS = {
    "same entry": "cached head job, same entry as the job before (s)",
    "alternating": "cached head job, two entries alternating (s)",
    "first on worker": "cached head job, its entry's first job in this worker process (s)",
}


def note(m: dict[str, float]) -> str:
    return (f"pre {m['pre']:.2f} s + post {m['post']:.2f} s ({m['cpu']:.2f} CPU-s), of which publish "
            f"{m['post: publish best']:.2f} s (base assembly {m['post: complete model']:.2f} s); first-epoch "
            f"warm-up (tracing) {m['warm-up']:.2f} s not included; job wall {m['wall']:.2f} s")


def rows_for(found: dict[str, dict[str, float]], setup: str) -> list[Row]:
    rows = []
    for name, title in HEAD_ROWS.items():
        m = found[name]
        rows.append(Row(f"fixed cost: {title}", m["fixed"], float("nan"), "s", None, f"<= {TARGET_S:g}",
                        m["fixed"] <= TARGET_S, note(m) + (f"; {setup}" if not rows else ""), m))
    cnn, head = found["cnn"], found["same entry"]
    rows.append(Row("fixed cost: benchmark CNN job (s)", cnn["fixed"], float("nan"), "s", None, "(info)", None,
                    note(cnn), cnn))
    explained = "measured: cached head job, same entry as the job before; baseline: benchmark CNN job"
    for name in (n for n in head if n.startswith(("pre:", "post:"))):
        if max(head[name], cnn[name]) >= 0.005:
            rows.append(
                Row(f"fixed cost part, {name} (s)", head[name], cnn[name], "s", None, "(info)", None, explained)
            )
            explained = ""
    return rows


def run(workdir: Path, dataset: Dataset) -> list[Row]:
    """The comparison's rows. It runs on the digits, not on the harness's synthetic `dataset`."""
    import logging

    del dataset
    logging.getLogger("spotsweep").setLevel(logging.WARNING)  # the loop's per-job lines would drown the table
    load_before = os.getloadavg()[0]
    found = measure_all(workdir)
    setup = (f"medians over {JOBS} rounds of 6 jobs taking turns, after warm-ups; one Worker, embedded backend, "
             f"digits (1,797 images, in the artifact store); {EPOCHS} epochs, batch {BATCH}; head: {ARCH} "
             f"{IMAGE_SIZE}px random init, features cached; CNN: benchmark {CNN_IMAGE_SIZE}px; {os.cpu_count()} "
             f"CPUs, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    return rows_for(found, setup)
