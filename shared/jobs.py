"""What a job is (`JobSpec`), what travels on the queue (`JobMessage`) and the table rows.

Every field that a message or a record brings from outside is checked here, so that a worker
reading a job meets the same caps (`shared.limits`) and the same identifier rules
(`shared.paths.check_id`) as `submit` did: a document written by someone else is refused (a poison
message, a corrupt record), never run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared import SCHEMA_VERSION
from shared.architectures import ARCHITECTURES
from shared.errors import BadInputError
from shared.limits import GRID_CAP, MAX_LOCATION_CHARS, MAX_NAME_CHARS, BatchSize, Epochs, HeadUnits, ImageSize, JobSeed, Location, Patience, RepeatIndex, UnfreezeFrom
from shared.optimizers import OPTIMIZER_NAMES, OptimizerSpec, Sgd
from shared.paths import check_id, check_location
from shared.status import JobStatus
from shared.untrusted import load_json

JobKind = Literal["train", "finetune", "evaluate"]
MAX_MESSAGE_BYTES = 256 * 1024  # SQS's own limit; anything larger is poison
MONITORED_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")  # what training logs every epoch


def _value_error(check: Callable[..., str], *args: str) -> Callable[[Any], Any]:
    """A pydantic validator from one of `shared.paths`' checks: pydantic reports a ValueError with
    the field's JSON path, while a BadInputError would escape validation unlabelled."""

    def validate(value: Any) -> Any:
        if value is None:
            return value
        try:
            return check(value, *args)
        except BadInputError as exc:
            raise ValueError(str(exc)) from None

    return validate


def _known_architecture(name: str) -> str:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    return name


StudyId = Annotated[str, AfterValidator(_value_error(check_id, "study_id"))]
JobId = Annotated[str, AfterValidator(_value_error(check_id, "job_id"))]
ArchitectureName = Annotated[str, AfterValidator(_known_architecture)]
# "imagenet", null (random initialisation), or a .weights.h5 file in the artifact store.
WeightsRef = Annotated[str, Field(max_length=MAX_LOCATION_CHARS), AfterValidator(_value_error(check_location, "weights"))] | None


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Head(_Frozen):
    """The bottleneck head on top of a frozen base."""

    pooling: Literal["flatten", "avg"] = "avg"
    units: HeadUnits = 1024
    dropout: float = Field(0.0, ge=0, lt=1)
    kernel_l2: float = Field(0.01, ge=0)
    activity_l1: float = Field(0.01, ge=0)


class Augmentation(_Frozen):
    """Random transforms done with Keras preprocessing layers (factors as Keras takes them)."""

    rotation: float = Field(0.0, ge=0, le=1)
    shift: float = Field(0.0, ge=0, lt=1)
    shear: float = Field(0.0, ge=0, lt=1)
    zoom: float = Field(0.0, ge=0, lt=1)
    horizontal_flip: bool = False
    vertical_flip: bool = False

    @classmethod
    def default(cls) -> Augmentation:
        return cls(rotation=0.05, shift=0.1, zoom=0.1, horizontal_flip=True)

    @property
    def enabled(self) -> bool:
        return any(v for v in self.model_dump().values())


class EarlyStopping(_Frozen):
    monitor: str = "val_accuracy"
    patience: Patience = 3
    min_delta: float = Field(0.0, ge=0)
    mode: Literal["auto", "min", "max"] = "auto"

    @field_validator("monitor")
    @classmethod
    def _logged(cls, name: str) -> str:
        if name not in MONITORED_METRICS:
            raise ValueError(f"unknown metric {name!r} (training logs: {', '.join(MONITORED_METRICS)})")
        return name


class ModelSpec(_Frozen):
    architecture: ArchitectureName
    weights: WeightsRef = None
    image_size: ImageSize
    head: Head = Head()


class TrainingSpec(_Frozen):
    batch_size: BatchSize = 32
    epochs: Epochs = 10
    data_fraction: float = Field(1.0, gt=0, le=1)
    early_stopping: EarlyStopping | None = EarlyStopping()
    augmentation: Augmentation | None = None
    seed: JobSeed = 0
    feature_cache: bool = True
    mixed_precision: bool = False  # Keras's mixed_float16 policy (worker/training/models.py)


MAX_TRIAL_PARAMS = 256  # a search space's dimensions (shared.space): each axis and each optimizer parameter
MAX_RUNGS = 64  # ASHA: rungs r * eta**i up to MAX_EPOCHS need at most log2(MAX_EPOCHS) + 2 of them


