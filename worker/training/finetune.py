"""Fine-tuning: which layers of a trained transfer model to unfreeze."""

from __future__ import annotations

import keras

from shared.errors import PermanentError
from worker.training.models import find_base


def unfreeze(model: keras.Model, unfreeze_from: int | str | None, default: int | str | None) -> int:
    """Make the base trainable from one layer on (index, negative index or name; `default` when
    None). The base keeps running in inference mode (see models.InferenceBase), as the Keras
    fine-tuning guide recommends, so BatchNormalization keeps its ImageNet statistics.
    Returns the index of the first trainable base layer."""
    wrapper = find_base(model)
    if wrapper is None:  # the benchmark CNN: every layer trains already
        model.trainable = True
        return 0
    base_layers = wrapper.base.layers
    start = layer_index(base_layers, unfreeze_from if unfreeze_from is not None else default, wrapper.base.name)
    wrapper.trainable = True  # propagates to every layer of the base...
    for layer in base_layers[:start]:
        layer.trainable = False  # ...then the bottom stays frozen
    return start


def layer_index(base_layers: list[keras.layers.Layer], where: int | str | None, base_name: str) -> int:
    if where is None:
        return 0
    if isinstance(where, str):
        for index, layer in enumerate(base_layers):
            if layer.name == where:
                return index
        if not where.lstrip("-").isdigit():
            raise PermanentError(f"unfreeze_from: {base_name} has no layer named {where!r}")
        where = int(where)
    if not -len(base_layers) <= where < len(base_layers):
        raise PermanentError(f"unfreeze_from: index {where} is outside {base_name}'s {len(base_layers)} layers")
    return where % len(base_layers)
