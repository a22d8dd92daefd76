"""Search-space distributions and dimensions: what a sampled search draws its values from.

A study file may give, wherever it accepts a list of values, a distribution instead:
`{"distribution": "log_uniform", "low": 1e-5, "high": 1e-1}`, `"uniform"` (with an optional
`"step"`) or `"int_uniform"` (with an optional `"step"`, or `"log": true`). A list is a
categorical dimension; a distribution a numerical one. Every sampler maps a point of the unit
cube to values the same way (`Dimension.value`): a seeded random draw (`random`), a scrambled
Sobol sequence (`sobol`), or Optuna's TPE through the same bounds (`Dimension.optuna`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, model_validator

DISTRIBUTION_FIELDS = ("low", "high", "step", "log")  # a bound's own message names its field (study.parse_study)
_EPSILON = 1e-9


class Distribution(BaseModel):
    """A numerical dimension of the search space."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    distribution: Literal["uniform", "log_uniform", "int_uniform"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if not self.low < self.high:
            raise ValueError(f"high: {self.high:g} is not above low {self.low:g}")
        if self.distribution == "log_uniform" and self.low <= 0:
            raise ValueError(f"low: a log_uniform distribution needs low > 0, got {self.low:g}")
        if self.log and self.distribution != "int_uniform":
            raise ValueError('log: only int_uniform takes "log" (use "log_uniform")')
        if self.distribution == "log_uniform" and self.step is not None:
            raise ValueError("step: a log_uniform distribution has no step")
        if self.distribution == "int_uniform":
            self._integer_bounds()
        if self.step is not None and not _whole((self.high - self.low) / self.step):
            raise ValueError(f"step: high - low ({self.high - self.low:g}) is not a multiple of step {self.step:g}")
        return self

    def _integer_bounds(self) -> None:
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if value is not None and not _whole(value):
                raise ValueError(f"{name}: an int_uniform distribution takes whole numbers, got {value:g}")
        if self.log and self.low < 1:
            raise ValueError(f"low: a log int_uniform distribution needs low >= 1, got {self.low:g}")
        if self.log and self.step not in (None, 1):
            raise ValueError('step: "log": true takes no step')

    @property
    def is_int(self) -> bool:
        return self.distribution == "int_uniform"

    def value(self, u: float) -> float | int:
        """The value at quantile `u` in [0, 1): uniform in the value (or its log), on the step grid."""
        u = min(max(u, 0.0), 1.0 - _EPSILON)
        if self.distribution == "log_uniform" or self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
            if self.is_int:
                return min(max(round(value), int(self.low)), int(self.high))
            return min(max(value, self.low), self.high)  # exp(log(low)) can be an ulp below low: Optuna refuses that
        step = self.step if self.step is not None else (1.0 if self.is_int else None)
        if step is None:
            return self.low + u * (self.high - self.low)
        value = self.low + step * math.floor(u * (round((self.high - self.low) / step) + 1))
        return int(round(value)) if self.is_int else min(value, self.high)  # low + n * step may be an ulp above


def _whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-9 * max(1.0, abs(value))


def is_distribution(value: Any) -> bool:
    return isinstance(value, Distribution)


def listify(value: Any) -> Any:
    """A study-file value as a swept axis: a list or a distribution as it is, a scalar as [scalar]."""
    if isinstance(value, (list, Distribution)) or value is None:
        return value
    if isinstance(value, dict) and "distribution" in value:
        return value
    return [value]


def _bounds_fit(element: Any) -> Any:
    """An after-validator: a distribution's bounds must be values the parameter itself accepts."""
    adapter = TypeAdapter(element)
    integral = _is_int(element)

    def check(value: Any) -> Any:
        if not isinstance(value, Distribution):
            return value
        if integral and not value.is_int:
            raise ValueError(f"distribution: this parameter takes whole numbers: use int_uniform, not {value.distribution}")
        for name in ("low", "high"):
            bound = getattr(value, name)
            try:
                adapter.validate_python(int(bound) if integral else bound)
            except ValidationError as exc:
                raise ValueError(f"{name}: {exc.errors()[0]['msg'].lower()} (got {bound:g})") from None
        return value

    return check


def _is_int(element: Any) -> bool:
    base = getattr(element, "__origin__", element)
    return base is int


def swept(element: Any, fixed: bool = False) -> Any:
    """The study-file type of a parameter that takes a list of `element` values or a distribution
    over them (booleans and other non-numbers: lists only); `fixed`: or one value, kept as it is."""
    base = getattr(element, "__origin__", element)
    values = Annotated[list[element], Field(min_length=1)]  # type: ignore[valid-type]
    if base not in (int, float):
        return values
    # Tagged by shape, so that a bad value's error is its own shape's, not "not a list".
    members = [Annotated[values, Tag("Values")], Annotated[Distribution, Tag("Distribution")]]
    if fixed:
        members.append(Annotated[element, Tag("Fixed")])
    return Annotated[Union[tuple(members)], Discriminator(_shape), AfterValidator(_bounds_fit(element))]


def _shape(value: Any) -> str:
    if isinstance(value, (dict, Distribution)):
        return "Distribution"
    return "Values" if isinstance(value, list) else "Fixed"


@dataclass(frozen=True)
class Dimension:
    """One dimension of a study's search space: `choices` (categorical: a trial's param is the
    index of its choice) or `distribution` (numerical: the param is the value itself)."""

    name: str  # the JSON path it comes from: "batch_size", "optimizer[0].learning_rate", "head.units"
    choices: Sequence[Any] | None = None
    distribution: Distribution | None = None

    @property
    def varies(self) -> bool:
        """Whether the dimension has more than one value (a trial's params hold only those)."""
        return self.distribution is not None or len(self.choices or ()) > 1

    def param(self, u: float) -> float:
        """The trial param at quantile `u`: a choice's index, or a value of the distribution."""
        if self.distribution is not None:
            return float(self.distribution.value(u))
        assert self.choices is not None
        return float(min(int(u * len(self.choices)), len(self.choices) - 1))

    def decode(self, param: float) -> Any:
        """The value a trial param stands for (what the job trains with)."""
        if self.distribution is not None:
            return int(round(param)) if self.distribution.is_int else float(param)
        assert self.choices is not None
        return self.choices[int(param)]

    def optuna(self) -> Any:
        """This dimension as an Optuna distribution (imported here only: submit-time TPE needs it)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(range(len(self.choices))))
        d = self.distribution
        assert d is not None
        if d.is_int:
            return IntDistribution(int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
        log = d.distribution == "log_uniform"
        return FloatDistribution(d.low, d.high, log=log, step=d.step)
