"""The input pipeline, the training loop, early stopping and resumption (real tiny models)."""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np
import pytest

from shared.backends.local import LocalArtifactStore
from shared.errors import BadInputError, LeaseLostError, PermanentError
from shared.manifest import MANIFEST_NAME
from shared.paths import job_prefix
from tests.training_support import StopInEpoch, context, tiny_dataset, tiny_spec, write_dataset  # noqa: F401
from worker.training import EpochReport, run_job
from worker.training import data
from worker.training.models import load_model
from worker.training.state import Monitor, Progress

# ---------------------------------------------------------------- the input pipeline


def test_validation_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat([0, 1, 2], [10, 20, 5])
    train, val = data.validation_split(labels, 0.2, seed=7)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert [int(np.sum(labels[val] == c)) for c in range(3)] == [2, 4, 1]
    again, _ = data.validation_split(labels, 0.2, seed=7)
    other, _ = data.validation_split(labels, 0.2, seed=8)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)


def test_epoch_order_is_reproducible_per_epoch_and_honours_data_fraction():
    train = np.arange(0, 100, 2)
    first = data.epoch_order(train, seed=1, epoch=0)
    np.testing.assert_array_equal(first, data.epoch_order(train, seed=1, epoch=0))
    assert sorted(first) == list(train)
    assert not np.array_equal(first, data.epoch_order(train, seed=1, epoch=1))
    half = data.epoch_order(train, seed=1, epoch=3, fraction=0.5)
    assert len(half) == 25 and set(half) <= set(train)
    batch = 8
    assert math.ceil(len(half) / batch) == math.ceil(0.5 * len(train) / batch)  # steps per epoch


@pytest.mark.parametrize("in_memory_bytes", [data.IN_MEMORY_BYTES, 0], ids=["in-memory", "memory-mapped"])
def test_batches_follow_each_order_given(in_memory_bytes, monkeypatch, tmp_path):
    monkeypatch.setattr(data, "IN_MEMORY_BYTES", in_memory_bytes)
    path = tmp_path / "inputs.npy"
    np.save(path, np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3))
    inputs = np.load(path, mmap_mode="r")
    labels = np.arange(10, dtype=np.int32)
    batches = data.Batches(inputs, labels, 3)
    for order in (np.array([3, 1, 4, 0, 9, 2, 6]), np.array([9, 8, 0, 1])):  # one pipeline, many epochs
        got = [(x.numpy(), y.numpy()) for x, y in batches.epoch(order)]
        assert [len(y) for _, y in got] == [3] * (len(order) // 3) + [len(order) % 3]
        np.testing.assert_array_equal(np.concatenate([y for _, y in got]), order)
        np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), inputs[order])
        assert got[0][0].dtype == np.uint8  # the model casts; the pipeline moves a quarter of the bytes


def test_augmentation_is_reproducible_per_epoch_and_changes_images():
    augmentation = {"rotation": 0.1, "shift": 0.1, "shear": 0.1, "zoom": 0.1, "horizontal_flip": True}
    spec = tiny_spec(training={"augmentation": augmentation})
    inputs = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    labels = np.zeros(6, np.int32)

    def run(epoch: int) -> np.ndarray:
        layers = data.augmentation_layers(spec.training.augmentation, data.augmentation_seed(3, epoch))
        assert len(layers) == 5
        return np.concatenate([x.numpy() for x, _ in data.Batches(inputs, labels, 4).epoch(np.arange(6), layers)])

    assert not np.allclose(run(0), inputs)
    np.testing.assert_allclose(run(0), run(0))
    assert not np.allclose(run(0), run(1))
    assert data.augmentation_layers(None, 0) == []


