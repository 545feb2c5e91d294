"""Login, refresh-token rotation with reuse detection, logout and password change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry import authcache
from registry.errors import AuthenticationFailed
from registry.models import RefreshSession, User, new_id
from registry.ratelimit import LoginLimiter
from registry.security import (
    decode_token,
    encode_token,
    hash_password_async,
    needs_rehash,
    verify_password_async,
)
from registry.services import audit, users
from registry.services.common import Actor
from registry.settings import Settings


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    user: User


async def _issue(*, session: AsyncSession, settings: Settings, user: User, family_id: str, actor: Actor) -> TokenPair:
    refresh, claims = encode_token(settings, subject=user.id, token_type="refresh", family_id=family_id)
    session.add(
        RefreshSession(
            id=claims.jti,
            user_id=user.id,
            family_id=family_id,
            expires_at=claims.expires_at,
            ip=actor.ip,
        )
    )
    access, _ = encode_token(settings, subject=user.id, token_type="access", role=user.role, family_id=family_id)
    await session.flush()
    return TokenPair(
        access_token=access,
        refresh_token=refresh,
        expires_in=settings.access_token_ttl_seconds,
        refresh_expires_in=settings.refresh_token_ttl_seconds,
        user=user,
    )


async def login(
    *, session: AsyncSession, settings: Settings, limiter: LoginLimiter, login: str, password: str, actor: Actor
) -> TokenPair:
    user = await users.find_by_login(session=session, login=login)
    # Count failures per account, not per spelling: email and username share one budget.
    account = f"user:{user.id}" if user is not None else login
    attempt = await limiter.begin(account, actor.ip)
    ok = await verify_password_async(user.password_hash if user else None, password)
    if not ok or user is None or not user.is_active:
        # One message for unknown user, wrong password and inactive account: no account probing.
        raise AuthenticationFailed("invalid credentials or inactive account")
    await limiter.succeeded(attempt)
    if needs_rehash(user.password_hash):
        user.password_hash = await hash_password_async(password)
    user.last_login_at = datetime.now(UTC)
    pair = await _issue(session=session, settings=settings, user=user, family_id=new_id(), actor=actor)
    audit.record(
        session=session,
        actor=Actor(user_id=user.id, email=user.email, role=user.role, ip=actor.ip, request_id=actor.request_id),
        action="auth.login",
        target_type="user",
        target_id=user.id,
    )
    return pair


async def refresh(*, session: AsyncSession, settings: Settings, token: str, actor: Actor) -> TokenPair:
    """Rotate a refresh token. A token works once; presenting a used one revokes its whole family."""
    claims = decode_token(settings, token, expected_type="refresh")
    row = await session.get(RefreshSession, claims.jti, with_for_update=True)
    if row is None or row.user_id != claims.subject:
        raise AuthenticationFailed("invalid refresh token")
    now = datetime.now(UTC)
    if row.used_at is not None or row.revoked_at is not None:
        if row.used_at is not None and row.revoked_reason != "reuse_detected":
            await _revoke_family(session=session, user_id=row.user_id, family_id=row.family_id, reason="reuse_detected")
            audit.record(
                session=session,
                actor=actor,
                action="auth.refresh_reuse",
                target_type="user",
                target_id=row.user_id,
                outcome="failure",
                details={"family_id": row.family_id},
            )
            # The revocation must survive the 401 that follows.
            await session.commit()
        raise AuthenticationFailed("refresh token already used or revoked")
    if row.expires_at <= now:
        raise AuthenticationFailed("refresh token expired")
    # Conditional update: of two concurrent refreshes with one token only one wins.
    result = await session.execute(
        update(RefreshSession).where(RefreshSession.id == row.id, RefreshSession.used_at.is_(None)).values(used_at=now)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise AuthenticationFailed("refresh token already used or revoked")
    user = await session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise AuthenticationFailed("invalid credentials or inactive account")
    return await _issue(session=session, settings=settings, user=user, family_id=row.family_id, actor=actor)


async def _revoke_family(*, session: AsyncSession, user_id: str, family_id: str, reason: str) -> None:
    authcache.touch(session, user_id)
    await session.execute(
        update(RefreshSession)
        .where(RefreshSession.family_id == family_id, RefreshSession.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC), revoked_reason=reason)
    )


async def logout(
    *,
    session: AsyncSession,
    settings: Settings,
    user: User,
    token: str | None,
    family_id: str | None,
    from_cookie: bool = False,
) -> None:
    """Revoke one session family: the given refresh token's, else ``family_id`` (the access token's own).

    A body token that is invalid or someone else's is a 401. A cookie that is (expired, from an older
    session) must not keep a browser from signing out: the access token's own session ends instead.
    """
    if token is not None:
        try:
            claims = decode_token(settings, token, expected_type="refresh")
            if claims.subject != user.id:
                raise AuthenticationFailed("refresh token belongs to another user")
        except AuthenticationFailed:
            if not from_cookie:
                raise
        else:
            row = await session.get(RefreshSession, claims.jti)
            if row is not None:
                family_id = row.family_id
            elif not from_cookie:
                family_id = None  # an unknown body token ends nothing (as before cookies)
    if family_id is not None:
        await _revoke_family(session=session, user_id=user.id, family_id=family_id, reason="logout")


async def change_password(
    *,
    session: AsyncSession,
    limiter: LoginLimiter,
    user: User,
    current_password: str,
    new_password: str,
    keep_family: str | None,
    ip: str | None,
) -> int:
    # Proving the current password is a password guess like a login: same budget, same limits.
    attempt = await limiter.begin(f"user:{user.id}", ip)
    if not await verify_password_async(user.password_hash, current_password):
        raise AuthenticationFailed("current password is wrong")
    await limiter.succeeded(attempt)
    await users.set_password(session=session, user=user, password=new_password)
    return await users.revoke_sessions(
        session=session, user_id=user.id, reason="password_changed", except_family=keep_family
    )


async def active_family(*, session: AsyncSession, refresh_token_jti: str) -> str | None:
    return await session.scalar(select(RefreshSession.family_id).where(RefreshSession.id == refresh_token_jti))
