"""The feature cache: head-only training on cached base outputs gives the same results as
training through the frozen base (to within float32 rounding), entries are reused, racing
builders end with one entry, and a hostile manifest cannot make the worker read a local file.

The equivalence tests use calibrated bases (worker/training/calibrate.py): a random-init base's
features are ~1e-21, and any difference between the two paths would vanish in them."""

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
from worker.training.calibrate import calibrated_base
from worker.training.features import EXTRACTION_BATCH, BaseCache, Entry, FeatureCache, applies, entry_key, weights_identity
from worker.training.models import architecture, build_base, count_params, load_model

HEAD = {"units": 16}
WEIGHTS = "weights/calibrated.weights.h5"  # each test's store gets the architecture's calibrated base here
# The two paths feed the base different batches: the cache extracts in batches of
# EXTRACTION_BATCH, training through the base feeds it the job's own (here 5: the 6 validation
# images come as 5 + 1, and a batch of one goes through other CPU kernels). Measured here on
# calibrated bases at 32 px: mobilenet (mean |feature| 0.39) gives features that differ by up to
# 2.3e-5 (1.5e-6 on average) in a batch of one and agree exactly in batches of 2..30; the
# metrics then differ by at most 4.8e-7 over three epochs (efficientnet_b0: 1.2e-7). The
# tolerance leaves a factor of ten for other CPUs.
TOLERANCE = 5e-6
BATCH = 5


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_dataset):
    """architecture -> a local weights file of that base, calibrated on the tiny dataset (built once)."""
    made: dict[str, object] = {}

    def weights(architecture_name: str):
        if architecture_name not in made:
            manifest = data.load_manifest(tiny_dataset)
            cache = tmp_path_factory.mktemp("calibration")
            images = data.load_images(tiny_dataset, manifest, "train", 32, cache)
            path = cache / f"{architecture_name}.weights.h5"
            calibrated_base(architecture_name, 32, images, seed=0).save_weights(path)
            made[architecture_name] = path
        return made[architecture_name]

    return weights


def transfer_spec(architecture: str, cache: bool, weights: str | None = WEIGHTS, **training):
    training = {"feature_cache": cache, "batch_size": BATCH, **training}
    return tiny_spec(architecture, model={"head": HEAD, "weights": weights}, training=training)


def store_with_weights(root, calibrated, architecture_name: str) -> LocalArtifactStore:
    store = LocalArtifactStore(root)
    store.put_file(calibrated(architecture_name), WEIGHTS)
    return store


def run(tmp_path, spec, dataset, name, calibrated, **fields) -> tuple[object, list[EpochReport], object]:
    reports: list[EpochReport] = []
    store = store_with_weights(tmp_path / name / "artifacts", calibrated, spec.model.architecture)
    fields.setdefault("on_epoch", reports.append)
    ctx = context(tmp_path / name, spec, dataset, artifacts=store, **fields)
    return run_job(ctx), reports, ctx


def assert_same_epochs(cached: list[EpochReport], direct: list[EpochReport]) -> float:
    """The largest difference between the two paths' metrics (each within TOLERANCE)."""
    assert [r.epoch for r in cached] == [r.epoch for r in direct]
    largest = 0.0
    for ours, theirs in zip(cached, direct):
        for metric in ("val_accuracy", "val_loss", "loss", "accuracy", "val_penalty", "penalty"):
            assert ours.metrics[metric] == pytest.approx(theirs.metrics[metric], abs=TOLERANCE), (ours.epoch, metric)
            largest = max(largest, abs(ours.metrics[metric] - theirs.metrics[metric]))
    return largest


def assert_features_not_near_zero(result, store: LocalArtifactStore, tmp_path) -> None:
    """What makes the comparison worth anything: features of the order of 1e-2..10, not 1e-21."""
    entry = result.artifacts["feature_cache"]
    manifest = json.loads(store.get_bytes(f"{entry}/manifest.json"))
    store.get_file(f"{entry}/{manifest['features']}", tmp_path / "features.npy")
    mean = float(np.abs(np.load(tmp_path / "features.npy")).mean())
    assert 1e-2 <= mean <= 10, mean


