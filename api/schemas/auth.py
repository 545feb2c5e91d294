from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from api.schemas.common import Schema
from registry.passwords import MIN_PASSWORD_LENGTH, control_character, password_problem


def _acceptable_password(value: str) -> str:
    problem = password_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _no_control_characters(value: str | None) -> str | None:
    if value is not None and (char := control_character(value)) is not None:
        raise ValueError(f"must not contain control characters ({char})")
    return value


#: No C0/C1 control characters: published in the OpenAPI document (so generated clients and fuzzers
#: know it) while the validator below gives the clearer message.
_NO_CONTROLS = r"^[^\x00-\x1f\x7f-\x9f]*$"

#: A new password: long enough, not trivial, not on the common-passwords list (registry/passwords.py).
NewPassword = Annotated[
    str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024), AfterValidator(_acceptable_password)
]
Email = Annotated[
    str,
    Field(
        max_length=320,
        pattern=r"^[^@\s]+@[^@\s]+$",
        json_schema_extra={"pattern": r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+$"},
    ),
    AfterValidator(_no_control_characters),
]
Username = Annotated[
    str | None,
    Field(default=None, min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"),
    AfterValidator(_no_control_characters),
]
FullName = Annotated[
    str | None,
    Field(default=None, max_length=200, json_schema_extra={"pattern": _NO_CONTROLS}),
    AfterValidator(_no_control_characters),
]
LoginName = Annotated[
    str | None,
    Field(default=None, max_length=320, description="Email or username", json_schema_extra={"pattern": _NO_CONTROLS}),
    AfterValidator(_no_control_characters),
]


class LoginRequest(Schema):
    # One of the three spellings is needed; the document says so too.
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["login"]}, {"required": ["email"]}, {"required": ["username"]}]}
    )

    login: LoginName = None
    email: LoginName = Field(default=None, description="Alias of `login`")
    username: LoginName = Field(default=None, description="Alias of `login`")
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
    email: Email
    password: NewPassword
    username: Username = None
    full_name: FullName = None


class PasswordChange(Schema):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: NewPassword


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
