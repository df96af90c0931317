"""Admin route on the audit trail of admin changes."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminUser, Session
from app.audit import service
from app.audit.ledgers import LEDGERS
from app.audit.schemas import AuditEntry, ChainVerdict, LogVerdict
from app.books.types import Timestamp
from app.core import chain
from app.core.db import raw_connection
from app.core.openapi import AUTH, problems
from app.core.pagination import Cursor, Limit, Page, encode_cursor, int_cursor

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=Page[AuditEntry], responses=problems(*AUTH, 403))
async def list_audit(
    admin: AdminUser,
    session: Session,
    target: Annotated[
        str | None,
        Query(
            max_length=300,
            pattern=r"^[^\x00]+$",
            description="A target id, or `type:id` (e.g. `book:<uuid>`).",
        ),
    ] = None,
    actor: uuid.UUID | None = None,
    since: Annotated[Timestamp | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[AuditEntry]:
    """Every admin change, newest first: who (`actor_id`), when, in which request, on what,
    and the fields before and after."""
    rows = await service.list_entries(
        await raw_connection(session),
        target=target,
        actor=actor,
        since=since,
        before_id=int_cursor(cursor),
        limit=limit + 1,
    )
    page = rows[:limit]
    return Page[AuditEntry](
        items=page, next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None
    )


@router.get("/audit/verify", response_model=ChainVerdict, responses=problems(*AUTH, 403))
async def verify_chains(admin: AdminUser, session: Session) -> ChainVerdict:
    """Recompute the hash chains of the redemption history and of the promo purchase log:
    every sealed block's Merkle root from its rows and every block hash from the one before.
    Per log (`logs`), `first_bad_block` is the first block whose rows were changed, deleted
    or inserted behind the service's back (or that was itself rewritten); the top-level
    fields add the logs up and name the first log that fails."""
    verdicts = await chain.verify(await raw_connection(session), LEDGERS)
    bad = next((v for v in verdicts if not v.ok), None)
    return ChainVerdict(
        ok=bad is None,
        blocks=sum(v.blocks for v in verdicts),
        rows=sum(v.rows for v in verdicts),
        first_bad_block=bad.first_bad_block if bad is not None else None,
        first_bad_log=bad.log if bad is not None else None,
        logs=[
            LogVerdict(
                log=v.log,
                ok=v.ok,
                blocks=v.blocks,
                rows=v.rows,
                first_bad_block=v.first_bad_block,
            )
            for v in verdicts
        ],
    )
