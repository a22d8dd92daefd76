"""Models, optimizers, weights and fine-tuning's unfreezing (real tiny Keras models, no mocks)."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

from shared.backends.local import LocalArtifactStore
from shared.errors import PermanentError
from shared.jobs import ModelSpec
from shared.optimizers import CONCRETE_CLASSES, OPTIMIZER_NAMES
from tests.training_support import context, tiny_dataset, tiny_spec  # noqa: F401 (fixture)
from worker.training import run_job
from worker.training.finetune import layer_index, unfreeze
from worker.training.inputs import fetch_weights, weights_key
from worker.training.models import (
    InferenceBase,
    Preprocess,
    base_features,
    build_model,
    count_params,
    find_base,
    head_classifier,
    load_model,
    preprocess_function,
)
from worker.training.optimizers import KERAS_CLASSES, make_optimizer


def images(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


def test_benchmark_cnn_has_the_reference_parameter_count():
    model = build_model(ModelSpec(architecture="benchmark", image_size=256), 102)
    assert model.count_params() == 14_800_710
    assert count_params(model) == (14_800_710, 14_800_710)


def test_transfer_model_freezes_the_base_and_preprocesses_inside():
    head = {"units": 16, "dropout": 0.2, "pooling": "flatten"}
    spec = ModelSpec(architecture="mobilenet_v2", image_size=32, head=head)
    model = build_model(spec, 5)
    names = [layer.name for layer in model.layers]
    assert names[1:] == ["preprocess", "base", "head_pool", "head_dense", "head_bn", "head_dropout", "predictions"]
    assert isinstance(model.get_layer("head_pool"), keras.layers.Flatten)
    assert model.output_shape == (None, 5)
    total, trainable = count_params(model)
    head_only = head_classifier(model.get_layer("base").output.shape[1:], spec.head, 5, seed=0)
    assert trainable < total and trainable == count_params(head_only)[0] - 2 * 16  # BN's moving statistics never train
    # The head starts from its own seed, whatever was built (and drawn) before it.
    for name in ("head_dense", "predictions"):
        for ours, standalone in zip(model.get_layer(name).get_weights(), head_only.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, standalone)
    x = images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.get_layer("preprocess")(x)),
        preprocess_function("mobilenet_v2")(x.copy()),
        rtol=1e-6,
    )


def test_checkpoint_round_trips_in_safe_mode_without_lambda_layers(tmp_path):
    model = build_model(ModelSpec(architecture="mobilenet", image_size=32, head={"units": 8}), 3)
    path = tmp_path / "model.keras"
    model.save(path)
    config = zipfile.ZipFile(path).read("config.json").decode()
    assert "Lambda" not in config and "spotsweep>Preprocess" in config and "spotsweep>InferenceBase" in config
    loaded = load_model(path)
    x = images()
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    assert count_params(loaded) == count_params(model)
    assert json.loads(config)["config"]["layers"][1]["config"]["architecture"] == "mobilenet"


def test_the_base_runs_in_inference_mode_even_when_the_model_trains():
    """EfficientNet has Dropout inside its blocks; Keras 3 would run it during fit
    if the base were merely called with training=False."""
    spec = ModelSpec(architecture="efficientnet_b0", image_size=32, head={"units": 8})
    base = find_base(build_model(spec, 3))
    assert any(isinstance(layer, keras.layers.Dropout) for layer in base.base.layers)
    extractor = base_features(spec, base.base)
    x = images(8)
    training = keras.ops.convert_to_numpy(extractor(x, training=True))
    inference = keras.ops.convert_to_numpy(extractor(x, training=False))
    np.testing.assert_allclose(training, inference, atol=1e-6)


def test_unfrozen_base_keeps_batchnorm_statistics_while_training():
    model = build_model(ModelSpec(architecture="mobilenet", image_size=32, head={"units": 8}), 3)
    unfreeze(model, None, "conv_dw_13")
    bn = find_base(model).base.get_layer("conv_pw_13_bn")
    assert bn.trainable
    before = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(images(8), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), before)


def test_unfreeze_from_index_negative_index_and_name():
    model = build_model(ModelSpec(architecture="mobilenet", image_size=32, head={"units": 8}), 3)
    base_layers = find_base(model).base.layers
    n = len(base_layers)
    assert layer_index(base_layers, 5, "b") == 5
    assert layer_index(base_layers, -3, "b") == n - 3
    assert layer_index(base_layers, "conv_dw_13", "b") == [layer.name for layer in base_layers].index("conv_dw_13")
    assert layer_index(base_layers, "-2", "b") == n - 2
    with pytest.raises(PermanentError, match="no layer named"):
        layer_index(base_layers, "no_such_layer", "b")
    with pytest.raises(PermanentError, match="outside"):
        layer_index(base_layers, n, "b")
    frozen_trainable = count_params(model)[1]
    start = unfreeze(model, -4).start
    assert start == n - 4
    assert [layer.trainable for layer in base_layers] == [False] * (n - 4) + [True] * 4
    assert count_params(model)[1] > frozen_trainable


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_trains_the_benchmark_cnn(name):
    spec = CONCRETE_CLASSES[name]()
    optimizer = make_optimizer(spec)
    assert isinstance(optimizer, KERAS_CLASSES[name])
    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(architecture="benchmark", image_size=32), 3)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = [w.copy() for w in model.get_weights()]
    x, y = images(12), np.arange(12) % 3
    for _ in range(3):
        logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert int(optimizer.iterations) == 3


def test_optimizer_parameters_and_keras2_decay():
    optimizer = make_optimizer(CONCRETE_CLASSES["sgd"](learning_rate=0.1, momentum=0.9, nesterov=True, decay=0.5))
    assert optimizer.momentum == 0.9 and optimizer.nesterov
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.InverseTimeDecay)
    # Keras 2: lr / (1 + decay * iterations)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(4)) == pytest.approx(0.1 / (1 + 0.5 * 4))
    adam = make_optimizer(CONCRETE_CLASSES["adam"](learning_rate=0.002, beta_1=0.8, amsgrad=True))
    assert float(adam.learning_rate) == pytest.approx(0.002) and adam.beta_1 == 0.8 and adam.amsgrad
    rmsprop = make_optimizer(CONCRETE_CLASSES["rmsprop"](rho=0.8, centered=True))
    assert rmsprop.rho == 0.8 and rmsprop.centered


def test_weights_file_from_the_artifact_store_loads(tmp_path, tiny_dataset):
    keras.utils.set_random_seed(11)
    donor = build_model(ModelSpec(architecture="mobilenet", image_size=32, head={"units": 8}), 3)
    local = tmp_path / "mobilenet-32.weights.h5"
    find_base(donor).base.save_weights(local)
    spec = tiny_spec("mobilenet", model={"weights": "weights/mobilenet-32.weights.h5", "head": {"units": 8}})
    ctx = context(tmp_path, spec, tiny_dataset)
    ctx.artifacts.put_file(local, "weights/mobilenet-32.weights.h5")
    fetched = fetch_weights(ctx)
    keras.utils.set_random_seed(12)  # a different init: only the file can make the bases equal
    model = build_model(spec.model, 3, fetched)
    for ours, theirs in zip(find_base(model).get_weights(), find_base(donor).get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_weights_key_is_the_stores_key_of_a_location(tmp_path):
    # a prefixed S3 store (s3:// locations, the root not repeated): tests/integration/test_store_keys_aws.py
    store = LocalArtifactStore(tmp_path / "store")
    assert weights_key(store, "weights/a.weights.h5") == "weights/a.weights.h5"
    assert weights_key(store, "artifacts:weights/a.weights.h5") == "weights/a.weights.h5"
    for outside in ("../outside.weights.h5", "/home/me/a.weights.h5", "s3://bucket/weights/a.weights.h5"):
        with pytest.raises(PermanentError):
            weights_key(store, outside)


def test_missing_weights_file_is_a_permanent_error(tmp_path, tiny_dataset):
    spec = tiny_spec("mobilenet", model={"weights": "weights/absent.weights.h5", "head": {"units": 8}})
    with pytest.raises(PermanentError, match="does not exist"):
        run_job(context(tmp_path, spec, tiny_dataset))


def test_a_weights_file_for_another_architecture_is_a_permanent_error(tmp_path, tiny_dataset):
    donor = build_model(ModelSpec(architecture="vgg16", image_size=32, head={"units": 8}), 3)
    local = tmp_path / "vgg.weights.h5"
    find_base(donor).base.save_weights(local)
    spec = tiny_spec("mobilenet", model={"weights": "w/vgg.weights.h5", "head": {"units": 8}})
    ctx = context(tmp_path, spec, tiny_dataset)
    ctx.artifacts.put_file(local, "w/vgg.weights.h5")
    with pytest.raises(PermanentError, match="does not load into mobilenet"):
        run_job(ctx)


def test_failed_imagenet_download_is_a_permanent_error(tmp_path, monkeypatch):
    import keras.src.applications.mobilenet_v2 as source
    import keras.src.backend.config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras-home"))  # no cached weights
    monkeypatch.setattr(source, "BASE_WEIGHT_PATH", "http://127.0.0.1:9/")  # nothing listens there
    spec = ModelSpec(architecture="mobilenet_v2", image_size=96, weights="imagenet")
    with pytest.raises(PermanentError, match="could not download imagenet weights for mobilenet_v2"):
        build_model(spec, 3)


def test_custom_layers_are_registered_for_safe_loading():
    assert keras.saving.get_registered_object("spotsweep>Preprocess") is Preprocess
    assert keras.saving.get_registered_object("spotsweep>InferenceBase") is InferenceBase
