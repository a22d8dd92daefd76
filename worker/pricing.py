"""What a worker costs per hour, for cost_usd: the setting if given, else on AWS the current spot
price of this instance's type in its availability zone, else 0."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from worker.imds import Imds

log = logging.getLogger("spotsweep.worker")


def spot_price_per_hour(
    ec2_client: Any, instance_type: str, availability_zone: str, now: datetime | None = None
) -> float | None:
    """The spot price in effect now: with `StartTime`, AWS returns the price changes since then
    plus the last change before it (the price in effect at StartTime); without it, the history
    of up to 90 days, whose first entry may be months old. The latest entry wins."""
    start = now or datetime.now(timezone.utc)
    response = ec2_client.describe_spot_price_history(
        InstanceTypes=[instance_type], AvailabilityZone=availability_zone,
        ProductDescriptions=["Linux/UNIX"], StartTime=start,
    )
    history = response.get("SpotPriceHistory", [])
    if not history:
        return None
    latest = max(history, key=lambda entry: entry["Timestamp"])
    return float(latest["SpotPrice"])


def price_per_hour(configured: float | None, imds: Imds | None, ec2_client: Any | None) -> float:
    if configured is not None:
        return configured
    if imds is None or ec2_client is None:
        return 0.0
    try:
        instance_type = imds.get("instance-type") or ""
        zone = imds.get("placement/availability-zone") or ""
        return spot_price_per_hour(ec2_client, instance_type, zone) or 0.0
    except Exception:  # cost figures are informative; never fail a worker over them
        log.warning("could not read the spot price; costs will show 0", exc_info=True)
        return 0.0
