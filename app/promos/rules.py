"""The promo rules as SQL fragments, so every query states them the same way.

All of them read the database clock (`now()`). Aliases: `p` is a promo, `s` its store, `r` a
reservation, `u` a unit, `me` a row with the caller's `id, tags, birth_date` and
`e = ll_to_earth(lat, lng)`.
"""

from __future__ import annotations

# Bookable now. Sold out is separate: a sold-out promo answers `sold-out`, not
# `promo-not-running`.
OPEN = "(p.active AND p.cancelled_at IS NULL AND p.starts_at <= now() AND now() < p.ends_at)"

# Units sold: a purchase adds one to its unit's slot (`sales_slot`) in `promo_sales`, so
# purchases of one promo never queue on one counter row; reading them sums at most
# `SALES_SLOTS` rows. Migration 0007 created the table and its slot CHECK for 16; another
# number needs a migration that widens the CHECK and re-counts the sales into the new slots.
SALES_SLOTS = 16


def sales_slot(seq: str) -> str:
    """The `promo_sales` slot that the sale of the unit numbered `seq` (SQL) counts in."""
    return f"({seq} % {SALES_SLOTS})"


SOLD = "(SELECT coalesce(sum(sa.sold), 0) FROM promo_sales sa WHERE sa.promo_id = p.id)"
SOLD_OUT = f"({SOLD} >= p.quantity)"
# When the last unit sold (the latest sale once every unit is sold), else NULL.
SOLD_OUT_AT = """(SELECT CASE WHEN sum(sa.sold) >= p.quantity THEN max(sa.last_sold_at) END
    FROM promo_sales sa WHERE sa.promo_id = p.id)"""

RUNNING = f"({OPEN} AND NOT {SOLD_OUT})"

STATUS = f"""(CASE
    WHEN p.cancelled_at IS NOT NULL THEN 'cancelled'
    WHEN NOT p.active THEN 'draft'
    WHEN now() >= p.ends_at THEN 'ended'
    WHEN {SOLD_OUT} THEN 'sold_out'
    WHEN now() < p.starts_at THEN 'scheduled'
    ELSE 'running' END)"""

# A hold lapses at `expires_at` and nothing rewrites the row when it does (lazy expiry): a
# lapsed hold reads as `expired`, and its unit may be claimed by the next reserve, which
# retires it; the worker's sweep retires the ones nobody takes over. Both conditions are
# `status = 'held'` plus a range on `expires_at`, the shape of the per-promo index of holds
# (`(promo_id, expires_at) WHERE status = 'held'`).
HOLD_LIVE = "(r.status = 'held' AND r.expires_at > now())"
HOLD_LAPSED = "(r.status = 'held' AND r.expires_at <= now())"
# HOLD_LAPSED for a row found by primary key, with "held" said in words no partial index of
# holds matches: a planner whose statistics predate a crowd of holds takes such an index for
# empty and reads every entry of it (docs/decisions.md, "The reserve reads the caller's
# reservations by (promo_id, user_id) only").
HOLD_LAPSED_BY_KEY = (
    "(r.status NOT IN ('purchased', 'cancelled', 'expired') AND r.expires_at <= now())"
)

# Free units plus lapsed holds: the units not sold, less the live holds, which are few.
UNITS_LEFT = f"""(p.quantity - {SOLD} - (
    SELECT count(*) FROM promo_units u JOIN reservations r ON r.id = u.reservation_id
    WHERE u.promo_id = p.id AND u.state = 'held' AND {HOLD_LIVE}))::int"""

DISTANCE = "earth_distance(ll_to_earth(s.lat, s.lng), me.e)"

# No segments means everyone; otherwise membership of at least one, by the one definition
# of membership (`segment_contains`).
IN_SEGMENTS = """(NOT EXISTS (SELECT 1 FROM promo_segments ps WHERE ps.promo_id = p.id)
    OR EXISTS (
        SELECT 1 FROM promo_segments ps JOIN segments g ON g.id = ps.segment_id
        WHERE ps.promo_id = p.id
          AND segment_contains(g.kind, g.rules, g.id, me.id, me.tags, me.birth_date)))"""

ELIGIBLE = f"({DISTANCE} <= p.radius_m AND {IN_SEGMENTS})"


def me_sql(user_param: str) -> str:
    """The caller as `me`, only when a location is known (no location = eligible for none)."""
    return (
        "SELECT u.id, u.tags, u.birth_date, ll_to_earth(u.lat, u.lng) AS e FROM users u"
        f" WHERE u.id = {user_param} AND u.lat IS NOT NULL AND u.lng IS NOT NULL"
    )
