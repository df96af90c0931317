"""Passwords (argon2 via pwdlib), our own HS256 tokens, and external OIDC tokens (JWKS)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import anyio
import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from app.core.problems import Unauthenticated
from app.core.settings import Settings

# OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane): about 22 ms of CPU per login here,
# against 175 ms for pwdlib's recommended 64 MiB, t=3, p=4 (docs/decisions.md). Hashes made
# with other parameters still verify, and are replaced at the next successful login.
ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM = 2, 19_456, 1
_hasher = PasswordHash(
    (
        Argon2Hasher(
            time_cost=ARGON2_TIME_COST,
            memory_cost=ARGON2_MEMORY_KIB,
            parallelism=ARGON2_PARALLELISM,
        ),
    )
)
_DUMMY_HASH = _hasher.hash("timing-equaliser-password")
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
_EXTERNAL_ALGORITHMS = ["RS256", "ES256"]
_VERIFIED_CACHE_SIZE = 50_000

# The web console keeps the token in an HttpOnly cookie and sends a double-submit CSRF token.
SESSION_COOKIE = "cf_session"
CSRF_COOKIE = "cf_csrf"
CSRF_HEADER = "X-CSRF-Token"


class Role(StrEnum):
    user = "user"
    admin = "admin"


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_and_update_password(
    password: str, password_hash: str | None
) -> tuple[bool, str | None]:
    """Whether the password matches, and a new hash when the stored one was made with other
    parameters (the same work whether or not there is a hash)."""
    if password_hash is None:
        await anyio.to_thread.run_sync(_hasher.verify, password, _DUMMY_HASH)
        return False, None
    ok, new_hash = await anyio.to_thread.run_sync(
        _hasher.verify_and_update, password, password_hash
    )
    return bool(ok), new_hash if ok else None


async def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant work whether or not the user exists, so timing does not reveal accounts."""
    target = password_hash or _DUMMY_HASH
    ok = await anyio.to_thread.run_sync(_hasher.verify, password, target)
    return bool(ok) and password_hash is not None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: from a verified token, without a database round trip."""

    id: uuid.UUID
    role: Role
    external_sub: str | None = None
    email: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin


class ExternalUsers(Protocol):
    """Maps an external issuer's subject to its local user, creating it on first sight."""

    async def user_id(self, sub: str, email: str | None, role: Role) -> uuid.UUID: ...

    async def dispose(self) -> None: ...


@dataclass
class TokenService:
    """Issues and verifies tokens; built once in the lifespan (keys parsed once)."""

    secret: str
    ttl_seconds: int
    jwks_client: jwt.PyJWKClient | None = None
    issuer: str | None = None
    audience: str | None = None
    role_claim: str = "role"
    leeway_seconds: int = 30
    # Verified tokens → claims, so a client's repeated requests skip the signature check.
    # Only tokens that passed verification enter; an entry is used only before its `exp`.
    _verified: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenService:
        client = None
        if settings.auth_jwks_url:
            client = jwt.PyJWKClient(settings.auth_jwks_url, cache_keys=True, lifespan=3600)
        return cls(
            secret=settings.resolved_jwt_secret(),
            ttl_seconds=settings.jwt_ttl_seconds,
            jwks_client=client,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            role_claim=settings.auth_role_claim,
            leeway_seconds=settings.jwt_leeway_seconds,
        )

    def issue(self, user_id: uuid.UUID, role: Role) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "role": role.value,
            "iat": now,
            "exp": now + self.ttl_seconds,
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")

    async def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid token; anything else raises 401."""
        cached = self._verified.get(token)
        if cached is not None and cached["exp"] + self.leeway_seconds > time.time():
            return cached
        claims = await self._verify(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("The token is malformed.") from exc
        if any(h in header for h in _FORBIDDEN_HEADERS):
            raise Unauthenticated("Tokens naming their own keys are refused.")
        alg = header.get("alg")
        try:
            if alg == "HS256":
                return jwt.decode(
                    token,
                    self.secret,
                    algorithms=["HS256"],
                    options={"require": ["exp", "iat", "sub"]},
                    leeway=self.leeway_seconds,
                )
            if alg in _EXTERNAL_ALGORITHMS and self.jwks_client is not None:
                return await self._verify_external(token)
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("The token has expired.") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("The token is invalid.") from exc
        raise Unauthenticated("The token's algorithm is not accepted.")

    async def _verify_external(self, token: str) -> dict[str, Any]:
        client = self.jwks_client
        assert client is not None
        try:
            key = await anyio.to_thread.run_sync(client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientError as exc:
            raise Unauthenticated("The token's signing key is unknown.") from exc
        options: Any = {"require": ["exp", "sub"]}
        if self.audience is None:
            options["verify_aud"] = False
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=_EXTERNAL_ALGORITHMS,
            audience=self.audience,
            issuer=self.issuer,
            options=options,
            leeway=self.leeway_seconds,
        )
        claims["_external"] = True
        return claims

    def external_role(self, claims: dict[str, Any]) -> Role:
        value = claims.get(self.role_claim)
        if isinstance(value, list):
            return Role.admin if "admin" in value else Role.user
        return Role.admin if value == "admin" else Role.user
