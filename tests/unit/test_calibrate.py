"""`worker weights calibrate` (worker/training/calibrate.py): the weights file the demo and the
bench fall back on where ImageNet's cannot be downloaded. Real Keras, a real embedded backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from worker.cli import app

KEY = "weights/mobilenet_v2-32-calibrated.weights.h5"



def test_calibrate_puts_weights_with_the_datasets_statistics_in_the_store(home: Path, tiny_dataset: Path) -> None:
    import keras

    from shared.jobs import ModelSpec
    from worker.training.models import architecture, build_base

    result = CliRunner().invoke(app, ["weights", "calibrate", "mobilenet_v2", str(tiny_dataset), "--to", KEY,
                                      "--image-size", "32"])
    assert result.exit_code == 0, result.output
    stored = home / "artifacts" / KEY
    assert stored.is_file() and str(stored) in result.output
    spec = ModelSpec(architecture="mobilenet_v2", image_size=32)
    base = build_base(architecture("mobilenet_v2"), spec, None)
    base.load_weights(stored)
    variances = [float(np.mean(layer.moving_variance)) for layer in base.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(variances) > 10 and all(v != 1.0 for v in variances)  # every layer measured, none left at init


@pytest.mark.parametrize("args, message", [
    (["benchmark", "--to", KEY], "the benchmark CNN has no pretrained base"),
    (["mobilenet_v3", "--to", KEY], "unknown architecture 'mobilenet_v3'"),
    (["mobilenet_v2", "--to", "weights/base.h5"], "must end in .weights.h5"),
    (["mobilenet_v2", "--to", "../outside.weights.h5"], "outside.weights.h5"),
])
def test_calibrate_refuses_bad_input_in_one_line(home: Path, tiny_dataset: Path, args: list[str], message: str) -> None:
    name, *options = args
    result = CliRunner().invoke(app, ["weights", "calibrate", name, str(tiny_dataset), *options, "--image-size", "32"])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (home / "artifacts" / "weights").exists()


def test_imagenet_weights_that_cannot_be_downloaded_exit_1_saying_why(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = "http://127.0.0.1:9"  # nothing listens on the discard port: the download fails at once
    monkeypatch.setenv("https_proxy", refused)
    monkeypatch.setenv("HTTPS_PROXY", refused)
    # 192 px: a file that Keras's cache (~/.keras/models) is unlikely to hold already
    result = CliRunner().invoke(app, ["weights", "imagenet", "mobilenet_v2", "--image-size", "192"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: could not download imagenet weights for mobilenet_v2")
    bad = CliRunner().invoke(app, ["weights", "imagenet", "nasnet_mobile", "--image-size", "96"])
    assert bad.exit_code == 2 and "needs image_size 224" in bad.output
