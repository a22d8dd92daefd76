"""Every architecture a study may name builds at its smallest size with weights=None, runs a
forward pass through its own preprocessing, and fine-tuning's default unfreezes about a fifth
of its base (tests/unit/test_fair_finetune.py checks the rule on a few)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from shared.architectures import ARCHITECTURES
from shared.jobs import ModelSpec
from worker.training.finetune import unfreeze
from worker.training.models import count_params, find_base

FAST = {"benchmark", "vgg16", "vgg19", "mobilenet", "mobilenet_v2"}  # about a second each on 2 cores


def cases():
    for name in ARCHITECTURES:
        yield pytest.param(name, marks=() if name in FAST else pytest.mark.slow, id=name)


@pytest.mark.parametrize("name", list(cases()))
def test_architecture_builds_at_its_smallest_size(name):
    from worker.training.models import build_model

    arch = ARCHITECTURES[name]
    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(architecture=name, image_size=arch.min_size, head={"units": 8}), 4)
    x = np.random.default_rng(0).integers(0, 256, (2, arch.min_size, arch.min_size, 3)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(x, training=False))
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    base = find_base(model)
    if arch.is_benchmark:
        assert base is None
        return
    total, trainable = count_params(model)
    assert trainable == total - base.count_params() - 2 * 8  # only the head trains (BN statistics never do)
    assert model.get_layer("preprocess").get_config()["architecture"] == name
    unfrozen = unfreeze(model, None)  # the default: the block boundary nearest a fifth of the base's parameters
    assert 0.15 <= unfrozen.share <= 0.34, unfrozen
    keras.backend.clear_session()
