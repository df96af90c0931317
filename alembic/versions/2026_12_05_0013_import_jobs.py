"""import_jobs: CSV imports and code generations run by the worker, watched and cancelled

An import job's upload is stored first, line by line, in a staging table of its own
(`import_staging_<job id>`, unlogged: written once, read once, dropped when the job is done
or its retention ends); the worker then validates it and inserts its codes in one
transaction, so a job is stored whole or not at all. A generation job has no staging: the
worker draws its codes. The job row carries the state and the counters the API shows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        """
        CREATE TABLE import_jobs (
            id uuid DEFAULT gen_random_uuid() CONSTRAINT pk_import_jobs PRIMARY KEY,
            book_id uuid NOT NULL CONSTRAINT fk_import_jobs_book_id_books
                REFERENCES books (id) ON DELETE CASCADE,
            actor_id uuid,
            kind text NOT NULL CONSTRAINT ck_import_jobs_kind CHECK (kind IN ('csv', 'generate')),
            state text NOT NULL DEFAULT 'received' CONSTRAINT ck_import_jobs_state
                CHECK (state IN ('received', 'queued', 'validating', 'inserting', 'done',
                                 'failed', 'cancelled')),
            params jsonb NOT NULL DEFAULT '{}',
            staging text,
            received_bytes bigint NOT NULL DEFAULT 0,
            file_sha256 text,
            lines_total bigint NOT NULL DEFAULT 0,
            lines_done bigint NOT NULL DEFAULT 0,
            inserted bigint NOT NULL DEFAULT 0,
            duplicates_in_file bigint NOT NULL DEFAULT 0,
            already_present bigint NOT NULL DEFAULT 0,
            error_count bigint NOT NULL DEFAULT 0,
            errors jsonb NOT NULL DEFAULT '[]',
            detail text,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_import_jobs_counters CHECK (
                received_bytes >= 0 AND lines_total >= 0 AND lines_done >= 0 AND inserted >= 0
                AND duplicates_in_file >= 0 AND already_present >= 0 AND error_count >= 0),
            CONSTRAINT ck_import_jobs_finished CHECK (
                (finished_at IS NOT NULL) = (state IN ('done', 'failed', 'cancelled')))
        )
        """
    )
    # A book's jobs, newest first (the listing's keyset); finished jobs by age (retention).
    op.execute(
        "CREATE INDEX ix_import_jobs_book_id_created_at ON import_jobs (book_id, created_at, id)"
    )
    op.execute(
        "CREATE INDEX ix_import_jobs_finished_at ON import_jobs (finished_at)"
        " WHERE finished_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for (staging,) in op.get_bind().exec_driver_sql(
        "SELECT staging FROM import_jobs WHERE staging IS NOT NULL"
    ):
        op.execute(f'DROP TABLE IF EXISTS "{staging}"')
    op.execute("DROP TABLE import_jobs")
