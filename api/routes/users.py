"""User administration (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import PageDep, Requires, SessionDep
from api.routes.auth import user_read
from api.schemas.auth import UserRead
from api.schemas.common import ERROR_RESPONSES, Page
from api.schemas.users import SessionsRevoked, UserCreate, UserUpdate
from registry.models import Role
from registry.services import audit, users
from registry.services.common import Actor

router = APIRouter(prefix="/users", tags=["users"], responses=ERROR_RESPONSES)


@router.get("", response_model=Page[UserRead])
async def list_users(
    session: SessionDep,
    paging: PageDep,
    search: Annotated[str | None, Query(max_length=200)] = None,
    role: Role | None = None,
    _: Actor = Requires("users:read"),
) -> Page[UserRead]:
    page, limit = paging
    result = await users.list_users(session=session, page=page, limit=limit, search=search, role=role)
    return Page(items=[user_read(u) for u in result.items], total=result.total, page=page, limit=limit)


@router.post("", response_model=UserRead, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, session: SessionDep, actor: Actor = Requires("users:write")) -> UserRead:
    user = await users.create_user(
        session=session,
        email=body.email,
        password=body.password,
        role=body.role,
        username=body.username,
        full_name=body.full_name,
        is_active=body.is_active,
    )
    audit.record(
        session=session,
        actor=actor,
        action="user.create",
        target_type="user",
        target_id=user.id,
        details={"role": user.role},
    )
    return user_read(user)


@router.get("/{user_id}", response_model=UserRead)
async def get_user(user_id: str, session: SessionDep, _: Actor = Requires("users:read")) -> UserRead:
    return user_read(await users.get_user(session=session, user_id=user_id))


@router.patch("/{user_id}", response_model=UserRead)
async def update_user(
    user_id: str, body: UserUpdate, session: SessionDep, actor: Actor = Requires("users:write")
) -> UserRead:
    user = await users.update_user(
        session=session, user_id=user_id, role=body.role, is_active=body.is_active, full_name=body.full_name
    )
    audit.record(
        session=session,
        actor=actor,
        action="user.update",
        target_type="user",
        target_id=user.id,
        details=body.model_dump(exclude_none=True, mode="json"),
    )
    return user_read(user)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(user_id: str, session: SessionDep, actor: Actor = Requires("users:write")) -> None:
    await users.delete_user(session=session, user_id=user_id)
    audit.record(session=session, actor=actor, action="user.delete", target_type="user", target_id=user_id)


@router.post("/{user_id}/revoke-sessions", response_model=SessionsRevoked)
async def revoke_sessions(user_id: str, session: SessionDep, actor: Actor = Requires("users:write")) -> SessionsRevoked:
    await users.get_user(session=session, user_id=user_id)
    count = await users.revoke_sessions(session=session, user_id=user_id, reason="admin_revoked")
    audit.record(
        session=session,
        actor=actor,
        action="user.revoke_sessions",
        target_type="user",
        target_id=user_id,
        details={"revoked_sessions": count},
    )
    return SessionsRevoked(revoked_sessions=count)
