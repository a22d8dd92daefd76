"""The study file (`sweep.json`) and its expansion into jobs.

A list in `parameters` means "one of these"; optimizer entries expand their own lists. The grid
is the product of every list, each grid point one distinct job; `search` picks all of it or a
seeded subset. The grid's size is computed before anything is expanded, and capped.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import random
import re
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.architectures import ARCHITECTURES
from shared.errors import BadInputError
from shared.jobs import (
    ArchitectureName,
    Augmentation,
    EarlyStopping,
    Head,
    JobSpec,
    ModelSpec,
    TrainingSpec,
    Trial,
    WeightsRef,
    first_error,
    job_id_for,
    short_hash,
)
from shared.limits import GRID_CAP, BatchSize, Epochs, HeadUnits, ImageSize, Location, Repeats, StudySeed, Top, UnfreezeFrom
from shared.optimizers import CONCRETE_CLASSES, GRID_CLASSES, OptimizerDefaults, OptimizerGrid, OptimizerSpec, Sgd, with_defaults
from shared.space import DISTRIBUTION_FIELDS, Dimension, Distribution, listify, swept
from shared.untrusted import load_json

STUDY_SCHEMA_VERSION = 1
MAX_STUDY_BYTES = 1024 * 1024  # a study of the largest grid allowed is a few KiB
MAX_OPTIMIZER_ENTRIES = 100  # each entry sweeps its own lists; entries are compared pairwise for overlaps
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # the study id is a slug of it


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_PARALLEL = 10_000  # trials in flight at once: the fleet's size, at most
Parallel = Annotated[int, Field(ge=1, le=MAX_PARALLEL)]
Count = Annotated[int, Field(ge=1, le=GRID_CAP)]


class GridSearch(_Strict):
    method: Literal["grid"] = "grid"
    parallel: Parallel | None = None  # jobs in flight at once (shared.search); None: all of them


class RandomSearch(_Strict):
    method: Literal["random"]
    fraction: float | None = Field(None, gt=0, le=1)
    count: Count | None = None
    seed: StudySeed = 0
    parallel: Parallel | None = None

    @model_validator(mode="after")
    def _one_size(self) -> RandomSearch:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of fraction or count")
        return self

    def size(self, grid_size: int) -> int:
        if self.count is not None:
            return min(self.count, grid_size)
        return max(1, math.floor(self.fraction * grid_size + 1e-9))  # type: ignore[operator]


class SobolSearch(_Strict):
    """Quasi-random: a scrambled Sobol sequence (scipy.stats.qmc) over the space's unit cube."""

    method: Literal["sobol"]
    count: Count
    seed: StudySeed = 0
    parallel: Parallel | None = None


class TpeSearch(_Strict):
    """Bayesian: Optuna's TPE sampler proposes each trial from the finished ones (shared.search);
    the first `startup` trials are drawn at random."""

    method: Literal["tpe"]
    count: Count
    seed: StudySeed = 0
    startup: int = Field(8, ge=1, le=GRID_CAP)
    parallel: Parallel = 4  # proposals made before their predecessors' results: fewer learn more


class AshaSearch(_Strict):
    """Asynchronous successive halving over `count` randomly drawn trials: rungs at `min_epochs`
    * `reduction_factor`**i epochs up to `training.epochs`; the top 1/eta of a rung go on."""

    method: Literal["asha"]
    count: Count
    seed: StudySeed = 0
    min_epochs: Epochs = 1
    reduction_factor: int = Field(3, ge=2, le=100)
    parallel: Parallel = 4


SAMPLED_METHODS = ("sobol", "tpe", "asha")  # always trials (random too, over distributions)
ADAPTIVE_METHODS = ("tpe", "asha")  # decide as results arrive
Search = Annotated[
    Union[GridSearch, RandomSearch, SobolSearch, TpeSearch, AshaSearch], Field(discriminator="method")
]


class Budget(_Strict):
    """When to stop enqueuing: no new job once one of these is reached (running jobs finish)."""

    jobs: Count | None = None
    gpu_hours: float | None = Field(None, gt=0, le=1e6)
    usd: float | None = Field(None, gt=0, le=1e9)

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.jobs is None and self.gpu_hours is None and self.usd is None:
            raise ValueError("give at least one of jobs, gpu_hours, usd")
        return self


