"""The scaling rule (ci/infra/scaling.py): the same rule terraform/autoscaling.tf configures."""

from __future__ import annotations

import math

import pytest

from scaling import (
    DEFAULT_MAX_SIZE,
    DEFAULT_SCALE_TO_ZERO_AFTER_S,
    DEFAULT_TARGET_BACKLOG_PER_INSTANCE,
    MAX_SCALE_FROM_ZERO_STEPS,
    ScaleStep,
    backlog_per_instance,
    desired_capacity,
    scale_from_zero_steps,
    should_leave_group,
)


def test_defaults_match_the_terraform_variables():
    # terraform/variables.tf: target_backlog_per_instance = 2, worker_idle_timeout_s = 600,
    # max_size = 4; autoscaling.tf: scale_from_zero_max_steps = 10 (ci/infra checks the HCL).
    assert DEFAULT_TARGET_BACKLOG_PER_INSTANCE == 2
    assert DEFAULT_SCALE_TO_ZERO_AFTER_S == 600.0
    assert DEFAULT_MAX_SIZE == 4
    assert MAX_SCALE_FROM_ZERO_STEPS == 10


@pytest.mark.parametrize(
    ("backlog", "target", "expected"),
    [
        (1, 1, 1),
        (1, 2, 1),
        (2, 2, 1),
        (3, 2, 2),
        (4, 2, 2),
        (5, 2, 3),
        (7, 3, 3),
        (9, 3, 3),
        (10, 3, 4),
    ],
)
def test_ceil_of_backlog_over_target(backlog, target, expected):
    got = desired_capacity(backlog, 0, target, min_size=0, max_size=100)
    assert got == expected == math.ceil(backlog / target)


def test_clamped_to_max_size():
    assert desired_capacity(1000, 3, 2, min_size=0, max_size=8) == 8


def test_clamped_to_min_size_with_a_small_backlog():
    assert desired_capacity(1, 0, 4, min_size=2, max_size=8) == 2


def test_backlog_sets_capacity_in_both_directions():
    # Ten instances with a backlog of 3 (target 2): ceil(3/2) = 2 - the rule scales in too
    # (running workers are protected from scale-in on AWS, so no job is lost).
    assert desired_capacity(3, 10, 2, min_size=0, max_size=20) == 2


def test_huge_backlog_is_exact_integer_arithmetic():
    backlog = 10**18 + 1
    assert desired_capacity(backlog, 0, 1, min_size=0, max_size=10**19) == backlog


def test_empty_backlog_keeps_current_until_idle_long_enough():
    kw = dict(target_backlog_per_instance=2, min_size=0, max_size=8, scale_to_zero_after_s=600)
    assert desired_capacity(0, 3, idle_s=0, **kw) == 3
    assert desired_capacity(0, 3, idle_s=599.9, **kw) == 3
    assert desired_capacity(0, 3, idle_s=600, **kw) == 0
    assert desired_capacity(0, 3, idle_s=10_000, **kw) == 0


def test_empty_backlog_goes_to_min_size_not_below():
    assert desired_capacity(0, 5, 2, min_size=1, max_size=8, idle_s=700, scale_to_zero_after_s=600) == 1


def test_empty_backlog_current_above_max_is_clamped():
    # max_size lowered under a running fleet
    assert desired_capacity(0, 9, 2, min_size=0, max_size=4, idle_s=0, scale_to_zero_after_s=600) == 4


def test_unknown_in_service_counts_as_zero():
    assert desired_capacity(0, None, 2, min_size=0, max_size=4, idle_s=0) == 0
    assert desired_capacity(5, None, 2, min_size=0, max_size=4) == 3


def test_scale_to_zero_after_zero_seconds_is_immediate():
    assert desired_capacity(0, 4, 2, min_size=0, max_size=4, idle_s=0, scale_to_zero_after_s=0) == 0


def test_max_size_zero_disables_the_fleet():
    assert desired_capacity(50, 0, 2, min_size=0, max_size=0) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(backlog=-1, in_service=0),
        dict(backlog=1, in_service=-1),
        dict(backlog=1, in_service=0, target_backlog_per_instance=0),
        dict(backlog=1, in_service=0, min_size=-1),
        dict(backlog=1, in_service=0, min_size=5, max_size=4),
        dict(backlog=0, in_service=0, idle_s=-1.0),
        dict(backlog=0, in_service=0, scale_to_zero_after_s=-1.0),
    ],
)
def test_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        desired_capacity(**kwargs)


