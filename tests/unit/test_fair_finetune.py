"""Fine-tuning the same share: the default unfreezes about DEFAULT_UNFROZEN_SHARE of every base's
parameters, at a block boundary; and fine-tuning starts from the parent's validation score."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from shared.architectures import ARCHITECTURES
from shared.backends.local import LocalArtifactStore
from shared.jobs import ModelSpec
from worker.training.finetune import DEFAULT_UNFROZEN_SHARE, block_starts, layer_params, unfreeze
from worker.training.models import build_model, find_base
from worker.training.state import Monitor, Progress, StateStore

# Before: mobilenet 33%, vgg16 48%, resnet50 64%, inception_resnet_v2 6%, nasnet_mobile 17% but
# half a cell (its convolutions frozen, their BatchNormalization not).
FAST = {"mobilenet", "vgg16", "mobilenet_v2"}
CHECKED = ["mobilenet", "vgg16", "mobilenet_v2", "resnet50", "inception_resnet_v2", "nasnet_mobile",
           "densenet121", "efficientnet_b0", "convnext_tiny"]


def measured_share(base: keras.Model) -> float:
    """The share of the base's parameters that train, counted from the model (then unfreezes it all)."""
    trainable = sum(int(np.prod(w.shape)) for w in base.trainable_weights)
    for layer in base.layers:
        layer.trainable = True  # the parameters of the whole base, as they would train
    return trainable / sum(layer_params(base.layers))


def cases():
    for name in CHECKED:
        yield pytest.param(name, marks=() if name in FAST else pytest.mark.slow, id=name)


@pytest.mark.parametrize("name", list(cases()))
def test_the_default_unfreezes_about_a_fifth_of_every_base_at_a_block_boundary(name):
    arch = ARCHITECTURES[name]
    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(architecture=name, image_size=arch.min_size, head={"units": 8}), 3)
    base = find_base(model).base
    unfrozen = unfreeze(model, None)
    assert 0.15 <= unfrozen.share <= 0.34, unfrozen  # a block is as fine as a base can be cut
    assert unfrozen.start in block_starts(base)
    assert [layer.trainable for layer in base.layers] == [i >= unfrozen.start for i in range(len(base.layers))]
    assert measured_share(base) == pytest.approx(unfrozen.share)
    keras.backend.clear_session()


@pytest.mark.parametrize("name", list(cases()))
def test_no_normalization_trains_while_the_layer_feeding_it_is_frozen(name):
    """The cut never falls inside a block: a BatchNormalization (or LayerNormalization) that
    trains has a trainable (or weightless) layer before it."""
    arch = ARCHITECTURES[name]
    model = build_model(ModelSpec(architecture=name, image_size=arch.min_size, head={"units": 8}), 3)
    base = find_base(model).base
    unfreeze(model, None)
    position = {id(layer): i for i, layer in enumerate(base.layers)}
    for layer in base.layers:
        if not isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)) or not layer.trainable:
            continue
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                source = tensor._keras_history.operation
                if id(source) in position and source.weights:
                    assert source.trainable, (layer.name, source.name)
    keras.backend.clear_session()


def test_an_explicit_unfreeze_point_is_taken_as_it_is_and_its_share_reported():
    model = build_model(ModelSpec(architecture="mobilenet", image_size=32, head={"units": 8}), 3)
    base = find_base(model).base
    unfrozen = unfreeze(model, "conv_pw_13")
    assert base.layers[unfrozen.start].name == "conv_pw_13"  # inside block 13: asked for, so taken
    assert unfrozen.share == pytest.approx(measured_share(base)) and 0 < unfrozen.share < DEFAULT_UNFROZEN_SHARE * 2
    assert unfreeze(build_model(ModelSpec(architecture="benchmark", image_size=32), 3), None).share == 1.0


def test_fine_tuning_replaces_the_parent_only_by_beating_its_score():
    monitor = Monitor("val_accuracy", "max", 0.0, patience=2)
    progress = Progress()
    progress.start_from(monitor, {"val_accuracy": 0.5, "val_loss": 0.9})
    assert (progress.best_epoch, progress.best_value) == (0, 0.5)
    assert not progress.record(monitor, {"val_accuracy": 0.5, "val_loss": 0.8}, 1.0)  # a tie keeps the parent
    assert progress.best_metrics() == {"val_accuracy": 0.5, "val_loss": 0.9, "parent_val_accuracy": 0.5,
                                       "parent_val_loss": 0.9, "beats_parent": 0.0}
    assert not progress.finished(10)
    progress.record(monitor, {"val_accuracy": 0.4, "val_loss": 1.0}, 1.0)
    assert progress.finished(10) and progress.epoch == 2  # early stopping counted from the parent's score
    beaten = Progress(job_metrics={"unfrozen_share": 0.2})
    beaten.start_from(monitor, {"val_accuracy": 0.5, "val_loss": 0.9})
    assert beaten.record(monitor, {"val_accuracy": 0.6, "val_loss": 0.7, "loss": 0.5, "accuracy": 0.8}, 1.0)
    assert beaten.best_metrics() == {"val_accuracy": 0.6, "val_loss": 0.7, "loss": 0.5, "accuracy": 0.8,
                                     "parent_val_accuracy": 0.5, "parent_val_loss": 0.9, "beats_parent": 1.0,
                                     "unfrozen_share": 0.2}
    training_metric = Progress()
    training_metric.start_from(Monitor("loss", "min"), {"val_accuracy": 0.5})  # no parent score to start from
    assert training_metric.best_epoch is None


def test_the_parents_model_is_kept_as_epoch_0_until_an_epoch_beats_it(tmp_path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    states = StateStore(store, "jobs/ft/attempt-1", tmp_path / "work")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    monitor = Monitor("val_accuracy", "max")
    progress = Progress()
    progress.start_from(monitor, {"val_accuracy": 0.5})
    states.save_reference(progress, model)
    reference = "jobs/ft/attempt-1/state/epoch-0000.keras"
    assert progress.best_model_key == reference and store.exists(reference)
    for epoch, accuracy in ((1, 0.5), (2, 0.75)):
        progress.record(monitor, {"val_accuracy": accuracy}, 1.0)
        states.discard(states.save(progress, model))
        assert store.exists(reference) == (epoch == 1)  # superseded once an epoch beat it
    assert progress.best_model_key == "jobs/ft/attempt-1/state/epoch-0002.keras"
