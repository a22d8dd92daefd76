from __future__ import annotations

import pytest

import tfmodel


@pytest.fixture(scope="session")
def tf() -> tfmodel.Module:
    return tfmodel.load_module()


@pytest.fixture(scope="session")
def scaling():
    return tfmodel.load_scaling()
