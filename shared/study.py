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
    WeightsRef,
    first_error,
    job_id_for,
    short_hash,
)
from shared.limits import GRID_CAP, BatchSize, Epochs, ImageSize, Location, Repeats, StudySeed, Top, UnfreezeFrom
from shared.optimizers import CONCRETE_CLASSES, GRID_CLASSES, OptimizerDefaults, OptimizerGrid, OptimizerSpec, Sgd, with_defaults
from shared.untrusted import load_json

STUDY_SCHEMA_VERSION = 1
MAX_STUDY_BYTES = 1024 * 1024  # a study of the largest grid allowed is a few KiB
MAX_OPTIMIZER_ENTRIES = 100  # each entry sweeps its own lists; entries are compared pairwise for overlaps
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # the study id is a slug of it


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GridSearch(_Strict):
    method: Literal["grid"] = "grid"


class RandomSearch(_Strict):
    method: Literal["random"]
    fraction: float | None = Field(None, gt=0, le=1)
    count: int | None = Field(None, ge=1, le=GRID_CAP)
    seed: StudySeed = 0

    @model_validator(mode="after")
    def _one_size(self) -> RandomSearch:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of fraction or count")
        return self

    def size(self, grid_size: int) -> int:
        if self.count is not None:
            return min(self.count, grid_size)
        return max(1, math.floor(self.fraction * grid_size + 1e-9))  # type: ignore[operator]


Search = Annotated[Union[GridSearch, RandomSearch], Field(discriminator="method")]


def _listify(value: Any) -> Any:
    return value if isinstance(value, list) or value is None else [value]


