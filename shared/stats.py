"""How much a score can be trusted: intervals, paired comparisons, and per-example result files.

A validation split of a few hundred images cannot tell 0.9333 from 0.9267, so every accuracy the
leaderboard shows carries an interval, and "is B as good as the best?" is answered by a paired test
on the examples both models saw, not by comparing two rounded numbers.

- `wilson_interval`: the interval of one accuracy measured on n examples (Wilson's score interval,
  which stays inside [0, 1] and behaves at 0/n and n/n, unlike the normal approximation).
- `t_interval`: the mean of one configuration's repeats (one value per seed) with a Student-t
  interval; it describes seed-to-seed spread, not the finite validation set.
- `mcnemar_exact`: two models on the same examples. Only the examples where exactly one of them is
  right carry information; under "equally good" each such disagreement is a fair coin, so the exact
  two-sided binomial test on the discordant counts is the test (scipy.stats.binomtest).
- `holm_adjust`, `tied_with_best`: many models compared with #1 at once; Holm's step-down
  correction keeps the chance of any false "worse than the best" at alpha.
- `encode_correct` / `decode_correct`: which examples a job got right, as a small file (a one-line
  JSON header, then the mask packed 8 examples a byte). The header names the ordered example list
  by a hash (`examples_id`), so two files are compared only when they are about the same examples
  in the same order (`require_same_examples`).

Pure functions on numbers and bytes: no I/O, no environment, no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats

from shared.errors import BadInputError

FORMAT_NAME = "spotsweep.correct"
FORMAT_VERSION = 1
_MAX_HEADER_BYTES = 4096  # a header is ~120 bytes; a file without a newline this early is not ours


class Interval(NamedTuple):
    """A two-sided interval for a proportion; unpacks as `(low, high)`."""

    low: float
    high: float


class MeanInterval(NamedTuple):
    """A mean with its two-sided interval; unpacks as `(mean, low, high)`."""

    mean: float
    low: float
    high: float


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson's score interval for `correct` successes out of `n` examples.

    With p = correct/n and z the two-sided normal quantile:
    centre = (p + z^2/2n) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
    n = 0 returns (0.0, 1.0): nothing was measured, so every accuracy is still possible; this
    keeps the value printable and sortable where NaN would not be. 0/n gives a low end of
    exactly 0.0 and n/n a high end of exactly 1.0.

    Raises:
        BadInputError: `n` < 0, `correct` outside [0, n], or `confidence` outside (0, 1).
    """
    _check_confidence(confidence)
    if n < 0 or not 0 <= correct <= n:
        raise BadInputError(f"wilson_interval needs 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return Interval(0.0, 1.0)
    z = float(scipy_stats.norm.ppf((1.0 + confidence) / 2.0))
    p = correct / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    # At 0/n and n/n the formula's end is exactly 0 or 1; say so instead of 1 - 1e-16.
    low = 0.0 if correct == 0 else centre - half
    high = 1.0 if correct == n else centre + half
    return Interval(low, high)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """The mean of `values` (one per repeat/seed) with a Student-t interval on n - 1 degrees of freedom.

    mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n), s the sample standard deviation (ddof=1).
    One value returns (value, nan, nan): one seed says nothing about seed-to-seed spread, and an
    interval of zero width would claim it does; callers show "n/a". The interval is not clipped
    to [0, 1]: it is a statement about a mean, and clipping would hide how wide it is.

    Raises:
        BadInputError: no values, a value that is not finite, or `confidence` outside (0, 1).
    """
    _check_confidence(confidence)
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise BadInputError(f"t_interval needs one or more finite values, got {array.size} with shape {array.shape}")
    mean = float(array.mean())
    if array.size == 1:
        return MeanInterval(mean, math.nan, math.nan)
    standard_error = float(array.std(ddof=1)) / math.sqrt(array.size)
    half = float(scipy_stats.t.ppf((1.0 + confidence) / 2.0, array.size - 1)) * standard_error
    return MeanInterval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class PairedComparison:
    """Two models on the same `n` examples: `a_only` examples only A got right, `b_only` only B.

    `p_value` is the exact two-sided McNemar test of "A and B are equally accurate".
    """

    n: int
    a_only: int
    b_only: int
    p_value: float

    @property
    def disagreements(self) -> int:
        return self.a_only + self.b_only

    def sentence(self, a_name: str = "A", b_name: str = "B") -> str:
        """One plain sentence, e.g. "A is better than B on 12 of 14 disagreements, p = 0.013"."""
        if self.disagreements == 0:
            return f"{a_name} and {b_name} agree on all {self.n} examples; there is nothing to compare"
        p_text = format_p(self.p_value)
        if self.a_only == self.b_only:
            return f"{a_name} and {b_name} each win {self.a_only} of {self.disagreements} disagreements, {p_text}"
        winner, loser = (a_name, b_name) if self.a_only > self.b_only else (b_name, a_name)
        wins = max(self.a_only, self.b_only)
        return f"{winner} is better than {loser} on {wins} of {self.disagreements} disagreements, {p_text}"


def format_p(p_value: float) -> str:
    """A p-value as printed: three decimals ("p = 0.013"), or "p < 0.001" where more digits mean nothing."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> PairedComparison:
    """The exact two-sided McNemar test of two models' per-example results (same examples, same order).

    p = binomtest(a_only, a_only + b_only, 0.5).pvalue; with no disagreement at all p = 1.0
    (the data cannot tell the two apart).

    Raises:
        BadInputError: the two masks are not one-dimensional or differ in length.
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise BadInputError(f"paired comparison needs two results on the same examples, got {a.shape} and {b.shape}")
    a_only = int(np.count_nonzero(a & ~b))
    b_only = int(np.count_nonzero(b & ~a))
    p_value = 1.0 if a_only + b_only == 0 else float(scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return PairedComparison(n=int(a.size), a_only=a_only, b_only=b_only, p_value=p_value)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    With the m p-values sorted ascending, the i-th smallest (i from 0) becomes
    min(1, max over j <= i of (m - j) * p_(j)): the running maximum keeps the adjusted values
    monotone in the raw ones. An adjusted value <= alpha is significant with the family-wise
    error rate held at alpha.

    Raises:
        BadInputError: a p-value outside [0, 1] (NaN included).
    """
    outside = [p for p in p_values if not 0.0 <= p <= 1.0]  # written so that NaN counts as outside
    if outside:
        raise BadInputError(f"p-values must lie in [0, 1], got {outside[0]!r}")
    m = len(p_values)
    adjusted = [0.0] * m
    running_max = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running_max = max(running_max, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running_max
    return adjusted


def tied_with_best(best_correct: Sequence[bool], others_correct: Sequence[Sequence[bool]],
                   alpha: float = 0.05) -> list[bool]:
    """For each of `others_correct`, whether it is statistically tied with the best model.

    Each is compared with `best_correct` by `mcnemar_exact`; the p-values are Holm-adjusted across
    these comparisons (the ones shown together), and a model is tied unless its adjusted p <= alpha.
    The test is two-sided: False means "differs from #1", which on a leaderboard sorted by this
    metric means worse.

    Raises:
        BadInputError: `alpha` outside (0, 1), or a mask on different examples than the best's.
    """
    if not 0.0 < alpha < 1.0:
        raise BadInputError(f"alpha must lie in (0, 1), got {alpha}")
    p_values = [mcnemar_exact(best_correct, other).p_value for other in others_correct]
    return [p > alpha for p in holm_adjust(p_values)]


def examples_id(example_ids: Sequence[str] | Sequence[int] | np.ndarray) -> str:
    """The identity of an ordered list of examples (file names or indices): a sha256 hex digest.

    Two result files are comparable only if they carry the same identity: same examples, same order.
    """
    items = example_ids.tolist() if isinstance(example_ids, np.ndarray) else list(example_ids)
    canonical = json.dumps([item if isinstance(item, str) else int(item) for item in items], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)  # eq on an array field would be ambiguous; compare fields instead
class ExampleResults:
    """Which examples (the list named by `examples_id`) one job got right, one bool each, in order."""

    examples_id: str
    correct: np.ndarray


def encode_correct(mask: np.ndarray, examples: str) -> bytes:
    """The file for a bool `mask` over the examples identified by `examples` (see `examples_id`).

    Layout: one JSON line `{"format", "version", "n", "examples"}`, then ceil(n/8) bytes of
    `np.packbits(mask)` (big-endian bit order, zero padding). 10,000 examples take ~1.4 kB.

    Raises:
        BadInputError: `mask` is not a one-dimensional bool array, or `examples` is empty.
    """
    array = np.asarray(mask)
    if array.ndim != 1 or array.dtype != np.bool_:
        raise BadInputError(f"a correctness mask must be a 1-D bool array, got {array.dtype} of shape {array.shape}")
    if not examples:
        raise BadInputError("a correctness mask needs the identity of its examples")
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "n": int(array.size), "examples": examples}
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + np.packbits(array).tobytes()


def decode_correct(data: bytes) -> ExampleResults:
    """Read a file written by `encode_correct`, checking every field.

    Raises:
        BadInputError: not such a file, another version, or a payload that does not match `n`.
    """
    newline = data.find(b"\n", 0, _MAX_HEADER_BYTES)
    n, examples = _parse_header(data[:newline] if newline >= 0 else b"")
    payload = np.frombuffer(data[newline + 1:], dtype=np.uint8)
    if payload.size != (n + 7) // 8:
        raise BadInputError(f"correctness file: header says {n} examples but the payload holds {payload.size} bytes")
    bits = np.unpackbits(payload)
    if bits[n:].any():  # a writer that got n wrong leaves set bits in the padding
        raise BadInputError(f"correctness file: bits set past the {n} examples the header declares")
    return ExampleResults(examples_id=examples, correct=bits[:n].astype(bool))


def _parse_header(line: bytes) -> tuple[int, str]:
    """The example count and examples identity from the JSON header line of a correctness file."""
    try:
        header = json.loads(line.decode("utf-8")) if line else None
    except (UnicodeDecodeError, json.JSONDecodeError):  # any undecodable header is simply not our file
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise BadInputError(f"not a correctness file (expected a {FORMAT_NAME!r} JSON header line)")
    if header.get("version") != FORMAT_VERSION:
        raise BadInputError(f"correctness file version {header.get('version')!r}; this reader knows {FORMAT_VERSION}")
    n, examples = header.get("n"), header.get("examples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or not isinstance(examples, str) or not examples:
        raise BadInputError(f"correctness file header: bad n={n!r} or examples={examples!r}")
    return n, examples


def require_same_examples(results: Sequence[ExampleResults]) -> None:
    """Raise BadInputError unless all `results` are about the same examples in the same order."""
    identities = {(result.examples_id, result.correct.size) for result in results}
    if len(identities) > 1:
        described = ", ".join(f"{eid[:12]} ({size} examples)" for eid, size in sorted(identities))
        raise BadInputError(f"results are on different validation examples and cannot be paired: {described}")


def compare_results(a: ExampleResults, b: ExampleResults) -> PairedComparison:
    """`mcnemar_exact` of two decoded files, after checking they are on the same examples."""
    require_same_examples([a, b])
    return mcnemar_exact(a.correct, b.correct)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise BadInputError(f"confidence must lie in (0, 1), got {confidence}")
