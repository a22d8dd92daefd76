"""What a job is (`JobSpec`), what travels on the queue (`JobMessage`) and the table row (`JobRecord`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import SCHEMA_VERSION
from shared.errors import BadInputError
from shared.optimizers import OptimizerSpec, Sgd
from shared.status import JobStatus

JobKind = Literal["train", "finetune", "evaluate"]
MAX_MESSAGE_BYTES = 256 * 1024  # SQS's own limit; anything larger is poison


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Head(_Frozen):
    """The bottleneck head on top of a frozen base."""

    pooling: Literal["flatten", "avg"] = "avg"
    units: int = Field(1024, ge=1)
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
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0)
    mode: Literal["auto", "min", "max"] = "auto"


class ModelSpec(_Frozen):
    architecture: str
    weights: str | None = None  # "imagenet", None, or an artifact key/URI of a .weights.h5 file
    image_size: int = Field(ge=16)
    head: Head = Head()


class TrainingSpec(_Frozen):
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    data_fraction: float = Field(1.0, gt=0, le=1)
    early_stopping: EarlyStopping | None = EarlyStopping()
    augmentation: Augmentation | None = None
    seed: int = 0
    feature_cache: bool = True


class JobSpec(_Frozen):
    kind: JobKind = "train"
    dataset: str
    validation_split: float = Field(0.2, gt=0, lt=1)
    model: ModelSpec
    optimizer: OptimizerSpec = Sgd()
    training: TrainingSpec = TrainingSpec()
    parent_job_id: str | None = None
    unfreeze_from: int | str | None = None  # finetune only: layer index, negative index or name
    repeat: int = Field(0, ge=0)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def config_key(self) -> str:
        """The configuration without its repeat index and seed: repeats share it."""
        data = self.model_dump(mode="json", exclude={"repeat"})
        data["training"].pop("seed")
        return short_hash(json.dumps(data, sort_keys=True))


def short_hash(text: str, length: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_id_for(study_id: str, spec: JobSpec) -> str:
    """Deterministic: the same study and spec always give the same id (repeat is in the spec)."""
    return short_hash(f"{study_id}\n{spec.canonical_json()}")


class JobMessage(_Frozen):
    """What travels on the queue. Small and self-contained: a worker needs nothing else to run it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    study_id: str
    job_id: str
    attempt_hint: int = 0
    spec: JobSpec

    def to_body(self) -> str:
        return self.model_dump_json()


class PoisonMessage(BadInputError):
    """A queue message that is not a valid job message. Never retried."""


def parse_message(body: str | bytes) -> JobMessage:
    """Validate a message body read from a queue. Raises PoisonMessage with a one-line reason."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise PoisonMessage(f"message body of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoisonMessage(f"message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoisonMessage("message is not a JSON object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise PoisonMessage(f"unsupported schema_version {data.get('schema_version')!r}", "schema_version")
    try:
        return JobMessage.model_validate(data)
    except ValidationError as exc:
        raise PoisonMessage(*first_error(exc)) from None


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(message, JSON path) of the first error pydantic found."""
    error = exc.errors()[0]
    return error["msg"], json_path(error["loc"], error["type"])


def json_path(loc: tuple[Any, ...], error_type: str = "") -> str:
    """`('parameters', 'optimizer', 1, 'sgd', 'momentum', 0)` -> `parameters.optimizer[1].momentum[0]`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in UNION_TAGS or "[" in str(part):
            continue  # a union member's tag, not a field of the user's document
        else:
            path += f".{part}" if path else str(part)
    if error_type == "union_tag_invalid":
        path += ".name"
    return path


# Tags of the discriminated unions: pydantic puts them in error locations, users never wrote them.
UNION_TAGS = frozenset({"sgd", "rmsprop", "adagrad", "adadelta", "adam", "adamax", "nadam", "adamw", "grid", "random"})


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

    study_id: str
    job_id: str
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
    cancel_requested: bool = False

    @property
    def kind(self) -> str:
        return self.spec.kind

    def lease_expired(self, now: float) -> bool:
        return self.lease_expires_at is None or self.lease_expires_at <= now


class EpochRecord(BaseModel):
    """One epoch's metrics of one attempt; rewritten (not duplicated) when an epoch is redone."""

    study_id: str
    job_id: str
    epoch: int  # 1-based
    attempt: int
    metrics: dict[str, float]
    seconds: float = 0.0
    recorded_at: float = 0.0


class StudyRecord(BaseModel):
    study_id: str
    name: str
    created_at: float
    spec: dict[str, Any]  # the validated study file, as JSON
    job_count: int = 0
    price_per_hour: float | None = None
    stages: list[str] = []  # follow-up stages already enqueued ("finetune", "evaluate")