def test_images_are_decoded_once_into_a_memory_mapped_cache(tmp_path):
    root = tmp_path / "ds"
    manifest = write_dataset(root, train_per_class=3, test_per_class=1)
    cache = tmp_path / "cache"
    images = data.load_images(root, manifest, "train", 24, cache)
    assert images.shape == (9, 24, 24, 3) and images.dtype == np.uint8
    assert isinstance(images, np.memmap)
    (cached,) = cache.glob("images-*-train-24-*.npy")
    inode = cached.stat().st_ino  # a re-decode would write a new file and rename it into place
    (root / manifest.split("train")[0].path).unlink()  # a re-decode would now fail
    again = data.load_images(root, manifest, "train", 24, cache)
    np.testing.assert_array_equal(again, images)
    assert cached.stat().st_ino == inode  # (its mtime moves: every use touches it for the cache bound)
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    assert images[:3].mean() > 20  # real pixels, not an empty file


def test_missing_manifest_and_missing_files_are_permanent(tmp_path):
    with pytest.raises(PermanentError, match="manifest.json"):
        data.load_manifest(tmp_path)
    root = tmp_path / "ds"
    manifest = write_dataset(root, train_per_class=2, test_per_class=1)
    (root / manifest.split("train")[1].path).unlink()
    with pytest.raises(PermanentError, match="missing 1 files"):
        data.load_images(root, manifest, "train", 16, tmp_path / "cache")
    (root / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(PermanentError, match="invalid dataset manifest"):
        data.load_manifest(root)


def test_a_corrupt_image_is_named(tmp_path):
    root = tmp_path / "ds"
    manifest = write_dataset(root, train_per_class=2, test_per_class=1)
    bad = manifest.split("train")[2].path
    (root / bad).write_bytes(b"not an image at all")
    with pytest.raises(BadInputError, match=bad.split("/")[-1]):
        data.load_images(root, manifest, "train", 16, tmp_path / "cache")


def test_an_image_format_tensorflow_cannot_decode_is_named(tmp_path):
    from PIL import Image

    root = tmp_path / "ds"
    manifest = write_dataset(root, train_per_class=2, test_per_class=1)
    bad = root / manifest.split("train")[0].path
    Image.open(bad).convert("RGB").save(bad, format="TIFF")  # PIL reads it, TensorFlow does not
    with pytest.raises(BadInputError, match="is TIFF"):
        data.load_images(root, manifest, "train", 16, tmp_path / "cache")


def test_files_outside_the_dataset_are_never_read(tmp_path):
    root = tmp_path / "ds"
    manifest = write_dataset(root, train_per_class=2, test_per_class=1)
    outside = tmp_path / "secret.png"
    target = root / manifest.split("train")[0].path
    outside.write_bytes(target.read_bytes())
    target.unlink()
    os.symlink(outside, target)  # a link that escapes the dataset directory
    with pytest.raises(BadInputError, match="outside"):
        data.load_images(root, manifest, "train", 16, tmp_path / "cache")


# ---------------------------------------------------------------- early stopping and progress


def test_early_stopping_follows_keras_rules_and_survives_a_round_trip():
    stopping = {"monitor": "val_loss", "patience": 2, "min_delta": 0.1}
    monitor = Monitor.from_spec(tiny_spec(training={"early_stopping": stopping}).training.early_stopping)
    assert monitor.mode == "min"
    progress = Progress()
    for value in (1.0, 0.95, 0.8):  # 0.95 is better but not by min_delta; 0.8 is
        progress.record(monitor, {"val_loss": value}, 1.0)
    assert (progress.best_epoch, progress.wait, progress.stopped_early) == (3, 0, False)
    progress = Progress.from_json(progress.to_json())  # as a resumed job sees it
    progress.record(monitor, {"val_loss": 0.85}, 1.0)
    assert not progress.stopped_early and progress.wait == 1
    progress.record(monitor, {"val_loss": float("nan")}, 1.0)
    assert progress.stopped_early and progress.epoch == 5 and progress.best_epoch == 3
    assert Monitor.from_spec(None) == Monitor("val_accuracy", "max", 0.0, None)
    with pytest.raises(PermanentError, match="val_auc"):
        Monitor("val_auc").value({"val_loss": 1.0})


# ---------------------------------------------------------------- run_job end to end


def csv_rows(ctx) -> list[dict[str, str]]:
    """The attempt's own log (each attempt writes one, from the committed history on)."""
    return list(csv.DictReader(io.StringIO(ctx.artifacts.get_bytes(f"{ctx.attempt_prefix}/log.csv").decode())))


def state_files(store, prefix: str) -> set[str]:
    """Every training-state file of a job, whichever attempt wrote it."""
    return {o.key for o in store.list(f"{prefix}/") if "/state/" in o.key}


def test_a_train_job_runs_end_to_end_with_its_artifacts(tmp_path, tiny_dataset):
    reports: list[EpochReport] = []
    ctx = context(tmp_path, tiny_spec(training={"epochs": 3}), tiny_dataset, on_epoch=reports.append)
    result = run_job(ctx)
    assert result.outcome == "completed" and result.stop_reason is None
    assert result.epochs_run == 3 and [r.epoch for r in reports] == [1, 2, 3]
    assert set(reports[0].metrics) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.best_epoch in (1, 2, 3)
    best = reports[result.best_epoch - 1].metrics
    assert result.metrics.pop("val_examples") > 0  # the validation split's size (issue 17)
    assert result.metrics == {k: best[k] for k in ("val_accuracy", "val_loss", "accuracy", "loss")}
    assert result.total_params == result.trainable_params == 95_203
    assert result.checkpoint == f"{ctx.prefix}/attempt-1/best.keras" and result.artifacts["log_csv"] == f"{ctx.prefix}/attempt-1/log.csv"
    assert reports[-1].state_key == result.artifacts["state"] == f"{ctx.prefix}/attempt-1/state/epoch-0003.json"
    model = load_model(tmp_path / "artifacts" / result.checkpoint)
    assert model.output_shape == (None, 3)
    rows = csv_rows(ctx)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] == list(range(1, result.epochs_run + 1))
    assert float(rows[1]["val_loss"]) == pytest.approx(reports[1].metrics["val_loss"])
    tensorboard = [o.key for o in ctx.artifacts.list(result.artifacts["tensorboard"] + "/")]
    assert any("/train/events.out.tfevents" in k for k in tensorboard)
    assert any("/validation/events.out.tfevents" in k for k in tensorboard)
    assert ctx.artifacts.exists(result.artifacts["state"])


