"""Counts over time for reports: a window cut into hour or day buckets, every bucket present
(zero when nothing happened), at most `MAX_BUCKETS` of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum

from app.core.problems import ValidationFailed

MAX_BUCKETS = 1000


class Bucket(StrEnum):
    hour = "hour"
    day = "day"


STEP = {Bucket.hour: timedelta(hours=1), Bucket.day: timedelta(days=1)}
DEFAULT_SPAN = {Bucket.hour: timedelta(hours=48), Bucket.day: timedelta(days=14)}


def window(
    bucket: Bucket, since: datetime | None, until: datetime | None
) -> tuple[datetime, datetime]:
    """The window asked for, or the default span of the bucket ending now; refused (422 on
    the field) when it is empty or cut into more than `MAX_BUCKETS` buckets."""
    end = until or datetime.now(UTC)
    start = since or end - DEFAULT_SPAN[bucket]
    if start >= end:
        raise ValidationFailed(
            "since must be before until.",
            errors=[{"loc": ["query", "since"], "msg": "must be before until"}],
        )
    if (end - start) / STEP[bucket] > MAX_BUCKETS:
        raise ValidationFailed(
            f"At most {MAX_BUCKETS} {bucket.value}s in one report.",
            errors=[
                {
                    "loc": ["query", "bucket"],
                    "msg": f"at most {MAX_BUCKETS} {bucket.value}s: use a larger bucket"
                    " or a shorter window",
                }
            ],
        )
    return start, end


def series_sql(counts: str) -> str:
    """A zero-filled series: `$2` start, `$3` end, `$4` the bucket (`hour`/`day`), and
    `counts`, a query yielding `(at, <columns>)` rows already truncated to the bucket
    (`date_trunc($4, …, 'UTC')` as `bucket`), left joined on each bucket's start (buckets
    are cut in UTC; the first starts at the start's bucket)."""
    return f"""
SELECT s.at, c.*
FROM generate_series(date_trunc($4, $2::timestamptz, 'UTC'),
                     $3::timestamptz - interval '1 microsecond',
                     ('1 ' || $4)::interval) AS s(at)
LEFT JOIN ({counts}) AS c ON c.bucket = s.at
ORDER BY s.at
"""
