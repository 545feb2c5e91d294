from __future__ import annotations

from api.schemas.auth import Email, FullName, NewPassword, Username
from api.schemas.common import Schema
from registry.models import Role


class UserCreate(Schema):
    email: Email
    password: NewPassword
    role: Role = Role.viewer
    username: Username = None
    full_name: FullName = None
    is_active: bool = True


class UserUpdate(Schema):
    role: Role | None = None
    is_active: bool | None = None
    full_name: FullName = None


class SessionsRevoked(Schema):
    revoked_sessions: int