class Trial(_Frozen):
    """Where a job stands in an adaptive or sampled search (shared.search): trial `index` of the
    study, at `rung` (ASHA; 0 otherwise), with the point of the search space it trains (`params`,
    by dimension name, categorical choices as indices: what a sampler is told about it)."""

    index: int = Field(ge=0, lt=GRID_CAP)
    rung: int = Field(0, ge=0, lt=MAX_RUNGS)
    params: dict[Annotated[str, Field(max_length=MAX_NAME_CHARS)], float] = Field({}, max_length=MAX_TRIAL_PARAMS)


class JobSpec(_Frozen):
    kind: JobKind = "train"
    dataset: Location
    validation_split: float = Field(0.2, gt=0, lt=1)
    model: ModelSpec
    optimizer: OptimizerSpec = Sgd()
    training: TrainingSpec = TrainingSpec()
    parent_job_id: JobId | None = None
    unfreeze_from: UnfreezeFrom = None  # finetune only: layer index, negative index or name
    repeat: RepeatIndex = 0
    trial: Trial | None = None  # a search's trial (shared.search); None: a grid or list-sampled job

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json", exclude=self._defaults_left_out())
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def config_key(self) -> str:
        """The configuration without its repeat index and seed: repeats share it."""
        data = self.model_dump(mode="json", exclude={"repeat": True, **self._defaults_left_out()})
        data["training"].pop("seed")
        return short_hash(json.dumps(data, sort_keys=True))

    def _defaults_left_out(self) -> dict[str, Any]:
        # Fields at their defaults are left out: a job written before the field keeps its id.
        left_out: dict[str, Any] = {} if self.training.mixed_precision else {"training": {"mixed_precision": True}}
        if self.trial is None:
            left_out["trial"] = True
        return left_out


