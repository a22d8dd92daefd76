"""Every adapter of every port runs the same contract suite.

`backend_name` is parametrized over the adapters; each test asks for the port it checks. The
AWS adapters join through `tests/aws_support.py` (moto's server over real HTTP).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.backends.factory import open_local
from shared.ports import Backend
from shared.config import BackendConfig

LEASE_S = 2.0  # short, so that visibility expiry is observable in a test
MAX_RECEIVES = 3

BACKENDS = ["local", pytest.param("aws", marks=pytest.mark.aws)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path) -> Iterator[Backend]:
    if request.param == "local":
        yield open_local(BackendConfig(home=tmp_path / "home", lease_s=LEASE_S, max_receives=MAX_RECEIVES))
        return
    from tests.aws_support import fresh_aws_backend

    yield from fresh_aws_backend(request, lease_s=LEASE_S, max_receives=MAX_RECEIVES)


@pytest.fixture
def queue(backend: Backend):
    return backend.queue


@pytest.fixture
def store(backend: Backend):
    return backend.store


@pytest.fixture
def artifacts(backend: Backend):
    return backend.artifacts
