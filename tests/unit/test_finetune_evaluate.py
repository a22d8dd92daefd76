"""Fine-tuning and test evaluation through run_job, on parents trained in this module."""

from __future__ import annotations

import csv
import io
import json
import logging

import keras
import numpy as np
import pytest

from shared.backends.local import LocalArtifactStore
from shared.errors import PermanentError
from shared.paths import job_prefix
from tests.training_support import StopInEpoch, context, tiny_dataset, tiny_spec  # noqa: F401 (fixture)
from worker.training import run_job
from worker.training.models import find_base, load_model

# One xdist worker runs the whole module, so that the parent model is trained once.
pytestmark = pytest.mark.xdist_group("finetune_evaluate")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def mobilenet_parent(tmp_path_factory, tiny_dataset, store):
    """A mobilenet head trained for 2 epochs (on cached features)."""
    spec = tiny_spec("mobilenet", model={"head": {"units": 16}}, training={"epochs": 2})
    tmp = tmp_path_factory.mktemp("parent")
    result = run_job(context(tmp, spec, tiny_dataset, job_id="parent", artifacts=store))
    assert result.outcome == "completed" and "feature_cache" in result.artifacts
    return result, result.checkpoint  # what the parent's record names, and the loop passes on


def finetune_spec(**overrides):
    overrides.setdefault("optimizer", {"name": "sgd", "learning_rate": 1e-4, "momentum": 0.9})
    return tiny_spec("mobilenet", kind="finetune", parent_job_id="parent", model={"head": {"units": 16}}, **overrides)


def test_finetune_unfreezes_the_top_of_the_base_and_resumes(tmp_path, tiny_dataset, store, mobilenet_parent):
    parent, parent_checkpoint = mobilenet_parent
    spec = finetune_spec(training={"epochs": 2})
    stop = StopInEpoch(2)
    stopped = run_job(context(tmp_path, spec, tiny_dataset, job_id="ft", artifacts=store,
                              parent_checkpoint=parent_checkpoint, **stop.fields()))
    assert stopped.outcome == "stopped" and stopped.epochs_run == 1
    assert stopped.trainable_params > parent.trainable_params
    assert stopped.total_params == parent.total_params

    resumed = run_job(context(tmp_path, spec, tiny_dataset, job_id="ft", artifacts=store,
                              parent_checkpoint=parent_checkpoint, work_dir=tmp_path / "host-2",
                              attempt=2, state_key=stop.reports[-1].state_key))
    assert resumed.outcome == "completed" and resumed.epochs_run == 2
    assert resumed.trainable_params == stopped.trainable_params  # the unfrozen layers stay unfrozen
    rows = list(csv.DictReader(io.StringIO(store.get_bytes(resumed.artifacts["log_csv"]).decode())))
    assert [int(r["epoch"]) for r in rows] == [1, 2]

    assert resumed.metrics["unfrozen_share"] == pytest.approx(0.331, abs=1e-3)  # mobilenet's block 13
    assert resumed.metrics["beats_parent"] == float(resumed.best_epoch > 0)
    before = load_model(store.root / parent.checkpoint)
    last_state = json.loads(store.get_bytes(resumed.artifacts["state"]))
    after = load_model(store.root / last_state["model_key"])  # the last epoch's model (the published one may be the parent's)
    base_before, base_after = find_base(before).base, find_base(after).base
    names = [layer.name for layer in base_after.layers]
    start = names.index("conv_dw_13")  # mobilenet's default unfreeze point: the block nearest a fifth of its parameters
    assert not any(layer.trainable for layer in base_after.layers[:start] if layer.weights)
    assert all(layer.trainable for layer in base_after.layers[start:])
    frozen, tuned = base_after.get_layer("conv_dw_12"), base_after.get_layer("conv_pw_13")
    np.testing.assert_array_equal(frozen.get_weights()[0], base_before.get_layer("conv_dw_12").get_weights()[0])
    assert not np.array_equal(tuned.get_weights()[0], base_before.get_layer("conv_pw_13").get_weights()[0])
    # BatchNormalization keeps its statistics (the base runs in inference mode)
    bn = "conv_pw_13_bn"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(base_after.get_layer(bn).moving_mean),
        keras.ops.convert_to_numpy(base_before.get_layer(bn).moving_mean),
    )


