"""Issue 14, item 5: the spot price read from recent history, the S3 connection pool, and
throttled transactions retried. Over HTTP against moto's server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest

from shared.backends.aws import S3_POOL_CONNECTIONS, aws_clients
from shared.backends.aws_errors import cancellation_is_retryable
from shared.backends.aws_s3 import DEFAULT_TRANSFER
from tests.aws_support import REGION, aws_config, endpoint_for, unique_stack, use_moto_env
from worker.pricing import spot_price_per_hour

pytestmark = pytest.mark.aws


def test_spot_price_is_read_from_now_on(request):
    use_moto_env(request, endpoint_for(request))
    ec2 = boto3.client("ec2", region_name=REGION)
    sent: list[dict[str, Any]] = []
    ec2.meta.events.register(  # the call's parameters, as given to the client
        "before-parameter-build.ec2.DescribeSpotPriceHistory", lambda params, **_: sent.append(dict(params))
    )
    before = datetime.now(timezone.utc)

    price = spot_price_per_hour(ec2, "g4dn.xlarge", f"{REGION}a")

    assert price is not None and price > 0  # moto's one price for every type
    (params,) = sent
    start = params["StartTime"]
    assert before - timedelta(seconds=5) <= start <= datetime.now(timezone.utc)  # not 90 days of history
    assert "MaxResults" not in params  # the latest entry, not the first one


def test_s3_pool_covers_the_sync_concurrency(request):
    use_moto_env(request, endpoint_for(request))
    s3 = aws_clients(aws_config(unique_stack()))["s3"]
    assert s3.meta.config.max_pool_connections == S3_POOL_CONNECTIONS >= 8 * DEFAULT_TRANSFER.max_concurrency


@pytest.mark.parametrize(
    ("codes", "retryable"),
    [
        (["None", "ProvisionedThroughputExceeded"], True),
        (["ThrottlingError", "None"], True),
        (["TransactionConflict"], True),
        ([], True),  # no reasons given: as before, try again
        (["ValidationError", "ThrottlingError"], False),
        (["ItemCollectionSizeLimitExceeded"], False),
    ],
)
def test_transaction_cancellation_reasons(codes, retryable):
    """The reasons as AWS documents them for TransactionCanceledException (one per item)."""
    assert cancellation_is_retryable([{"Code": code} for code in codes]) is retryable
