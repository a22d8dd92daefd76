from __future__ import annotations

from types import ModuleType

import pytest

import tfmodel


@pytest.fixture(scope="session")
def tf() -> tfmodel.Module:
    return tfmodel.load_module()


@pytest.fixture(scope="session")
def scaling() -> ModuleType:
    """The scaling rule (ci/infra/scaling.py), which the Terraform policies must implement."""
    import scaling

    return scaling
