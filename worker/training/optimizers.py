"""`shared.optimizers` specs -> Keras optimizers."""

from __future__ import annotations

import keras

from shared.optimizers import OptimizerSpec

KERAS_CLASSES: dict[str, type[keras.optimizers.Optimizer]] = {
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adagrad": keras.optimizers.Adagrad,
    "adadelta": keras.optimizers.Adadelta,
    "adam": keras.optimizers.Adam,
    "adamax": keras.optimizers.Adamax,
    "nadam": keras.optimizers.Nadam,
    "adamw": keras.optimizers.AdamW,
}


def make_optimizer(spec: OptimizerSpec) -> keras.optimizers.Optimizer:
    kwargs = spec.keras_kwargs()
    if spec.decay > 0:
        # Keras 2's `decay`: lr_t = lr / (1 + decay * iterations), i.e. InverseTimeDecay per step.
        kwargs["learning_rate"] = keras.optimizers.schedules.InverseTimeDecay(
            spec.learning_rate, decay_steps=1, decay_rate=spec.decay
        )
    return KERAS_CLASSES[spec.name](**kwargs)
