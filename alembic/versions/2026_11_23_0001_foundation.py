"""foundation: extensions, users with profile, segments, idempotency keys

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS cube")
    op.execute("CREATE EXTENSION IF NOT EXISTS earthdistance")
    op.execute(
        """
        CREATE TABLE users (
            id uuid DEFAULT gen_random_uuid() CONSTRAINT pk_users PRIMARY KEY,
            email text NOT NULL CONSTRAINT uq_users_email UNIQUE,
            password_hash text,
            role text NOT NULL DEFAULT 'user' CONSTRAINT ck_users_role
                CHECK (role IN ('user', 'admin')),
            external_id text CONSTRAINT uq_users_external_id UNIQUE,
            lat double precision,
            lng double precision,
            location_updated_at timestamptz,
            birth_date date,
            tags text[] NOT NULL DEFAULT '{}',
            timezone text NOT NULL DEFAULT 'UTC',
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_users_lat_lng CHECK (lat BETWEEN -90 AND 90 AND lng BETWEEN -180 AND 180)
        )
        """
    )
    op.execute("CREATE INDEX ix_users_tags ON users USING gin (tags)")
    op.execute(
        """
        CREATE TABLE segments (
            id uuid DEFAULT gen_random_uuid() CONSTRAINT pk_segments PRIMARY KEY,
            name text NOT NULL,
            kind text NOT NULL CONSTRAINT ck_segments_kind CHECK (kind IN ('static', 'rule')),
            rules jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE segment_members (
            segment_id uuid NOT NULL CONSTRAINT fk_segment_members_segment_id_segments
                REFERENCES segments (id) ON DELETE CASCADE,
            user_id uuid NOT NULL CONSTRAINT fk_segment_members_user_id_users
                REFERENCES users (id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_segment_members PRIMARY KEY (segment_id, user_id)
        )
        """
    )
    op.execute("CREATE INDEX ix_segment_members_user_id ON segment_members (user_id)")
    # One definition of "is this user in this segment", usable set-based from any query
    # (distribute, promo eligibility, notification audience). Rules are ANDed; a rule on
    # age needs a birth date. purchased_within_days is added with the tables it reads.
    op.execute(
        """
        CREATE FUNCTION segment_contains(
            p_kind text, p_rules jsonb, p_segment_id uuid,
            p_user_id uuid, p_tags text[], p_birth_date date
        ) RETURNS boolean LANGUAGE sql STABLE AS $$
            SELECT CASE WHEN p_kind = 'static' THEN EXISTS (
                SELECT 1 FROM segment_members m
                WHERE m.segment_id = p_segment_id AND m.user_id = p_user_id)
            ELSE coalesce(
                (NOT p_rules ? 'tags_any'
                    OR p_tags && ARRAY(SELECT jsonb_array_elements_text(p_rules -> 'tags_any')))
                AND (NOT p_rules ? 'age_min' OR p_birth_date
                    <= current_date - make_interval(years => (p_rules ->> 'age_min')::int))
                AND (NOT p_rules ? 'age_max' OR p_birth_date
                    > current_date - make_interval(years => (p_rules ->> 'age_max')::int + 1)),
                false)
            END
        $$
        """
    )
    op.execute(
        """
        CREATE TABLE idempotency_keys (
            user_id uuid NOT NULL,
            route text NOT NULL,
            key text NOT NULL,
            request_hash text NOT NULL,
            status_code integer NOT NULL,
            body jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_idempotency_keys PRIMARY KEY (user_id, route, key)
        )
        """
    )
    op.execute("CREATE INDEX ix_idempotency_keys_created_at ON idempotency_keys (created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP FUNCTION segment_contains")
    op.execute("DROP TABLE segment_members")
    op.execute("DROP TABLE segments")
    op.execute("DROP TABLE users")