def test_early_stopping_ends_the_job(tmp_path, tiny_dataset):
    # Monitoring the training loss for a *maximum* never improves after epoch 1: stops at epoch 3.
    stopping = {"monitor": "loss", "mode": "max", "patience": 2}
    result = run_job(context(tmp_path, tiny_spec(training={"epochs": 6, "early_stopping": stopping}), tiny_dataset))
    assert result.outcome == "completed" and result.epochs_run == 3 and result.best_epoch == 1


def test_a_stopped_job_resumes_at_the_next_epoch_with_one_continuous_log(tmp_path, tiny_dataset):
    spec = tiny_spec(training={"epochs": 4, "early_stopping": {"monitor": "val_accuracy", "patience": 10}})
    stop = StopInEpoch(3)  # two polls into epoch 3: after its first training batch
    first = context(tmp_path, spec, tiny_dataset, **stop.fields())
    stopped = run_job(first)
    first_reports = stop.reports
    assert stopped.outcome == "stopped" and stopped.stop_reason == "preempted"
    assert stopped.epochs_run == 2 and [r.epoch for r in first_reports] == [1, 2]
    assert [int(r["epoch"]) for r in csv_rows(first)] == [1, 2]
    assert stopped.checkpoint is None and not any(o.key.endswith("best.keras") for o in first.artifacts.list(first.prefix))

    # Another host and attempt: a fresh work dir and cache, the same artifact store, and the state
    # that the record committed (the loop passes it in).
    second_reports: list[EpochReport] = []
    second = context(tmp_path, spec, tiny_dataset, artifacts=first.artifacts, work_dir=tmp_path / "host-2",
                     cache_dir=tmp_path / "host-2-cache", on_epoch=second_reports.append,
                     attempt=2, state_key=first_reports[-1].state_key)
    resumed = run_job(second)
    assert resumed.outcome == "completed" and resumed.epochs_run == 4
    assert [r.epoch for r in second_reports] == [3, 4]
    rows = csv_rows(second)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["val_loss"]) == pytest.approx(first_reports[0].metrics["val_loss"])
    state = json.loads(second.artifacts.get_bytes(second_reports[-1].state_key))
    assert state["epoch"] == 4 and state["model_key"] == f"{second.prefix}/attempt-2/state/epoch-0004.keras"
    best_model = state["best_model_key"]  # attempt 1's file if the best epoch was 1 or 2
    assert best_model.endswith(f"/state/epoch-{resumed.best_epoch:04d}.keras")
    kept = state_files(second.artifacts, second.prefix)
    assert kept == {best_model, state["model_key"], second_reports[-1].state_key}  # best + last, nothing else

    # The same job never interrupted: the resumed run ends with the same numbers.
    straight_reports: list[EpochReport] = []
    run_job(context(tmp_path, spec, tiny_dataset, job_id="straight", on_epoch=straight_reports.append))
    for ours, theirs in zip(first_reports[:2] + second_reports, straight_reports):
        assert ours.metrics["val_loss"] == pytest.approx(theirs.metrics["val_loss"], abs=1e-4)
        assert ours.metrics["loss"] == pytest.approx(theirs.metrics["loss"], abs=1e-4)


