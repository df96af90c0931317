"""Generating codes from a pattern: `#` digit 2-9, `?` letter, `*` either, anything else
literal. The alphabet leaves out look-alikes (0/O, 1/I/L) so codes can be read aloud."""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Awaitable, Callable

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy
from sqlalchemy.ext.asyncio import AsyncSession

from app.books import checksum
from app.books.rules import CODE_MAX_LENGTH
from app.books.schemas import GenerateIn
from app.core.db import raw_connection
from app.core.problems import ValidationFailed

DIGITS = b"23456789"
LETTERS = b"ABCDEFGHJKMNPQRSTUVWXYZ"
EITHER = DIGITS + LETTERS
_CLASSES = {"#": DIGITS, "?": LETTERS, "*": EITHER}
_LITERALS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_BATCH = 250_000
_MAX_FRUITLESS_ROUNDS = 5
_MAX_SHORTFALLS = 16  # 4**16 times the first round exceeds any batch

Slot = bytes  # one literal byte, or an alphabet to draw from


def slots_for(body: GenerateIn) -> list[Slot]:
    """The pattern as a list of slots; 422 if it cannot make valid codes."""
    pattern = body.pattern if body.pattern is not None else "*" * body.length
    text = (body.prefix or "") + pattern
    slots: list[Slot] = []
    for ch in text.upper():
        if ch in _CLASSES:
            slots.append(_CLASSES[ch])
        elif ch in _LITERALS:
            slots.append(ch.encode())
        else:
            raise _invalid("pattern", f"character {ch!r} is not allowed in a code")
    if len(slots) > CODE_MAX_LENGTH:
        raise _invalid("pattern", f"codes would be longer than {CODE_MAX_LENGTH} characters")
    return slots


def checksum_prefix(slots: list[Slot]) -> str:
    """The literal prefix that names the checksum namespace of these slots (and so of
    their codes); 422 if there is none, or if a check character would not fit."""
    prefix = ""
    for slot in slots:
        if len(slot) > 1:
            break
        prefix += slot.decode()
    if not prefix or len(prefix) == len(slots):
        raise _invalid(
            "pattern", "checksum codes need a literal prefix followed by random characters"
        )
    for slot in slots[len(prefix) :]:
        if len(slot) == 1 and chr(slot[0]) not in checksum.ALPHABET + "-_":
            raise _invalid(
                "pattern",
                f"after the prefix, checksum codes use only {checksum.ALPHABET}, - and _",
            )
    if len(slots) + 1 > CODE_MAX_LENGTH:
        raise _invalid(
            "pattern",
            f"codes with their check character would be longer than {CODE_MAX_LENGTH} characters",
        )
    return prefix


def capacity(slots: list[Slot]) -> int:
    return math.prod(len(s) for s in slots if len(s) > 1)


