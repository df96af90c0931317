"""External OIDC tokens (RS256 / ES256) verified against a JWKS served by the test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.core.settings import Settings
from app.main import create_app
from tests.helpers import assert_problem

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
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
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