def test_an_attempt_refused_at_its_commit_deletes_nothing_and_writes_only_its_own_files(tmp_path, tiny_dataset):
    """Issue 13 item 3: a worker that lost its lease keeps training and reaches its next commit.
    Before, it had already replaced `state/state.json` (the commit point then) and deleted the
    previous epoch's model under the job's new owner. Now its commit (the loop's fenced write) is
    refused first: the committed state and every file it names are untouched, and the stale
    worker's new files are under its own attempt's folder only."""
    spec = tiny_spec(training={"epochs": 3})
    reports: list[EpochReport] = []

    def commit(report: EpochReport) -> None:
        if report.epoch == 2:
            raise LeaseLostError("attempt 1 is fenced out")  # what the loop's fenced update raises
        reports.append(report)

    ctx = context(tmp_path, spec, tiny_dataset, on_epoch=commit)
    before: dict[str, bytes] = {}

    def snapshot(report: EpochReport) -> None:
        commit(report)
        before.update({k: ctx.artifacts.get_bytes(k) for k in state_files(ctx.artifacts, ctx.prefix)})

    ctx.on_epoch = snapshot
    with pytest.raises(LeaseLostError):
        run_job(ctx)
    committed = json.loads(before[reports[-1].state_key])
    assert committed["epoch"] == 1 and committed["model_key"] in before
    after = state_files(ctx.artifacts, ctx.prefix)
    assert set(before) <= after and all(ctx.artifacts.get_bytes(k) == v for k, v in before.items())
    assert after - set(before) == {f"{ctx.prefix}/attempt-1/state/epoch-0002.keras", f"{ctx.prefix}/attempt-1/state/epoch-0002.json"}


def test_state_saved_by_the_previous_layout_is_resumed_and_moved(tmp_path, tiny_dataset):
    """A job that an older worker left with `{job}/state/state.json` (and no `state_key` in its
    record) resumes from it; its first commit in the new layout deletes the old files."""
    spec = tiny_spec(training={"epochs": 2})
    stop = StopInEpoch(2)
    first = context(tmp_path, spec, tiny_dataset, **stop.fields())
    run_job(first)
    store, prefix = first.artifacts, first.prefix
    state = json.loads(store.get_bytes(stop.reports[-1].state_key))
    legacy_model = f"{prefix}/state/epoch-0001.keras"
    store.put_bytes(legacy_model, store.get_bytes(state["model_key"]))
    for key in state_files(store, f"{prefix}/attempt-1"):
        store.delete(key)
    store.put_bytes(f"{prefix}/state/state.json", json.dumps({**state, "model_key": legacy_model, "best_model_key": legacy_model}).encode())
    reports: list[EpochReport] = []
    resumed = run_job(context(tmp_path, spec, tiny_dataset, artifacts=store, work_dir=tmp_path / "host-2",
                              on_epoch=reports.append, attempt=2))
    assert (resumed.outcome, resumed.epochs_run, [r.epoch for r in reports]) == ("completed", 2, [2])
    assert not store.exists(f"{prefix}/state/state.json")
    assert store.exists(legacy_model) == (resumed.best_epoch == 1)  # kept only as the best epoch's model
    log_csv = store.get_bytes(resumed.artifacts["log_csv"]).decode()
    assert [int(r["epoch"]) for r in csv.DictReader(io.StringIO(log_csv))] == [1, 2]


