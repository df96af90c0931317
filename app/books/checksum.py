"""Check characters that catch typos and guesses without a lookup.

The scheme is Damm's over the 31 characters of the unambiguous alphabet with the totally
anti-symmetric quasigroup `x * y = (2x + y) mod 31`: the interim starts at 0, each character
folds in as `interim = 2 * interim + value`, and a code is valid when the interim ends at 0.
Because 2 is invertible mod 31 (a prime), a change to any one character changes the result,
and swapping two different adjacent characters `a b` for `b a` changes it by `a - b != 0`:
every single-character error and every adjacent transposition is caught.

A code's check covers what follows its prefix (the literal part of the pattern, which names
the checksum namespace): separators `-` and `_` are skipped, any other character outside the
alphabet makes the code invalid. The check character is the last character of the code.

A prefix claimed by a checksum book (table `checksum_prefixes`) is a namespace: every stored
code that starts with it passes the check for one of the claimed prefixes it starts with.
So a code in a namespace that passes none of them was never issued: the request is answered
422 `code-mistyped` before any code table is read.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app.books.errors import CodeMistyped

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
MODULUS = len(ALPHABET)  # 31, a prime
SEPARATORS = frozenset("-_")
_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}


def _interim(chars: Iterable[str]) -> int | None:
    """The Damm interim over the characters (separators skipped), or None if a character
    is outside the alphabet or there is none."""
    interim, seen = 0, 0
    for ch in chars:
        if ch in SEPARATORS:
            continue
        value = _VALUE.get(ch)
        if value is None:
            return None
        interim = (2 * interim + value) % MODULUS
        seen += 1
    return interim if seen else None


def check_char(body: str) -> str:
    """The character that, appended to `body` (the part after the prefix), makes it valid."""
    interim = _interim(body.upper())
    if interim is None:
        raise ValueError(f"{body!r} has no characters to check, or one outside the alphabet")
    return ALPHABET[(-2 * interim) % MODULUS]


def is_valid(code: str, prefix_length: int) -> bool:
    """Does the code's last character check what follows its first `prefix_length`?"""
    body = code[prefix_length:].upper()
    if len(body) < 2 or body[-1] in SEPARATORS:
        return False
    return _interim(body) == 0


def mistyped(code: str, prefixes: Iterable[str]) -> bool:
    """The code lies in a checksum namespace yet passes the check of none of them."""
    upper = code.upper()
    matching = [p for p in prefixes if upper.startswith(p)]
    return bool(matching) and not any(is_valid(upper, len(p)) for p in matching)


async def load_prefixes(conn: asyncpg.Connection) -> tuple[str, ...]:
    """The claimed prefixes, longest first."""
    rows = await conn.fetch("SELECT prefix FROM checksum_prefixes")
    return tuple(sorted((r["prefix"] for r in rows), key=len, reverse=True))


def refuse_mistyped(prefixes: tuple[str, ...], code: str) -> None:
    """422 `code-mistyped` when the code's check character is wrong for its namespace."""
    if prefixes and mistyped(code, prefixes):
        raise CodeMistyped(f"Code {code.upper()} has a wrong check character: it was mistyped.")


# --- the admin paths that store codes ------------------------------------------------------


def unchecked_in_namespace(column: str) -> str:
    """SQL: the code in `column` lies under a claimed prefix yet passes none of their checks
    (such a code must never be stored: the hot paths would refuse it as mistyped)."""
    return (
        f"(EXISTS (SELECT 1 FROM checksum_prefixes p WHERE starts_with({column}, p.prefix))"
        f" AND NOT EXISTS (SELECT 1 FROM checksum_prefixes p WHERE starts_with({column}, p.prefix)"
        f" AND code_check_ok({column}, length(p.prefix))))"
    )


async def any_claimed(conn: asyncpg.Connection | PoolConnectionProxy) -> bool:
    """Whether any prefix is claimed (else the namespace checks are skipped)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM checksum_prefixes)"))


_CLAIM = """
INSERT INTO checksum_prefixes (prefix, book_id) VALUES ($1, $2)
ON CONFLICT (prefix) DO NOTHING
"""
_UNCHECKED_UNDER = f"""
SELECT code FROM codes WHERE starts_with(code, $1) AND {unchecked_in_namespace("code")}
ORDER BY code LIMIT 5
"""


async def claim(conn: asyncpg.Connection, prefix: str, book_id: object) -> list[str]:
    """Claim `prefix` as a checksum namespace; returns stored codes under it that carry no
    valid check character (then the caller refuses, and its transaction undoes the claim)."""
    status = await conn.execute(_CLAIM, prefix, book_id)
    if status.endswith(" 0"):
        return []
    return [r["code"] for r in await conn.fetch(_UNCHECKED_UNDER, prefix)]
