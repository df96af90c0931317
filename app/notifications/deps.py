"""Dependencies of the notification routes: the process's LISTEN hub, built at start-up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.notifications.stream import NotificationHub

HUB_STATE_KEY = "notification_hub"


async def notification_hub(request: Request) -> NotificationHub:
    """The hub the lifespan handed to this request (its state)."""
    hub: NotificationHub = request.scope["state"][HUB_STATE_KEY]
    return hub


Hub = Annotated[NotificationHub, Depends(notification_hub)]
