"""Statements of the service as the bodies of plpgsql functions, for hot paths that run as
one call (one round trip; each statement inside still gets a fresh snapshot). A function's
body is rendered here from the same statements the per-statement path runs; a migration
holds a frozen copy, and a test compares the schema's body with the rendering."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from app.core.locking import CLAIM_RETRY_DELAYS

_PARAMETER = re.compile(r"\$(\d+)\b")

# `CLAIM_RETRY_DELAYS`, then NULL for the last run: `FOREACH pause IN ARRAY`
# runs the claim once per entry and stops at the NULL.
RETRY_PAUSES = f"ARRAY[{', '.join(f'{d:g}' for d in CLAIM_RETRY_DELAYS)}, NULL]"


def named(sql: str, names: Sequence[str]) -> str:
    """`sql` with its positional parameters `$1`, `$2`... replaced by `names` (and no
    trailing blanks: the body is stored verbatim)."""
    sql = _PARAMETER.sub(lambda m: names[int(m.group(1)) - 1], sql)
    return "\n".join(line.rstrip() for line in sql.strip().splitlines())


def uuid_array(values: Sequence[uuid.UUID]) -> str:
    """A `uuid[]` parameter as a `{…}` text literal, for a statement that casts it
    (`$2::text::uuid[]`): asyncpg would otherwise look the array type up on every new
    connection, a round trip of its own."""
    return "{" + ",".join(map(str, values)) + "}"
