"""The classifiers: the benchmark CNN and `keras.applications` bases with the bottleneck head.

Every model takes raw pixels (0..255, float32) and does its own preprocessing, so a checkpoint
is self-contained: fine-tuning, evaluation and anyone downloading `best.keras` feed it images
as they are. Nothing here is a Lambda layer: every load uses `safe_mode=True`, which refuses
Lambdas, so the two custom layers are registered serializable classes instead.
"""

from __future__ import annotations

import importlib
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from shared.architectures import ARCHITECTURES, Architecture
from shared.errors import PermanentError
from shared.jobs import Head, ModelSpec

BASE_LAYER = "base"
MIXED_POLICY = "mixed_float16"
HEAD_LAYERS = ("head_pool", "head_dense", "head_bn", "head_dropout", "predictions")


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise PermanentError(f"unknown architecture {name!r}") from None


def preprocess_function(name: str) -> Callable[[Any], Any]:
    """The architecture's own `keras.applications.<module>.preprocess_input`."""
    module = importlib.import_module(f"keras.applications.{architecture(name).module}")
    return module.preprocess_input


@keras.saving.register_keras_serializable(package="spotsweep")
class Preprocess(layers.Layer):
    """`preprocess_input` of one architecture, as a layer (its config is the architecture name)."""

    def __init__(self, architecture: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.architecture = architecture
        self._preprocess = preprocess_function(architecture)

    def call(self, inputs: Any) -> Any:
        return self._preprocess(keras.ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "architecture": self.architecture}


@keras.saving.register_keras_serializable(package="spotsweep")
class InferenceBase(layers.Layer):
    """Runs a `keras.applications` base in inference mode, whatever mode the outer model runs in.

    Why not just `base(x, training=False)`: in Keras 3 (checked in 3.15,
    `keras/src/models/functional.py: operation_fn`) a functional model injects its own
    `training=True` into every nested call during `fit`, overriding the `training=False` given
    when the graph was built (keras-team/keras#20285). BatchNormalization then switches to batch
    statistics as soon as the base is unfrozen for fine-tuning, and the Dropout layers inside
    EfficientNet's blocks are active even while the base is frozen, which would also make the
    feature cache (computed in inference mode) differ from training through the base.
    """

    def __init__(self, base: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    def build(self, input_shape: Any) -> None:
        self.built = True  # the base was built by its constructor

    def call(self, inputs: Any, training: Any = None) -> Any:
        return self.base(inputs, training=False)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.base.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "base": keras.saving.serialize_keras_object(self.base)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InferenceBase:
        config = dict(config)
        config["base"] = keras.saving.deserialize_keras_object(config["base"])
        return cls(**config)


@contextmanager
def dtype_policy(mixed: bool) -> Iterator[None]:
    """Within it, new layers and models take Keras's `mixed_float16` policy when `mixed` (float16
    compute, float32 weights); `compile` then wraps the optimizer in a LossScaleOptimizer itself
    (keras/src/trainers/trainer.py, `auto_scale_loss`). The policy is process-global in Keras, so
    the previous one comes back on the way out: the next job in this worker builds its own.
    Every classifier's `predictions` layer is float32 whatever the policy: a float16 softmax
    would round small probabilities and the loss with them (Keras's mixed precision guide)."""
    if not mixed:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED_POLICY)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(spec: ModelSpec, num_classes: int, weights_path: Path | None = None, seed: int = 0) -> keras.Model:
    """A new, uncompiled classifier for `spec`; `weights_path` is the local copy of a weights file
    when `spec.weights` names one ("imagenet" and None need none). `seed` seeds the head."""
    arch = architecture(spec.architecture)
    if arch.is_benchmark:
        return _with_file_weights(benchmark_cnn(spec.image_size, num_classes), spec, weights_path)
    return transfer_model(spec, build_base(arch, spec, weights_path), num_classes, seed)


def transfer_model(spec: ModelSpec, base: keras.Model, num_classes: int, seed: int) -> keras.Model:
    """Preprocessing, the frozen `base` (a `keras.applications` model) and a new head."""
    features = base_features(spec, base)
    return keras.Model(features.input, head(features.output, spec.head, num_classes, seed), name=spec.architecture)


def base_features(spec: ModelSpec, base: keras.Model) -> keras.Model:
    """Image -> preprocessing -> the base in inference mode: what the feature cache stores."""
    inputs = keras.Input((spec.image_size, spec.image_size, 3), name="image")
    x = Preprocess(spec.architecture, name="preprocess")(inputs)
    wrapped = InferenceBase(base, name=BASE_LAYER)
    wrapped.trainable = False  # transfer learning trains the head only; fine-tuning unfreezes later
    return keras.Model(inputs, wrapped(x), name="features")


def head_classifier(feature_shape: tuple[int, ...], spec: Head, num_classes: int, seed: int) -> keras.Model:
    """The head alone, on base outputs: what head-only training on cached features fits. Same
    layer names, same seeded initial weights as the head of `build_model`."""
    inputs = keras.Input(tuple(feature_shape), name="features")
    return keras.Model(inputs, head(inputs, spec, num_classes, seed), name="head")


def benchmark_cnn(image_size: int, num_classes: int) -> keras.Model:
    """The small CNN every study compares against (14,800,710 parameters at 256 px, 102 classes)."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 32, 64):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="benchmark")


def head(x: Any, spec: Head, num_classes: int, seed: int) -> Any:
    """The bottleneck head. Layer names are fixed: head-only training and the feature cache find
    the head's layers by name. Its random draws are seeded by `seed` alone, not by what was built
    before it, so a head built on cached features starts exactly like one built on the base."""
    if spec.pooling == "flatten":
        x = layers.Flatten(name="head_pool")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dense(
        spec.units,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=_head_seed(seed, 0)),
        kernel_regularizer=keras.regularizers.L2(spec.kernel_l2) if spec.kernel_l2 else None,
        activity_regularizer=keras.regularizers.L1(spec.activity_l1) if spec.activity_l1 else None,
        name="head_dense",
    )(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    if spec.dropout > 0:
        x = layers.Dropout(spec.dropout, seed=_head_seed(seed, 1), name="head_dropout")(x)
    kernel = keras.initializers.GlorotUniform(seed=_head_seed(seed, 2))
    return layers.Dense(
        num_classes, activation="softmax", kernel_initializer=kernel, dtype="float32", name="predictions"
    )(x)


def _head_seed(seed: int, layer: int) -> int:
    return int(np.random.SeedSequence([seed % 2**32, 7, layer]).generate_state(1)[0] % 2**31)


def build_base(arch: Architecture, spec: ModelSpec, weights_path: Path | None) -> keras.Model:
    constructor = getattr(importlib.import_module(f"keras.applications.{arch.module}"), arch.constructor)
    shape = (spec.image_size, spec.image_size, 3)
    if spec.weights == "imagenet":
        return _imagenet_base(arch, constructor, shape)
    base = constructor(include_top=False, weights=None, input_shape=shape)
    if spec.weights is not None:
        _load_weights_file(base, spec, _required(weights_path, spec))
    return base


def _imagenet_base(arch: Architecture, constructor: Callable[..., keras.Model], shape: tuple[int, ...]) -> keras.Model:
    try:
        return constructor(include_top=False, weights="imagenet", input_shape=shape)
    except ValueError as exc:  # Keras refuses the shape for these weights: the spec is wrong
        raise PermanentError(f"cannot build {arch.name} with imagenet weights at {shape}: {exc}") from exc
    except Exception as exc:  # keras.utils.get_file raises a bare Exception on URL/HTTP errors
        raise PermanentError(f"could not download imagenet weights for {arch.name}: {exc}") from exc


def _with_file_weights(model: keras.Model, spec: ModelSpec, weights_path: Path | None) -> keras.Model:
    if spec.weights == "imagenet":
        raise PermanentError("the benchmark CNN has no imagenet weights")
    if spec.weights is not None:
        _load_weights_file(model, spec, _required(weights_path, spec))
    return model


def _required(weights_path: Path | None, spec: ModelSpec) -> Path:
    if weights_path is None or not Path(weights_path).is_file():
        raise PermanentError(f"weights file {spec.weights!r} is not available locally")
    return Path(weights_path)


def _load_weights_file(model: keras.Model, spec: ModelSpec, path: Path) -> None:
    load_weights_strictly(model, path, f"weights file {spec.weights!r}", f"{spec.architecture} at {spec.image_size} px")


def load_weights_strictly(model: keras.Model, path: Path, what: str, into: str) -> None:
    """`model.load_weights`, but a file that leaves any layer unloaded is an error: Keras 3 only
    warns ("Skipping nested container ... will retain their freshly-initialized weights")."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except Exception as exc:  # wrong architecture, size or a corrupt file: retrying cannot help
            raise PermanentError(f"{what} does not load into {into}: {exc}") from exc
    messages = [str(w.message) for w in caught]
    partial = [m for m in messages if "Skipping" in m or "could not be loaded" in m]
    if partial:
        raise PermanentError(f"{what} does not load into {into}: {partial[0]}")


def find_base(model: keras.Model) -> InferenceBase | None:
    """The wrapped `keras.applications` base of a transfer model; None for the benchmark CNN."""
    for layer in model.layers:
        if isinstance(layer, InferenceBase):
            return layer
    return None


def head_layer_names(model: keras.Model) -> list[str]:
    present = {layer.name for layer in model.layers}
    return [name for name in HEAD_LAYERS if name in present]


def copy_head(source: keras.Model, target: keras.Model) -> None:
    """Copy the head's weights between a head-only model and a complete one (matched by name)."""
    for name in head_layer_names(source):
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())


def count_params(model: keras.Model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return int(model.count_params()), trainable


def load_model(path: Path) -> keras.Model:
    """Every checkpoint is loaded in safe mode: a checkpoint is data, never code. One saved under
    the mixed policy is loaded under it: its layers keep their own policies either way, but
    only a mixed model recompiles its saved optimizer into the LossScaleOptimizer it was saved
    as (otherwise Keras skips the optimizer's variables, and a resumed job loses its state)."""
    with dtype_policy(_saved_mixed(Path(path))):
        return keras.saving.load_model(path, safe_mode=True)


def _saved_mixed(path: Path) -> bool:
    """Whether a `.keras` file (a zip with config.json) holds layers of the mixed policy."""
    try:
        with zipfile.ZipFile(path) as archive:
            return f'"{MIXED_POLICY}"' in archive.read("config.json").decode()
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return False  # not a .keras file: keras.saving.load_model names the problem
