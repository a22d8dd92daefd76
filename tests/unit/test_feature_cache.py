"""The feature cache: head-only training on cached base outputs gives the same results as
training through the frozen base, entries are reused, and racing builders end with one entry."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest

from shared.backends.local import LocalArtifactStore
from shared.errors import PermanentError
from tests.training_support import StopInEpoch, context, tiny_dataset, tiny_spec  # noqa: F401 (fixture)
from worker.training import EpochReport, JobRunner, run_job
from worker.training import data
from worker.training.features import FeatureCache, applies, entry_key, weights_identity
from worker.training.models import architecture, build_base, count_params, load_model

HEAD = {"units": 16}
# On one host both paths do the same float32 arithmetic and agree exactly; a layer of the base
# left in training mode (EfficientNet's Dropout) shows up as differences of 1e-5 and more.
TOLERANCE = 2e-6


def transfer_spec(architecture: str, cache: bool, **training):
    return tiny_spec(architecture, model={"head": HEAD}, training={"feature_cache": cache, **training})


def run(tmp_path, spec, dataset, name, **fields) -> tuple[object, list[EpochReport], object]:
    reports: list[EpochReport] = []
    store = LocalArtifactStore(tmp_path / name / "artifacts")
    fields.setdefault("on_epoch", reports.append)
    ctx = context(tmp_path / name, spec, dataset, artifacts=store, **fields)
    return run_job(ctx), reports, ctx


def assert_same_epochs(cached: list[EpochReport], direct: list[EpochReport]) -> None:
    assert [r.epoch for r in cached] == [r.epoch for r in direct]
    for ours, theirs in zip(cached, direct):
        for metric in ("val_accuracy", "val_loss", "loss", "accuracy"):
            assert ours.metrics[metric] == pytest.approx(theirs.metrics[metric], abs=TOLERANCE), (ours.epoch, metric)


def test_mobilenet_head_on_cached_features_matches_training_through_the_base_even_across_a_resume(
    tmp_path, tiny_dataset
):
    direct, direct_reports, _ = run(tmp_path, transfer_spec("mobilenet", False), tiny_dataset, "direct")
    assert "feature_cache" not in direct.artifacts

    # The cached job is stopped during its second epoch and resumed on "another host".
    spec = transfer_spec("mobilenet", True)
    stop = StopInEpoch(2)
    stopped, _, ctx = run(tmp_path, spec, tiny_dataset, "cached", **stop.fields())
    first_reports = stop.reports
    assert stopped.outcome == "stopped" and stopped.epochs_run == 1
    resumed_reports: list[EpochReport] = []
    resumed = run_job(context(tmp_path / "cached", spec, tiny_dataset, artifacts=ctx.artifacts,
                              work_dir=tmp_path / "host-2", cache_dir=tmp_path / "host-2-cache",
                              on_epoch=resumed_reports.append))
    assert resumed.outcome == "completed" and resumed.epochs_run == 3
    assert resumed.artifacts["feature_cache"].startswith("feature-cache/")
    assert_same_epochs(first_reports + resumed_reports, direct_reports)
    assert (resumed.total_params, resumed.trainable_params) == (direct.total_params, direct.trainable_params)
    assert resumed.best_epoch == direct.best_epoch

    # best.keras is the complete model (base + trained head): on the validation images it
    # scores what the best epoch scored on the cached features.
    model = load_model(tmp_path / "cached" / "artifacts" / resumed.checkpoint)
    assert count_params(model) == (resumed.total_params, resumed.trainable_params)
    manifest = data.load_manifest(tiny_dataset)
    labels = data.split_files(manifest, "train").labels
    _, val_idx = data.validation_split(labels, spec.validation_split, spec.training.seed)
    images = data.load_images(tiny_dataset, manifest, "train", 32, tmp_path / "check-cache")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    scores = model.evaluate(images[val_idx].astype("float32"), labels[val_idx], return_dict=True, verbose=0)
    assert scores["accuracy"] == pytest.approx(resumed.metrics["val_accuracy"], abs=1e-4)
    assert scores["loss"] == pytest.approx(resumed.metrics["val_loss"], abs=1e-4)


@pytest.mark.slow
def test_efficientnet_with_dropout_inside_the_base_matches_with_data_fraction(tmp_path, tiny_dataset):
    direct, direct_reports, _ = run(
        tmp_path, transfer_spec("efficientnet_b0", False, data_fraction=0.5), tiny_dataset, "direct"
    )
    cached, cached_reports, _ = run(
        tmp_path, transfer_spec("efficientnet_b0", True, data_fraction=0.5), tiny_dataset, "cached"
    )
    assert "feature_cache" in cached.artifacts
    assert_same_epochs(cached_reports, direct_reports)
    assert cached.metrics == pytest.approx(direct.metrics, abs=TOLERANCE)


def test_a_second_job_with_the_same_key_reuses_the_entry_and_the_runners_base(tmp_path, tiny_dataset, caplog):
    store = LocalArtifactStore(tmp_path / "artifacts")
    spec = transfer_spec("mobilenet", True, epochs=1)
    runner = JobRunner()  # one per worker process: consecutive jobs share the entry's base
    first = runner(context(tmp_path, spec, tiny_dataset, job_id="a", artifacts=store))
    entry = first.artifacts["feature_cache"]
    base = runner.bases.get(entry.rsplit("/", 1)[1])
    assert base is not None
    before = [(o.key, o.size) for o in store.list("feature-cache/")]
    assert len(before) == 3 and before[-1][0] == f"{entry}/manifest.json"
    committed = store.get_bytes(f"{entry}/manifest.json")

    # Another optimizer, another host (no decoded images there): the entry is reused as it is.
    sgd = {"name": "sgd", "learning_rate": 0.05}
    other = tiny_spec("mobilenet", model={"head": HEAD}, training={"epochs": 1}, optimizer=sgd)
    with caplog.at_level(logging.INFO, logger="worker.training.features"):
        host_2 = context(tmp_path, other, tiny_dataset, job_id="b", artifacts=store, cache_dir=tmp_path / "host-2")
        second = runner(host_2)
    assert second.artifacts["feature_cache"] == entry
    assert runner.bases.get(entry.rsplit("/", 1)[1]) is base  # not built again to assemble best.keras
    assert any("feature cache hit" in message for message in caplog.messages)
    assert [(o.key, o.size) for o in store.list("feature-cache/")] == before
    assert store.get_bytes(f"{entry}/manifest.json") == committed
    assert not list((tmp_path / "host-2").glob("images-*.npy"))  # nothing was decoded
    assert list((tmp_path / "host-2" / "features").rglob("features-*.npy"))  # only downloaded


def test_racing_builders_end_with_one_valid_entry(tmp_path, tiny_dataset):
    spec = transfer_spec("mobilenet", True)
    manifest = data.load_manifest(tiny_dataset)
    labels = data.split_files(manifest, "train").labels
    images = data.load_images(tiny_dataset, manifest, "train", 32, tmp_path / "images")
    keras.utils.set_random_seed(1)
    base = build_base(architecture("mobilenet"), spec.model, None)
    store = LocalArtifactStore(tmp_path / "artifacts")
    key = entry_key(spec, weights_identity(spec, None), manifest.checksum)
    # Two workers that both missed the entry and both computed it; the first commit wins.
    winner = FeatureCache(store, "fc", tmp_path / "host-a")._build(key, spec, base, manifest.checksum, labels, images)
    loser = FeatureCache(store, "fc", tmp_path / "host-b")._build(key, spec, base, manifest.checksum, labels, images)
    assert loser.manifest == winner.manifest
    np.testing.assert_array_equal(loser.features, winner.features)
    keys = [o.key for o in store.list(f"fc/{key}/")]
    assert sorted(keys) == sorted(f"fc/{key}/{name}" for name in (
        winner.manifest["features"], winner.manifest["base_weights"], "manifest.json"))
    assert winner.features.shape == (30, 1, 1, 1024)
    assert winner.base_params == base.count_params()
    assert json.loads(store.get_bytes(f"fc/{key}/manifest.json"))["labels"] == labels.tolist()


def test_the_cache_applies_only_to_frozen_unaugmented_transfer_training():
    assert applies(transfer_spec("mobilenet", True))
    assert not applies(transfer_spec("mobilenet", False))
    assert not applies(tiny_spec("benchmark"))
    assert not applies(tiny_spec("mobilenet", training={"augmentation": {"horizontal_flip": True}}))
    assert applies(tiny_spec("mobilenet", training={"augmentation": {}}))  # all-off augmentation
    assert not applies(tiny_spec("mobilenet", kind="finetune", parent_job_id="p"))


def test_the_key_follows_the_base_weights_size_and_dataset(tmp_path):
    """The key names the base's weights without building it: a random init by its seed, a
    weights file by its content, imagenet by name (the Keras version is in every key)."""
    spec = transfer_spec("mobilenet", True)
    random_init = weights_identity(spec, None)
    assert random_init == weights_identity(transfer_spec("mobilenet", True, epochs=9), None)  # not a weights matter
    assert random_init != weights_identity(transfer_spec("mobilenet", True, seed=4), None)
    file_spec = tiny_spec("mobilenet", model={"weights": "weights/a.weights.h5"})
    one, same, other = tmp_path / "1.h5", tmp_path / "2.h5", tmp_path / "3.h5"
    one.write_bytes(b"weights")
    same.write_bytes(b"weights")
    other.write_bytes(b"other weights")
    assert weights_identity(file_spec, one) == weights_identity(file_spec, same) != weights_identity(file_spec, other)
    with pytest.raises(PermanentError, match="not available locally"):
        weights_identity(file_spec, None)
    imagenet = weights_identity(tiny_spec("mobilenet", model={"weights": "imagenet"}), None)
    identities = {random_init, weights_identity(file_spec, one), imagenet}
    assert len(identities) == 3
    assert entry_key(spec, random_init, "d1") == entry_key(spec, random_init, "d1")
    keys = {entry_key(spec, identity, "d1") for identity in identities}
    keys |= {entry_key(spec, random_init, "d2"), entry_key(tiny_spec("mobilenet", image_size=48), random_init, "d1")}
    assert len(keys) == 5


def test_a_head_on_cached_features_publishes_the_complete_best_model_once_at_the_end(tmp_path, tiny_dataset):
    """No complete model is built or saved while the head trains; the best epoch's head stays in
    the state, and a worker that dies after the last epoch's commit leaves a job whose next
    attempt only publishes."""
    store = LocalArtifactStore(tmp_path / "artifacts")
    spec = transfer_spec("mobilenet", True, epochs=4)
    published_during_training: list[bool] = []

    def on_epoch(report: EpochReport) -> None:
        published_during_training.append(store.exists(f"{prefix}/best.keras"))

    ctx = context(tmp_path, spec, tiny_dataset, artifacts=store, on_epoch=on_epoch)
    prefix = ctx.prefix
    first = run_job(ctx)
    assert first.outcome == "completed" and published_during_training == [False] * 4
    best_key = f"{prefix}/state/epoch-{first.best_epoch:04d}.keras"
    kept = {o.key for o in store.list(f"{prefix}/state/") if o.key.endswith(".keras")}
    assert kept == {best_key, f"{prefix}/state/epoch-0004.keras"}
    best = store.get_bytes(f"{prefix}/best.keras")

    # The worker "died" between the last commit and the publish.
    store.delete(f"{prefix}/best.keras")
    again = run_job(context(tmp_path, spec, tiny_dataset, artifacts=store, work_dir=tmp_path / "host-2"))
    assert (again.epochs_run, again.best_epoch, again.metrics) == (4, first.best_epoch, first.metrics)
    republished = load_model(tmp_path / "artifacts" / again.checkpoint)  # the complete model again
    assert count_params(republished) == (first.total_params, first.trainable_params)
    assert len(store.get_bytes(f"{prefix}/best.keras")) == len(best)