def test_mobilenet_head_on_cached_features_matches_training_through_the_base_even_across_a_resume(
    tmp_path, tiny_dataset, calibrated
):
    direct, direct_reports, _ = run(tmp_path, transfer_spec("mobilenet", False), tiny_dataset, "direct", calibrated)
    assert "feature_cache" not in direct.artifacts

    # The cached job is stopped during its second epoch and resumed on "another host".
    spec = transfer_spec("mobilenet", True)
    stop = StopInEpoch(2)
    stopped, _, ctx = run(tmp_path, spec, tiny_dataset, "cached", calibrated, **stop.fields())
    first_reports = stop.reports
    assert stopped.outcome == "stopped" and stopped.epochs_run == 1
    resumed_reports: list[EpochReport] = []
    resumed = run_job(context(tmp_path / "cached", spec, tiny_dataset, artifacts=ctx.artifacts,
                              work_dir=tmp_path / "host-2", cache_dir=tmp_path / "host-2-cache",
                              on_epoch=resumed_reports.append, attempt=2, state_key=first_reports[-1].state_key))
    assert resumed.outcome == "completed" and resumed.epochs_run == 3
    assert resumed.artifacts["feature_cache"].startswith("feature-cache/")
    assert_features_not_near_zero(resumed, ctx.artifacts, tmp_path)
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
    probabilities = model.predict(images[val_idx].astype("float32"), verbose=0)
    accuracy = np.mean(probabilities.argmax(axis=1) == labels[val_idx])
    cross_entropy = np.mean(-np.log(probabilities[np.arange(len(val_idx)), labels[val_idx]]))
    assert accuracy == pytest.approx(resumed.metrics["val_accuracy"], abs=1e-4)
    assert cross_entropy == pytest.approx(resumed.metrics["val_loss"], abs=1e-4)  # val_loss: the cross-entropy


@pytest.mark.slow
def test_efficientnet_with_dropout_inside_the_base_matches_with_data_fraction(tmp_path, tiny_dataset, calibrated):
    direct, direct_reports, _ = run(
        tmp_path, transfer_spec("efficientnet_b0", False, data_fraction=0.5), tiny_dataset, "direct", calibrated
    )
    cached, cached_reports, ctx = run(
        tmp_path, transfer_spec("efficientnet_b0", True, data_fraction=0.5), tiny_dataset, "cached", calibrated
    )
    assert "feature_cache" in cached.artifacts
    assert_features_not_near_zero(cached, ctx.artifacts, tmp_path)
    assert_same_epochs(cached_reports, direct_reports)
    assert cached.metrics == pytest.approx(direct.metrics, abs=TOLERANCE)


def test_a_second_job_with_the_same_key_reuses_the_entry_and_the_runners_base(tmp_path, tiny_dataset, caplog):
    store = LocalArtifactStore(tmp_path / "artifacts")
    spec = transfer_spec("mobilenet", True, weights=None, epochs=1)  # batch 5: the entry serves batch 8 below
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
    spec = transfer_spec("mobilenet", True, weights=None)
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
    spec = transfer_spec("mobilenet", True, weights=None)
    random_init = weights_identity(spec, None)
    not_a_weights_matter = transfer_spec("mobilenet", True, weights=None, epochs=9)
    assert random_init == weights_identity(not_a_weights_matter, None)
    assert random_init != weights_identity(transfer_spec("mobilenet", True, weights=None, seed=4), None)
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
    # Not the job's batch size: entries are extracted in batches of EXTRACTION_BATCH whoever builds them.
    other_batch = transfer_spec("mobilenet", True, weights=None, batch_size=64)
    assert entry_key(other_batch, random_init, "d1") == entry_key(spec, random_init, "d1")


def test_an_entry_does_not_depend_on_the_batch_size_of_the_job_that_built_it(tmp_path, tiny_dataset, calibrated):
    """Built by a job of batch 29, the last of 30 images would go through the base alone, where
    the CPU kernels round differently (up to 2.3e-5 on a calibrated mobilenet, measured): the
    entry is extracted in batches of EXTRACTION_BATCH instead, and comes out the same."""
    manifest = data.load_manifest(tiny_dataset)
    labels = data.split_files(manifest, "train").labels
    images = data.load_images(tiny_dataset, manifest, "train", 32, tmp_path / "images")
    entries = []
    for batch_size in (29, 8):
        spec = transfer_spec("mobilenet", True, batch_size=batch_size)
        base = build_base(architecture("mobilenet"), spec.model, calibrated("mobilenet"))
        store = LocalArtifactStore(tmp_path / f"artifacts-{batch_size}")
        key = entry_key(spec, weights_identity(spec, calibrated("mobilenet")), manifest.checksum)
        entries.append(FeatureCache(store, "fc", tmp_path / f"host-{batch_size}")._build(
            key, spec, base, manifest.checksum, labels, images))
    assert len(images) <= EXTRACTION_BATCH and entries[0].key == entries[1].key
    assert 1e-2 <= float(np.abs(entries[0].features).mean()) <= 10
    np.testing.assert_array_equal(entries[0].features, entries[1].features)


