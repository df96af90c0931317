"""Where the notifications domain finds its settings (env names in README)."""

from __future__ import annotations

from app.core.settings import NotificationSettings, Settings

__all__ = ["NotificationSettings", "direct_url"]


def direct_url(settings: Settings) -> str | None:
    """The URL LISTEN must use: a direct connection, never a transaction-mode pooler."""
    return settings.database_direct_url or settings.database_url
