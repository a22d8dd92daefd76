"""The optimizers a job may use: each one's own parameters, validated, with Keras's defaults.

`decay` keeps its Keras 2 meaning (learning rate / (1 + decay * iterations)); the worker turns
it into an InverseTimeDecay schedule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

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


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def _grid_model(cls: type[_Optimizer]) -> type[BaseModel]:
    """The study-file form of an optimizer: every parameter may be a value or a list of values."""
    fields: dict[str, Any] = {"name": (cls.model_fields["name"].annotation, cls.model_fields["name"].default)}
    for field_name, info in cls.model_fields.items():
        if field_name == "name":
            continue
        element = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        fields[field_name] = (list[element], Field(default=[info.default], min_length=1))
    validators = {"_listify": field_validator(*[f for f in fields if f != "name"], mode="before")(_as_list)}
    return create_model(  # type: ignore[call-overload]
        f"{cls.__name__}Grid", __config__=ConfigDict(extra="forbid", frozen=True), __validators__=validators, **fields
    )


GRID_CLASSES = {cls.model_fields["name"].default: _grid_model(cls) for cls in OPTIMIZER_CLASSES}
CONCRETE_CLASSES = {cls.model_fields["name"].default: cls for cls in OPTIMIZER_CLASSES}

OptimizerGrid = Annotated[Union[tuple(GRID_CLASSES.values())], Field(discriminator="name")]  # type: ignore[valid-type]
