"""Fine-tuning: which layers of a trained transfer model to unfreeze.

By default a fine-tuning job unfreezes the same share of every base: the top
DEFAULT_UNFROZEN_SHARE of the base's trainable parameters, rounded to a block boundary. Fixed
layer names per family unfroze 6% of inception_resnet_v2's base and 64% of resnet50's, which
compared the architectures' fine-tuning recipes rather than the architectures.

The rule (`default_start`, `block_starts`): walk the base's operations in their (topological)
order; a cut before operation i is a block boundary when
- everything below it reaches the top only through one tensor, or only through the outputs of
  merges (Add, Concatenate): NASNet's cells take the two previous cells' outputs;
- operation i does not finish the one below it (a normalization or activation fed by a layer
  with weights: a convolution is never frozen while its BatchNormalization trains);
- the numbers in its name differ from those of the layer below (MobileNet's `conv_dw_13` and
  `conv_pw_13` are one block, though a single tensor joins them).
Of those boundaries, the one whose share of parameters above it is nearest the target wins
(on a tie, the smaller share). At the smallest sizes with weights=None this unfreezes 16-33%:
vgg16 16% (block5_conv3), resnet50 19% (conv5_block3), inception_resnet_v2 21% (block8_7..),
nasnet_mobile 17% (the last normal cell), densenet121 19%, convnext_tiny 17%, xception 23%,
inception_v3 28% (mixed10), efficientnet_b0 28% (block7a), mobilenet 33% (block 13): a block
is as fine as a base can be cut. An explicit `unfreeze_from` (index, negative index or name) is
taken as it is. Either way the share unfrozen is reported (`unfrozen_share`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np

from shared.errors import PermanentError
from worker.training.models import find_base

DEFAULT_UNFROZEN_SHARE = 0.2
_MERGES = frozenset({"Add", "Concatenate"})  # layers, or keras.ops (ConvNeXt's `x + shortcut`), by class name
_FINISHERS = (
    keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.Activation, keras.layers.ReLU,
)
_BLOCK_NUMBER = re.compile(r"\d+[a-z]?")  # "conv5_block2_1_conv" -> 5, 2, 1; "block7a_expand_conv" -> 7a


@dataclass(frozen=True)
class Unfrozen:
    start: int  # index of the first trainable layer of the base (0: everything trains)
    share: float  # the share of the base's trainable parameters that train


def unfreeze(model: keras.Model, unfreeze_from: int | str | None, default: int | str | None = None) -> Unfrozen:
    """Make the base trainable from one layer on: `unfreeze_from` (index, negative index or name),
    else `default`, else the block boundary nearest DEFAULT_UNFROZEN_SHARE of its parameters.
    The base keeps running in inference mode (see models.InferenceBase), as the Keras
    fine-tuning guide recommends, so BatchNormalization keeps its ImageNet statistics."""
    wrapper = find_base(model)
    if wrapper is None:  # the benchmark CNN: every layer trains already
        model.trainable = True
        return Unfrozen(0, 1.0)
    base = wrapper.base
    wrapper.trainable = True
    for layer in base.layers:
        layer.trainable = True  # every layer, whatever flags the parent's file kept...
    sizes = layer_params(base.layers)
    where = unfreeze_from if unfreeze_from is not None else default
    start = layer_index(base.layers, where, base.name) if where is not None else default_start(base, DEFAULT_UNFROZEN_SHARE)
    for layer in base.layers[:start]:
        layer.trainable = False  # ...then the bottom stays frozen
    return Unfrozen(start, _share(sizes, start))


def layer_params(layers: list[keras.layers.Layer]) -> list[int]:
    """Each layer's trainable parameters (BatchNormalization's moving statistics never train)."""
    return [int(sum(np.prod(w.shape) for w in layer.trainable_weights)) for layer in layers]


def _share(sizes: list[int], start: int) -> float:
    total = sum(sizes)
    return sum(sizes[start:]) / total if total else 1.0


def default_start(base: keras.Model, share: float) -> int:
    """The block boundary (`block_starts`) whose share of the base's trainable parameters above
    it is nearest `share`; needs the base trainable (parameters are counted as they train)."""
    sizes = layer_params(base.layers)
    candidates = [start for start in block_starts(base) if _share(sizes, start) > 0]
    if not candidates:
        raise PermanentError(f"{base.name} has no block boundary to unfreeze from: give unfreeze_from")
    # On a tie, the smaller share; between boundaries of one share, the layer that has weights.
    return min(candidates, key=lambda start: (abs(_share(sizes, start) - share), _share(sizes, start), -start))


def block_starts(base: keras.Model) -> list[int]:
    """Indices into `base.layers` where a block starts (the rule in the module's docstring)."""
    operations = list(base.operations)  # layers and keras.ops, in topological order
    position = {id(operation): index for index, operation in enumerate(operations)}
    inputs = [_inputs(operation, position) for operation in operations]
    starts, layers_below = [], 0
    for index, crossing in _crossings(inputs):
        layers_below += isinstance(operations[index - 1], keras.layers.Layer)
        if _clean_cut(operations, crossing) and _starts_block(operations, inputs, index):
            starts.append(layers_below)  # operation `index` is the layer `layers_below` of base.layers
    return sorted(set(starts))


def _crossings(inputs: list[set[int]]) -> Iterator[tuple[int, set[int]]]:
    """(i, the operations below i whose outputs are used at or above i), for every cut i."""
    last_use = list(range(len(inputs)))
    for consumer, producers in enumerate(inputs):
        for producer in producers:
            last_use[producer] = max(last_use[producer], consumer)
    crossing: set[int] = set()
    closing: dict[int, list[int]] = defaultdict(list)
    for index in range(1, len(inputs)):
        if last_use[index - 1] >= index:
            crossing.add(index - 1)
            closing[last_use[index - 1]].append(index - 1)
        crossing.difference_update(closing.pop(index - 1, []))
        yield index, crossing


def _inputs(operation: keras.Operation, position: dict[int, int]) -> set[int]:
    return {
        position[id(tensor._keras_history.operation)]
        for node in operation._inbound_nodes
        for tensor in node.input_tensors
    }


def _clean_cut(operations: list[keras.Operation], crossing: set[int]) -> bool:
    return len(crossing) == 1 or bool(crossing) and all(type(operations[p]).__name__ in _MERGES for p in crossing)


def _starts_block(operations: list[keras.Operation], inputs: list[set[int]], index: int) -> bool:
    operation, below = operations[index], operations[index - 1]
    fed_by_weights = any(getattr(operations[p], "weights", None) for p in inputs[index])
    if isinstance(operation, _FINISHERS) and fed_by_weights:
        return False
    return _BLOCK_NUMBER.findall(operation.name) != _BLOCK_NUMBER.findall(below.name)


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
