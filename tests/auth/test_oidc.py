"""External OIDC tokens (RS256 / ES256) verified against a JWKS served by the test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import text

from app.api.deps import CurrentUser, Session
from app.core.settings import Settings
from app.main import create_app
from tests.helpers import assert_problem, started

ISSUER = "https://issuer.example.test/"
AUDIENCE = "couponflash"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwks() -> bytes:
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
    ec_jwk = json.loads(ECAlgorithm.to_jwk(EC_KEY.public_key()))
    ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
    return json.dumps({"keys": [rsa_jwk, ec_jwk]}).encode()


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    body = _jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Keep the test output free of access lines."""

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    server.shutdown()


@pytest.fixture
async def oidc_client(settings: Settings, jwks_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(
            update={
                "auth_jwks_url": jwks_url,
                "auth_issuer": ISSUER,
                "auth_audience": AUDIENCE,
                "auth_role_claim": "roles",
            }
        )
    )
    async with started(app) as served:
        transport = httpx.ASGITransport(app=served.asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _claims(sub: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "email": f"{sub}@idp.example.com",
        **extra,
    }


async def test_rs256_token_from_issuer_provisions_user(oidc_client: httpx.AsyncClient) -> None:
    token = jwt.encode(_claims("alice-rs"), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    me = await oidc_client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    assert me.json()["email"] == "alice-rs@idp.example.com"
    assert me.json()["role"] == "user"
    again = await oidc_client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert again.json()["id"] == me.json()["id"]


async def test_es256_admin_role_claim(oidc_client: httpx.AsyncClient) -> None:
    token = jwt.encode(
        _claims("bob-es", roles=["admin"]), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"}
    )
    users = await oidc_client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"})
    assert users.status_code == 200, users.text


@pytest.mark.parametrize(
    ("claims", "kid", "why"),
    [
        ({"aud": "someone-else"}, "rsa-1", "wrong audience"),
        ({"iss": "https://evil.example.test/"}, "rsa-1", "wrong issuer"),
        ({"exp": 1}, "rsa-1", "expired"),
        ({}, "unknown-kid", "unknown kid"),
    ],
)
async def test_external_tokens_are_checked(
    oidc_client: httpx.AsyncClient, claims: dict[str, Any], kid: str, why: str
) -> None:
    token = jwt.encode(
        {**_claims("carol"), **claims}, RSA_KEY, algorithm="RS256", headers={"kid": kid}
    )
    response = await oidc_client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert_problem(response, 401, "unauthenticated")


async def test_hs256_signed_with_public_key_is_refused(oidc_client: httpx.AsyncClient) -> None:
    from cryptography.hazmat.primitives import serialization

    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT refuses to HMAC-sign with a PEM key, so build the token by hand.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = b64(json.dumps(_claims("mallory", role="admin")).encode())
    signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    forged = f"{header}.{payload}.{signature}"
    response = await oidc_client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"}
    )
    assert_problem(response, 401, "unauthenticated")


# First requests of new external users with a small pool ------------------------------------

SMALL_POOL = 2


async def _hold_connection(session: Session) -> None:
    await session.execute(text("SELECT 1"))  # the request's own connection is taken here


_probe = APIRouter()


@_probe.get("/probe/connection-then-user", dependencies=[Depends(_hold_connection)])
async def _connection_then_user(user: CurrentUser) -> dict[str, str]:
    """A route that takes its database connection before it knows the caller."""
    return {"id": str(user.id)}


@pytest.fixture
async def small_pool_client(settings: Settings, jwks_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(
            update={
                "auth_jwks_url": jwks_url,
                "auth_issuer": ISSUER,
                "auth_audience": AUDIENCE,
                "auth_role_claim": "roles",
                "db_pool_size": SMALL_POOL,
                "db_orm_pool_size": SMALL_POOL,
                "db_max_overflow": 0,
                "db_pool_timeout_s": 5.0,
            }
        )
    )
    app.include_router(_probe)
    async with started(app) as served:
        transport = httpx.ASGITransport(app=served.asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", timeout=60
        ) as client:
            yield client


def _new_subject_headers(**claims: Any) -> dict[str, str]:
    sub = f"new-{uuid.uuid4().hex[:12]}"
    token = jwt.encode(_claims(sub, **claims), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    return {"Authorization": f"Bearer {token}"}


async def test_first_requests_of_new_subjects_when_the_connection_is_taken_first(
    small_pool_client: httpx.AsyncClient,
) -> None:
    """Many new subjects at once on a route that holds its pooled connection before the
    caller is known: creating the local user must not need a second pooled connection,
    or every request holding one waits for another that never frees (pool timeout, 503)."""
    users = [_new_subject_headers() for _ in range(4 * SMALL_POOL)]
    responses = await asyncio.gather(
        *[small_pool_client.get("/probe/connection-then-user", headers=h) for h in users]
    )
    assert [r.status_code for r in responses] == [200] * len(users), [
        r.text for r in responses if r.status_code != 200
    ]
    assert len({r.json()["id"] for r in responses}) == len(users)


async def test_first_requests_of_new_subjects_on_hot_routes_with_a_small_pool(
    small_pool_client: httpx.AsyncClient,
) -> None:
    """New subjects' first requests on real routes, a hot path among them, never wait for
    a second pooled connection: with a pool of two, all of them succeed."""
    admin = _new_subject_headers(roles=["admin"])
    book = await small_pool_client.post(
        "/api/v1/books", json={"name": f"oidc-{uuid.uuid4().hex[:8]}"}, headers=admin
    )
    assert book.status_code == 201, book.text
    codes = "\n".join(f"OIDC-{uuid.uuid4().hex[:12].upper()}" for _ in range(20))
    filled = await small_pool_client.post(
        f"/api/v1/books/{book.json()['id']}/codes",
        content=codes.encode(),
        headers={**admin, "Content-Type": "text/csv"},
    )
    assert filled.status_code == 201, filled.text
    users = [_new_subject_headers() for _ in range(6 * SMALL_POOL)]
    requests = [
        small_pool_client.post(
            f"/api/v1/books/{book.json()['id']}/assign",
            headers={**h, "Idempotency-Key": uuid.uuid4().hex},
        )
        for h in users[::2]
    ] + [small_pool_client.get("/api/v1/auth/me", headers=h) for h in users[1::2]]
    responses = await asyncio.gather(*requests)
    assert sorted(r.status_code for r in responses) == [200] * (len(users) // 2) + [201] * (
        len(users) // 2
    ), [r.text for r in responses if r.status_code >= 300]
