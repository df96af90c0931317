"""Worker and delivery settings of the notifications domain (env names in README)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.settings import Settings


class NotificationSettings(BaseSettings):
    """Tuning knobs; the webhook URL and secret live in the service `Settings`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    worker_concurrency: int = Field(default=8, ge=1, le=256)
    worker_poll_seconds: float = Field(default=2.0, gt=0)
    worker_lease_seconds: float = Field(default=60.0, gt=0)
    worker_shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    notify_batch_size: int = Field(default=1000, ge=1, le=10_000)
    notify_webhook_timeout_s: float = Field(default=10.0, gt=0)
    notify_webhook_max_attempts: int = Field(default=8, ge=1)
    notify_backoff_base_s: float = Field(default=2.0, gt=0)
    notify_backoff_max_s: float = Field(default=600.0, gt=0)
    notify_sse_heartbeat_s: float = Field(default=15.0, gt=0)
    outbox_keep_done_hours: float = Field(default=72.0, gt=0)


def direct_url(settings: Settings) -> str | None:
    """The URL LISTEN must use: a direct connection, never a transaction-mode pooler."""
    return settings.database_direct_url or settings.database_url
