"""The statistics layer (shared/stats.py) against values computed by hand.

Each expected number is derived in a comment from the textbook formula, so a test fails if the code
drifts from the formula, not merely from its own earlier output. z = 1.959964 (the 0.975 normal
quantile), z^2 = 3.841459.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shared.errors import BadInputError
from shared.stats import (
    FORMAT_NAME,
    ExampleResults,
    compare_results,
    decode_correct,
    encode_correct,
    examples_id,
    holm_adjust,
    mcnemar_exact,
    require_same_examples,
    t_interval,
    tied_with_best,
    wilson_interval,
)


def _pair(a_only: int, b_only: int, both: int = 0, neither: int = 0) -> tuple[list[bool], list[bool]]:
    """Two masks with the given counts of (A right, B wrong), (A wrong, B right), both, neither."""
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return a, b


# --- Wilson ----------------------------------------------------------------------------------------

def test_wilson_8_of_10():
    # p = 0.8, n = 10: 1 + z^2/n = 1.3841459; centre = (0.8 + 0.1920730) / 1.3841459 = 0.716740;
    # half = 1.959964 / 1.3841459 * sqrt(0.016 + 3.841459/400) = 1.416011 * 0.160011 = 0.226578.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.716740 - 0.226578, abs=1e-5)  # 0.4902
    assert high == pytest.approx(0.716740 + 0.226578, abs=1e-5)  # 0.9433


def test_wilson_50_of_100_is_symmetric_about_one_half():
    # centre = (0.5 + 0.0192073) / 1.0384146 = 0.5 exactly; half = 1.959964 / 1.0384146 *
    # sqrt(0.0025 + 3.841459/40000) = 1.887459 * 0.0509513 = 0.096169 -> (0.40383, 0.59617).
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.403831, 0.596169), abs=1e-5)


def test_wilson_ends_are_exact_at_none_and_all_correct():
    # 0/10: centre = 0.1920730 / 1.3841459 = 0.138767 and half = (z^2/2n) / 1.3841459 = 0.138767,
    # so the low end is 0 exactly and the high end 0.277533; n/n mirrors it.
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-5))
    assert wilson_interval(10, 10) == (pytest.approx(0.722467, abs=1e-5), 1.0)


def test_wilson_narrows_with_lower_confidence():
    # 90%: z = 1.644854, z^2 = 2.705543; centre = (0.8 + 0.135277) / 1.270554 = 0.736114;
    # half = 1.644854 / 1.270554 * sqrt(0.016 + 0.006764) = 1.294596 * 0.150877 = 0.195325.
    assert wilson_interval(8, 10, confidence=0.90) == pytest.approx((0.540789, 0.931439), abs=1e-5)


def test_wilson_with_no_examples_is_the_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("correct, n, confidence", [(11, 10, 0.95), (-1, 10, 0.95), (0, -1, 0.95), (5, 10, 1.0),
                                                    (5, 10, 0.0)])
def test_wilson_refuses_impossible_counts_and_confidences(correct: int, n: int, confidence: float):
    with pytest.raises(BadInputError):
        wilson_interval(correct, n, confidence)


# --- t-interval over seeds -------------------------------------------------------------------------

def test_t_interval_of_three_seeds():
    # mean 0.9, s = sqrt((0.01 + 0 + 0.01) / 2) = 0.1, se = 0.1 / sqrt(3) = 0.057735;
    # t_{0.975, 2} = 4.302653, half = 0.248414 -> (0.651586, 1.148414). Not clipped to 1 on purpose.
    mean, low, high = t_interval([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert (low, high) == pytest.approx((0.651586, 1.148414), abs=1e-6)


def test_t_interval_of_two_seeds():
    # mean 0.85, s = sqrt(2 * 0.05^2 / 1) = 0.0707107, se = 0.05; t_{0.975, 1} = 12.706205,
    # half = 0.635310 -> (0.214690, 1.485310): two seeds say almost nothing.
    assert t_interval([0.9, 0.8]) == pytest.approx((0.85, 0.214690, 1.485310), abs=1e-6)


def test_t_interval_of_one_seed_has_no_interval():
    mean, low, high = t_interval([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)


def test_t_interval_of_identical_seeds_has_zero_width():
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("values", [[], [0.5, float("nan")], [float("inf")]])
def test_t_interval_refuses_empty_or_non_finite_values(values: list[float]):
    with pytest.raises(BadInputError):
        t_interval(values)


# --- McNemar ---------------------------------------------------------------------------------------

def test_mcnemar_12_against_2():
    # 14 disagreements, 2 won by B: p = 2 * sum_{k<=2} C(14, k) / 2^14 = 2 * (1 + 14 + 91) / 16384
    # = 212 / 16384 = 0.012939. Examples both got right (5) or wrong (3) change nothing but n.
    a, b = _pair(12, 2, both=5, neither=3)
    result = mcnemar_exact(a, b)
    assert (result.n, result.a_only, result.b_only) == (22, 12, 2)
    assert result.p_value == pytest.approx(212 / 16384, rel=1e-12)
    assert result.sentence("A", "B") == "A is better than B on 12 of 14 disagreements, p = 0.013"


def test_mcnemar_names_the_better_model_first_whichever_side_it_is_on():
    # 6 against 0: p = 2 * C(6, 0) / 2^6 = 2 / 64 = 0.03125.
    result = mcnemar_exact(*_pair(0, 6))
    assert result.p_value == pytest.approx(2 / 64, rel=1e-12)
    assert result.sentence("resnet50", "vgg16") == "vgg16 is better than resnet50 on 6 of 6 disagreements, p = 0.031"


def test_mcnemar_small_p_values_are_not_printed_with_false_precision():
    # 12 against 0: p = 2 / 2^12 = 0.000488.
    result = mcnemar_exact(*_pair(12, 0))
    assert result.p_value == pytest.approx(2 / 4096, rel=1e-12)
    assert result.sentence() == "A is better than B on 12 of 12 disagreements, p < 0.001"


def test_mcnemar_even_split_and_single_disagreement_give_p_one():
    # 3 against 3: the two-sided tail covers everything -> 1. 1 against 0: 2 * 1/2 = 1.
    even = mcnemar_exact(*_pair(3, 3, both=4))
    assert even.p_value == 1.0
    assert even.sentence("A", "B") == "A and B each win 3 of 6 disagreements, p = 1.000"
    assert mcnemar_exact(*_pair(1, 0)).p_value == 1.0


def test_mcnemar_without_disagreements_has_p_one_and_says_so():
    result = mcnemar_exact(*_pair(0, 0, both=7, neither=2))
    assert (result.n, result.a_only, result.b_only, result.p_value) == (9, 0, 0, 1.0)
    assert result.sentence("A", "B") == "A and B agree on all 9 examples; there is nothing to compare"


def test_mcnemar_refuses_results_of_different_lengths():
    with pytest.raises(BadInputError, match="same examples"):
        mcnemar_exact([True, False], [True])


# --- Holm ------------------------------------------------------------------------------------------

def test_holm_keeps_input_order_and_is_monotone():
    # sorted: 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04, raised to the running max 0.06).
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06], abs=1e-12)


def test_holm_caps_at_one():
    # 0.5 x 2 = 1.0; 0.6 x 1 = 0.6 -> raised to 1.0.
    assert holm_adjust([0.6, 0.5]) == [1.0, 1.0]


def test_holm_of_one_or_no_p_values():
    assert holm_adjust([0.02]) == [0.02]
    assert holm_adjust([]) == []


@pytest.mark.parametrize("p_values", [[0.5, float("nan")], [1.5], [-0.1]])
def test_holm_refuses_values_that_are_not_p_values(p_values: list[float]):
    with pytest.raises(BadInputError):
        holm_adjust(p_values)


# --- ties with the best ----------------------------------------------------------------------------

def _best_and_worse_by(*losses: int, n: int = 40) -> tuple[list[bool], list[list[bool]]]:
    """The best gets all n right; each other model loses `loss` of them and wins none back."""
    return [True] * n, [[False] * loss + [True] * (n - loss) for loss in losses]


def test_one_model_six_disagreements_behind_is_not_tied():
    # 6 against 0: p = 0.03125 <= 0.05, and with one comparison Holm changes nothing.
    best, others = _best_and_worse_by(6)
    assert tied_with_best(best, others) == [False]


def test_holm_turns_two_borderline_losses_into_ties():
    # two p = 0.03125: Holm -> 2 x 0.03125 = 0.0625 for the first, max(0.0625, 0.03125) for the
    # second; both above 0.05, so both tied. Uncorrected, both would have been called worse.
    best, others = _best_and_worse_by(6, 6)
    assert tied_with_best(best, others) == [True, True]


def test_holm_depends_on_how_many_comparisons_are_shown():
    # p = 2/4096 = 0.000488 (12 lost) and 0.03125 (6 lost); Holm: 2 x 0.000488 = 0.000977, then
    # max(0.000977, 1 x 0.03125) = 0.03125. Both <= 0.05: both worse.
    best, others = _best_and_worse_by(12, 6, 0)
    assert tied_with_best(best, others[:2]) == [False, False]
    # Add an identical model (p = 1) to the comparisons shown: 3 x 0.000488 = 0.00146 (worse),
    # 2 x 0.03125 = 0.0625 (now tied), 1 x 1.0 = 1.0 (tied). More comparisons, fewer claims.
    assert tied_with_best(best, others) == [False, True, True]
    assert tied_with_best(best, []) == []


def test_tied_with_best_refuses_a_bad_alpha():
    with pytest.raises(BadInputError, match="alpha"):
        tied_with_best([True], [[True]], alpha=1.5)


# --- per-example result files ----------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 8, 13])
def test_correct_file_round_trips(n: int):
    mask = np.random.default_rng(n).random(n) < 0.5
    identity = examples_id(range(n))
    result = decode_correct(encode_correct(mask, identity))
    assert result.examples_id == identity
    assert result.correct.dtype == np.bool_ and result.correct.tolist() == mask.tolist()


def test_correct_file_is_a_json_line_and_one_bit_per_example():
    data = encode_correct(np.ones(10_000, dtype=bool), "e" * 64)
    header, payload = data.split(b"\n", 1)
    assert json.loads(header) == {"format": FORMAT_NAME, "version": 1, "n": 10_000, "examples": "e" * 64}
    assert payload == b"\xff" * 1250  # 10,000 / 8


def test_examples_id_depends_on_the_examples_and_their_order():
    assert examples_id([3, 1, 2]) == examples_id(np.array([3, 1, 2]))
    assert examples_id([3, 1, 2]) != examples_id([1, 2, 3])
    assert examples_id(["cat/1.jpg"]) != examples_id(["cat/2.jpg"])


def test_files_on_different_examples_cannot_be_compared():
    mask = np.array([True, False, True])
    a = decode_correct(encode_correct(mask, examples_id([0, 1, 2])))
    b = decode_correct(encode_correct(mask, examples_id([2, 1, 0])))
    with pytest.raises(BadInputError, match="different validation examples"):
        compare_results(a, b)
    with pytest.raises(BadInputError, match="different validation examples"):
        require_same_examples([a, a, ExampleResults(a.examples_id, np.ones(4, dtype=bool))])


def test_compare_results_is_mcnemar_on_the_decoded_masks():
    identity = examples_id(range(22))
    a_mask, b_mask = (np.array(mask) for mask in _pair(12, 2, both=5, neither=3))
    a = decode_correct(encode_correct(a_mask, identity))
    b = decode_correct(encode_correct(b_mask, identity))
    assert compare_results(a, b) == mcnemar_exact(a_mask, b_mask)
    assert compare_results(a, b).p_value == pytest.approx(212 / 16384, rel=1e-12)


def _header(**fields: object) -> bytes:
    base: dict[str, object] = {"format": FORMAT_NAME, "version": 1, "n": 3, "examples": "abc"}
    return json.dumps({**base, **fields}).encode() + b"\n"


@pytest.mark.parametrize("data, message", [
    (b"", "not a correctness file"),
    (b"\x89PNG\r\n\x1a\n", "not a correctness file"),
    (b"{}\n\x00", "not a correctness file"),
    (_header(version=2) + b"\xa0", "version 2"),
    (_header(n=-1), "bad n"),
    (_header(n=True) + b"\xa0", "bad n"),
    (_header(examples="") + b"\xa0", "bad n"),
    (_header(), "payload holds 0 bytes"),          # truncated: 3 examples need one byte
    (_header() + b"\xa0\x00", "payload holds 2 bytes"),
    (_header() + b"\xa1", "bits set past"),         # 0b10100001: the last bit is beyond n = 3
])
def test_decode_refuses_what_is_not_a_valid_file(data: bytes, message: str):
    with pytest.raises(BadInputError, match=message):
        decode_correct(data)


@pytest.mark.parametrize("mask", [np.array([1, 0, 1]), np.ones((2, 2), dtype=bool)])
def test_encode_refuses_what_is_not_a_bool_vector(mask: np.ndarray):
    with pytest.raises(BadInputError, match="1-D bool"):
        encode_correct(mask, "abc")
