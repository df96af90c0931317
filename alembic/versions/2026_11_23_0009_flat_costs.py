"""flat_costs: per-book code counts kept by triggers, and the indexes that turn scans into seeks

- `book_code_counts`: a book's codes by state (unassigned, held = assigned or locked as
  stored, redeemed) in up to 16 slot rows, kept by triggers on `codes` in the statement that
  changes a code; a writer takes the first slot no other transaction is writing, so
  concurrent assigns never queue on one row. Book stats read them instead of counting the
  book; live locks are counted through `ix_codes_book_id_locked_until` (docs/decisions.md).
- `ix_codes_book_id_locked_until`: live locks of a book (stats, `?status=locked`).
- `ix_codes_user_id_id`: a holder's codes in id order (`/me/codes` pages).
- `ix_redemption_history_action`, `ix_redemption_history_at`: history by action, by time.
- `promos.sold_out`: set by the worker once every unit is sold, cleared when the quantity
  grows; `ix_promos_live` leaves such promos out, so listings stop meeting them.

Builds indexes on codes and redemption_history inside the upgrade's transaction: writes to
them wait for the build (21 s for 2M codes and 5M history rows on a two-core box).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOTS = 16


def upgrade() -> None:
    # Waiting behind a long transaction on codes would stall every request queued behind us.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Writers of codes wait from here to the commit, so the counts below and the triggers
    # start from the same rows.
    op.execute("LOCK TABLE books, codes IN SHARE ROW EXCLUSIVE MODE")
    op.execute(
        f"""
        CREATE TABLE book_code_counts (
            book_id uuid NOT NULL CONSTRAINT fk_book_code_counts_book_id_books
                REFERENCES books (id) ON DELETE CASCADE,
            slot smallint NOT NULL CONSTRAINT ck_book_code_counts_slot
                CHECK (slot BETWEEN 0 AND {SLOTS - 1}),
            unassigned bigint NOT NULL DEFAULT 0,
            held bigint NOT NULL DEFAULT 0,
            redeemed bigint NOT NULL DEFAULT 0,
            CONSTRAINT pk_book_code_counts PRIMARY KEY (book_id, slot)
        )
        """
    )
    # One slot per writer: the first one no other transaction holds (a slot this one
    # already holds is not skipped), so concurrent writers of a book never wait for each
    # other; only when all are taken does a writer queue on one at random. A slot alone
    # means nothing (it may be negative): a book's counts are the sums of its slots.
    op.execute(
        f"""
        CREATE FUNCTION book_code_counts_add(
            p_book uuid, p_unassigned bigint, p_held bigint, p_redeemed bigint
        ) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE book_code_counts k
            SET unassigned = k.unassigned + p_unassigned, held = k.held + p_held,
                redeemed = k.redeemed + p_redeemed
            WHERE k.book_id = p_book AND k.slot = (
                SELECT f.slot FROM book_code_counts f WHERE f.book_id = p_book
                ORDER BY f.slot LIMIT 1 FOR UPDATE SKIP LOCKED);
            IF NOT FOUND THEN
                INSERT INTO book_code_counts AS k (book_id, slot, unassigned, held, redeemed)
                VALUES (p_book, floor(random() * {SLOTS})::smallint, p_unassigned, p_held,
                        p_redeemed)
                ON CONFLICT (book_id, slot) DO UPDATE
                SET unassigned = k.unassigned + excluded.unassigned,
                    held = k.held + excluded.held, redeemed = k.redeemed + excluded.redeemed;
            END IF;
        END
        $$
        """
    )
    # Inserts and deletes count once per statement (an import of a million codes is one
    # update of one slot); a change of state once per row, and only when it moves the code
    # between unassigned, held and redeemed: lock and unlock stay within held and cost
    # nothing here.
    for event, table, sign in (("inserted", "new_codes", ""), ("deleted", "old_codes", "-")):
        op.execute(
            f"""
            CREATE FUNCTION codes_counts_{event}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM book_code_counts_add(t.book_id, {sign}t.unassigned, {sign}t.held,
                                             {sign}t.redeemed)
                FROM (SELECT book_id,
                             count(*) FILTER (WHERE status = 'unassigned') AS unassigned,
                             count(*) FILTER (WHERE status IN ('assigned', 'locked')) AS held,
                             count(*) FILTER (WHERE status = 'redeemed') AS redeemed
                      FROM {table} GROUP BY book_id ORDER BY book_id) AS t;
                RETURN NULL;
            END
            $$
            """
        )
    op.execute(
        """
        CREATE TRIGGER codes_counts_inserted AFTER INSERT ON codes
        REFERENCING NEW TABLE AS new_codes
        FOR EACH STATEMENT EXECUTE FUNCTION codes_counts_inserted()
        """
    )
    op.execute(
        """
        CREATE TRIGGER codes_counts_deleted AFTER DELETE ON codes
        REFERENCING OLD TABLE AS old_codes
        FOR EACH STATEMENT EXECUTE FUNCTION codes_counts_deleted()
        """
    )
    op.execute(
        """
        CREATE FUNCTION codes_counts_moved() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.book_id = NEW.book_id THEN
                PERFORM book_code_counts_add(NEW.book_id,
                    (NEW.status = 'unassigned')::int - (OLD.status = 'unassigned')::int,
                    (NEW.status IN ('assigned', 'locked'))::int
                        - (OLD.status IN ('assigned', 'locked'))::int,
                    (NEW.status = 'redeemed')::int - (OLD.status = 'redeemed')::int);
            ELSE
                PERFORM book_code_counts_add(OLD.book_id, -(OLD.status = 'unassigned')::int,
                    -(OLD.status IN ('assigned', 'locked'))::int,
                    -(OLD.status = 'redeemed')::int);
                PERFORM book_code_counts_add(NEW.book_id, (NEW.status = 'unassigned')::int,
                    (NEW.status IN ('assigned', 'locked'))::int,
                    (NEW.status = 'redeemed')::int);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER codes_counts_moved AFTER UPDATE OF status, book_id ON codes
        FOR EACH ROW
        WHEN ((OLD.status = 'unassigned') <> (NEW.status = 'unassigned')
              OR (OLD.status = 'redeemed') <> (NEW.status = 'redeemed')
              OR OLD.book_id <> NEW.book_id)
        EXECUTE FUNCTION codes_counts_moved()
        """
    )
    op.execute(
        """
        CREATE FUNCTION codes_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE book_code_counts SET unassigned = 0, held = 0, redeemed = 0;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER codes_counts_truncated AFTER TRUNCATE ON codes"
        " FOR EACH STATEMENT EXECUTE FUNCTION codes_counts_truncated()"
    )
    # Every book has its slots from the start: a writer never has to create one (a slot
    # created by a transaction that runs long, an import, would make others wait for it).
    op.execute(
        f"""
        CREATE FUNCTION books_count_slots() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO book_code_counts (book_id, slot)
            SELECT NEW.id, s FROM generate_series(0, {SLOTS - 1}) AS s;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER books_count_slots AFTER INSERT ON books"
        " FOR EACH ROW EXECUTE FUNCTION books_count_slots()"
    )
    op.execute(
        f"""
        INSERT INTO book_code_counts (book_id, slot, unassigned, held, redeemed)
        SELECT b.id, s.slot,
               CASE WHEN s.slot = 0 THEN coalesce(c.unassigned, 0) ELSE 0 END,
               CASE WHEN s.slot = 0 THEN coalesce(c.held, 0) ELSE 0 END,
               CASE WHEN s.slot = 0 THEN coalesce(c.redeemed, 0) ELSE 0 END
        FROM books b
        CROSS JOIN generate_series(0, {SLOTS - 1}) AS s(slot)
        LEFT JOIN (
            SELECT book_id,
                   count(*) FILTER (WHERE status = 'unassigned') AS unassigned,
                   count(*) FILTER (WHERE status IN ('assigned', 'locked')) AS held,
                   count(*) FILTER (WHERE status = 'redeemed') AS redeemed
            FROM codes GROUP BY book_id
        ) AS c ON c.book_id = b.id
        """
    )
    # Live locks of a book, in the order of their expiry: a range scan skips the lapsed
    # ones, which keep `status = 'locked'` until the code is used again.
    op.execute(
        "CREATE INDEX ix_codes_book_id_locked_until ON codes (book_id, locked_until)"
        " WHERE status = 'locked'"
    )
    op.execute("CREATE INDEX ix_codes_user_id_id ON codes (user_id, id) WHERE user_id IS NOT NULL")
    op.execute("CREATE INDEX ix_redemption_history_action ON redemption_history (action, id)")
    op.execute("CREATE INDEX ix_redemption_history_at ON redemption_history (at, id)")

    op.execute("ALTER TABLE promos ADD COLUMN sold_out boolean NOT NULL DEFAULT false")
    op.execute(
        """
        UPDATE promos p SET sold_out = true
        WHERE (SELECT coalesce(sum(sa.sold), 0) FROM promo_sales sa WHERE sa.promo_id = p.id)
              >= p.quantity
        """
    )
    # A larger quantity has units to sell again.
    op.execute(
        """
        CREATE FUNCTION promos_sold_out_reset() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.sold_out := false;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER promos_sold_out_reset BEFORE UPDATE OF quantity ON promos"
        " FOR EACH ROW WHEN (NEW.quantity > OLD.quantity)"
        " EXECUTE FUNCTION promos_sold_out_reset()"
    )
    op.execute("DROP INDEX ix_promos_live")
    # starts_at and radius_m ride along: the eligibility query's largest radius among the
    # promos running now is an index-only scan of the live ones.
    op.execute(
        "CREATE INDEX ix_promos_live ON promos (ends_at) INCLUDE (starts_at, radius_m)"
        " WHERE active AND cancelled_at IS NULL AND NOT sold_out"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP INDEX ix_promos_live")
    op.execute(
        "CREATE INDEX ix_promos_live ON promos (ends_at) WHERE active AND cancelled_at IS NULL"
    )
    op.execute("DROP TRIGGER promos_sold_out_reset ON promos")
    op.execute("DROP FUNCTION promos_sold_out_reset")
    op.execute("ALTER TABLE promos DROP COLUMN sold_out")
    op.execute("DROP INDEX ix_redemption_history_at")
    op.execute("DROP INDEX ix_redemption_history_action")
    op.execute("DROP INDEX ix_codes_user_id_id")
    op.execute("DROP INDEX ix_codes_book_id_locked_until")
    op.execute("DROP TRIGGER books_count_slots ON books")
    op.execute("DROP FUNCTION books_count_slots")
    for event in ("inserted", "deleted", "moved", "truncated"):
        op.execute(f"DROP TRIGGER codes_counts_{event} ON codes")
        op.execute(f"DROP FUNCTION codes_counts_{event}")
    op.execute("DROP FUNCTION book_code_counts_add")
    op.execute("DROP TABLE book_code_counts")