@pytest.mark.parametrize("field, name", [
    ("features", "ABSOLUTE"), ("features", "../../secret.npy"), ("features", "sub/../../secret.npy"),
    ("base_weights", "ABSOLUTE"), ("base_weights", ".."),
])
def test_a_hostile_manifest_cannot_make_the_worker_read_a_local_file(tmp_path, field, name):
    """The manifest comes back from the artifact store: file names in it that are not one plain
    name are refused before anything is joined with them (here a real .npy file outside the cache
    would otherwise be loaded as the entry's features)."""
    secret = tmp_path / "secret.npy"
    np.save(secret, np.ones((3, 4), np.float32))
    name = str(secret) if name == "ABSOLUTE" else name
    labels = np.array([0, 1, 2], np.int32)
    store = LocalArtifactStore(tmp_path / "artifacts")
    manifest = {"labels": labels.tolist(), "features": "features-a.npy", "features_sha256": "0" * 64,
                "base_weights": "base-a.weights.h5", field: name}
    store.put_bytes("fc/k1/manifest.json", json.dumps(manifest).encode())
    cache = FeatureCache(store, "fc", tmp_path / "cache" / "features")
    with pytest.raises(PermanentError, match=f"manifest field '{field}'"):
        if field == "features":
            cache.open("k1", labels)
        else:  # the entry opens (its features are fine); assembling its base is refused
            entry = Entry("k1", "fc/k1", manifest, np.ones((3, 4)), tmp_path / "cache" / "features" / "k1", BaseCache())
            entry.base_model(transfer_spec("mobilenet", True, weights=None), store)
    with pytest.raises(PermanentError, match="entry key"):  # a job's saved state names the entry
        cache.open("../k1", labels)


def test_a_head_on_cached_features_publishes_the_complete_best_model_once_at_the_end(tmp_path, tiny_dataset):
    """No complete model is built or saved while the head trains; the best epoch's head stays in
    the state, and a worker that dies after the last epoch's commit leaves a job whose next
    attempt only publishes."""
    store = LocalArtifactStore(tmp_path / "artifacts")
    spec = transfer_spec("mobilenet", True, weights=None, epochs=4)
    published_during_training: list[bool] = []

    def on_epoch(report: EpochReport) -> None:
        published_during_training.append(store.exists(f"{prefix}/best.keras"))

    ctx = context(tmp_path, spec, tiny_dataset, artifacts=store, on_epoch=on_epoch)
    prefix = f"{ctx.prefix}/attempt-1"
    first = run_job(ctx)
    assert first.outcome == "completed" and published_during_training == [False] * 4
    assert first.checkpoint == f"{prefix}/best.keras"
    best_key = f"{prefix}/state/epoch-{first.best_epoch:04d}.keras"
    kept = {o.key for o in store.list(f"{prefix}/state/") if o.key.endswith(".keras")}
    assert kept == {best_key, f"{prefix}/state/epoch-0004.keras"}
    best_weights = [w.copy() for w in load_model(tmp_path / "artifacts" / first.checkpoint).get_weights()]

    # The worker "died" between the last commit and the publish: the next attempt only publishes.
    store.delete(first.checkpoint)
    again = run_job(context(tmp_path, spec, tiny_dataset, artifacts=store, work_dir=tmp_path / "host-2",
                            attempt=2, state_key=first.artifacts["state"]))
    assert (again.epochs_run, again.best_epoch, again.metrics) == (4, first.best_epoch, first.metrics)
    assert again.checkpoint == f"{ctx.prefix}/attempt-2/best.keras"
    republished = load_model(tmp_path / "artifacts" / again.checkpoint)  # the complete model again
    assert count_params(republished) == (first.total_params, first.trainable_params)
    # the same model: a .keras zip's bytes also hold its save time, so compare the weights
    republished_weights = republished.get_weights()
    assert len(republished_weights) == len(best_weights)
    assert all(np.array_equal(a, b) for a, b in zip(republished_weights, best_weights))