Fraction = Annotated[float, Field(gt=0, le=1)]
Dropout = Annotated[float, Field(ge=0, lt=1)]


class Parameters(_Strict):
    """The swept axes. A scalar means a fixed value; a list means one of these."""

    architecture: list[ArchitectureName] = Field(min_length=1)
    weights: list[WeightsRef] = Field(["imagenet"], min_length=1)
    image_size: swept(ImageSize) | None = None  # type: ignore[valid-type]
    optimizer: list[OptimizerGrid] = Field(  # type: ignore[valid-type]
        default_factory=lambda: [GRID_CLASSES["adam"]()], min_length=1, max_length=MAX_OPTIMIZER_ENTRIES
    )
    batch_size: swept(BatchSize) = [32]  # type: ignore[valid-type]
    data_fraction: swept(Fraction) = [1.0]  # type: ignore[valid-type]
    augmentation: list[bool | Augmentation] = Field([False], min_length=1)

    _listify_all = field_validator("*", mode="before")(listify)


class StudyHead(_Strict):
    """The head, as the study file gives it: `units` and `dropout` may be swept (a list or a
    distribution), the rest is fixed. A fixed value is kept as it was written (the study id)."""

    pooling: Literal["flatten", "avg"] = "avg"
    units: swept(HeadUnits, fixed=True) = 1024  # type: ignore[valid-type]
    dropout: swept(Dropout, fixed=True) = 0.0  # type: ignore[valid-type]
    kernel_l2: float = Field(0.01, ge=0)
    activity_l1: float = Field(0.01, ge=0)


class Training(_Strict):
    epochs: Epochs = 10
    early_stopping: EarlyStopping | None = EarlyStopping()
    repeats: Repeats = 1
    feature_cache: bool = True
    # Keras's mixed_float16 policy (float16 compute, float32 weights and softmax): faster on GPUs
    # with tensor cores. Off by default, and left out of the study id while off.
    mixed_precision: bool = False


class FinetuneFollowUp(_Strict):
    top: Top = 1
    unfreeze_from: UnfreezeFrom = None
    optimizer: OptimizerSpec = Sgd(learning_rate=1e-4, momentum=0.9)
    epochs: Epochs | None = None
    early_stopping: EarlyStopping | None = EarlyStopping(patience=3)


class EvaluateFollowUp(_Strict):
    top: Top = 3


