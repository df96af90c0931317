"""Service configuration, read from the environment and `.env` (flat names, see README)."""

from __future__ import annotations

import ipaddress
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import structlog
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = structlog.get_logger(__name__)


class Environment(StrEnum):
    dev = "dev"
    test = "test"
    production = "production"


class NotificationSettings(BaseSettings):
    """The outbox worker's and notification delivery's knobs (flat names, as in README)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    worker_concurrency: int = Field(default=8, ge=1, le=256)
    worker_poll_seconds: float = Field(default=2.0, gt=0)
    worker_lease_seconds: float = Field(default=60.0, gt=0)
    worker_shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    notify_batch_size: int = Field(default=1000, ge=1, le=10_000)
    notify_webhook_timeout_s: float = Field(default=10.0, gt=0)
    notify_webhook_max_attempts: int = Field(default=8, ge=1)
    notify_backoff_base_s: float = Field(default=2.0, gt=0)
    notify_backoff_max_s: float = Field(default=600.0, gt=0)
    notify_sse_heartbeat_s: float = Field(default=15.0, gt=0)
    outbox_keep_done_hours: float = Field(default=72.0, gt=0)
    import_batch_size: int = Field(default=100_000, ge=100, le=1_000_000)
    import_keep_hours: float = Field(default=72.0, gt=0)


class Settings(BaseSettings):
    """Every setting of the service; README lists them with their defaults. Read once, when
    the app or a command starts; nested groups read their own (flat) names."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    env: Environment = Environment.dev
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1)
    data_dir: Path = Path(".data")
    log_level: str = "INFO"
    log_json: bool | None = None  # default: JSON outside dev
    otel_enabled: bool = False  # OpenTelemetry traces (app/core/tracing.py); OTLP export
    # Hot routes answered from a plan made once (app/core/lean.py); false: FastAPI's own path.
    lean_routes: bool = True
    # Concurrent random assigns of one book, and reserves of one promo, run as one transaction
    # per batch (app/core/coalesce.py); false: one transaction per request. Requests with an
    # Idempotency-Key always run alone.
    coalesce_hot_paths: bool = True
    coalesce_max_batch: int = Field(default=64, ge=1, le=1000)

    database_url: str | None = None
    database_direct_url: str | None = None
    db_pool_size: int = Field(default=10, ge=1)  # the hot paths' asyncpg pool
    db_orm_pool_size: int = Field(default=5, ge=1)  # SQLAlchemy's pool: everything else
    db_max_overflow: int = Field(default=5, ge=0)
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    db_lock_timeout_ms: int = Field(default=2000, ge=0)
    db_statement_timeout_ms: int = Field(default=15000, ge=0)
    db_statement_cache_size: int = Field(default=1024, ge=0)
    db_pgbouncer: bool = False  # transaction pooling: no prepared-statement cache, SET LOCAL

    @property
    def statement_cache_size(self) -> int:
        return 0 if self.db_pgbouncer else self.db_statement_cache_size

    jwt_secret: str | None = None
    jwt_ttl_seconds: int = Field(default=3600, ge=1)
    # A refresh token (and its rotations) lives this long; each refresh issues a new one.
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=60)
    # Clocks of the issuer and of this process may differ this much (`exp`, `iat`, `nbf`).
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    auth_jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_role_claim: str = "role"
    admin_email: str | None = None
    admin_password: str | None = None

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_upload_bytes: int = Field(default=256 * 1_048_576, ge=1024)
    problem_base: str = "/problems"
    expose_docs: bool = True

    rate_limit_enabled: bool = True
    rate_limit_auth: str = "20/minute"
    rate_limit_assign: str = "600/minute"
    # Guessing lockout (off with the rate limits): more than LOCKOUT_MAX_FAILURES failed
    # lookups or logins in LOCKOUT_WINDOW_SECONDS lock the user and the client address until
    # the window passes; 0 turns it off. Locks made elsewhere are seen within the refresh.
    lockout_max_failures: int = Field(default=10, ge=0)
    lockout_window_seconds: int = Field(default=600, ge=1)
    lockout_refresh_seconds: float = Field(default=2.0, gt=0)
    # Peers whose X-Forwarded-For is believed (addresses or CIDR blocks, comma-separated).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Claimed checksum prefixes are read again this often (another instance's new claim).
    checksum_refresh_seconds: float = Field(default=5.0, gt=0)

    reservation_ttl_seconds: int = Field(default=60, ge=1)
    idempotency_ttl_hours: int = Field(default=24, ge=1)

    run_worker: bool = True
    # The worker seals the redemption history and the purchase log into their hash chains
    # this often (`make bench-seal` measures the cost; docs/decisions.md). The name it had
    # when only the history was sealed is still read.
    seal_seconds: float = Field(
        default=1.0, gt=0, validation_alias=AliasChoices("seal_seconds", "history_seal_seconds")
    )
    notify_webhook_url: str | None = None
    notify_webhook_secret: str | None = None
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _production_needs_secret(self) -> Settings:
        if self.env is Environment.production and not self.jwt_secret:
            raise ValueError("JWT_SECRET is required when ENV=production")
        return self

    @property
    def is_production(self) -> bool:
        return self.env is Environment.production

    def resolved_jwt_secret(self) -> str:
        """The signing secret; in dev one is generated once and kept in DATA_DIR."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / "jwt_secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        try:
            with path.open("x") as fh:  # first process wins; the others read its secret
                fh.write(secret)
            path.chmod(0o600)
            log.warning("jwt_secret_generated", path=str(path), hint="set JWT_SECRET in production")
        except FileExistsError:
            secret = path.read_text().strip()
        return secret