def test_finetune_that_never_beats_its_parent_publishes_the_parents_weights(
    tmp_path, tiny_dataset, store, mobilenet_parent, caplog
):
    """Fine-tuning starts from the parent's validation score: with a learning rate too small to
    change anything, no epoch beats it, early stopping counts from it (patience 2: two epochs,
    not three), and the published model is the parent's."""
    parent, parent_checkpoint = mobilenet_parent
    spec = finetune_spec(optimizer={"name": "sgd", "learning_rate": 1e-12},
                         training={"epochs": 6, "early_stopping": {"monitor": "val_accuracy", "patience": 2}})
    with caplog.at_level(logging.INFO, logger="worker.training.sessions"):
        result = run_job(context(tmp_path, spec, tiny_dataset, job_id="ft-flat", artifacts=store,
                                 parent_checkpoint=parent_checkpoint))
    assert result.outcome == "completed" and result.epochs_run == 2 and result.best_epoch == 0
    assert result.metrics["beats_parent"] == 0.0
    assert result.metrics["val_accuracy"] == result.metrics["parent_val_accuracy"]
    assert result.metrics["parent_val_accuracy"] == pytest.approx(parent.metrics["val_accuracy"], abs=1e-6)
    assert result.metrics["parent_val_loss"] == pytest.approx(parent.metrics["val_loss"], abs=1e-4)
    assert any("33.1% of the base's parameters unfrozen" in m for m in caplog.messages)
    published, parents = load_model(store.root / result.checkpoint), load_model(store.root / parent.checkpoint)
    for ours, theirs in zip(published.get_weights(), parents.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_finetune_from_a_named_layer_and_a_bad_name(tmp_path, tiny_dataset, store, mobilenet_parent):
    _, parent_checkpoint = mobilenet_parent
    with pytest.raises(PermanentError, match="no layer named 'nope'"):
        run_job(context(tmp_path, finetune_spec(unfreeze_from="nope"), tiny_dataset, job_id="ft-bad",
                        artifacts=store, parent_checkpoint=parent_checkpoint))


def test_evaluate_writes_predictions_that_agree_with_test_accuracy(tmp_path, tiny_dataset, store, mobilenet_parent):
    parent, parent_checkpoint = mobilenet_parent
    spec = tiny_spec("mobilenet", kind="evaluate", parent_job_id="parent", model={"head": {"units": 16}})
    result = run_job(context(tmp_path, spec, tiny_dataset, job_id="ev", artifacts=store, parent_checkpoint=parent_checkpoint))
    assert result.outcome == "completed" and result.epochs_run == 0
    assert set(result.metrics) == {"test_accuracy", "test_loss", "test_examples"}
    assert result.checkpoint == parent.checkpoint
    rows = list(csv.DictReader(io.StringIO(store.get_bytes(result.artifacts["predictions_csv"]).decode())))
    assert len(rows) == 12 and set(rows[0]) == {"file", "true_class", "predicted_class", "probability"}
    assert all(r["file"].startswith("test/") for r in rows)
    share = sum(r["true_class"] == r["predicted_class"] for r in rows) / len(rows)
    assert result.metrics["test_accuracy"] == pytest.approx(share)
    confusion = json.loads(store.get_bytes(result.artifacts["confusion_matrix"]))
    matrix = np.array(confusion["matrix"])
    assert confusion["classes"] == ["circle", "square", "triangle"]
    assert matrix.sum() == 12 and matrix.trace() / 12 == pytest.approx(share)
    per_class = json.loads(store.get_bytes(result.artifacts["per_class_accuracy"]))
    assert per_class == pytest.approx({c: matrix[i, i] / matrix[i].sum() for i, c in enumerate(confusion["classes"])})

    # test_loss is the cross-entropy of the very probabilities the CSV lists
    model = load_model(store.root / parent.checkpoint)
    from worker.training import data

    manifest = data.load_manifest(tiny_dataset)
    images = data.load_images(tiny_dataset, manifest, "test", 32, tmp_path / "cache", reader="evaluate")
    labels = data.split_files(manifest, "test", "evaluate").labels
    probabilities = model.predict(images.astype("float32"), verbose=0)
    expected = float(np.mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities)))
    assert result.metrics["test_loss"] == pytest.approx(expected, rel=1e-4)
    assert [float(r["probability"]) for r in rows] == pytest.approx(probabilities.max(axis=1).tolist(), abs=1e-5)


def test_benchmark_finetune_and_evaluate(tmp_path, tiny_dataset):
    store = LocalArtifactStore(tmp_path / "artifacts")
    parent = run_job(context(tmp_path, tiny_spec(training={"epochs": 1}), tiny_dataset, job_id="p", artifacts=store))
    tuned = run_job(context(tmp_path, tiny_spec(kind="finetune", parent_job_id="p", training={"epochs": 1}),
                            tiny_dataset, job_id="f", artifacts=store, parent_checkpoint=parent.checkpoint))
    assert tuned.outcome == "completed" and tuned.trainable_params == parent.trainable_params == 95_203
    evaluated = run_job(context(tmp_path, tiny_spec(kind="evaluate", parent_job_id="f"), tiny_dataset,
                                job_id="e", artifacts=store, parent_checkpoint=tuned.checkpoint))
    assert evaluated.checkpoint == tuned.checkpoint and 0.0 <= evaluated.metrics["test_accuracy"] <= 1.0


@pytest.mark.parametrize("kind", ["finetune", "evaluate"])
def test_a_missing_parent_checkpoint_is_permanent(tmp_path, tiny_dataset, kind):
    spec = tiny_spec(kind=kind, parent_job_id="ghost")
    ghost = f"{job_prefix('study-1', 'ghost')}/attempt-1/best.keras"
    with pytest.raises(PermanentError, match="does not exist"):
        run_job(context(tmp_path, spec, tiny_dataset, parent_checkpoint=ghost))
    with pytest.raises(PermanentError, match="has no checkpoint"):  # the parent's record names none
        run_job(context(tmp_path, spec, tiny_dataset))
    with pytest.raises(PermanentError, match="names no parent"):
        run_job(context(tmp_path, tiny_spec(kind=kind), tiny_dataset, parent_checkpoint=ghost))
