"""User journeys for locust: coupon customers and flash-promo shoppers.

    pip install locust            # not a project dependency; any virtualenv will do
    BOOK_ID=<book uuid> LAT=40.4168 LNG=-3.7038 \
        locust -f bench/locustfile.py --host http://127.0.0.1:8000

- `CouponUser`: registers with a unique email, logs in (`POST /api/v1/auth/token`, form),
  then claims a random code of the book `BOOK_ID`, locks it for checkout and redeems it with
  the `lock_id`; now and then browses `GET /api/v1/me/codes`.
- `PromoUser`: registers and logs in, stands somewhere near `LAT`/`LNG`
  (`PUT /api/v1/me/location`), lists the promos it may reserve (`GET /api/v1/me/promos`),
  reserves one of them and buys it.

Every state-changing POST carries a fresh `Idempotency-Key`. Expected 409 problems (the book
is exhausted, the promo sold out, the account has used its quota...) end the journey as a
success: they are the service saying "no" correctly, not an error. Requests are named by
route template (`/api/v1/codes/{code}/lock`), so locust's statistics group them.

Environment:

| variable | default | meaning |
|---|---|---|
| `BOOK_ID` | required by `CouponUser` | the book to claim codes from |
| `LAT` / `LNG` | `40.4168` / `-3.7038` | where `PromoUser`s stand (jittered by up to `JITTER_M`) |
| `JITTER_M` | `500` | how far from `LAT`/`LNG` a shopper may be, in metres |
| `CODES_PER_USER` | `1` | codes an account claims before a fresh account takes over |
| `PURCHASES_PER_USER` | `1` | purchases an account makes before a fresh account takes over |
| `PASSWORD` | `load-test-password` | password of every account the run registers |
| `WAIT_MIN` / `WAIT_MAX` | `0.5` / `2` | think time between tasks, in seconds |

Start the service with `RATE_LIMIT_ENABLED=false` (registration and login are limited per
IP otherwise) and set the per-account quotas to match the book's `max_codes_per_user` and
the promos' `max_per_user`. Registration and login each hash a password with argon2, which
is slow on purpose: with one code or purchase per account they take most of the server's
CPU, so raise the quotas (and the limits) to put the weight on the hot paths. To prepare a
book as an admin:

    TOKEN=$(curl -s -d username=$ADMIN_EMAIL -d password=$ADMIN_PASSWORD \
        http://127.0.0.1:8000/api/v1/auth/token | jq -r .access_token)
    BOOK_ID=$(curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d '{"name": "Load test"}' http://127.0.0.1:8000/api/v1/books | jq -r .id)
    curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d '{"count": 100000, "pattern": "LOAD-####-????"}' \
        http://127.0.0.1:8000/api/v1/books/$BOOK_ID/codes/generate
"""

from __future__ import annotations

import logging
import math
import os
import random
import uuid
from typing import Any

from locust import HttpUser, between, task
from locust.exception import StopUser

API = "/api/v1"
BOOK_ID = os.environ.get("BOOK_ID", "")
LAT = float(os.environ.get("LAT", "40.4168"))
LNG = float(os.environ.get("LNG", "-3.7038"))
JITTER_M = float(os.environ.get("JITTER_M", "500"))
CODES_PER_USER = int(os.environ.get("CODES_PER_USER", "1"))
PURCHASES_PER_USER = int(os.environ.get("PURCHASES_PER_USER", "1"))
PASSWORD = os.environ.get("PASSWORD", "load-test-password")
WAIT_MIN = float(os.environ.get("WAIT_MIN", "0.5"))
WAIT_MAX = float(os.environ.get("WAIT_MAX", "2"))

# 409 problems that are a correct answer under load, by route: the journey ends there.
ASSIGN_EXPECTED = {"book-exhausted", "code-limit-reached", "book-inactive"}
REDEEM_EXPECTED = {"redemption-limit-reached", "user-redemption-limit-reached", "book-inactive"}
RESERVE_EXPECTED = {"sold-out", "purchase-limit-reached", "promo-not-running"}
PURCHASE_EXPECTED = {"promo-not-running"}