class Parameters(_Strict):
    """The swept axes. A scalar means a fixed value; a list means one of these."""

    architecture: list[ArchitectureName] = Field(min_length=1)
    weights: list[WeightsRef] = Field(["imagenet"], min_length=1)
    image_size: list[ImageSize] | None = Field(None, min_length=1)
    optimizer: list[OptimizerGrid] = Field(  # type: ignore[valid-type]
        default_factory=lambda: [GRID_CLASSES["adam"]()], min_length=1, max_length=MAX_OPTIMIZER_ENTRIES
    )
    batch_size: list[BatchSize] = Field([32], min_length=1)
    data_fraction: list[Annotated[float, Field(gt=0, le=1)]] = Field([1.0], min_length=1)
    augmentation: list[bool | Augmentation] = Field([False], min_length=1)

    _listify_all = field_validator("*", mode="before")(_listify)


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
    head: Head = Head()
    finetune: FinetuneFollowUp | None = None
    evaluate: EvaluateFollowUp | None = None
    max_jobs: int = Field(10_000, ge=1, le=GRID_CAP)
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
        sizes = self.parameters.image_size or [self.image_size]
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
    def _grid_under_cap(self) -> StudySpec:
        total = grid_size(self) * self.training.repeats
        if isinstance(self.search, RandomSearch):
            total = self.search.size(grid_size(self)) * self.training.repeats
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
        data = self.model_dump(mode="json", exclude=exclude or None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


# --- warnings --------------------------------------------------------------------------------
#
# A valid study can still be one that only measures noise. These are said at submission (one line
# each, never an error: a study may mean it, e.g. to show what an untrained base gives).

TRAINING_METRICS = ("accuracy", "loss")  # logged on the training images, which the model fits


def study_warnings(spec: StudySpec) -> list[str]:
    """One line per way `spec` can only produce noise, each naming its JSON path:
    a frozen base with `weights: null` (a random base's features are ~0, so every head on them
    learns the same nothing), and early stopping (which also picks the best epoch) on a
    training metric, which follows the fit to the training images instead of the validation score."""
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
    return warnings


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
        if not path and message.startswith("parameters") and ": " in message:  # our validators name their path
            path, message = message.split(": ", 1)
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
    blocks: dict[str, type[BaseModel]] = {
        "the top level": StudySpec, "parameters": Parameters, "training": Training, "finetune": FinetuneFollowUp,
        "evaluate": EvaluateFollowUp, "search": RandomSearch, "head": Head, "early_stopping": EarlyStopping,
        "augmentation": Augmentation, **CONCRETE_CLASSES,
    }
    homes: dict[str, list[str]] = {}
    for block, model in blocks.items():
        for name in model.model_fields:
            homes.setdefault(name, []).append(block)
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
    choices = [(entry.name, {k: set(v) for k, v in entry.model_dump(exclude={"name"}).items()}) for entry in entries]
    for later, (name, fields) in enumerate(choices):
        for earlier, (other_name, other) in enumerate(choices[:later]):
            if name == other_name and all(not fields[k].isdisjoint(other[k]) for k in fields):
                return later, earlier, name, ", ".join(f"{k}={min(fields[k] & other[k])}" for k in fields)
    return None


def optimizer_entries(spec: StudySpec) -> list[Any]:
    """`parameters.optimizer` with the study's `optimizer_defaults` in every parameter an entry
    leaves out: what the grid sweeps, so that each job spec carries the values it trains with."""
    return [with_defaults(entry, spec.optimizer_defaults) for entry in spec.parameters.optimizer]


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
    data fraction, augmentation]."""

    architectures: list[str]
    weights: list[str | None]
    others: list[Sequence[Any]]  # image size, optimizer index (a range), batch size, data fraction, augmentation

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
        ],
    )


def grid_size(spec: StudySpec) -> int:
    """The number of distinct grid points, computed without expanding anything (repeats excluded)."""
    return _grid(spec).size


def _nth_optimizer(spec: StudySpec, index: int) -> OptimizerSpec:
    for entry in _optimizer_points(spec):
        axes = entry[1:]
        count = math.prod(len(axis) for axis in axes)
        if index < count:
            params = dict(entry[0])
            for axis in reversed(axes):  # mixed-radix digits, last axis fastest
                index, digit = divmod(index, len(axis))
                params.update(axis[digit])
            return CONCRETE_CLASSES[params["name"]](**params)
        index -= count
    raise IndexError(index)


def selected_points(spec: StudySpec) -> list[int]:
    """Grid indices the search picks, in grid order. Random search is seeded and reproducible."""
    size = grid_size(spec)
    if isinstance(spec.search, RandomSearch):
        return sorted(random.Random(spec.search.seed).sample(range(size), spec.search.size(size)))
    return list(range(size))


def job_count(spec: StudySpec) -> int:
    return len(selected_points(spec)) * spec.training.repeats


def _augmentation(value: bool | Augmentation) -> Augmentation | None:
    if value is True:
        return Augmentation.default()
    if value is False or not value.enabled:  # type: ignore[union-attr]
        return None
    return value  # type: ignore[return-value]


def _train_spec(spec: StudySpec, point: list[Any], repeat: int) -> JobSpec:
    architecture, weights, image_size, optimizer_index, batch_size, data_fraction, augmentation = point
    return JobSpec(
        kind="train",
        dataset=spec.dataset,
        validation_split=spec.validation_split,
        model=ModelSpec(architecture=architecture, weights=weights, image_size=image_size, head=spec.head),
        optimizer=_nth_optimizer(spec, optimizer_index),
        training=TrainingSpec(
            batch_size=batch_size,
            epochs=spec.training.epochs,
            data_fraction=data_fraction,
            early_stopping=spec.training.early_stopping,
            augmentation=augmentation,
            seed=spec.seed + repeat,
            feature_cache=spec.training.feature_cache,
            mixed_precision=spec.training.mixed_precision,
        ),
        repeat=repeat,
    )


def expand(spec: StudySpec) -> Iterator[tuple[str, JobSpec]]:
    """Yield (job_id, JobSpec) for every training job of the study, lazily, in grid order."""
    grid = _grid(spec)
    study_id = spec.study_id
    for index in selected_points(spec):
        point = grid.point(index)
        for repeat in range(spec.training.repeats):
            job = _train_spec(spec, point, repeat)
            yield job_id_for(study_id, job), job
