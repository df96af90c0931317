"""admin_audit: every admin change with actor, request id, target and before/after

Append-only like the redemption history: a trigger refuses UPDATE, DELETE and TRUNCATE.
Read newest first by id (`GET /audit`), filtered by target or actor.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE admin_audit ("
        " id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_admin_audit PRIMARY KEY,"
        " at timestamptz NOT NULL DEFAULT now(),"
        " actor_id uuid,"
        " request_id text NOT NULL,"
        " action text NOT NULL,"
        " target_type text NOT NULL,"
        " target_id text NOT NULL,"
        " before jsonb,"
        " after jsonb)"
    )
    op.execute("CREATE INDEX ix_admin_audit_target ON admin_audit (target_type, target_id, id)")
    op.execute("CREATE INDEX ix_admin_audit_target_id ON admin_audit (target_id, id)")
    op.execute("CREATE INDEX ix_admin_audit_actor_id ON admin_audit (actor_id, id)")
    op.execute("CREATE INDEX ix_admin_audit_at ON admin_audit (at, id)")
    op.execute(
        """
        CREATE FUNCTION admin_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'admin_audit is append-only' USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER trg_admin_audit_append_only BEFORE UPDATE OR DELETE ON admin_audit"
        " FOR EACH ROW EXECUTE FUNCTION admin_audit_append_only()"
    )
    op.execute(
        "CREATE TRIGGER trg_admin_audit_no_truncate BEFORE TRUNCATE ON admin_audit"
        " FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE admin_audit")
    op.execute("DROP FUNCTION admin_audit_append_only")
