"""`make demo` on a machine that cannot download ImageNet weights: it says so in one line, and
mobilenet_v2 (on calibrated weights) learns. The real script, the real console scripts, a copy
of examples/ in tmp_path (the demo writes data/ beside it). Downloads are made to fail with a
proxy that refuses connections, so the fallback is what is tested even on a machine online."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[2] / "examples"
BIN = Path(sys.executable).parent
CHANCE = 1 / 5  # the demo's dataset has 5 classes


def test_the_demo_falls_back_to_calibrated_weights_that_learn(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    refused = "http://127.0.0.1:9"  # the discard port: nothing listens, every download fails at once
    env = {
        **os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SPOTSWEEP_HOME": str(tmp_path / "home"),
        "SPOTSWEEP_BACKEND": "local", "https_proxy": refused, "HTTPS_PROXY": refused,
    }
    demo = subprocess.run(
        ["bash", str(tmp_path / "examples" / "demo.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    said = [line for line in demo.stdout.splitlines() if "ImageNet" in line]
    assert len(said) == 1 and said[0].startswith("ImageNet weights cannot be downloaded here"), said

    board = subprocess.run(
        [str(BIN / "submit"), "leaderboard", "--format", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    rows = json.loads(board.stdout)["rows"]
    assert len(rows) == 10 and {row["status"] for row in rows} == {"SUCCEEDED"}
    mobilenet = [row for row in rows if row["architecture"] == "mobilenet_v2"]
    assert {row["weights"] for row in mobilenet} == {"weights/mobilenet_v2-128-calibrated.weights.h5"}
    assert max(row["val_accuracy"] for row in mobilenet) >= CHANCE + 0.1, mobilenet
