"""checksum codes: books.checksum, claimed checksum prefixes, code_check_ok()

A book may generate codes that end in a check character (app/books/checksum.py). The prefix
of such codes is claimed in `checksum_prefixes`: every code stored under it passes the check
of one of the claimed prefixes it starts with, so a code in the namespace that passes none
is a typo or a guess, refused without reading `codes`. `code_check_ok` is the check in SQL,
for the admin paths that store codes (upload, generate) and for claiming a prefix over
existing codes; tests/books/test_checksum.py holds it to the Python one.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CODE_CHECK_OK = r"""
CREATE FUNCTION code_check_ok(code text, prefix_length integer) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $check$
SELECT length(x.b) >= 2 AND right(x.b, 1) NOT IN ('-', '_') AND coalesce((
    SELECT count(*) > 0 AND bool_and(s.v >= 0) AND sum(s.v * (1 << ((s.i - 1) % 5)::int)) % 31 = 0
    FROM (SELECT strpos('23456789ABCDEFGHJKMNPQRSTUVWXYZ', t.c) - 1 AS v, t.i
          FROM regexp_split_to_table(reverse(translate(x.b, '-_', '')), '')
               WITH ORDINALITY AS t(c, i)) AS s
), false)
FROM (SELECT upper(substr(code, prefix_length + 1)) AS b) AS x
$check$
"""


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TABLE books ADD COLUMN checksum boolean NOT NULL DEFAULT false")
    op.execute(
        "CREATE TABLE checksum_prefixes ("
        " prefix text CONSTRAINT pk_checksum_prefixes PRIMARY KEY CONSTRAINT ck_checksum_prefixes_prefix"
        " CHECK (prefix ~ '^[A-Z0-9_-]{1,62}$'),"
        " book_id uuid NOT NULL CONSTRAINT fk_checksum_prefixes_book_id_books REFERENCES books (id),"
        " claimed_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(CODE_CHECK_OK)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP FUNCTION code_check_ok(text, integer)")
    op.execute("DROP TABLE checksum_prefixes")
    op.execute("ALTER TABLE books DROP COLUMN checksum")
