"""Request and response bodies of the auth and user routes."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal
from zoneinfo import available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from app.core.geo import Lat, Lng
from app.core.security import Role

NoNul = StringConstraints(pattern=r"^[^\x00]*$")
Password = Annotated[str, Field(min_length=8, max_length=256), NoNul]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]

_ZONES = frozenset(available_timezones())


def _known_zone(value: str) -> str:
    if value not in _ZONES:
        raise ValueError("not an IANA time zone name")
    return value


TimeZoneName = Annotated[str, StringConstraints(max_length=64), AfterValidator(_known_zone)]


class TokenForm(BaseModel):
    """The OAuth2 password grant (RFC 6749, section 4.3) as a form: `username` is the email.
    Bounded and free of NUL, like every text that reaches the database."""

    grant_type: Literal["password"] | SkipJsonSchema[None] = None
    username: Annotated[str, StringConstraints(max_length=320), NoNul]
    password: Annotated[str, StringConstraints(max_length=1024)]
    scope: Annotated[str, StringConstraints(max_length=1024)] = ""
    client_id: Annotated[str, StringConstraints(max_length=256)] | SkipJsonSchema[None] = None
    client_secret: Annotated[str, StringConstraints(max_length=256)] | SkipJsonSchema[None] = None


class RegisterIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"email": "ana@example.com", "password": "correct horse"}]},
    )

    email: EmailStr
    password: Password


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: Role
    created_at: datetime


class ProfileOut(UserOut):
    lat: float | None = None
    lng: float | None = None
    location_updated_at: datetime | None = None
    birth_date: date | None = None
    tags: list[str] = []
    timezone: str = "UTC"


class TokenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.sig",
                    "token_type": "bearer",
                    "expires_in": 3600,
                    "refresh_token": "0b8e7c52-5f0c-4f7e-9d55-1c2a3b4c5d6e.q1w2e3r4t5y6",
                }
            ]
        }
    )

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    # Rotating: `POST /auth/refresh` spends it and answers a new pair.
    refresh_token: str


class RefreshIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"refresh_token": "0b8e7c52-5f0c-4f7e-9d55-1c2a3b4c5d6e.q1w2e3r4t5y6"}]
        },
    )

    refresh_token: Annotated[str, Field(min_length=1, max_length=200), NoNul]


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"role": "admin"}]})

    role: Role


class LocationIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"lat": 40.4168, "lng": -3.7038}]}
    )

    lat: Lat
    lng: Lng


class ProfileIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"birth_date": "1990-05-17", "tags": ["vip"], "timezone": "Europe/Madrid"}]
        },
    )

    birth_date: date | None = None
    tags: list[Tag] | None = Field(default=None, max_length=100)
    timezone: TimeZoneName | None = None
