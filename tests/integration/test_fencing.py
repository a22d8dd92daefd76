"""Fencing reaches the artifact store (issue 13, item 3's consequences), with real tiny Keras
training on the embedded backend and the interleaving fixed by the fault plan's gates.

The stale-heartbeat interleaving: worker A's heartbeat fails (its renewals and record reads time
out, its extensions are throttled) and its clock lags, so its lease lapses in the store while A
believes it still holds it. Worker B claims the job and trains it to the end. A, which kept
training meanwhile, then writes its next epoch. Before, A's files landed on the keys B reads
(`state/state.json`, `state/epoch-NNNN.keras`): B's committed state went back to A's epoch, and
A deleted the previous epoch's model under B. Now every file A writes is new and under its own
attempt's folder, its commit is refused by the store, and B's record, checkpoint, state, log and
epochs are exactly what B left.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from pathlib import Path

import pytest

from shared.backends.factory import open_local
from shared.config import BackendConfig
from shared.jobs import JobSpec, job_id_for
from shared.paths import job_prefix
from shared.ports import Backend
from shared.status import JobStatus
from shared.submission import enqueue_record, submit_jobs
from tests.faults import PASSED, RAISED, FaultPlan, faulty_backend, throttled, timed_out
from tests.integration.test_heartbeat import ManualClock, worker_settings
from tests.integration.test_worker_protocol import STUDY, FakeTraining, make_jobs
from tests.training_support import tiny_spec
from worker.loop import Policy, Worker

LEASE_S = 30.0
EPOCHS = 4


def on_heartbeat_thread(*args: object, **kwargs: object) -> bool:
    return threading.current_thread().name.startswith("heartbeat-")


def snapshot(backend: Backend, prefix: str) -> dict[str, bytes]:
    return {o.key: backend.artifacts.get_bytes(o.key) for o in backend.artifacts.list(f"{prefix}/")}


def val_scores(model_path: Path, dataset: Path, spec: JobSpec, tmp: Path) -> dict[str, float]:
    """The published model's accuracy and loss on the job's validation images."""
    from worker.training import data
    from worker.training.models import load_model

    manifest = data.load_manifest(dataset)
    labels = data.split_files(manifest, "train").labels
    _, val_idx = data.validation_split(labels, spec.validation_split, spec.training.seed)
    images = data.load_images(dataset, manifest, "train", spec.model.image_size, tmp / "check-cache")
    model = load_model(model_path)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model.evaluate(images[val_idx].astype("float32"), labels[val_idx], return_dict=True, verbose=0)


def test_a_fenced_out_worker_never_touches_what_the_new_owner_wrote(tmp_path, tiny_dataset):
    from worker.training import JobRunner

    real = open_local(BackendConfig(home=tmp_path / "home", lease_s=LEASE_S, max_receives=20))
    spec = tiny_spec(training={"epochs": EPOCHS}).model_copy(update={"dataset": str(tiny_dataset)})
    job_id = job_id_for(STUDY, spec)
    submit_jobs(real.store, real.queue, STUDY, [(job_id, spec)])
    prefix = job_prefix(STUDY, job_id)

    plan = FaultPlan()  # worker A: a heartbeat that gets nowhere, a clock 1000 s behind the store's
    plan.fail_forever("store.renew", timed_out())
    plan.fail_forever("store.get_job", timed_out(), where=on_heartbeat_thread)
    plan.fail_forever("queue.extend", throttled())
    held = plan.hold("artifacts.put_file", where=lambda local, key, *a, **k: key.endswith("epoch-0003.keras"))
    stale = Worker(faulty_backend(real, plan), worker_settings(tmp_path / "a", LEASE_S, worker_id="A"),
                   JobRunner(), clock=ManualClock(time.time() - 1000))
    thread = threading.Thread(target=stale.work, args=(Policy(max_jobs=1),))
    thread.start()
    held.wait_entered(300)  # A committed epochs 1-2, trained epoch 3, and is uploading it
    deleted_before = plan.count("artifacts.delete")  # what A's own commits superseded, before B came

    enqueue_record(real.queue, real.store.get_job(STUDY, job_id))  # a duplicate, as the reconciler may send
    owner = Worker(real, worker_settings(tmp_path / "b", LEASE_S, worker_id="B"), JobRunner())
    owner.work(Policy(max_jobs=1))
    record = real.store.get_job(STUDY, job_id)
    assert (record.status, record.attempt, record.lease_owner) == (JobStatus.SUCCEEDED, 2, None)
    left_by_owner = snapshot(real, prefix)

    held.release()  # A goes on: writes its epoch 3, then tries to commit it
    thread.join(300)
    assert not thread.is_alive()
    assert [c.outcome for c in plan.calls("store.put_epoch")] == [PASSED, PASSED, RAISED]  # refused by the fence
    assert "LeaseLostError" in plan.calls("store.put_epoch")[-1].error
    assert plan.count("store.update") == 2 and plan.count("store.finish") == 0
    assert plan.count("artifacts.delete") == deleted_before  # nothing deleted after the takeover

    # B's work is exactly as B left it; A wrote only under its own attempt's folder, which no one
    # reads once the job has moved on: its epoch 3 (never committed) and its own job log.
    after = snapshot(real, prefix)
    own = f"{prefix}/attempt-1/"
    assert {k: v for k, v in after.items() if not k.startswith(own)} == {
        k: v for k, v in left_by_owner.items() if not k.startswith(own)}
    changed = {k for k in after if after[k] != left_by_owner.get(k)}
    assert changed - {f"{own}worker.log"} == {f"{own}state/epoch-0003.keras", f"{own}state/epoch-0003.json"}
    assert real.store.get_job(STUDY, job_id) == record
    assert [(e.epoch, e.attempt) for e in real.store.epochs(STUDY, job_id)] == [(1, 1), (2, 1), (3, 2), (4, 2)]

    # ...and consistent: the committed state, the published model and the recorded metrics agree.
    state = json.loads(after[record.state_key])
    assert record.state_key == f"{prefix}/attempt-2/state/epoch-{EPOCHS:04d}.json" and state["epoch"] == EPOCHS
    assert record.checkpoint == f"{prefix}/attempt-2/best.keras" and record.best_epoch == state["best_epoch"]
    assert after[record.checkpoint] == after[state["best_model_key"]]  # best.keras is the best epoch's model
    scores = val_scores(real.artifacts.root / record.checkpoint, tiny_dataset, spec, tmp_path)
    assert scores["accuracy"] == pytest.approx(record.metrics.val_accuracy, abs=1e-4)
    assert scores["loss"] == pytest.approx(record.metrics.val_loss, abs=1e-4)
    best_row = real.store.epochs(STUDY, job_id)[record.best_epoch - 1]
    assert best_row.metrics["val_loss"] == pytest.approx(record.metrics.val_loss)
    log_csv = after[record.artifacts["log_csv"]].decode()
    assert record.artifacts["log_csv"] == f"{prefix}/attempt-2/log.csv"
    assert [int(row["epoch"]) for row in csv.DictReader(io.StringIO(log_csv))] == list(range(1, EPOCHS + 1))


def test_a_follow_up_starts_from_the_model_its_parents_record_names(tmp_path, tiny_dataset):
    """Fine-tuning and evaluation read the parent's `checkpoint` from its record (the model its
    fenced finish published with its metrics), never a fixed `{parent}/best.keras`."""
    real = open_local(BackendConfig(home=tmp_path / "home", lease_s=3.0, max_receives=20))
    [(parent_id, parent_spec)] = make_jobs(tiny_dataset, 1)
    submit_jobs(real.store, real.queue, STUDY, [(parent_id, parent_spec)])
    Worker(real, worker_settings(tmp_path, 3.0), FakeTraining()).work(Policy(until_empty=True))
    parent = real.store.get_job(STUDY, parent_id)
    assert parent.checkpoint == f"{job_prefix(STUDY, parent_id)}/attempt-1/best.keras"

    child = parent_spec.model_copy(update={"kind": "finetune", "parent_job_id": parent_id})
    seen: list[tuple[str | None, int, str | None]] = []
    training = FakeTraining(lambda ctx, call: seen.append((ctx.parent_checkpoint, ctx.attempt, ctx.state_key)))
    submit_jobs(real.store, real.queue, STUDY, [(job_id_for(STUDY, child), child)])
    Worker(real, worker_settings(tmp_path, 3.0), training).work(Policy(until_empty=True))
    assert seen == [(parent.checkpoint, 1, None)]
