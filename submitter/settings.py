"""The submitter process's settings: environment variables with the SPOTSWEEP_ prefix."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import BackendConfig


class SubmitterSettings(BackendConfig, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPOTSWEEP_", extra="ignore")

    stale_after_s: float | None = None  # a RUNNING job whose heartbeat is older is flagged (default: the lease)

    @property
    def stale_threshold_s(self) -> float:
        return self.stale_after_s or self.lease_s + self.heartbeat_s