def short_hash(text: str, length: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_id_for(study_id: str, spec: JobSpec) -> str:
    """Deterministic: the same study and spec always give the same id (repeat is in the spec)."""
    return short_hash(f"{study_id}\n{spec.canonical_json()}")


class JobMessage(_Frozen):
    """What travels on the queue. Small and self-contained: a worker needs nothing else to run it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    study_id: StudyId
    job_id: JobId
    spec: JobSpec

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: Any) -> Any:
        # Submitters before the field's removal wrote `attempt_hint` (never read): their messages
        # may still wait on a queue, and must run. Any other unknown field is refused.
        if isinstance(data, dict) and "attempt_hint" in data:
            data = {key: value for key, value in data.items() if key != "attempt_hint"}
        return data

    def to_body(self) -> str:
        return self.model_dump_json()


class PoisonMessage(BadInputError):
    """A queue message that is not a valid job message. Never retried."""


def parse_message(body: str | bytes) -> JobMessage:
    """Validate a message body read from a queue. Raises PoisonMessage with a one-line reason,
    whatever the body holds: no other exception escapes (a worker must set it aside, not die)."""
    try:
        data = load_json(body, "message", MAX_MESSAGE_BYTES)
        if not isinstance(data, dict):
            raise PoisonMessage("a job message is a JSON object", "message")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise PoisonMessage(f"unsupported schema_version {data.get('schema_version')!r}", "schema_version")
        return JobMessage.model_validate(data)
    except PoisonMessage:
        raise
    except BadInputError as exc:
        raise PoisonMessage(str(exc).removeprefix(f"{exc.path}: "), exc.path) from None
    except ValidationError as exc:
        raise PoisonMessage(*first_error(exc)) from None
    except Exception as exc:  # a body is data: whatever it makes a validator raise is poison, never a crash
        raise PoisonMessage(f"invalid message ({type(exc).__name__}): {str(exc)[:200]}") from None


# --- validation errors as one line with a JSON path ----------------------------------------------

# The discriminated unions' tag fields and their values: pydantic puts the value in error locations
# (the user never wrote it as a key) and reports a bad one without the choices the user has.
SEARCH_METHODS = ("grid", "random", "sobol", "tpe", "asha")  # shared.study's search models
DISCRIMINATORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "name": ("optimizer", OPTIMIZER_NAMES),
    "method": ("method", SEARCH_METHODS),
}
UNION_TAGS = frozenset(OPTIMIZER_NAMES + SEARCH_METHODS)
# What pydantic names the members of a plain union (`bool | Augmentation`, `int | str`) in locations.
_TYPE_LABELS = frozenset({"bool", "int", "float", "str", "none", "list", "dict"})
_KEYED = frozenset({"extra_forbidden", "missing"})  # errors whose last location part is the user's key
_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "model_type": "expected a JSON object",
    "model_attributes_type": "expected a JSON object",
    "dict_type": "expected a JSON object",
    "list_type": "expected a JSON list",
}


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(message, JSON path) of the first error pydantic found, as a user would name it.

    Within a plain union, pydantic reports one error per member; the member that got furthest
    into the value is the one the user meant (`{"rotation": 5}` for an augmentation is a bad
    rotation, not a bad boolean).
    """
    errors = exc.errors()
    error = _misspelt(errors[0], errors)
    keyed = error["type"] in _KEYED
    labels = [i for i, part in enumerate(error["loc"][:-1] if keyed else error["loc"]) if _is_label(part)]
    if labels:
        siblings = [e for e in errors if e["loc"][: labels[0]] == error["loc"][: labels[0]]]
        error = max(siblings, key=lambda e: len(e["loc"]))
        keyed = error["type"] in _KEYED
    path = json_path(error["loc"], keyed)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return _tag_error(error, path)
    message = _FRIENDLY.get(error["type"], error["msg"]).removeprefix("Value error, ")
    return message, path


def _misspelt(error: Any, errors: list[Any]) -> Any:
    """A required field missing beside an unknown one is a typo: the unknown field is the news."""
    if error["type"] != "missing":
        return error
    unknown = (e for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == error["loc"][:-1])
    return next(unknown, error)


def _tag_error(error: dict[str, Any], path: str) -> tuple[str, str]:
    field = error["ctx"]["discriminator"].strip("'")
    noun, known = DISCRIMINATORS.get(field, (field, ()))
    path = f"{path}.{field}" if path else field
    if error["type"] == "union_tag_not_found":
        return f"missing: say which {noun} (known: {', '.join(known)})", path
    return f"unknown {noun} {error['ctx']['tag']!r} (known: {', '.join(known)})", path


def _is_label(part: Any) -> bool:
    """Whether a location part names a union member rather than a field of the user's document:
    a tag value, a type (`bool`, `Augmentation`, `literal['imagenet']`, `function-after[...]`)."""
    if not isinstance(part, str):
        return False
    return part in UNION_TAGS or part in _TYPE_LABELS or "[" in part or "-" in part or part[:1].isupper()


def json_path(loc: tuple[Any, ...], keyed: bool = False) -> str:
    """`('parameters', 'optimizer', 1, 'sgd', 'momentum', 0)` -> `parameters.optimizer[1].momentum[0]`.

    `keyed`: the last part is a key of the user's document whatever it looks like (an unknown
    field such as `"Epochs"`, a missing one), never a union member's label.
    """
    path = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_label(part) or (keyed and index == len(loc) - 1):
            path += f".{part}" if path else str(part)
    return path


class Metrics(BaseModel):
    """Best-epoch validation metrics, and test metrics once evaluated."""

    model_config = ConfigDict(extra="allow")

    val_accuracy: float | None = None
    val_loss: float | None = None
    accuracy: float | None = None
    loss: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None


class JobRecord(BaseModel):
    """The job's row in the store. Written by the submitter (create) and its lease holder."""

    model_config = ConfigDict(extra="ignore")

    study_id: StudyId
    job_id: JobId
    spec: JobSpec
    status: JobStatus = JobStatus.QUEUED
    attempt: int = 0  # the fencing token: incremented by every claim
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    heartbeat_at: float | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    epochs_run: int = 0
    best_epoch: int | None = None
    metrics: Metrics = Metrics()
    train_seconds: float = 0.0
    cost_usd: float = 0.0
    total_params: int | None = None
    trainable_params: int | None = None
    checkpoint: str | None = None
    artifacts: dict[str, str] = {}
    error: str | None = None
    preemptions: int = 0
    handoffs: int = 0  # long jobs handed to a fresh message before the queue's visibility limit
    failures: int = 0  # the job's OWN errors (retryable ones included); kills and preemptions never count
    enqueued_at: float | None = None  # when a message for it was last sent; None: none may exist
    state_key: str | None = None  # the committed training state (attempt-scoped), written fenced
    cancel_requested: bool = False

    @property
    def kind(self) -> str:
        return self.spec.kind

    def lease_expired(self, now: float) -> bool:
        return self.lease_expires_at is None or self.lease_expires_at <= now


class EpochRecord(BaseModel):
    """One epoch's metrics of one attempt; rewritten (not duplicated) when an epoch is redone."""

    study_id: StudyId
    job_id: JobId
    epoch: int  # 1-based
    attempt: int
    metrics: dict[str, float]
    seconds: float = 0.0
    recorded_at: float = 0.0


class StudyRecord(BaseModel):
    study_id: StudyId
    name: str
    created_at: float
    spec: dict[str, Any]  # the validated study file, as JSON
    job_count: int = 0
    price_per_hour: float | None = None
    stages: list[str] = []  # follow-up stages already enqueued ("finetune", "evaluate")
