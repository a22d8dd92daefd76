"""Backend configuration: the fields every process shares.

Each process declares its own pydantic-settings class that inherits these (`SubmitterSettings`,
`WorkerSettings`); nothing in `shared/` reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class BackendConfig(BaseModel):
    """Which backend, where its state lives, and the lease and redrive settings of its queue."""

    backend: Literal["local", "aws"] = "local"
    home: Path = Path(".spotsweep")  # the embedded backend's state directory
    lease_s: float = Field(300.0, gt=0)  # visibility timeout and lease length; heartbeat every third
    # Deliveries before the queue itself dead-letters a message: a backstop for messages that kill
    # every worker that takes them. A job's own failures are counted in the store (max_failures).
    max_receives: int = Field(20, ge=1)
    max_failures: int = Field(3, ge=1)  # a job's own errors before it is FAILED (and dead-lettered)
    price_per_hour: float | None = Field(None, ge=0)  # overrides the spot price in cost figures
    stack: str = "spotsweep"
    region: str | None = None
    queue_name: str | None = None
    dlq_name: str | None = None
    table_name: str | None = None
    bucket: str | None = None

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 3

    @property
    def resolved_queue_name(self) -> str:
        return self.queue_name or f"{self.stack}-jobs"

    @property
    def resolved_dlq_name(self) -> str:
        return self.dlq_name or f"{self.stack}-jobs-dlq"

    @property
    def resolved_table_name(self) -> str:
        return self.table_name or self.stack

    @property
    def resolved_bucket(self) -> str:
        return self.bucket or f"{self.stack}-artifacts"
