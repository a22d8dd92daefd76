"""A store-level driver for search studies: no Keras, no worker loop.

`Driver.step()` does what a worker does around training, through the real ports: it receives one
message, claims the job, finishes it SUCCEEDED with a score derived from the trial's params
(`score`), the epochs its rung trains and made-up seconds and dollars, and calls `advance_study`,
as the worker that settles a job does. A whole ASHA, TPE or random study runs in well under a
second on the embedded backend.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.followups import advance_study
from shared.jobs import JobRecord, StudyRecord, parse_message
from shared.ports import Backend
from shared.search import initial_jobs, search_complete
from shared.status import JobStatus
from shared.study import StudySpec, job_count, parse_study
from shared.submission import submit_jobs

ROOT = Path(__file__).parents[1]  # the repository: where a fresh process imports `tests` from
SECONDS_PER_EPOCH = 10.0
USD_PER_EPOCH = 0.01
LOG_LR = {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1}
BATCH = {"distribution": "int_uniform", "low": 16, "high": 64, "step": 16}


def study(search: dict[str, Any], name: str = "search", **changes: Any) -> StudySpec:
    """A study over a log-uniform learning rate and a stepped batch size (`changes` replace top-level fields)."""
    data: dict[str, Any] = {
        "name": name, "dataset": "/data/flowers", "image_size": 32, "search": search,
        "parameters": {"architecture": ["benchmark"], "weights": [None],
                       "optimizer": [{"name": "sgd", "learning_rate": LOG_LR}], "batch_size": BATCH},
        "training": {"epochs": 9},
        **changes,
    }
    return parse_study(json.dumps(data))


def score(job: JobRecord) -> float:
    """The made-up val_accuracy: best at learning rate 1e-2, a little better at each later rung."""
    lr = float(job.spec.optimizer.learning_rate)  # type: ignore[attr-defined]
    rung = job.spec.trial.rung if job.spec.trial else 0
    return round(0.9 - abs(math.log10(lr) + 2) / 5 + 0.01 * rung, 6)


def submit(backend: Backend, spec: StudySpec) -> None:
    """What `submit study` writes (submitter.service.submit_study, less its checks of the dataset's
    location, which an AWS backend would refuse for these made-up studies): the record, the first jobs."""
    backend.store.put_study(StudyRecord(
        study_id=spec.study_id, name=spec.name, created_at=time.time(), spec=spec.model_dump(mode="json"),
        job_count=job_count(spec),
    ))
    submit_jobs(backend.store, backend.queue, spec.study_id, initial_jobs(spec))


@dataclass
class Driver:
    """Plays the workers of one study: `step` from one thread at a time (give each racing thread its
    own driver), `advance` from any number at once."""

    backend: Backend
    spec: StudySpec
    scorer: Callable[[JobRecord], float] = score
    received: Counter[str] = field(default_factory=Counter)  # job id -> messages received for it
    settled: list[str] = field(default_factory=list)
    stages: list[dict[str, int]] = field(default_factory=list)  # what each advance_study started

    def step(self, advance: bool = True) -> bool:
        """Receive one message and settle its job; False when the queue had none."""
        deliveries = self.backend.queue.receive(1)
        if not deliveries:
            return False
        message = parse_message(deliveries[0].body)
        self.received[message.job_id] += 1
        claimed = self.backend.store.claim(message.study_id, message.job_id, "driver", 60.0, time.time())
        if claimed is not None:  # None: a duplicate message of a job already settled
            self.finish(claimed)
        self.backend.queue.delete([deliveries[0].receipt])
        if advance and claimed is not None:
            self.advance()
        return True

    def finish(self, job: JobRecord, status: JobStatus = JobStatus.SUCCEEDED) -> None:
        epochs = job.spec.training.epochs
        changes = {"metrics": {"val_accuracy": self.scorer(job)}, "epochs_run": epochs,
                   "train_seconds": SECONDS_PER_EPOCH * epochs, "cost_usd": USD_PER_EPOCH * epochs,
                   "state_key": f"studies/{job.study_id}/jobs/{job.job_id}/state-{job.attempt}"}
        self.backend.store.finish(job.study_id, job.job_id, job.attempt, status, changes)
        self.settled.append(job.job_id)

    def advance(self) -> dict[str, int]:
        started = advance_study(self.backend.store, self.backend.queue, self.spec.study_id)
        self.stages.append(started)
        return started

    def run(self, max_steps: int = 500) -> int:
        """Settle jobs until the queue is empty; the number settled."""
        steps = 0
        while self.step():
            steps += 1
            assert steps < max_steps, "the study never ends"
        return steps

    def jobs(self) -> list[JobRecord]:
        return self.backend.store.list_jobs(self.spec.study_id)

    def complete(self) -> bool:
        return search_complete(self.spec, self.jobs())


def train_jobs(jobs: list[JobRecord]) -> list[JobRecord]:
    return [job for job in jobs if job.kind == "train"]


def trial_rungs(jobs: list[JobRecord]) -> Counter[tuple[int, int]]:
    """(trial index, rung) -> how many training jobs it has (each must be 1)."""
    return Counter((job.spec.trial.index, job.spec.trial.rung) for job in train_jobs(jobs) if job.spec.trial)


def assert_exactly_once(jobs: list[JobRecord], count: int, received: Counter[str]) -> None:
    """`count` trials 0..count-1, one job per (trial, rung), each rung > 0 resuming its trial's
    previous rung, every job sent (received at least once) and no id twice."""
    per_rung = trial_rungs(jobs)
    assert {index for index, _ in per_rung} == set(range(count))
    assert set(per_rung.values()) == {1}
    by_key = {(j.spec.trial.index, j.spec.trial.rung): j for j in train_jobs(jobs) if j.spec.trial}
    for (index, rung), job in by_key.items():
        if rung:
            parent = by_key[(index, rung - 1)]
            assert job.spec.parent_job_id == parent.job_id and parent.status is JobStatus.SUCCEEDED
    ids = [job.job_id for job in jobs]
    assert len(ids) == len(set(ids))
    assert set(received) == set(ids), set(ids) - set(received)
