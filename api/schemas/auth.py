from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.schemas.common import Schema
from registry.services.users import MIN_PASSWORD_LENGTH


class LoginRequest(Schema):
    login: str | None = Field(default=None, max_length=320, description="Email or username")
    email: str | None = Field(default=None, max_length=320, description="Alias of `login`")
    username: str | None = Field(default=None, max_length=320, description="Alias of `login`")
    password: str = Field(min_length=1, max_length=1024)
    session_cookie: bool = Field(
        default=False,
        description="Browser sessions: keep the refresh token in the HttpOnly cookie `autoplat_refresh` "
        "(path /api/v1/auth) instead of the body; `refresh_token` is then answered empty.",
    )

    def identifier(self) -> str | None:
        return self.login or self.email or self.username


class RefreshRequest(Schema):
    refresh_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Omit to use the `autoplat_refresh` cookie set by a `session_cookie` login.",
    )


class LogoutRequest(Schema):
    refresh_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Omit to end the session of the `autoplat_refresh` cookie, else the access token's own.",
    )


class TokenResponse(Schema):
    access_token: str
    refresh_token: str = Field(description="Empty when the refresh token travels in the `autoplat_refresh` cookie.")
    token_type: str = "bearer"
    expires_in: int
    refresh_expires_in: int


class RegisterRequest(Schema):
    email: str = Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)
    username: str | None = Field(default=None, min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    full_name: str | None = Field(default=None, max_length=200)


class PasswordChange(Schema):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)


class PasswordChanged(Schema):
    revoked_sessions: int


class UserRead(Schema):
    id: str
    email: str
    username: str | None
    full_name: str | None
    role: str
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None
    permissions: list[str] = []
