"""val_loss is the cross-entropy, the quantity test_loss is: with the default head's regularisers
(L2 0.01 on the kernel, L1 0.01 on the activity) Keras's own loss is mostly their penalty."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from shared.backends.local import LocalArtifactStore
from tests.training_support import context, tiny_dataset, tiny_spec  # noqa: F401 (fixture)
from worker.job import EpochReport
from worker.training import data, run_job
from worker.training.models import load_model
from worker.training.state import Monitor, Progress, recorded_metrics


def test_recorded_names_map_keras_logs_to_cross_entropy_and_penalty():
    logs = {"loss": 9.0, "ce": 1.1, "accuracy": 0.5, "val_loss": 8.5, "val_ce": 1.2, "val_accuracy": 0.4}
    assert recorded_metrics(logs) == pytest.approx(
        {"loss": 1.1, "penalty": 7.9, "accuracy": 0.5, "val_loss": 1.2, "val_penalty": 7.3, "val_accuracy": 0.4}
    )
    assert recorded_metrics({"loss": 2.0, "accuracy": 0.5}) == {"loss": 2.0, "accuracy": 0.5}  # no metric: as logged


def test_with_the_default_head_val_loss_is_the_hand_computed_cross_entropy_and_early_stopping_follows_it(
    tmp_path, tiny_dataset
):
    early_stopping = {"monitor": "val_loss", "patience": 1}
    spec = tiny_spec("mobilenet", training={"epochs": 4, "feature_cache": False, "early_stopping": early_stopping})
    assert spec.model.head.kernel_l2 == 0.01 and spec.model.head.activity_l1 == 0.01  # the default head
    store = LocalArtifactStore(tmp_path / "artifacts")
    manifest = data.load_manifest(tiny_dataset)
    labels = data.split_files(manifest, "train").labels
    _, val_idx = data.validation_split(labels, spec.validation_split, spec.training.seed)
    images = data.load_images(tiny_dataset, manifest, "train", 32, tmp_path / "cache")[val_idx].astype("float32")
    by_hand: list[float] = []

    def on_epoch(report: EpochReport) -> None:
        """The epoch's model, as its state saved it: its cross-entropy on the validation split."""
        progress = Progress.from_json(store.get_bytes(report.state_key))
        store.get_file(progress.model_key, tmp_path / "epoch.keras")
        probabilities = load_model(tmp_path / "epoch.keras").predict(images, verbose=0)
        by_hand.append(float(np.mean(-np.log(probabilities[np.arange(len(val_idx)), labels[val_idx]]))))
        assert report.metrics["val_loss"] == pytest.approx(by_hand[-1], abs=1e-4)
        assert report.metrics["val_penalty"] > report.metrics["val_loss"]  # Keras's val_loss was mostly the penalty
        assert report.metrics["penalty"] > 0 and "ce" not in report.metrics and "val_ce" not in report.metrics

    result = run_job(context(tmp_path, spec, tiny_dataset, artifacts=store, on_epoch=on_epoch))
    assert result.outcome == "completed" and len(by_hand) == result.epochs_run >= 2
    assert result.best_epoch == 1 + int(np.argmin(by_hand))  # the best checkpoint: the lowest cross-entropy
    assert result.metrics["val_loss"] == pytest.approx(min(by_hand), abs=1e-4)
    replay = Progress()  # early stopping: Keras's rule on the cross-entropy stops where the job stopped
    monitor = Monitor.from_spec(spec.training.early_stopping)
    for value in by_hand:
        replay.record(monitor, {"val_loss": value}, 0.0)
        if replay.finished(spec.training.epochs):
            break
    assert replay.epoch == result.epochs_run and replay.best_epoch == result.best_epoch


def test_a_state_saved_before_the_cross_entropy_metric_resumes_with_it_and_its_optimizer_state(tmp_path):
    from worker.training.sessions import _load_state_model
    from worker.training.state import StateStore

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])  # as before
    x, y = np.random.default_rng(0).random((12, 4)).astype("float32"), np.arange(12) % 3
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    store = LocalArtifactStore(tmp_path / "artifacts")
    states = StateStore(store, "jobs/j/attempt-1", tmp_path / "work")
    progress = Progress()
    progress.record(Monitor(), {"val_accuracy": 0.5}, 1.0)
    states.save(progress, model)
    resumed = _load_state_model(states, progress)
    assert int(resumed.optimizer.iterations) == 3  # the optimizer's state came along
    logs = resumed.fit(x, y, batch_size=4, epochs=1, verbose=0).history
    assert set(recorded_metrics({k: v[-1] for k, v in logs.items()})) == {"loss", "penalty", "accuracy"}
    assert int(resumed.optimizer.iterations) == 6