def problem_slug(response: Any) -> str:
    """The slug of an RFC 9457 problem (`/problems/sold-out` → `sold-out`), else ``""``."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    return str(body.get("type", "")).rsplit("/", 1)[-1]


def idempotent() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


class ApiUser(HttpUser):
    """An account of its own: registered and logged in when the user starts."""

    abstract = True
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def on_start(self) -> None:
        self.sign_up()

    def sign_up(self) -> None:
        """A new customer: register a unique email, then the OAuth2 password login."""
        email = f"load-{uuid.uuid4().hex}@example.com"
        with self.client.post(
            f"{API}/auth/register",
            json={"email": email, "password": PASSWORD},
            name=f"{API}/auth/register",
            catch_response=True,
        ) as resp:
            self.expect(resp, {201}, set())
        if resp.status_code != 201:
            raise StopUser()  # rate limited (RATE_LIMIT_ENABLED=false?) or down
        with self.client.post(
            f"{API}/auth/token",
            data={"username": email, "password": PASSWORD},
            name=f"{API}/auth/token",
            catch_response=True,
        ) as resp:
            token = resp.json()["access_token"] if resp.status_code == 200 else None
            self.expect(resp, {200}, set())
        if token is None:
            raise StopUser()
        self.client.headers["Authorization"] = f"Bearer {token}"
        self.used = 0

    def expect(self, resp: Any, ok: set[int], expected: set[str]) -> str | None:
        """Mark the response: a status in `ok` or an expected 409 is a success. Returns the
        slug of an expected 409, ``None`` otherwise."""
        if resp.status_code in ok:
            resp.success()
            return None
        slug = problem_slug(resp)
        if resp.status_code == 409 and slug in expected:
            resp.success()
            return slug
        resp.failure(f"{resp.status_code} {slug or resp.text[:200]}")
        return None


class CouponUser(ApiUser):
    """Claims a random code of `BOOK_ID`, locks it at checkout and redeems it."""

    weight = 1

    def on_start(self) -> None:
        if not BOOK_ID:
            logging.error("CouponUser needs BOOK_ID (the book to claim codes from); stopping")
            raise StopUser()
        super().on_start()

    @task(4)
    def claim_lock_redeem(self) -> None:
        if self.used >= CODES_PER_USER:
            self.sign_up()
        with self.client.post(
            f"{API}/books/{BOOK_ID}/assign",
            headers=idempotent(),
            name=f"{API}/books/{{book_id}}/assign",
            catch_response=True,
        ) as resp:
            slug = self.expect(resp, {201}, ASSIGN_EXPECTED)
            if resp.status_code != 201:
                if slug == "code-limit-reached":
                    self.used = CODES_PER_USER  # the next journey is a fresh account's
                return
            code = resp.json()["code"]
        self.used += 1

        with self.client.post(
            f"{API}/codes/{code}/lock",
            json={},
            headers=idempotent(),
            name=f"{API}/codes/{{code}}/lock",
            catch_response=True,
        ) as resp:
            self.expect(resp, {200}, set())
            if resp.status_code != 200:
                return
            lock_id = resp.json()["lock_id"]

        with self.client.post(
            f"{API}/codes/{code}/redeem",
            json={"lock_id": lock_id, "order_ref": f"ORD-{uuid.uuid4().hex[:12]}"},
            headers=idempotent(),
            name=f"{API}/codes/{{code}}/redeem",
            catch_response=True,
        ) as resp:
            self.expect(resp, {200}, REDEEM_EXPECTED)

    @task(1)
    def browse_my_codes(self) -> None:
        with self.client.get(
            f"{API}/me/codes",
            params={"limit": 20},
            name=f"{API}/me/codes",
            catch_response=True,
        ) as resp:
            self.expect(resp, {200}, set())


class PromoUser(ApiUser):
    """Stands near `LAT`/`LNG`, lists eligible promos, reserves one and buys it."""

    weight = 1

    def sign_up(self) -> None:
        super().sign_up()
        self.move()

    def move(self) -> None:
        """A random point within `JITTER_M` metres of `LAT`/`LNG`."""
        distance = JITTER_M * math.sqrt(random.random())
        bearing = random.uniform(0, 2 * math.pi)
        lat = LAT + distance * math.cos(bearing) / 111_320
        lng = LNG + distance * math.sin(bearing) / (111_320 * math.cos(math.radians(LAT)))
        with self.client.put(
            f"{API}/me/location",
            json={"lat": round(lat, 6), "lng": round(lng, 6)},
            name=f"{API}/me/location",
            catch_response=True,
        ) as resp:
            self.expect(resp, {200}, set())

    @task
    def browse_reserve_purchase(self) -> None:
        if self.used >= PURCHASES_PER_USER:
            self.sign_up()
        with self.client.get(
            f"{API}/me/promos",
            params={"limit": 20},
            name=f"{API}/me/promos",
            catch_response=True,
        ) as resp:
            self.expect(resp, {200}, set())
            if resp.status_code != 200:
                return
            promos = [p for p in resp.json() if p.get("units_left", 1) > 0]
        if not promos:
            return  # nothing running nearby right now: the shopper moves on

        promo_id = random.choice(promos)["id"]
        with self.client.post(
            f"{API}/promos/{promo_id}/reserve",
            headers=idempotent(),
            name=f"{API}/promos/{{promo_id}}/reserve",
            catch_response=True,
        ) as resp:
            slug = self.expect(resp, {200, 201}, RESERVE_EXPECTED)
            if resp.status_code not in (200, 201):
                if slug == "purchase-limit-reached":
                    self.used = PURCHASES_PER_USER
                return
            reservation_id = resp.json()["id"]

        with self.client.post(
            f"{API}/reservations/{reservation_id}/purchase",
            headers=idempotent(),
            name=f"{API}/reservations/{{reservation_id}}/purchase",
            catch_response=True,
        ) as resp:
            self.expect(resp, {200}, PURCHASE_EXPECTED)
            if resp.status_code == 200:
                self.used += 1
