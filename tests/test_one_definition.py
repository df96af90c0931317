"""Rules stated once: lazy expiry (of code locks and of promo holds) and the sales slot are
spelled in `app/books/rules.py` and `app/promos/rules.py` only; every statement that needs
them builds its SQL from there, so a reader cannot drift from the writers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.books import rules as books
from app.promos import rules as promos

APP = Path(__file__).resolve().parent.parent / "app"
RULES = {APP / "books" / "rules.py", APP / "promos" / "rules.py"}

SPELLINGS = {
    "lock or hold expiry": re.compile(r"(locked_until|expires_at)\s*(<=|>=|<|>)\s*now\(\)"),
    "sales slot": re.compile(r"seq\s*%\s*\d"),
}


@pytest.mark.parametrize("rule", sorted(SPELLINGS))
def test_the_rule_is_spelled_only_in_the_rules_modules(rule: str) -> None:
    pattern = SPELLINGS[rule]
    found = [
        f"{path.relative_to(APP.parent)}:{number}: {line.strip()}"
        for path in sorted(APP.rglob("*.py"))
        if path not in RULES
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)


def test_the_rules_say_what_they_name() -> None:
    assert books.LOCK_LIVE == "(c.status = 'locked' AND c.locked_until > now())"
    assert books.LOCK_LAPSED == "(c.status = 'locked' AND c.locked_until <= now())"
    assert promos.HOLD_LIVE == "(r.status = 'held' AND r.expires_at > now())"
    assert promos.HOLD_LAPSED == "(r.status = 'held' AND r.expires_at <= now())"
    assert promos.HOLD_LAPSED_BY_KEY == (
        "(r.status NOT IN ('purchased', 'cancelled', 'expired') AND r.expires_at <= now())"
    )
    assert promos.sales_slot("unit.seq") == f"(unit.seq % {promos.SALES_SLOTS})"
