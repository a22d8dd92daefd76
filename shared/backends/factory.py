"""Open the configured backend: the three ports, ready to use."""

from __future__ import annotations

from typing import Any

from shared.config import BackendConfig
from shared.errors import FatalError
from shared.ports import Backend


def open_local(config: BackendConfig) -> Backend:
    from shared.backends.local import LocalArtifactStore, SqliteJobQueue, SqliteJobStore

    home = config.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    return Backend(
        queue=SqliteJobQueue(home / "queue.db", config.lease_s, config.max_receives),
        store=SqliteJobStore(home / "store.db"),
        artifacts=LocalArtifactStore(home / "artifacts"),
        name="local",
    )


def open_backend(config: BackendConfig, boto_session: Any = None) -> Backend:
    """`boto_session` (a boto3.Session) is only used by the AWS backend; one is made if absent."""
    if config.backend == "local":
        return open_local(config)
    if config.backend == "aws":
        from shared.backends.aws import open_aws

        return open_aws(config, boto_session)
    raise FatalError(f"unknown backend {config.backend!r}")
