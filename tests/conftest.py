"""Shared fixtures: a tiny prepared dataset, an embedded backend, quiet TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

from shared.backends.factory import open_local  # noqa: E402
from shared.ports import Backend  # noqa: E402
from shared.config import BackendConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic dataset: 3 classes x 12 images of 32 px (train + test)."""
    from shared.datasets import prepare, synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "raw", classes=3, per_class=12, size=32, seed=1)
    prepare(root / "raw", root / "prepared", test_fraction=0.25, seed=1)
    return root / "prepared"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An embedded backend's home, set (SPOTSWEEP_HOME, SPOTSWEEP_BACKEND=local) for the commands a
    test runs in this process (typer's CliRunner) and the processes it starts."""
    path = tmp_path / "home"
    monkeypatch.setenv("SPOTSWEEP_HOME", str(path))
    monkeypatch.setenv("SPOTSWEEP_BACKEND", "local")
    return path


@pytest.fixture
def local_backend(tmp_path: Path) -> Backend:
    return open_local(BackendConfig(home=tmp_path / "home", lease_s=3.0, max_receives=3))


from tests.aws_support import moto_endpoint  # noqa: E402,F401  (moto's server, started on first use)
