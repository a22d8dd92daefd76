"""A moto server (tests/aws_support) and fresh AWS backends on it, for the sync and submission benches."""

from __future__ import annotations

import os
from typing import Any


def moto_backend() -> tuple[Any, Any, Any]:
    """(backend, session, config) on fresh, uniquely named resources of this process's moto server."""
    import boto3

    from shared.backends.aws import open_aws, provision
    from tests.aws_support import REGION, aws_config, aws_env, moto_server, unique_stack

    endpoint = moto_server().endpoint
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(aws_env(endpoint))
    config = aws_config(unique_stack("bench"))
    session = boto3.Session(region_name=REGION)
    provision(config, session)
    return open_aws(config, session), session, config


def cleanup(config: Any, session: Any) -> None:
    from tests.aws_support import delete_resources

    try:
        delete_resources(config, session)
    except Exception:  # noqa: BLE001
        pass


def stop() -> None:
    from tests.aws_support import stop_moto_server

    stop_moto_server()
