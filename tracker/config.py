"""Settings of `job-tracker listen`, validated once at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from kombu.utils.url import maybe_sanitize_url
from pydantic import BaseModel, ConfigDict, Field

from tracker.store import safe_url


def mask_broker_url(url: str) -> str:
    """A broker URL with its password masked."""
    return str(maybe_sanitize_url(url))


def default_spool_dir() -> Path:
    """Where the on-disk spool lives unless --spool-dir says otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "job-tracker" / "spool"


DEFAULT_BROKER = "redis://localhost:6379/0"
DEFAULT_DATABASE = "postgresql:///job_tracker"


class ListenSettings(BaseModel):
    """Everything `listen` needs; each field has a CLI option and an environment variable."""

    model_config = ConfigDict(frozen=True)

    broker_url: str = DEFAULT_BROKER
    app: str | None = None
    database_url: str = DEFAULT_DATABASE
    remote_queues: frozenset[str] = frozenset()
    queue: str | None = Field(default=None, description="durable AMQP queue for at-least-once")
    event_exchange: str | None = None
    intake: Literal["auto", "kombu"] = "auto"
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    flush_interval: float = Field(default=0.1, gt=0, le=10)
    prefetch: int = Field(default=4000, ge=1, le=65_535)
    buffer_messages: int = Field(default=20_000, ge=10)
    spool_dir: Path = Field(default_factory=lambda: default_spool_dir())
    result_backend: str | None = None
    reconcile_lookback_hours: float = Field(default=24.0, gt=0)
    shutdown_grace: float = Field(default=5.0, ge=0)
    stats_interval: float = Field(default=30.0, gt=0)
    heartbeat_interval: float = Field(default=5.0, gt=0)
    no_task_events_warning: float = Field(default=60.0, gt=0)

    def redacted(self) -> dict[str, object]:
        """The effective configuration with secrets masked, for the start-up log line."""
        data = self.model_dump(mode="json")
        data["broker_url"] = mask_broker_url(self.broker_url)
        data["database_url"] = safe_url(self.database_url)
        if self.result_backend:
            data["result_backend"] = mask_broker_url(self.result_backend)
        data["remote_queues"] = sorted(self.remote_queues)
        data["spool_dir"] = str(self.spool_dir)
        return data
