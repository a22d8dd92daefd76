"""The optimizers a job may use: each one's own parameters, validated, with Keras's defaults.

`decay` keeps its Keras 2 meaning (learning rate / (1 + decay * iterations)); the worker turns
it into an InverseTimeDecay schedule.

The defaults are Keras 3's. A study may ask for Keras 2's instead (`"optimizer_defaults":
"keras2"`, `KERAS2_DEFAULTS`), so that a replay of a 2019 study compares what it compared: they
are resolved when the study is expanded, so every job spec carries its optimizer's values.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from shared.space import listify, swept

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Epsilon = Annotated[float, Field(gt=0, le=1)]


class _Optimizer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: PositiveFloat = 0.001
    decay: NonNegativeFloat = 0.0

    def keras_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for the Keras optimizer (without name and decay)."""
        return self.model_dump(exclude={"name", "decay"})


class Sgd(_Optimizer):
    name: Literal["sgd"] = "sgd"
    learning_rate: PositiveFloat = 0.01
    momentum: Fraction = 0.0
    nesterov: bool = False


class RmsProp(_Optimizer):
    name: Literal["rmsprop"] = "rmsprop"
    rho: Fraction = 0.9
    momentum: Fraction = 0.0
    epsilon: Epsilon = 1e-7
    centered: bool = False


class Adagrad(_Optimizer):
    name: Literal["adagrad"] = "adagrad"
    initial_accumulator_value: NonNegativeFloat = 0.1
    epsilon: Epsilon = 1e-7


class Adadelta(_Optimizer):
    name: Literal["adadelta"] = "adadelta"
    rho: Fraction = 0.95
    epsilon: Epsilon = 1e-7


class Adam(_Optimizer):
    name: Literal["adam"] = "adam"
    beta_1: Fraction = 0.9
    beta_2: Fraction = 0.999
    epsilon: Epsilon = 1e-7
    amsgrad: bool = False


class Adamax(_Optimizer):
    name: Literal["adamax"] = "adamax"
    beta_1: Fraction = 0.9
    beta_2: Fraction = 0.999
    epsilon: Epsilon = 1e-7


class Nadam(_Optimizer):
    name: Literal["nadam"] = "nadam"
    beta_1: Fraction = 0.9
    beta_2: Fraction = 0.999
    epsilon: Epsilon = 1e-7


class AdamW(_Optimizer):
    name: Literal["adamw"] = "adamw"
    weight_decay: NonNegativeFloat = 0.004
    beta_1: Fraction = 0.9
    beta_2: Fraction = 0.999
    epsilon: Epsilon = 1e-7
    amsgrad: bool = False


OPTIMIZER_CLASSES: tuple[type[_Optimizer], ...] = (Sgd, RmsProp, Adagrad, Adadelta, Adam, Adamax, Nadam, AdamW)
OPTIMIZER_NAMES = tuple(cls.model_fields["name"].default for cls in OPTIMIZER_CLASSES)

OptimizerSpec = Annotated[Union[Sgd, RmsProp, Adagrad, Adadelta, Adam, Adamax, Nadam, AdamW], Field(discriminator="name")]

OptimizerDefaults = Literal["keras3", "keras2"]

# Keras 2.2's defaults where they differ from Keras 3's, read from keras-team/keras
# `keras/optimizers.py` of the 2.2 line (commit fe1d48bf: `SGD(lr=0.01, ...)`, `RMSprop(lr=0.001,
# rho=0.9, ...)`, `Adagrad(lr=0.01, ...)` with accumulators starting at `K.zeros`, `Adadelta(lr=1.0,
# rho=0.95, ...)`, `Adam(lr=0.001, ...)`, `Adamax(lr=0.002, ...)`, `Nadam(lr=0.002, ...,
# schedule_decay=0.004)`). Every `epsilon=None` there means `K.epsilon()` = 1e-7, Keras 3's default
# too; Nadam's schedule_decay 0.004 is the constant Keras 3's Nadam uses; AdamW did not exist.
# The update rules themselves are Keras 3's (Keras 2 added epsilon outside the square root in
# RMSprop and Adagrad): only the defaults come back.
KERAS2_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 0.01},
    "rmsprop": {"learning_rate": 0.001, "rho": 0.9},
    "adagrad": {"learning_rate": 0.01, "initial_accumulator_value": 0.0},
    "adadelta": {"learning_rate": 1.0, "rho": 0.95},
    "adam": {"learning_rate": 0.001},
    "adamax": {"learning_rate": 0.002},
    "nadam": {"learning_rate": 0.002},
}


def with_defaults(optimizer: BaseModel, defaults: OptimizerDefaults) -> BaseModel:
    """`optimizer` (a spec or a study's grid entry) with `defaults` for every parameter it was not
    given: Keras 3's are the models' own, so only "keras2" changes anything."""
    if defaults == "keras3":
        return optimizer
    grid = not isinstance(optimizer, _Optimizer)  # a grid entry takes lists
    unset = {
        name: [value] if grid else value
        for name, value in KERAS2_DEFAULTS.get(optimizer.name, {}).items()  # type: ignore[attr-defined]
        if name not in optimizer.model_fields_set
    }
    return optimizer.model_copy(update=unset)


def _grid_model(cls: type[_Optimizer]) -> type[BaseModel]:
    """The study-file form of an optimizer: every parameter may be a value, a list of values or
    (a number) a distribution (shared.space)."""
    fields: dict[str, Any] = {"name": (cls.model_fields["name"].annotation, cls.model_fields["name"].default)}
    for field_name, info in cls.model_fields.items():
        if field_name == "name":
            continue
        element = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        fields[field_name] = (swept(element), Field(default=[info.default]))
    validators = {"_listify": field_validator(*[f for f in fields if f != "name"], mode="before")(listify)}
    return create_model(  # type: ignore[call-overload]
        f"{cls.__name__}Grid", __config__=ConfigDict(extra="forbid", frozen=True), __validators__=validators, **fields
    )


GRID_CLASSES = {cls.model_fields["name"].default: _grid_model(cls) for cls in OPTIMIZER_CLASSES}
CONCRETE_CLASSES = {cls.model_fields["name"].default: cls for cls in OPTIMIZER_CLASSES}

OptimizerGrid = Annotated[Union[tuple(GRID_CLASSES.values())], Field(discriminator="name")]  # type: ignore[valid-type]
