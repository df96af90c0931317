"""books: coupon books, codes, append-only redemption history, imports

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE books (
            id uuid DEFAULT gen_random_uuid() CONSTRAINT pk_books PRIMARY KEY,
            name text NOT NULL CONSTRAINT ck_books_name CHECK (length(name) BETWEEN 1 AND 200),
            description text,
            status text NOT NULL DEFAULT 'active' CONSTRAINT ck_books_status
                CHECK (status IN ('active', 'paused', 'archived')),
            max_codes_per_user integer DEFAULT 1 CONSTRAINT ck_books_max_codes_per_user
                CHECK (max_codes_per_user IS NULL OR max_codes_per_user >= 1),
            max_redemptions_per_code integer NOT NULL DEFAULT 1
                CONSTRAINT ck_books_max_redemptions_per_code CHECK (max_redemptions_per_code >= 1),
            max_redemptions_per_user integer CONSTRAINT ck_books_max_redemptions_per_user
                CHECK (max_redemptions_per_user IS NULL OR max_redemptions_per_user >= 1),
            lock_ttl_seconds integer NOT NULL DEFAULT 300 CONSTRAINT ck_books_lock_ttl_seconds
                CHECK (lock_ttl_seconds BETWEEN 1 AND 86400),
            starts_at timestamptz,
            expires_at timestamptz,
            metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_books_window CHECK (starts_at IS NULL OR expires_at IS NULL
                OR starts_at < expires_at)
        )
        """
    )
    op.execute("CREATE INDEX ix_books_created_at ON books (created_at, id)")
    # status is the stored state; a 'locked' row whose locked_until has passed reads as
    # 'assigned' (lazy expiry on the database clock, no sweeper needed).
    op.execute(
        """
        CREATE TABLE codes (
            id bigint GENERATED ALWAYS AS IDENTITY,
            book_id uuid NOT NULL CONSTRAINT fk_codes_book_id_books REFERENCES books (id),
            code text NOT NULL CONSTRAINT uq_codes_code UNIQUE,
            rand_key double precision NOT NULL DEFAULT random(),
            status text NOT NULL DEFAULT 'unassigned' CONSTRAINT ck_codes_status
                CHECK (status IN ('unassigned', 'assigned', 'locked', 'redeemed')),
            user_id uuid CONSTRAINT fk_codes_user_id_users REFERENCES users (id),
            assigned_at timestamptz,
            locked_until timestamptz,
            lock_id uuid,
            redemptions integer NOT NULL DEFAULT 0
                CONSTRAINT ck_codes_redemptions CHECK (redemptions >= 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            -- '+' plus a length test: a bounded '{1,64}' regex costs ~15x more per row,
            -- which a million-row import pays in full.
            CONSTRAINT ck_codes_code_format CHECK (code ~ '^[A-Z0-9_-]+$' AND length(code) <= 64),
            CONSTRAINT ck_codes_holder CHECK ((status = 'unassigned') = (user_id IS NULL)),
            CONSTRAINT ck_codes_lock CHECK (status <> 'locked'
                OR (locked_until IS NOT NULL AND lock_id IS NOT NULL)),
            -- (book_id, id) rather than (id): the same index then serves a book's listing,
            -- export and stats, one index fewer for every imported row to maintain.
            CONSTRAINT pk_codes PRIMARY KEY (book_id, id)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_codes_book_id_rand_key ON codes (book_id, rand_key)"
        " WHERE status = 'unassigned'"
    )
    op.execute(
        "CREATE INDEX ix_codes_user_id_book_id ON codes (user_id, book_id)"
        " WHERE user_id IS NOT NULL"
    )
    op.execute(
        """
        CREATE TABLE redemption_history (
            id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_redemption_history PRIMARY KEY,
            code_id bigint NOT NULL,
            book_id uuid NOT NULL,
            user_id uuid,
            action text NOT NULL CONSTRAINT ck_redemption_history_action
                CHECK (action IN ('assigned', 'locked', 'unlocked', 'redeemed', 'rolled_back')),
            actor_id uuid,
            at timestamptz NOT NULL DEFAULT now(),
            details jsonb NOT NULL DEFAULT '{}',
            reverses_id bigint CONSTRAINT fk_redemption_history_reverses_id_redemption_history
                REFERENCES redemption_history (id),
            CONSTRAINT ck_redemption_history_reverses CHECK ((action = 'rolled_back')
                = (reverses_id IS NOT NULL)),
            CONSTRAINT fk_redemption_history_book_id_codes FOREIGN KEY (book_id, code_id)
                REFERENCES codes (book_id, id)
        )
        """
    )
    # A redemption is rolled back at most once, whatever the concurrency.
    op.execute(
        "CREATE UNIQUE INDEX uq_redemption_history_reverses_id ON redemption_history"
        " (reverses_id) WHERE reverses_id IS NOT NULL"
    )
    op.execute("CREATE INDEX ix_redemption_history_book_id ON redemption_history (book_id, id)")
    op.execute("CREATE INDEX ix_redemption_history_user_id ON redemption_history (user_id, id)")
    op.execute("CREATE INDEX ix_redemption_history_code_id ON redemption_history (code_id, id)")
    op.execute(
        """
        CREATE FUNCTION redemption_history_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'redemption_history is append-only (% refused)', TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER trg_redemption_history_append_only BEFORE UPDATE OR DELETE"
        " ON redemption_history FOR EACH ROW EXECUTE FUNCTION redemption_history_append_only()"
    )
    op.execute(
        "CREATE TRIGGER trg_redemption_history_no_truncate BEFORE TRUNCATE"
        " ON redemption_history FOR EACH STATEMENT"
        " EXECUTE FUNCTION redemption_history_append_only()"
    )
    op.execute(
        """
        CREATE TABLE imports (
            id uuid DEFAULT gen_random_uuid() CONSTRAINT pk_imports PRIMARY KEY,
            book_id uuid NOT NULL CONSTRAINT fk_imports_book_id_books REFERENCES books (id),
            actor_id uuid,
            at timestamptz NOT NULL DEFAULT now(),
            received bigint NOT NULL CONSTRAINT ck_imports_received CHECK (received >= 0),
            inserted bigint NOT NULL CONSTRAINT ck_imports_inserted CHECK (inserted >= 0),
            duplicates_in_file bigint NOT NULL DEFAULT 0
                CONSTRAINT ck_imports_duplicates_in_file CHECK (duplicates_in_file >= 0),
            already_present bigint NOT NULL DEFAULT 0
                CONSTRAINT ck_imports_already_present CHECK (already_present >= 0),
            file_sha256 text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX ix_imports_book_id ON imports (book_id, at)")


def downgrade() -> None:
    op.execute("DROP TABLE imports")
    op.execute("DROP TABLE redemption_history")
    op.execute("DROP FUNCTION redemption_history_append_only")
    op.execute("DROP TABLE codes")
    op.execute("DROP TABLE books")
