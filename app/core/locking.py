"""Advisory-lock keys (every advisory lock in the service is transaction-scoped and named
here), and the pauses between runs of claims that skip locked rows.

PostgreSQL advisory locks take one bigint; we derive it with `hashtextextended(text, seed)`,
where the seed is the namespace, so keys of different kinds never collide by construction.
"""

from __future__ import annotations

from enum import IntEnum


class LockNamespace(IntEnum):
    BOOK_USER = 1  # per-user limits within a book (assign, redeem)
    BOOK = 2  # bulk distribute (exclusive) vs single assigns (shared)
    PROMO_USER = 3  # promo max_per_user (reserve)
    IDEMPOTENCY = 4  # one in-flight request per (user, route, key)
    OUTBOX = 5  # a keyed outbox job (topic, key): scheduling, cancelling, settling
    IMPORT_BOOK = 6  # one import job of a book validating or inserting at a time
    LEDGER_SEAL = 7  # one sealer at a time appends to a log's hash chain (key: its name)


def xact_lock_sql(namespace: LockNamespace, key_sql: str, *, shared: bool = False) -> str:
    """SQL fragment taking a transaction-scoped lock on `key_sql` (a text expression)."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    return f"{fn}(hashtextextended({key_sql}, {int(namespace)}))"


def try_xact_lock_sql(namespace: LockNamespace, key_sql: str) -> str:
    """SQL fragment that tries the lock and returns whether it was granted."""
    return f"pg_try_advisory_xact_lock(hashtextextended({key_sql}, {int(namespace)}))"


# Pauses between runs of a `SKIP LOCKED` claim (the hot paths' plpgsql functions,
# `app/core/plpgsql.py`) that met only rows other requests are claiming: those may yet roll
# back, so a miss while rows are still claimable runs the claim again (a new statement, a
# new snapshot) rather than answering "none left". 1 ms doubling to 32 ms, about 1 s in all,
# each jittered. Never a blocking `FOR UPDATE` instead: waiting scanners keep locks on rows
# that failed their recheck and can deadlock.
CLAIM_RETRY_DELAYS = [0.001 * min(2**i, 32) for i in range(40)]