def _invalid(field: str, msg: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {msg}.", errors=[{"loc": ["body", field], "msg": msg}])


def _draw(alphabet: bytes, n: int) -> bytes:
    """n uniform picks from the alphabet (rejection sampling keeps it unbiased)."""
    k = len(alphabet)
    usable = 256 - 256 % k
    table = bytes(alphabet[i % k] for i in range(256))
    rejected = bytes(range(usable, 256))
    out = b""
    while len(out) < n:
        out += os.urandom(n - len(out) + n // 8 + 16).translate(table, rejected)
    return out[:n]


def make_batch(slots: list[Slot], n: int) -> bytes:
    """n candidate codes, one per line (COPY text format)."""
    width = len(slots) + 1
    buf = bytearray(n * width)
    for pos, slot in enumerate(slots):
        buf[pos::width] = slot * n if len(slot) == 1 else _draw(slot, n)
    buf[len(slots) :: width] = b"\n" * n
    return bytes(buf)


def with_check_characters(batch: bytes, prefix_length: int) -> bytes:
    """The batch's codes, each followed by its check character."""
    lines = batch.decode().split("\n")[:-1]
    return "".join(
        f"{line}{checksum.check_char(line[prefix_length:])}\n" for line in lines
    ).encode()


def draws(missing: int, room: int, shortfalls: int) -> int:
    """Candidates to draw for one round: a tenth more than the codes still missing, four
    times as many after each round that fell short, never more than one batch nor eight
    times what the pattern can make."""
    wanted = (missing + missing // 10 + 16) << 2 * min(shortfalls, _MAX_SHORTFALLS)
    return min(_BATCH, room * 8, wanted)


_INSERT = """
WITH fresh AS (
    SELECT DISTINCT g.code FROM generated_codes g
    WHERE NOT EXISTS (SELECT 1 FROM codes c WHERE c.code = g.code) {namespaces}
    LIMIT $2
)
INSERT INTO codes (book_id, code) SELECT $1, code FROM fresh ORDER BY code
ON CONFLICT (code) DO NOTHING
"""
# Codes under a claimed checksum prefix must pass its check (app/books/checksum.py).
_INSERT_PLAIN = _INSERT.format(namespaces="")
_INSERT_CHECKED = _INSERT.format(namespaces=f"AND NOT {checksum.unchecked_in_namespace('g.code')}")


async def generate(
    session: AsyncSession, book_id: uuid.UUID, body: GenerateIn, *, checked: bool
) -> int:
    """Insert `count` new globally unique codes into the book; all or nothing. `checked`:
    each code ends in a check character and its prefix is claimed as a checksum namespace."""
    slots = checked_slots(body)
    prefix = checksum_prefix(slots) if checked else None
    conn = await raw_connection(session)
    if prefix is not None:
        unchecked = await checksum.claim(conn, prefix, book_id)
        if unchecked:
            raise _invalid(
                "pattern",
                f"codes without a check character already use the prefix {prefix}"
                f" (e.g. {', '.join(unchecked)})",
            )
    await conn.execute("SELECT set_config('statement_timeout', '600s', true)")
    return await generate_into(conn, book_id, slots, body.count, check_prefix=prefix)


def checked_slots(body: GenerateIn) -> list[Slot]:
    """The pattern's slots; 422 when it cannot make `count` distinct codes."""
    slots = slots_for(body)
    if capacity(slots) < body.count:
        raise _invalid("pattern", f"it can make at most {capacity(slots)} distinct codes")
    return slots


async def generate_into(
    conn: asyncpg.Connection | PoolConnectionProxy,
    book_id: uuid.UUID,
    slots: list[Slot],
    count: int,
    after_round: Callable[[int], Awaitable[None]] | None = None,
    *,
    check_prefix: str | None = None,
) -> int:
    """Insert `count` new codes drawn from `slots`, in the caller's transaction, a round of
    at most one batch at a time; `after_round(inserted so far)` runs after each round (it
    may raise to stop). `check_prefix`: each code gets a check character after it."""
    insert = _INSERT_CHECKED if await checksum.any_claimed(conn) else _INSERT_PLAIN
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS generated_codes (code text) ON COMMIT DROP")
    room = capacity(slots)
    inserted, fruitless, shortfalls = 0, 0, 0
    while inserted < count:
        missing = count - inserted
        n = draws(missing, room, shortfalls)
        data = await anyio.to_thread.run_sync(make_batch, slots, n)
        if check_prefix is not None:
            data = await anyio.to_thread.run_sync(with_check_characters, data, len(check_prefix))
        await conn.execute("TRUNCATE generated_codes")
        await conn.copy_to_table("generated_codes", source=io.BytesIO(data), columns=["code"])
        status = await conn.execute(insert, book_id, missing)
        added = int(status.rsplit(" ", 1)[-1])
        inserted += added
        shortfalls += added < missing
        # Only rounds of full size count: a nearly full pattern needs many draws to hit
        # its last free codes, and the rounds grow until they are that big.
        fruitless = 0 if added else fruitless + (n == draws(missing, room, _MAX_SHORTFALLS))
        if fruitless >= _MAX_FRUITLESS_ROUNDS:
            raise _invalid("pattern", "too few unused codes are left in this pattern")
        if after_round is not None:
            await after_round(inserted)
    await conn.execute("TRUNCATE generated_codes")
    return inserted
