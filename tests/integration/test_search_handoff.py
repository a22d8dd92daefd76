"""A search's next decision rides on the settled job's message (worker/outcomes.py: advance_then_ack).

A worker that finished a job but could not advance its study keeps the message; whoever receives
it again finds the job finished and advances the study then. So a decision is never lost between
a settlement and the reconciler, with the fleet at zero or on a function that has no sampler.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.errors import RetryableError
from shared.status import JobStatus
from shared.study import parse_study
from submitter.service import submit_study
from tests.faults import INJECTED, FaultPlan, faulty_backend
from tests.integration.test_worker_protocol import FakeTraining, settings_for
from worker.loop import Policy, Worker

COUNT = 3


def windowed_study(dataset: Path):
    """A random search of COUNT trials, one at a time: each trial is enqueued by the settlement of
    the one before (no sampler library needed: a seeded draw per trial)."""
    return parse_study(json.dumps({
        "name": "handoff", "dataset": str(dataset), "image_size": 32,
        "parameters": {"architecture": ["benchmark"],
                       "optimizer": [{"name": "adam", "learning_rate": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1}}]},
        "training": {"epochs": 1}, "search": {"method": "random", "count": COUNT, "seed": 2, "parallel": 1},
    }))


def test_a_settlement_that_cannot_advance_keeps_its_message_and_its_next_receiver_advances(
    local_backend, tmp_path, tiny_dataset
):
    spec = windowed_study(tiny_dataset)
    submit_study(local_backend, spec)
    plan = FaultPlan()
    plan.fail("store.get_study", RetryableError("throttled"))  # the first settlement's advance_study fails
    training = FakeTraining()
    Worker(faulty_backend(local_backend, plan), settings_for(tmp_path / "home"), training).work(Policy(until_empty=True))

    assert plan.outcomes("store.get_study")[0] == INJECTED  # trial 0 settled, its study not advanced...
    jobs = local_backend.store.list_jobs(spec.study_id)
    assert sorted(j.spec.trial.index for j in jobs) == list(range(COUNT))  # ...yet every trial came
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}
    assert [job_id for job_id, _ in training.calls] == [j.job_id for j in sorted(jobs, key=lambda j: j.spec.trial.index)]
    counts = local_backend.queue.counts()
    assert (counts.visible, counts.in_flight, counts.dead) == (0, 0, 0)
