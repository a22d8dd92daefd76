"""An ASHA promotion continues from its rung's checkpoint (issue 16): the real worker loop, in
this process, trains real (tiny) Keras models on the embedded backend.

A study of two trials (rungs at 2 and 4 epochs, eta 2) is submitted; one worker runs both rung-0
jobs, and the settlement of the second enqueues the better one's promotion, which the same
worker runs. The promotion trains epochs 3-4 only, on the parent's model: its optimizer's step
counter goes on from the parent's, its log starts with the parent's two epochs, and the parent's
committed state is still there afterwards (the promotion's commits never delete another job's
files). A promotion whose parent committed nothing fails at once, with one line saying why.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.jobs import JobRecord
from shared.ports import Backend
from shared.search import initial_jobs, promotion, promotion_job_id, search_complete, trial_job_id
from shared.status import JobStatus
from shared.study import StudySpec
from shared.submission import submit_jobs
from submitter.service import submit_study
from tests.integration.test_heartbeat import worker_settings
from worker.loop import Policy, Worker
from worker.training import JobRunner
from worker.training.models import load_model
from worker.training.state import Progress

MIN_EPOCHS, ETA, EPOCHS = 2, 2, 4  # rungs: 2 and 4 epochs


def asha_study(dataset: Path, count: int = 2) -> StudySpec:
    return StudySpec.model_validate({
        "name": "asha-resume", "dataset": str(dataset), "image_size": 32, "validation_split": 0.25, "seed": 3,
        "search": {"method": "asha", "count": count, "seed": 5, "min_epochs": MIN_EPOCHS, "reduction_factor": ETA, "parallel": 2},
        "parameters": {
            "architecture": ["benchmark"], "weights": [None], "batch_size": [8],
            "optimizer": [{"name": "sgd", "learning_rate": {"distribution": "log_uniform", "low": 0.01, "high": 0.05}, "momentum": 0.9}],
        },
        "training": {"epochs": EPOCHS},
        "head": {"units": 16},
    })


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    return open_local(BackendConfig(home=tmp_path / "home", lease_s=60.0, max_receives=5))


def run_worker(backend: Backend, tmp_path: Path) -> None:
    Worker(backend, worker_settings(tmp_path, 60.0), JobRunner()).work(Policy(until_empty=True))


def csv_rows(backend: Backend, key: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(backend.artifacts.get_bytes(key).decode())))


def optimizer_steps(backend: Backend, state_key: str, tmp_path: Path) -> tuple[Progress, int]:
    """A committed state's progress, and the step counter of the optimizer saved with its model."""
    progress = Progress.from_json(backend.artifacts.get_bytes(state_key))
    local = tmp_path / "models" / Path(progress.model_key).name
    backend.artifacts.get_file(progress.model_key, local)
    return progress, int(load_model(local).optimizer.iterations.numpy())


def test_a_promotion_trains_only_its_rungs_new_epochs_from_the_parents_model(backend, tiny_dataset, tmp_path):
    spec = asha_study(tiny_dataset)
    assert submit_study(backend, spec).created == 2  # both rung-0 jobs
    run_worker(backend, tmp_path)

    jobs = {job.job_id: job for job in backend.store.list_jobs(spec.study_id)}
    assert len(jobs) == 3 and {j.status for j in jobs.values()} == {JobStatus.SUCCEEDED}, jobs
    assert search_complete(spec, list(jobs.values()))
    [child] = [j for j in jobs.values() if j.spec.trial.rung == 1]
    parent = jobs[child.spec.parent_job_id]
    assert parent.job_id == trial_job_id(spec.study_id, parent.spec.trial.index)
    assert child.job_id == promotion_job_id(spec.study_id, 1, 0)  # rung 1's first promotion slot
    assert (parent.spec.trial.rung, parent.epochs_run, child.epochs_run) == (0, MIN_EPOCHS, MIN_EPOCHS * ETA)

    # The store's epoch rows: the promotion committed only the epochs past its rung.
    assert [e.epoch for e in backend.store.epochs(spec.study_id, parent.job_id)] == [1, 2]
    assert [e.epoch for e in backend.store.epochs(spec.study_id, child.job_id)] == [3, 4]

    # Its log is one history: the parent's two epochs as the parent logged them, then its own.
    parent_log, child_log = csv_rows(backend, parent.artifacts["log_csv"]), csv_rows(backend, child.artifacts["log_csv"])
    assert [int(float(r["epoch"])) for r in child_log] == [1, 2, 3, 4]
    assert child_log[:2] == parent_log

    # The weights went on: the optimizer saved with the promotion's last epoch took the parent's
    # steps and then as many again (a promotion trained from scratch would have taken half).
    parent_progress, parent_steps = optimizer_steps(backend, parent.state_key, tmp_path / "parent")
    child_progress, child_steps = optimizer_steps(backend, child.state_key, tmp_path / "child")
    assert parent_steps > 0 and child_steps == parent_steps * ETA
    assert child_progress.history[:2] == parent_progress.history

    # The parent's committed state, its models and its published checkpoint are all still there.
    kept = [parent.state_key, parent_progress.model_key, parent_progress.best_model_key, parent.checkpoint]
    assert all(key and backend.artifacts.exists(key) for key in kept), kept
    child_prefix = f"studies/{spec.study_id}/jobs/{child.job_id}/"
    assert child.state_key.startswith(child_prefix) and child.checkpoint.startswith(child_prefix)


def test_a_promotion_whose_parent_committed_no_state_fails_at_once_with_one_line(backend, tiny_dataset, tmp_path):
    spec = asha_study(tiny_dataset)
    parent_id, parent_spec = next(iter(initial_jobs(spec)))
    backend.store.create_jobs([JobRecord(study_id=spec.study_id, job_id=parent_id, spec=parent_spec, created_at=time.time())])
    parent = backend.store.get_job(spec.study_id, parent_id)
    assert parent is not None and parent.state_key is None  # created, never sent, never run
    child_id, child_spec = promotion(spec, spec.study_id, parent, 0)
    assert submit_jobs(backend.store, backend.queue, spec.study_id, [(child_id, child_spec)]).sent == 1
    Worker(backend, worker_settings(tmp_path, 60.0), JobRunner()).work(Policy(max_jobs=1))

    child = backend.store.get_job(spec.study_id, child_id)
    assert (child.status, child.attempt, child.epochs_run) == (JobStatus.FAILED, 1, 0), child
    assert "\n" not in child.error and "no committed training state" in child.error, child.error
    assert parent_id in child.error
    assert backend.store.epochs(spec.study_id, child_id) == []
    assert not list(backend.artifacts.list(f"studies/{spec.study_id}/jobs/{child_id}/attempt-1/state/"))
    counts = backend.queue.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)  # failed for good: not retried
