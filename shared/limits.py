"""The caps on everything that creates work, in one place.

A study file is checked against them when it is submitted (`shared.study`), and every job again
when a worker reads it from a message or a record (`shared.jobs`): a document written by a careless
or hostile teammate cannot ask a worker for a billion epochs, units or pixels. Each cap is a
constant and an annotated type built from it, and both doors use the same type, so the two can
never disagree.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 2048  # pixels per side: a 2048 x 2048 x 3 float32 batch of 32 is already 1.5 GiB
MAX_BATCH_SIZE = 4096
MAX_EPOCHS = 10_000
MAX_HEAD_UNITS = 16_384  # the default bottleneck has 1024
MAX_REPEATS = 100
MAX_TOP = 100  # follow-ups: models fine-tuned or evaluated per study
MAX_SEED = 2**31 - 1  # numpy and TensorFlow take 32-bit seeds; a job's seed adds its repeat index
MAX_LAYER_INDEX = 10_000  # `unfreeze_from` as an index; the largest keras.applications has ~1000
MAX_NAME_CHARS = 255  # a layer or class name: one path segment on every file system
MAX_LOCATION_CHARS = 1024  # a dataset or weights location (S3 keys are at most 1024 bytes)
GRID_CAP = 100_000  # no study may expand to more jobs than this, whatever it says

ImageSize = Annotated[int, Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)]
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
Patience = Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
HeadUnits = Annotated[int, Field(ge=1, le=MAX_HEAD_UNITS)]
Repeats = Annotated[int, Field(ge=1, le=MAX_REPEATS)]
RepeatIndex = Annotated[int, Field(ge=0, lt=MAX_REPEATS)]
Top = Annotated[int, Field(ge=1, le=MAX_TOP)]
StudySeed = Annotated[int, Field(ge=0, le=MAX_SEED)]
JobSeed = Annotated[int, Field(ge=0, le=MAX_SEED + MAX_REPEATS)]
LayerIndex = Annotated[int, Field(ge=-MAX_LAYER_INDEX, le=MAX_LAYER_INDEX)]
LayerName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
UnfreezeFrom = LayerIndex | LayerName | None  # a layer index (negative: from the end) or name
Location = Annotated[str, Field(min_length=1, max_length=MAX_LOCATION_CHARS)]
