"""Authentication: login, refresh rotation, logout, current user, password change, registration."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import AnonymousActor, ClaimsDep, CurrentUser, SessionDep, SettingsDep, StateDep
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
from registry.errors import InvalidInput, PermissionDenied
from registry.models import Role, User
from registry.permissions import permissions_for
from registry.services import audit, auth, users
from registry.services.auth import TokenPair
from registry.services.common import Actor

router = APIRouter(prefix="/auth", tags=["auth"], responses=ERROR_RESPONSES)


def _tokens(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        refresh_expires_in=pair.refresh_expires_in,
    )


def user_read(user: User) -> UserRead:
    read = UserRead.model_validate(user)
    read.permissions = sorted(permissions_for(user.role))
    return read


@router.post("/login", response_model=TokenResponse, summary="Exchange email or username + password for tokens")
async def login(body: LoginRequest, session: SessionDep, state: StateDep, actor: AnonymousActor) -> TokenResponse:
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
    return _tokens(pair)


@router.post("/refresh", response_model=TokenResponse, summary="Rotate a refresh token (each works once)")
async def refresh(
    body: RefreshRequest, session: SessionDep, settings: SettingsDep, actor: AnonymousActor
) -> TokenResponse:
    return _tokens(await auth.refresh(session=session, settings=settings, token=body.refresh_token, actor=actor))


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke this refresh token's session")
async def logout(
    body: LogoutRequest, session: SessionDep, settings: SettingsDep, user: CurrentUser, actor: AnonymousActor
) -> None:
    await auth.logout(session=session, settings=settings, token=body.refresh_token, user=user)
    audit.record(
        session=session,
        actor=Actor(user_id=user.id, email=user.email, role=user.role, ip=actor.ip, request_id=actor.request_id),
        action="auth.logout",
        target_type="user",
        target_id=user.id,
    )


@router.get("/me", response_model=UserRead, summary="The current user, read from the registry")
async def me(user: CurrentUser) -> UserRead:
    return user_read(user)


@router.put("/me/password", response_model=PasswordChanged, summary="Change password; other sessions are revoked")
async def change_password(
    body: PasswordChange, session: SessionDep, user: CurrentUser, claims: ClaimsDep, actor: AnonymousActor
) -> PasswordChanged:
    revoked = await auth.change_password(
        session=session,
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
