"""refresh_tokens: rotating refresh tokens in families

`POST /auth/token` starts a family; each `POST /auth/refresh` spends its token and issues the
next one of the family; presenting a spent token again revokes the family (a stolen token
used by two parties); `POST /auth/logout` revokes it. Only SHA-256 of the secret is kept.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE refresh_tokens ("
        " id uuid CONSTRAINT pk_refresh_tokens PRIMARY KEY,"
        " family_id uuid NOT NULL,"
        " user_id uuid NOT NULL CONSTRAINT fk_refresh_tokens_user_id_users"
        " REFERENCES users (id) ON DELETE CASCADE,"
        " secret_hash bytea NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " valid_until timestamptz NOT NULL,"
        " used_at timestamptz,"
        " revoked_at timestamptz)"
    )
    op.execute("CREATE INDEX ix_refresh_tokens_family_id ON refresh_tokens (family_id)")
    op.execute("CREATE INDEX ix_refresh_tokens_user_id ON refresh_tokens (user_id)")
    op.execute("CREATE INDEX ix_refresh_tokens_valid_until ON refresh_tokens (valid_until)")


def downgrade() -> None:
    op.execute("DROP TABLE refresh_tokens")
