"""Stop requests (preemption notice, cancel): how long-running steps notice them.

Keras 3.15's `model.stop_training = True` breaks the batch loop but `fit` then still validates
and calls `on_epoch_end` for the partial epoch (keras/src/backend/tensorflow/trainer.py), which
would record half an epoch as a whole one. So a stop request raises `StopRequested` instead,
from inside `fit`/`predict` (StopPoller) or between the batches of decoding and feature
extraction (`check`); the job then reports outcome "stopped" and the partial work is redone on
resume from the last saved state.
"""

from __future__ import annotations

import keras

from worker.job import ShouldStop, StopReason


class StopRequested(Exception):
    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason = reason


def check(should_stop: ShouldStop | None) -> None:
    """Raise StopRequested if the worker asked the job to stop (with a reason outside
    `StopReason`, ValueError: a misspelt reason must never pass for a known one)."""
    reason = should_stop() if should_stop is not None else None
    if reason is not None:
        raise StopRequested(StopReason(reason))


class StopPoller(keras.callbacks.Callback):
    """Polls `should_stop` after every training, validation and prediction batch."""

    def __init__(self, should_stop: ShouldStop) -> None:
        super().__init__()
        self.should_stop = should_stop

    def _poll(self, *args: object, **kwargs: object) -> None:
        check(self.should_stop)

    on_train_batch_end = on_test_batch_end = on_predict_batch_end = _poll
