"""Users and their refresh-token sessions."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from registry import authcache
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import RefreshSession, Role, User
from registry.passwords import control_character, password_problem
from registry.security import hash_password_async
from registry.services.common import Page, escape_like, paginate


def check_password_strength(password: str) -> None:
    """The API refuses weak passwords when it parses them; this guards every other caller (CLI)."""
    problem = password_problem(password)
    if problem is not None:
        raise InvalidInput(problem, details=[{"loc": ["password"], "msg": problem}])


def _check_names(**fields: str | None) -> None:
    for name, value in fields.items():
        if value is not None and (char := control_character(value)) is not None:
            raise InvalidInput(
                f"{name} must not contain control characters ({char})",
                details=[{"loc": [name], "msg": f"control character {char}"}],
            )


async def get_user(*, session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


async def find_by_login(*, session: AsyncSession, login: str) -> User | None:
    login = login.strip()
    return await session.scalar(
        select(User).where(or_(func.lower(User.email) == login.lower(), User.username == login))
    )


async def list_users(
    *, session: AsyncSession, page: int, limit: int, search: str | None = None, role: str | None = None
) -> Page[User]:
    stmt = select(User).order_by(User.created_at, User.id)
    if search:
        like = f"%{escape_like(search.lower())}%"
        stmt = stmt.where(
            or_(func.lower(User.email).like(like, escape="\\"), func.lower(User.username).like(like, escape="\\"))
        )
    if role:
        stmt = stmt.where(User.role == role)
    return await paginate(session, stmt, page=page, limit=limit)


async def create_user(
    *,
    session: AsyncSession,
    email: str,
    password: str,
    role: Role = Role.viewer,
    username: str | None = None,
    full_name: str | None = None,
    is_active: bool = True,
) -> User:
    check_password_strength(password)
    _check_names(email=email, username=username, full_name=full_name)
    email = email.strip().lower()
    existing = await session.scalar(select(User).where(or_(User.email == email, User.username == (username or email))))
    if existing is not None:
        raise Conflict("a user with this email or username already exists")
    user = User(
        email=email,
        username=username,
        full_name=full_name,
        password_hash=await hash_password_async(password),
        role=role.value,
        is_active=is_active,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("a user with this email or username already exists") from exc
    return user


async def update_user(
    *,
    session: AsyncSession,
    user_id: str,
    role: Role | None = None,
    is_active: bool | None = None,
    full_name: str | None = None,
) -> User:
    _check_names(full_name=full_name)
    user = await get_user(session=session, user_id=user_id)
    if role is not None and role.value != user.role:
        await _guard_last_admin(session=session, user=user)
        user.role = role.value
        # Tokens carry the role they were issued under: the user signs in again with the new one.
        await revoke_sessions(session=session, user_id=user.id, reason="role_changed")
    if is_active is not None and is_active != user.is_active:
        if not is_active:
            await _guard_last_admin(session=session, user=user)
            await revoke_sessions(session=session, user_id=user.id, reason="deactivated")
        user.is_active = is_active
    if full_name is not None:
        user.full_name = full_name
    await session.flush()
    return user


async def delete_user(*, session: AsyncSession, user_id: str) -> None:
    user = await get_user(session=session, user_id=user_id)
    await _guard_last_admin(session=session, user=user)
    authcache.touch(session, user.id)
    await session.delete(user)
    await session.flush()


async def _guard_last_admin(*, session: AsyncSession, user: User) -> None:
    """Never leave the platform without an active admin."""
    if user.role != Role.admin.value or not user.is_active:
        return
    # Lock the active admins (in a stable order): two admins demoting each other at the same time
    # must not both see "another admin remains". The loser re-reads after the winner commits.
    admins = await session.scalars(
        select(User.id)
        .where(User.role == Role.admin.value, User.is_active.is_(True))
        .order_by(User.id)
        .with_for_update()
    )
    if len(admins.all()) <= 1:
        raise Conflict("this is the last active admin; promote another admin first")


async def set_password(*, session: AsyncSession, user: User, password: str) -> None:
    check_password_strength(password)
    user.password_hash = await hash_password_async(password)
    await session.flush()


async def revoke_sessions(*, session: AsyncSession, user_id: str, reason: str, except_family: str | None = None) -> int:
    """End the user's sessions (refresh tokens and, through the session cache, their access tokens)."""
    authcache.touch(session, user_id)
    stmt = (
        update(RefreshSession)
        .where(RefreshSession.user_id == user_id, RefreshSession.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC), revoked_reason=reason)
    )
    if except_family:
        stmt = stmt.where(RefreshSession.family_id != except_family)
    result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def ensure_admin(
    *, session: AsyncSession, email: str | None, password: str | None, generate: bool
) -> tuple[User, str | None] | None:
    """Create the first admin when none exists.

    From explicit settings when given; otherwise, with ``generate`` (dev mode only), with a random
    password that is returned so the caller can print it once. Returns None when an admin exists
    or nothing could be created.
    """
    has_admin = await session.scalar(select(User.id).where(User.role == Role.admin.value).limit(1))
    if has_admin is not None:
        return None
    if email and password:
        user = await create_user(session=session, email=email, password=password, role=Role.admin)
        return user, None
    if generate:
        generated = secrets.token_urlsafe(18)
        user = await create_user(
            session=session,
            email=email or "admin@autoplat.local",
            password=generated,
            role=Role.admin,
            username="admin",
        )
        return user, generated
    return None
