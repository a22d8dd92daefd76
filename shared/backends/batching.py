"""What the AWS adapters share: batches bounded by count and bytes, and retry backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def bounded_batches(
    items: Iterable[T], max_count: int, max_bytes: int, size_of: Callable[[T], int]
) -> Iterator[list[T]]:
    """Stream `items` into lists of at most `max_count` items and `max_bytes` in all."""
    batch: list[T] = []
    size = 0
    for item in items:
        length = size_of(item)
        if batch and (len(batch) == max_count or size + length > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += length
    if batch:
        yield batch


def backoff(attempt: int) -> None:
    """Sleep before retrying unprocessed entries: exponential, capped at 5 s, with jitter."""
    time.sleep(min(5.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2))
