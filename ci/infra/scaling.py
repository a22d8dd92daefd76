"""The spot fleet's scaling rule, as a pure function.

This module is the executable statement of the rule that ``terraform/autoscaling.tf``
configures in AWS, so that the two can be read (and tested) side by side:

* **backlog** = jobs waiting + jobs in flight
  (SQS ``ApproximateNumberOfMessagesVisible + ApproximateNumberOfMessagesNotVisible``).
* **desired capacity** = ``ceil(backlog / target_backlog_per_instance)``, clamped to
  ``min_size..max_size``. In AWS this is the target-tracking policy on the metric-math
  expression ``(visible + not_visible) / GroupInServiceInstances`` with target value
  ``target_backlog_per_instance``.
* **scale out from zero**: target tracking multiplies the current capacity, so it cannot
  leave 0. A step policy, alarmed on "backlog > 0 while no instance is in service", sets
  the capacity to the same ``ceil(backlog / target)`` (see :func:`scale_from_zero_steps`).
* **scale to zero**: with an empty backlog the fleet keeps its current size until it has
  been idle for ``scale_to_zero_after_s``; then it goes to ``min_size`` (0). In AWS an idle
  worker leaves the group itself (``worker run --idle-timeout``, see
  :func:`should_leave_group`), decrementing the desired capacity; target tracking's own
  scale-in follows the backlog metric down as well, and instances running a job are
  protected from scale-in.

Everything here is standard library only, reads no environment and does no I/O. It lives
beside the Terraform checks because it is their specification: nothing at runtime uses it (the
fleet scales in AWS, by the policies Terraform writes). The defaults below are the defaults of
the Terraform variables of the same meaning (``target_backlog_per_instance``,
``worker_idle_timeout_s``, the step table size); ``test_terraform.py`` checks that they agree.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

__all__ = [
    "DEFAULT_TARGET_BACKLOG_PER_INSTANCE",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_SCALE_TO_ZERO_AFTER_S",
    "MAX_SCALE_FROM_ZERO_STEPS",
    "ScaleStep",
    "backlog_per_instance",
    "desired_capacity",
    "scale_from_zero_steps",
    "should_leave_group",
]

#: Jobs (waiting + running) per instance that the fleet aims for. One GPU worker runs one
#: job at a time; 2 keeps one job queued per instance so a worker never waits for a boot.
#: Terraform: ``variable "target_backlog_per_instance"`` (default 2).
DEFAULT_TARGET_BACKLOG_PER_INSTANCE = 2

#: Seconds without work after which a worker leaves the group (and the fleet reaches 0).
#: Terraform: ``variable "worker_idle_timeout_s"`` (default 600), passed to
#: ``worker run --idle-timeout``.
DEFAULT_SCALE_TO_ZERO_AFTER_S = 600.0

#: Size of the step table of the scale-from-zero policy. Terraform:
#: ``local.scale_from_zero_max_steps`` (10). Beyond it, target tracking takes over once the
#: first instances are in service.
MAX_SCALE_FROM_ZERO_STEPS = 10

#: The group's default maximum size. Terraform: ``variable "max_size"`` (default 4).
DEFAULT_MAX_SIZE = 4


class ScaleStep(NamedTuple):
    """One step adjustment of the scale-from-zero policy.

    ``lower <= backlog < upper`` (``upper`` None: unbounded) sets the capacity to
    ``capacity``. Bounds are in messages, relative to the alarm threshold 0, exactly as
    ``metric_interval_lower_bound`` / ``metric_interval_upper_bound`` in Terraform.
    """

    lower: int
    upper: Optional[int]
    capacity: int


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_bounds(target_backlog_per_instance: int, min_size: int, max_size: int) -> None:
    _check_int("target_backlog_per_instance", target_backlog_per_instance, 1)
    _check_int("min_size", min_size, 0)
    _check_int("max_size", max_size, 0)
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must be <= max_size ({max_size})")


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def backlog_per_instance(visible: int, in_flight: int, in_service: int) -> Optional[float]:
    """The metric that target tracking follows: ``(visible + in_flight) / in_service``.

    Returns None when no instance is in service: CloudWatch metric math yields no data
    point for a division by zero, so target tracking does nothing and the
    scale-from-zero policy acts instead.
    """
    _check_int("visible", visible, 0)
    _check_int("in_flight", in_flight, 0)
    _check_int("in_service", in_service, 0)
    if in_service == 0:
        return None
    return (visible + in_flight) / in_service


def desired_capacity(
    backlog: int,
    in_service: Optional[int] = None,
    target_backlog_per_instance: int = DEFAULT_TARGET_BACKLOG_PER_INSTANCE,
    min_size: int = 0,
    max_size: int = DEFAULT_MAX_SIZE,
    idle_s: float = 0.0,
    scale_to_zero_after_s: float = DEFAULT_SCALE_TO_ZERO_AFTER_S,
) -> int:
    """How many workers the fleet should run.

    Args:
        backlog: jobs waiting plus jobs in flight (visible + not-visible messages), >= 0.
        in_service: instances currently in service; None when unknown (treated as 0).
        target_backlog_per_instance: jobs per instance to aim for, >= 1.
        min_size: the group's minimum size (0 for a fleet that scales to zero).
        max_size: the group's maximum size, >= min_size.
        idle_s: seconds the backlog has been 0 (the fleet's idle time).
        scale_to_zero_after_s: idle seconds after which an empty fleet shrinks to min_size.

    Returns:
        ``ceil(backlog / target_backlog_per_instance)`` clamped to ``min_size..max_size``
        while there is a backlog. With no backlog: the current size (clamped) until
        ``idle_s >= scale_to_zero_after_s``, then ``min_size``.

    Raises:
        ValueError / TypeError: on negative counts, a target below 1 or min > max.
    """
    _check_int("backlog", backlog, 0)
    current = 0 if in_service is None else in_service
    _check_int("in_service", current, 0)
    _check_bounds(target_backlog_per_instance, min_size, max_size)
    if idle_s < 0:
        raise ValueError(f"idle_s must be >= 0, got {idle_s}")
    if scale_to_zero_after_s < 0:
        raise ValueError(f"scale_to_zero_after_s must be >= 0, got {scale_to_zero_after_s}")

    if backlog > 0:
        # Integer ceil: exact for any size, no float rounding.
        wanted = -(-backlog // target_backlog_per_instance)
        return _clamp(wanted, min_size, max_size)
    if idle_s >= scale_to_zero_after_s:
        return min_size
    return _clamp(current, min_size, max_size)


def scale_from_zero_steps(
    target_backlog_per_instance: int = DEFAULT_TARGET_BACKLOG_PER_INSTANCE,
    max_size: int = DEFAULT_MAX_SIZE,
    max_steps: int = MAX_SCALE_FROM_ZERO_STEPS,
) -> list[ScaleStep]:
    """The step table of the scale-from-zero policy (``ExactCapacity`` adjustments).

    Step ``k`` (1-based) covers the integer backlogs whose ``ceil(backlog / target)`` is
    ``k``: ``(k-1)*target + 1 <= backlog < k*target + 1`` (the first step starts at 0,
    the alarm fires only for backlog > 0). The last step is unbounded above and sets
    ``min(max_size, max_steps)``. This mirrors ``local.scale_from_zero_steps`` in
    ``terraform/autoscaling.tf``, so for an empty fleet the policy sets exactly
    ``desired_capacity(backlog, 0, target, 0, max_size)`` (up to ``max_steps``).
    """
    _check_bounds(target_backlog_per_instance, 0, max_size)
    _check_int("max_steps", max_steps, 1)
    if max_size == 0:
        return []
    n = min(max_size, max_steps)
    t = target_backlog_per_instance
    steps = []
    for k in range(1, n + 1):
        lower = 0 if k == 1 else (k - 1) * t + 1
        upper = None if k == n else k * t + 1
        steps.append(ScaleStep(lower, upper, k))
    return steps


def should_leave_group(idle_s: float, idle_timeout_s: Optional[float], backlog: int = 0) -> bool:
    """Whether an idle worker should leave its autoscaling group (and terminate).

    Args:
        idle_s: seconds since the worker last had a job.
        idle_timeout_s: ``worker run --idle-timeout``; None or <= 0 disables leaving.
        backlog: jobs waiting in the queue as far as the worker knows (visible messages;
            0 when unknown). A worker never leaves while work is waiting.

    Returns:
        True when the timeout is enabled, nothing is waiting and the worker has been idle
        for at least ``idle_timeout_s`` seconds.
    """
    if idle_s < 0:
        raise ValueError(f"idle_s must be >= 0, got {idle_s}")
    _check_int("backlog", backlog, 0)
    if idle_timeout_s is None or idle_timeout_s <= 0 or math.isnan(idle_timeout_s):
        return False
    if backlog > 0:
        return False
    return idle_s >= idle_timeout_s
