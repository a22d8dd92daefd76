"""The worker process's settings: environment variables with the SPOTSWEEP_ prefix."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import BackendConfig
from shared.datasets.images import DEFAULT_MAX_PIXELS


class WorkerSettings(BackendConfig, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPOTSWEEP_", extra="ignore")

    cache_dir: Path | None = None  # dataset cache and job scratch (the EBS data volume on AWS)
    poll_wait_s: float = Field(5.0, ge=0, le=20)  # long-poll wait per receive
    metadata_url: str | None = None  # instance metadata service; polled only when set or on EC2
    spot_poll_s: float = Field(5.0, gt=0)
    asg_name: str | None = None  # the autoscaling group this worker may leave when idle
    log_format: Literal["human", "json"] = "human"
    retry_backoff_s: float = Field(5.0, ge=0)  # base of the exponential backoff after a transient error
    # Images claiming more pixels (x frames) are refused from their header, before decoding.
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    # SQS keeps a received message invisible for at most 12 h: a job running that long hands
    # itself to a fresh message (like a preemption, not a failure) this long after its receipt.
    max_message_age_s: float = Field(11.5 * 3600, gt=0)
    breaker_threshold: int = Field(3, ge=1)  # consecutive failures on different jobs before the worker stops
    reconcile_interval_s: float = Field(300.0, gt=0)  # how often an idle worker runs the reconciler
    # Bound on the local caches (datasets, decoded images, feature copies), least recently used
    # evicted first at worker start and between jobs (worker.housekeeping). None: no bound.
    cache_max_bytes: int | None = Field(None, ge=0)
    # On a machine with GPUs (nvidia-smi -L), refuse to start when TensorFlow sees none (worker.gpu).
    require_gpu: bool = True
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or self.home / "cache").resolve()
