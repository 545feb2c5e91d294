"""Dependencies, declared once as ``Annotated`` aliases and reused by every router."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from api.state import AppState
from registry import authcache
from registry.authcache import Principal
from registry.db import unit_of_work
from registry.errors import AuthenticationFailed, PermissionDenied
from registry.models import User
from registry.permissions import has_permission
from registry.security import TokenClaims, decode_token
from registry.services.common import Actor
from registry.settings import Settings


def get_state(request: Request) -> AppState:
    return request.app.state.autoplat  # type: ignore[no-any-return]


# The dependencies are ``async def`` even where they do not await: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hop per request (measured: 4 % of the API's CPU on
# POST /events) for a function that only reads an attribute.


async def _state(request: Request) -> AppState:
    return get_state(request)


StateDep = Annotated[AppState, Depends(_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    session: AsyncSession | None = None
    try:
        async with unit_of_work(state.sessions) as session:
            yield session
    finally:
        # Sessions this request ended (committed, even by a request that then failed) are announced
        # to every API process before the response leaves.
        if session is not None:
            await state.auth.invalidate(authcache.committed(session))


# "function" scope: commit (or roll back) before the response is sent, never after.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="Access token from POST /api/v1/auth/login")


async def get_claims(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> TokenClaims:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationFailed("missing bearer token")
    return decode_token(settings, credentials.credentials, expected_type="access")


ClaimsDep = Annotated[TokenClaims, Depends(get_claims)]


async def principal_for(state: AppState, claims: TokenClaims) -> Principal:
    """The user behind verified access-token claims, if the token's session is alive (registry/authcache.py).

    Served from the process's session cache: no database query unless a session or user changed.
    Routes that read the bearer token themselves (module routes) call this after ``decode_token``.
    """
    if not claims.family_id:
        raise AuthenticationFailed("access token names no session; get one from POST /api/v1/auth/login")
    principal = await state.auth.principal(user_id=claims.subject, family_id=claims.family_id)
    if principal is None:
        raise AuthenticationFailed("session ended, or the user is unknown or inactive")
    return principal


async def get_principal(claims: ClaimsDep, state: StateDep) -> Principal:
    return await principal_for(state, claims)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_current_user(principal: PrincipalDep, session: SessionDep) -> User:
    """The user's row, for the routes that need more than :class:`Principal` (the auth routes)."""
    user = await session.get(User, principal.user_id)
    if user is None or not user.is_active:
        raise AuthenticationFailed("session ended, or the user is unknown or inactive")
    # End the read so long requests don't hold a pooled connection meanwhile; the session starts a
    # new transaction if the route uses it.
    await session.commit()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _trusted(settings: Settings, address: str | None) -> bool:
    if not address or not settings.trusted_proxies:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(tuple(settings.trusted_proxies)))


def client_ip(request: Request) -> str | None:
    """The client's address: the TCP peer, or, when the peer is a trusted proxy
    (``AUTOPLAT_TRUSTED_PROXIES``), the nearest ``X-Forwarded-For`` hop that is not a trusted proxy.

    The header is read right to left: each trusted proxy appends the address it received from, so
    everything left of the first untrusted hop could have been written by the client itself.
    """
    peer = request.client.host if request.client else None
    settings: Settings = get_state(request).settings
    if not _trusted(settings, peer):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    address = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # garbage from further out: the last trusted hop is the best we know
        address = hop
        if not _trusted(settings, hop):
            break
    return address


def is_https(request: Request) -> bool:
    """Whether the client reached us over TLS (``X-Forwarded-Proto`` counts from a trusted proxy)."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-proto", "")
    return _trusted(get_state(request).settings, peer) and forwarded.split(",")[0].strip().lower() == "https"


async def get_anonymous_actor(request: Request) -> Actor:
    return Actor(user_id=None, email=None, role=None, ip=client_ip(request), request_id=request.state.request_id)


AnonymousActor = Annotated[Actor, Depends(get_anonymous_actor)]


def require(permission: str) -> Callable[..., Coroutine[Any, Any, Actor]]:
    """A dependency that admits only users holding ``permission`` and yields their Actor.

    The permission is recorded on the dependency so the OpenAPI walk test can check every route.
    """

    async def dependency(request: Request, user: PrincipalDep, settings: SettingsDep) -> Actor:
        if not has_permission(user.role, permission, install_roles=settings.module_install_roles):
            request.state.actor = Actor(user_id=user.user_id, email=user.email, role=user.role)
            raise PermissionDenied(f"role {user.role} lacks permission {permission}")
        actor = Actor(
            user_id=user.user_id,
            email=user.email,
            role=user.role,
            ip=client_ip(request),
            request_id=request.state.request_id,
        )
        request.state.actor = actor
        return actor

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


def Requires(permission: str) -> Any:  # noqa: N802 - reads like a type in signatures
    return Depends(require(permission))


#: The largest page any deployment serves (``AUTOPLAT_PAGE_MAX_LIMIT`` may only lower it).
MAX_PAGE_LIMIT = 200


async def pagination(
    settings: SettingsDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT, description="Page size")] = 50,
) -> tuple[int, int]:
    """``(page, limit)``. The OpenAPI maximum of ``limit`` is :data:`MAX_PAGE_LIMIT`, the most
    ``AUTOPLAT_PAGE_MAX_LIMIT`` may allow; a deployment that sets it lower is stricter than that."""
    from registry.errors import InvalidInput

    if limit > settings.page_max_limit:
        raise InvalidInput(
            f"limit must be at most {settings.page_max_limit}",
            details=[{"loc": ["query", "limit"], "msg": f"maximum is {settings.page_max_limit}"}],
        )
    return page, limit


PageDep = Annotated[tuple[int, int], Depends(pagination)]


async def read_body(request: Request, limit: int, shown: str) -> bytes:
    """The raw request body, read while counting: 413 (``request body over <shown>``) as soon as
    the declared or the received length passes ``limit``."""
    from registry.errors import PayloadTooLarge

    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body over {shown}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body over {shown}")
    return bytes(raw)
