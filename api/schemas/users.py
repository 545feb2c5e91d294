from __future__ import annotations

from pydantic import Field

from api.schemas.common import Schema
from registry.models import Role
from registry.services.users import MIN_PASSWORD_LENGTH


class UserCreate(Schema):
    email: str = Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)
    role: Role = Role.viewer
    username: str | None = Field(default=None, min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    full_name: str | None = Field(default=None, max_length=200)
    is_active: bool = True


class UserUpdate(Schema):
    role: Role | None = None
    is_active: bool | None = None
    full_name: str | None = Field(default=None, max_length=200)


class SessionsRevoked(Schema):
    revoked_sessions: int