@pytest.mark.parametrize("bad", [1.5, "3", True, None])
def test_rejects_non_integer_backlog(bad):
    with pytest.raises(TypeError):
        desired_capacity(bad, 0)


def test_backlog_per_instance_is_the_metric_math_expression():
    assert backlog_per_instance(6, 2, 4) == 2.0
    assert backlog_per_instance(0, 0, 3) == 0.0
    assert backlog_per_instance(1, 0, 2) == 0.5


def test_backlog_per_instance_is_undefined_without_instances():
    # (m1 + m2) / m3 with m3 = 0: CloudWatch yields no data point; target tracking idles
    assert backlog_per_instance(10, 0, 0) is None


def _step_lookup(steps: list[ScaleStep], backlog: int) -> int:
    matches = [s.capacity for s in steps if s.lower <= backlog and (s.upper is None or backlog < s.upper)]
    assert len(matches) == 1, (backlog, steps)
    return matches[0]


@pytest.mark.parametrize("target", [1, 2, 3, 5])
@pytest.mark.parametrize("max_size", [1, 2, 4, 10, 25])
def test_scale_from_zero_steps_agree_with_desired_capacity(target, max_size):
    steps = scale_from_zero_steps(target, max_size)
    assert len(steps) == min(max_size, MAX_SCALE_FROM_ZERO_STEPS)
    for backlog in range(1, target * (MAX_SCALE_FROM_ZERO_STEPS + 3) + 1):
        expected = min(desired_capacity(backlog, 0, target, 0, max_size), MAX_SCALE_FROM_ZERO_STEPS)
        assert _step_lookup(steps, backlog) == expected, backlog


def test_scale_from_zero_steps_have_no_gaps_or_overlaps():
    steps = scale_from_zero_steps(2, 4)
    assert steps == [
        ScaleStep(0, 3, 1),
        ScaleStep(3, 5, 2),
        ScaleStep(5, 7, 3),
        ScaleStep(7, None, 4),
    ]
    for a, b in zip(steps, steps[1:]):
        assert a.upper == b.lower


def test_scale_from_zero_steps_single_instance_group():
    assert scale_from_zero_steps(2, 1) == [ScaleStep(0, None, 1)]


def test_scale_from_zero_steps_empty_for_a_disabled_fleet():
    assert scale_from_zero_steps(2, 0) == []


def test_scale_from_zero_steps_reject_bad_target():
    with pytest.raises(ValueError):
        scale_from_zero_steps(0, 4)


@pytest.mark.parametrize(
    ("idle_s", "timeout", "backlog", "expected"),
    [
        (0, 600, 0, False),
        (599.99, 600, 0, False),
        (600, 600, 0, True),
        (3600, 600, 0, True),
        (3600, 600, 1, False),  # work is waiting: stay
        (3600, 0, 0, False),  # 0 disables the idle timeout
        (3600, -5, 0, False),
        (3600, None, 0, False),
        (3600, float("nan"), 0, False),
        (0, 0.0, 0, False),
    ],
)
def test_should_leave_group(idle_s, timeout, backlog, expected):
    assert should_leave_group(idle_s, timeout, backlog) is expected


def test_should_leave_group_default_backlog_is_empty():
    assert should_leave_group(601, 600) is True


def test_should_leave_group_rejects_negative_inputs():
    with pytest.raises(ValueError):
        should_leave_group(-1, 600)
    with pytest.raises(ValueError):
        should_leave_group(10, 600, -1)


def test_leaving_and_desired_capacity_agree_at_the_timeout():
    # the worker leaves exactly when the fleet rule says an idle fleet goes to zero
    for idle in (0, 300, 599, 600, 601):
        leaves = should_leave_group(idle, DEFAULT_SCALE_TO_ZERO_AFTER_S, 0)
        fleet = desired_capacity(0, 1, min_size=0, max_size=4, idle_s=idle)
        assert leaves == (fleet == 0)
