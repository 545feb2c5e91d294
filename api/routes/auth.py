"""Authentication: login, refresh rotation, logout, current user, password change, registration."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Body, Cookie, Request, Response, status

from api.deps import AnonymousActor, ClaimsDep, CurrentUser, SessionDep, SettingsDep, StateDep, is_https
from api.schemas.auth import (
    LoginRequest,
    LogoutRequest,
    PasswordChange,
    PasswordChanged,
    RefreshRequest,
    RegisterRequest,
    TokenResponse,
    UserRead,
)
from api.schemas.common import ERROR_RESPONSES
from registry.errors import AuthenticationFailed, InvalidInput, PermissionDenied
from registry.models import Role, User
from registry.permissions import DEFAULT_INSTALL_ROLES, permissions_for
from registry.services import audit, auth, users
from registry.services.auth import TokenPair
from registry.services.common import Actor

router = APIRouter(prefix="/auth", tags=["auth"], responses=ERROR_RESPONSES)

#: The browser console's refresh token: HttpOnly (no script reads it), sent only to the auth routes.
REFRESH_COOKIE = "autoplat_refresh"
COOKIE_PATH = "/api/v1/auth"
RefreshCookie = Annotated[str | None, Cookie(alias=REFRESH_COOKIE, include_in_schema=False)]


def _tokens(pair: TokenPair, response: Response | None = None, request: Request | None = None) -> TokenResponse:
    """The token answer; with ``response``, the refresh token goes into the cookie instead of the body."""
    refresh_token = pair.refresh_token
    if response is not None and request is not None:
        response.set_cookie(
            REFRESH_COOKIE,
            pair.refresh_token,
            max_age=pair.refresh_expires_in,
            path=COOKIE_PATH,
            secure=is_https(request),
            httponly=True,
            samesite="strict",
        )
        refresh_token = ""
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=refresh_token,
        expires_in=pair.expires_in,
        refresh_expires_in=pair.refresh_expires_in,
    )


def _clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(REFRESH_COOKIE, path=COOKIE_PATH, secure=is_https(request), httponly=True, samesite="strict")


def user_read(user: User, *, install_roles: Iterable[str] = DEFAULT_INSTALL_ROLES) -> UserRead:
    read = UserRead.model_validate(user)
    read.permissions = sorted(permissions_for(user.role, install_roles=install_roles))
    return read


@router.post("/login", response_model=TokenResponse, summary="Exchange email or username + password for tokens")
async def login(
    body: LoginRequest,
    session: SessionDep,
    state: StateDep,
    actor: AnonymousActor,
    request: Request,
    response: Response,
) -> TokenResponse:
    identifier = body.identifier()
    if not identifier:
        raise InvalidInput(
            "login (email or username) is required", details=[{"loc": ["body", "login"], "msg": "required"}]
        )
    pair = await auth.login(
        session=session,
        settings=state.settings,
        limiter=state.limiter,
        login=identifier,
        password=body.password,
        actor=actor,
    )
    if body.session_cookie:
        return _tokens(pair, response, request)
    return _tokens(pair)


@router.post(
    "/refresh",
    response_model=TokenResponse,
    summary="Rotate a refresh token (each works once), from the body or the session cookie",
)
async def refresh(
    session: SessionDep,
    settings: SettingsDep,
    actor: AnonymousActor,
    request: Request,
    response: Response,
    body: RefreshRequest,
    cookie: RefreshCookie = None,
) -> TokenResponse:
    token = body.refresh_token
    if token is not None:
        return _tokens(await auth.refresh(session=session, settings=settings, token=token, actor=actor))
    if not cookie:
        raise AuthenticationFailed(f"no refresh token: send refresh_token or the {REFRESH_COOKIE} cookie")
    # Rotated like a body token: the cookie's previous value is spent, and replaying it revokes the family.
    pair = await auth.refresh(session=session, settings=settings, token=cookie, actor=actor)
    return _tokens(pair, response, request)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End a session: the body's refresh token's, else the cookie's, else the access token's own",
)
async def logout(
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    claims: ClaimsDep,
    actor: AnonymousActor,
    request: Request,
    response: Response,
    cookie: RefreshCookie = None,
    body: Annotated[LogoutRequest | None, Body()] = None,
) -> None:
    token = body.refresh_token if body is not None else None
    await auth.logout(
        session=session,
        settings=settings,
        user=user,
        token=token or cookie or None,
        family_id=claims.family_id,
        from_cookie=token is None,
    )
    if token is None:
        _clear_cookie(response, request)
    audit.record(
        session=session,
        actor=Actor(user_id=user.id, email=user.email, role=user.role, ip=actor.ip, request_id=actor.request_id),
        action="auth.logout",
        target_type="user",
        target_id=user.id,
    )


@router.get("/me", response_model=UserRead, summary="The current user, read from the registry")
async def me(user: CurrentUser, settings: SettingsDep) -> UserRead:
    # What the console shows: modules:install when AUTOPLAT_MODULE_INSTALL_ROLES grants it to the role.
    return user_read(user, install_roles=settings.module_install_roles)


@router.put(
    "/me/password",
    response_model=PasswordChanged,
    summary="Change password; other sessions are revoked. Wrong current passwords count like failed logins.",
)
async def change_password(
    body: PasswordChange,
    session: SessionDep,
    state: StateDep,
    user: CurrentUser,
    claims: ClaimsDep,
    actor: AnonymousActor,
) -> PasswordChanged:
    revoked = await auth.change_password(
        session=session,
        limiter=state.limiter,
        ip=actor.ip,
        user=user,
        current_password=body.current_password,
        new_password=body.new_password,
        keep_family=claims.family_id,
    )
    audit.record(
        session=session,
        actor=Actor(user_id=user.id, email=user.email, role=user.role, ip=actor.ip, request_id=actor.request_id),
        action="auth.password_change",
        target_type="user",
        target_id=user.id,
        details={"revoked_sessions": revoked},
    )
    return PasswordChanged(revoked_sessions=revoked)


@router.post("/register", response_model=UserRead, status_code=201, summary="Self-registration (off unless enabled)")
async def register(
    body: RegisterRequest, session: SessionDep, settings: SettingsDep, actor: AnonymousActor
) -> UserRead:
    if not settings.allow_registration:
        raise PermissionDenied("self-registration is disabled (AUTOPLAT_ALLOW_REGISTRATION)")
    user = await users.create_user(
        session=session,
        email=body.email,
        password=body.password,
        role=Role.viewer,
        username=body.username,
        full_name=body.full_name,
    )
    audit.record(session=session, actor=actor, action="auth.register", target_type="user", target_id=user.id)
    return user_read(user)