class StudySpec(_Strict):
    version: Literal[1] = STUDY_SCHEMA_VERSION
    name: str
    dataset: Location
    image_size: ImageSize = 224
    validation_split: float = Field(0.2, gt=0, lt=1)
    seed: StudySeed = 0
    search: Search = GridSearch()
    parameters: Parameters
    training: Training = Training()
    head: StudyHead = StudyHead()
    finetune: FinetuneFollowUp | None = None
    evaluate: EvaluateFollowUp | None = None
    max_jobs: int = Field(10_000, ge=1, le=GRID_CAP)
    budget: Budget | None = None
    # Whose defaults fill the optimizer parameters that `parameters.optimizer` leaves out:
    # Keras 3's, or Keras 2's ("keras2", shared.optimizers.KERAS2_DEFAULTS) to replay an old study.
    optimizer_defaults: OptimizerDefaults = "keras3"

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return name

    @model_validator(mode="after")
    def _sizes_fit_architectures(self) -> StudySpec:
        sizes = _values(self.parameters.image_size) if self.parameters.image_size else [self.image_size]
        for index, name in enumerate(self.parameters.architecture):
            for size in sizes:
                for weights in self.parameters.weights:
                    reason = ARCHITECTURES[name].size_error(size, weights)
                    if reason:
                        raise ValueError(f"parameters.architecture[{index}]: {reason}")
        return self

    @model_validator(mode="after")
    def _optimizer_entries_distinct(self) -> StudySpec:
        # Overlapping entries would make one job twice; the grid's arithmetic counts each once only
        # if no two entries share a configuration (a value listed twice within one entry is fine).
        overlap = _optimizer_overlap(optimizer_entries(self))
        if overlap:
            later, earlier, name, shared = overlap
            raise ValueError(
                f"parameters.optimizer[{later}]: gives an optimizer that parameters.optimizer[{earlier}] gives"
                f" already ({name} with {shared}): list each configuration once"
            )
        return self

    @model_validator(mode="after")
    def _search_fits_space(self) -> StudySpec:
        problem = search_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _grid_under_cap(self) -> StudySpec:
        if is_sampled(self):
            total = self.search.count * self.training.repeats  # type: ignore[union-attr]
        elif isinstance(self.search, RandomSearch):
            total = self.search.size(grid_size(self)) * self.training.repeats
        else:
            total = grid_size(self) * self.training.repeats
        if total > self.max_jobs:
            raise ValueError(f"parameters: the study expands to {total} jobs, above max_jobs {self.max_jobs}")
        return self

    @property
    def study_id(self) -> str:
        """Deterministic: the same study file gives the same id, so resubmitting creates nothing."""
        slug = re.sub(r"[^a-z0-9-]+", "-", self.name.lower()).strip("-")[:40]
        return f"{slug}-{short_hash(self.canonical_json(), 8)}"

    def canonical_json(self) -> str:
        # Without `optimizer_defaults` and `training.mixed_precision` at their defaults: a study
        # written before the fields keeps its id.
        exclude: dict[str, Any] = {}
        if self.optimizer_defaults == "keras3":
            exclude["optimizer_defaults"] = True
        if not self.training.mixed_precision:
            exclude["training"] = {"mixed_precision": True}
        if self.budget is None:
            exclude["budget"] = True
        if getattr(self.search, "parallel", 0) is None:
            exclude["search"] = {"parallel": True}
        data = self.model_dump(mode="json", exclude=exclude or None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


# --- warnings --------------------------------------------------------------------------------
#
# A valid study can still be one that only measures noise. These are said at submission (one line
# each, never an error: a study may mean it, e.g. to show what an untrained base gives).

TRAINING_METRICS = ("accuracy", "loss")  # logged on the training images, which the model fits


def asha_rungs(spec: StudySpec) -> list[int]:
    """ASHA's rungs as cumulative epochs: r, r*eta, r*eta**2, ... below `training.epochs`, then
    it; [training.epochs] for any other method."""
    search, top = spec.search, spec.training.epochs
    if not isinstance(search, AshaSearch):
        return [top]
    epochs, out = search.min_epochs, []
    while epochs < top:
        out.append(epochs)
        epochs *= search.reduction_factor
    return out + [top]


def _asha_warning(spec: StudySpec) -> str | None:
    """At most floor(count / eta**i) trials reach rung i: too few trials leave the top rungs empty."""
    if not isinstance(spec.search, AshaSearch):
        return None
    epochs = asha_rungs(spec)
    reaching = [spec.search.count // spec.search.reduction_factor**i for i in range(len(epochs))]
    if reaching[-1]:
        return None
    furthest = max(i for i, n in enumerate(reaching) if n)
    return (f"search.count: {spec.search.count} trials with reduction_factor {spec.search.reduction_factor} reach at "
            f"most rung {furthest} ({epochs[furthest]} epochs): none trains to training.epochs ({epochs[-1]}); "
            f"use count >= {spec.search.reduction_factor ** (len(epochs) - 1)}")


def study_warnings(spec: StudySpec) -> list[str]:
    """One line per way `spec` can only produce noise, each naming its JSON path:
    a frozen base with `weights: null` (a random base's features are ~0, so every head on them
    learns the same nothing), early stopping (which also picks the best epoch) on a training
    metric, which follows the fit to the training images instead of the validation score, and an
    ASHA search with too few trials for its top rung (no trial would train to `training.epochs`)."""
    warnings = []
    frozen = [a for a in _unique(spec.parameters.architecture) if not ARCHITECTURES[a].is_benchmark]
    if frozen and None in spec.parameters.weights:
        index = spec.parameters.weights.index(None)
        warnings.append(
            f"parameters.weights[{index}]: null gives {', '.join(frozen)} a random frozen base whose features are ~0: "
            'its jobs learn noise (use "imagenet" or a weights file)'
        )
    stops = {"training.early_stopping": spec.training.early_stopping,
             "finetune.early_stopping": spec.finetune.early_stopping if spec.finetune else None}
    for path, stopping in stops.items():
        if stopping is not None and stopping.monitor in TRAINING_METRICS:
            warnings.append(
                f"{path}.monitor: {stopping.monitor!r} is a training metric: the best epoch and the stop follow the fit "
                f"to the training images, not the validation score (use 'val_{stopping.monitor}')"
            )
    asha = _asha_warning(spec)
    return warnings + ([asha] if asha else [])


# --- loading ---------------------------------------------------------------------------------


def parse_study(data: str | bytes, source: str = "study") -> StudySpec:
    """Parse and validate a study file's bytes (UTF-8) or text.

    Raises BadInputError, one line naming the bad field's JSON path (or `source` for a document
    that is not JSON, not UTF-8, too large or too deeply nested).
    """
    document = load_json(data, source, MAX_STUDY_BYTES)
    if not isinstance(document, dict):
        raise BadInputError("a study file is a JSON object", source)
    try:
        return StudySpec.model_validate(document)
    except ValidationError as exc:
        message, path = first_error(exc)
        if not path and message.startswith(("parameters", "training", "search")) and ": " in message:
            path, message = message.split(": ", 1)  # our validators name their path
        if message.split(": ", 1)[0] in DISTRIBUTION_FIELDS + ("distribution",):
            field, message = message.split(": ", 1)  # a distribution's bound names itself
            path = f"{path}.{field}" if path else field
        raise BadInputError(_with_suggestion(message, path), path or source) from None


def _with_suggestion(message: str, path: str) -> str:
    """An unknown field is most often a typo (name the field meant) or a field put in the wrong
    block (name the blocks it belongs in)."""
    if message != "unknown field":
        return message
    key = re.split(r"[.\]]", path)[-1]
    homes = _field_homes()
    if key in homes:
        return f"unknown field here (it belongs in {', '.join(homes[key])})"
    close = difflib.get_close_matches(key, homes, n=1, cutoff=0.7)
    return f"unknown field (did you mean {close[0]!r}?)" if close else message


@functools.cache
def _field_homes() -> dict[str, list[str]]:
    """Every field of the study file, with the blocks that have it."""
    blocks: list[tuple[str, type[BaseModel]]] = [
        ("the top level", StudySpec), ("parameters", Parameters), ("training", Training), ("finetune", FinetuneFollowUp),
        ("evaluate", EvaluateFollowUp), ("search", RandomSearch), ("search", TpeSearch), ("search", AshaSearch),
        ("head", StudyHead), ("budget", Budget), ("a distribution", Distribution), ("early_stopping", EarlyStopping),
        ("augmentation", Augmentation), *CONCRETE_CLASSES.items(),
    ]
    homes: dict[str, list[str]] = {}
    for block, model in blocks:
        for name in model.model_fields:
            names = homes.setdefault(name, [])
            if block not in names:
                names.append(block)
    return homes


# --- the grid --------------------------------------------------------------------------------
#
# A grid point is one training job (before repeats) and no two points are the same job, so that the
# grid's size is the study's job count and a random subset of its indices is a subset of distinct
# jobs, all without expanding anything:
# - every axis, and every list in an optimizer entry, keeps each value once; augmentations are
#   compared by what they do (`false` and an augmentation that changes nothing are one);
# - the benchmark CNN takes no pretrained weights: whatever `weights` lists, its weights axis is
#   [null], so each architecture owns a block of the grid of its own size;
# - optimizer entries that share a configuration are refused (`_optimizer_entries_distinct`).

T = TypeVar("T", bound=Hashable)


def _unique(values: Iterable[T]) -> list[T]:
    """`values` without repeats, in first-seen order (as Python compares them: 0.01 == 1e-2)."""
    return list(dict.fromkeys(values))


def _optimizer_overlap(entries: Sequence[Any]) -> tuple[int, int, str, str] | None:
    """(later index, earlier index, name, "k=v, ...") of the first two optimizer grid entries that
    give one configuration, or None. Two entries overlap when every parameter's lists share a
    value; with at most MAX_OPTIMIZER_ENTRIES entries, comparing each pair (as sets) stays cheap."""
    listed = [entry for entry in entries if not _swept_by_distribution(entry)]  # a sampled search: no grid to count
    choices = [(entry.name, {k: set(v) for k, v in entry.model_dump(exclude={"name"}).items()}) for entry in listed]
    for later, (name, fields) in enumerate(choices):
        for earlier, (other_name, other) in enumerate(choices[:later]):
            if name == other_name and all(not fields[k].isdisjoint(other[k]) for k in fields):
                return later, earlier, name, ", ".join(f"{k}={min(fields[k] & other[k])}" for k in fields)
    return None


def optimizer_entries(spec: StudySpec) -> list[Any]:
    """`parameters.optimizer` with the study's `optimizer_defaults` in every parameter an entry
    leaves out: what the grid sweeps, so that each job spec carries the values it trains with."""
    return [with_defaults(entry, spec.optimizer_defaults) for entry in spec.parameters.optimizer]


def _swept_by_distribution(entry: Any) -> bool:
    return any(isinstance(value, Distribution) for value in dict(entry).values())


def _optimizer_points(spec: StudySpec) -> list[list[Any]]:
    """Per optimizer entry: {"name": ...}, then its parameter axes as lists of {param: value}."""
    entries = []
    for entry in optimizer_entries(spec):
        data = entry.model_dump()
        name = data.pop("name")
        entries.append([{"name": name}] + [[{k: v} for v in _unique(values)] for k, values in data.items()])
    return entries


def _count_optimizers(spec: StudySpec) -> int:
    return sum(math.prod(len(axis) for axis in entry[1:]) for entry in _optimizer_points(spec))


def _digits(axes: Sequence[Sequence[Any]], index: int) -> list[Any]:
    """The grid point `index` of the product of `axes` (mixed radix, the last axis fastest)."""
    digits = []
    for axis in reversed(axes):
        index, digit = divmod(index, len(axis))
        digits.append(axis[digit])
    return digits[::-1]


@dataclass(frozen=True)
class _Grid:
    """A study's distinct grid points: per architecture (in the study's order), its weights times
    the other axes. A point is [architecture, weights, image size, optimizer index, batch size,
    data fraction, augmentation, head units, head dropout]."""

    architectures: list[str]
    weights: list[str | None]
    others: list[Sequence[Any]]  # image size, optimizer index (a range), batch size, data fraction, augmentation, head

    def weights_of(self, architecture: str) -> list[str | None]:
        return [None] if ARCHITECTURES[architecture].is_benchmark else self.weights

    def block_size(self, architecture: str) -> int:
        return len(self.weights_of(architecture)) * math.prod(len(axis) for axis in self.others)

    @property
    def size(self) -> int:
        return sum(self.block_size(architecture) for architecture in self.architectures)

    def point(self, index: int) -> list[Any]:
        for architecture in self.architectures:
            if index < self.block_size(architecture):
                return [architecture, *_digits([self.weights_of(architecture), *self.others], index)]
            index -= self.block_size(architecture)
        raise IndexError(index)


def _grid(spec: StudySpec) -> _Grid:
    params = spec.parameters
    return _Grid(
        architectures=_unique(params.architecture),
        weights=_unique(params.weights),
        others=[
            _unique(params.image_size or [spec.image_size]),
            range(_count_optimizers(spec)),  # distinct within each entry, and entries never overlap
            _unique(params.batch_size),
            _unique(params.data_fraction),
            _unique(_augmentation(value) for value in params.augmentation),
            _unique(_values(spec.head.units)),  # head axes last: a study without them keeps its order
            _unique(_values(spec.head.dropout)),
        ],
    )


def grid_size(spec: StudySpec) -> int:
    """The number of distinct grid points, computed without expanding anything (repeats excluded)."""
    return _grid(spec).size


def _nth_optimizer(spec: StudySpec, index: int) -> tuple[int, OptimizerSpec]:
    """The grid's optimizer `index`: (its entry's index in `parameters.optimizer`, the optimizer)."""
    for number, entry in enumerate(_optimizer_points(spec)):
        axes = entry[1:]
        count = math.prod(len(axis) for axis in axes)
        if index < count:
            params = dict(entry[0])
            for axis in reversed(axes):  # mixed-radix digits, last axis fastest
                index, digit = divmod(index, len(axis))
                params.update(axis[digit])
            return number, CONCRETE_CLASSES[params["name"]](**params)
        index -= count
    raise IndexError(index)


def selected_points(spec: StudySpec) -> list[int]:
    """Grid indices the search picks, in grid order. Random search is seeded and reproducible."""
    size = grid_size(spec)
    if isinstance(spec.search, RandomSearch):
        return sorted(random.Random(spec.search.seed).sample(range(size), spec.search.size(size)))
    return list(range(size))


def job_count(spec: StudySpec) -> int:
    """The jobs the study plans (an ASHA study's promotions come on top, shared.search.upper_bound)."""
    if is_sampled(spec):
        return spec.search.count * spec.training.repeats  # type: ignore[union-attr]
    return len(selected_points(spec)) * spec.training.repeats


def _augmentation(value: bool | Augmentation) -> Augmentation | None:
    if value is True:
        return Augmentation.default()
    if value is False or not value.enabled:  # type: ignore[union-attr]
        return None
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Choice:
    """One configuration of the study's space: what one training job (per repeat) trains."""

    architecture: str
    weights: str | None
    image_size: int
    optimizer: OptimizerSpec
    batch_size: int
    data_fraction: float
    augmentation: Augmentation | None
    units: int
    dropout: float


def _grid_choice(spec: StudySpec, point: list[Any]) -> Choice:
    architecture, weights, image_size, optimizer_index, batch_size, data_fraction, augmentation, units, dropout = point
    optimizer = _nth_optimizer(spec, optimizer_index)[1]
    return Choice(architecture, weights, image_size, optimizer, batch_size, data_fraction, augmentation, units, dropout)


def train_spec(spec: StudySpec, choice: Choice, repeat: int, trial: Trial | None = None) -> JobSpec:
    """The training job of `choice`'s `repeat` (of search trial `trial`, if it is one)."""
    head = Head(**{**spec.head.model_dump(), "units": choice.units, "dropout": choice.dropout})
    return JobSpec(
        kind="train",
        dataset=spec.dataset,
        validation_split=spec.validation_split,
        model=ModelSpec(architecture=choice.architecture, weights=choice.weights, image_size=choice.image_size, head=head),
        optimizer=choice.optimizer,
        training=TrainingSpec(
            batch_size=choice.batch_size,
            epochs=spec.training.epochs,
            data_fraction=choice.data_fraction,
            early_stopping=spec.training.early_stopping,
            augmentation=choice.augmentation,
            seed=spec.seed + repeat,
            feature_cache=spec.training.feature_cache,
            mixed_precision=spec.training.mixed_precision,
        ),
        repeat=repeat,
        trial=trial,
    )


def expand(spec: StudySpec) -> Iterator[tuple[str, JobSpec]]:
    """Yield (job_id, JobSpec) for every training job of a grid or list-sampled study, lazily, in
    grid order (a sampled search's trials come from shared.search)."""
    grid = _grid(spec)
    study_id = spec.study_id
    for index in selected_points(spec):
        choice = _grid_choice(spec, grid.point(index))
        for repeat in range(spec.training.repeats):
            job = train_spec(spec, choice, repeat)
            yield job_id_for(study_id, job), job


# --- the space of a sampled search -----------------------------------------------------------
#
# A sampled search (random over distributions, sobol, tpe, asha) draws trials from the space's
# dimensions; a trial's `params` hold, per dimension, the index of its choice or its value. Over
# a space of lists only, trials are distinct grid points instead (a seeded permutation of them),
# so that `count` equal to the grid's size tries every configuration once.


def _values(value: Any) -> list[Any]:
    """A fixed value, a list or (for its bounds) a distribution, as a list of values."""
    if isinstance(value, Distribution):
        return [value.low, value.high]
    return value if isinstance(value, list) else [value]


def _swept_fields(spec: StudySpec) -> dict[str, Any]:
    """Every sweepable field of the study by JSON path, with its list or distribution."""
    params = spec.parameters
    fields: dict[str, Any] = {
        "parameters.image_size": params.image_size, "parameters.batch_size": params.batch_size,
        "parameters.data_fraction": params.data_fraction, "head.units": spec.head.units, "head.dropout": spec.head.dropout,
    }
    for index, entry in enumerate(optimizer_entries(spec)):  # with the study's optimizer_defaults
        fields.update({f"parameters.optimizer[{index}].{k}": v for k, v in dict(entry).items() if k != "name"})
    return fields


def distribution_paths(spec: StudySpec) -> list[str]:
    return [path for path, value in _swept_fields(spec).items() if isinstance(value, Distribution)]


def is_sampled(spec: StudySpec) -> bool:
    """Whether the study's jobs are search trials (shared.search) rather than grid points."""
    return spec.search.method in SAMPLED_METHODS or (spec.search.method == "random" and bool(distribution_paths(spec)))


def search_problem(spec: StudySpec) -> str | None:
    """Why the search cannot run over this space ("path: reason"), or None."""
    paths = distribution_paths(spec)
    search = spec.search
    if paths and (isinstance(search, GridSearch) or (isinstance(search, RandomSearch) and search.count is None)):
        how = "a grid" if isinstance(search, GridSearch) else "random search by fraction (of a grid)"
        return f"{paths[0]}: {how} cannot sweep a distribution: use search.method random (with count), sobol, tpe or asha"
    if search.method in ADAPTIVE_METHODS and spec.training.repeats > 1:
        return f"training.repeats: {search.method} runs each trial once (use repeats 1)"
    if isinstance(search, AshaSearch) and search.min_epochs >= spec.training.epochs:
        return f"search.min_epochs: {search.min_epochs} leaves no rung below training.epochs ({spec.training.epochs})"
    return None


def dimensions(spec: StudySpec) -> list[Dimension]:
    """The space a sampled search draws from, in a fixed order (the trial params' names)."""
    params = spec.parameters
    dims = [Dimension("architecture", _unique(params.architecture)), Dimension("weights", _unique(params.weights))]
    fields = _swept_fields(spec)
    fields["parameters.image_size"] = params.image_size or [spec.image_size]
    dims.append(Dimension("optimizer", list(range(len(params.optimizer)))))
    dims.append(Dimension("augmentation", _unique(_augmentation(value) for value in params.augmentation)))
    for path, value in fields.items():
        name = path.removeprefix("parameters.")
        if isinstance(value, Distribution):
            dims.append(Dimension(name, distribution=value))
        else:
            dims.append(Dimension(name, _unique(_values(value))))
    return dims


def choice_of(spec: StudySpec, params: dict[str, float]) -> Choice:
    """The configuration a trial's params stand for (inactive optimizer entries' params ignored)."""
    values = {dim.name: dim.decode(params.get(dim.name, 0.0)) for dim in dimensions(spec)}  # a fixed one: its value
    entry = int(values["optimizer"])
    prefix = f"optimizer[{entry}]."
    chosen = {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
    name = spec.parameters.optimizer[entry].name
    optimizer = CONCRETE_CLASSES[name](name=name, **chosen)
    architecture = values["architecture"]
    weights = None if ARCHITECTURES[architecture].is_benchmark else values["weights"]
    return Choice(architecture, weights, values["image_size"], optimizer, values["batch_size"],
                  values["data_fraction"], values["augmentation"], values["head.units"], values["head.dropout"])


def active_dimensions(dims: Sequence[Dimension], params: dict[str, float]) -> list[Dimension]:
    """The dimensions a trial's params hold: those that vary, but for the optimizer entries it did not choose."""
    prefix = f"optimizer[{int(params.get('optimizer', 0))}]."
    return [d for d in dims if d.varies and (not d.name.startswith("optimizer[") or d.name.startswith(prefix))]


def grid_params(spec: StudySpec, index: int) -> dict[str, float]:
    """A grid point of a list-only space as trial params (each dimension's choice index)."""
    architecture, weights, image_size, optimizer_index, batch_size, fraction, augmentation, units, dropout = _grid(spec).point(index)
    entry, optimizer = _nth_optimizer(spec, optimizer_index)
    values: dict[str, Any] = {
        "architecture": architecture, "weights": weights, "optimizer": entry, "augmentation": augmentation,
        "image_size": image_size, "batch_size": batch_size, "data_fraction": fraction, "head.units": units, "head.dropout": dropout,
    }
    values.update({f"optimizer[{entry}].{k}": v for k, v in optimizer.model_dump(exclude={"name"}).items()})
    dims = active_dimensions(dimensions(spec), {"optimizer": entry})
    return {d.name: float(_index(d.choices or [], values[d.name])) for d in dims if d.name in values}


def _index(choices: Sequence[Any], value: Any) -> int:
    # The benchmark CNN's weights are null whatever the study lists: any choice stands for it.
    return list(choices).index(value) if value in choices else 0