def test_a_job_stopped_before_its_first_epoch_and_a_finished_job_rerun(tmp_path, tiny_dataset):
    spec = tiny_spec(training={"epochs": 1})
    stopped = run_job(context(tmp_path, spec, tiny_dataset, should_stop=lambda: "cancelled"))
    assert stopped.outcome == "stopped" and stopped.stop_reason == "cancelled" and stopped.epochs_run == 0
    assert stopped.checkpoint is None
    done = run_job(context(tmp_path, spec, tiny_dataset))
    assert done.outcome == "completed" and done.epochs_run == 1
    reports: list[EpochReport] = []
    again = run_job(context(tmp_path, spec, tiny_dataset, on_epoch=reports.append, attempt=2,
                            state_key=done.artifacts["state"]))  # a duplicate delivery
    assert again.outcome == "completed" and again.epochs_run == 1 and reports == []
    assert again.metrics == done.metrics and again.checkpoint.endswith("/attempt-2/best.keras")


def test_best_keras_is_published_at_completion_from_the_state_and_again_after_a_crash(tmp_path, tiny_dataset):
    """Nothing reads best.keras before the job succeeds: it appears once, when the job completes,
    as the best epoch's model kept in the state, under the attempt's folder. A worker that died
    after the last state commit (before the publish and the CSV upload) leaves a job whose next
    attempt only publishes, under its own folder."""
    store = LocalArtifactStore(tmp_path / "artifacts")
    prefix = job_prefix("study-1", "job-1")
    best_key = f"{prefix}/attempt-1/best.keras"
    published_during_training: list[bool] = []
    spec = tiny_spec(training={"epochs": 3})
    ctx = context(tmp_path, spec, tiny_dataset, artifacts=store,
                  on_epoch=lambda report: published_during_training.append(store.exists(best_key)))
    first = run_job(ctx)
    assert first.outcome == "completed" and first.checkpoint == best_key and published_during_training == [False] * 3
    best_state = f"{ctx.prefix}/attempt-1/state/epoch-{first.best_epoch:04d}.keras"
    assert store.get_bytes(best_key) == store.get_bytes(best_state)  # the classifier as it trained
    assert load_model(store.root / best_key).output_shape == (None, 3)

    store.delete(best_key)  # the worker "died" right after the last state commit
    store.delete(first.artifacts["log_csv"])
    reports: list[EpochReport] = []
    second = context(tmp_path, spec, tiny_dataset, artifacts=store, work_dir=tmp_path / "host-2",
                     on_epoch=reports.append, attempt=2, state_key=first.artifacts["state"])
    again = run_job(second)
    assert (again.outcome, again.epochs_run, again.best_epoch, reports) == ("completed", 3, first.best_epoch, [])
    assert again.checkpoint == f"{prefix}/attempt-2/best.keras"
    assert store.get_bytes(again.checkpoint) == store.get_bytes(best_state) and len(csv_rows(second)) == 3


def test_augmentation_and_data_fraction_train(tmp_path, tiny_dataset):
    augmentation = {"rotation": 0.05, "zoom": 0.1, "horizontal_flip": True}
    spec = tiny_spec(training={"epochs": 1, "data_fraction": 0.5, "augmentation": augmentation})
    result = run_job(context(tmp_path, spec, tiny_dataset))
    assert result.outcome == "completed" and result.epochs_run == 1
    assert "feature_cache" not in result.artifacts


def test_a_dataset_without_a_manifest_is_permanent(tmp_path):
    with pytest.raises(PermanentError):
        run_job(context(tmp_path, tiny_spec(), tmp_path / "nothing-here"))
