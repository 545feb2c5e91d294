"""Password hashing (argon2id) and JWT encoding/decoding."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from registry.errors import AuthenticationFailed
from registry.settings import Settings

#: argon2id with the library's (OWASP-aligned) defaults: ~0.15 s of CPU and 64 MiB per hash, so the
#: async callers run it in a thread (``hash_password_async``, ``verify_password_async``), never on the
#: event loop, where one login would stall every other request for that long.
_hasher = PasswordHasher()
#: A real hash to verify against when the user doesn't exist, so timing doesn't reveal accounts;
#: made on first use (not at import: every process would pay for it).
_dummy_hash: str | None = None

TokenType = Literal["access", "refresh"]


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("not-a-real-password-" + uuid.uuid4().hex)
    return _dummy_hash


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


#: Threads for argon2, one per core: a burst of logins queues here instead of running 64 MiB
#: hashes by the dozen (asyncio's default pool has up to 32 threads, and also resolves names).
_HASH_THREADS = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="argon2")


async def hash_password_async(password: str) -> str:
    """:func:`hash_password` in a worker thread (argon2 releases the GIL while it hashes)."""
    return await asyncio.get_running_loop().run_in_executor(_HASH_THREADS, hash_password, password)


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    """:func:`verify_password` in a worker thread."""
    return await asyncio.get_running_loop().run_in_executor(_HASH_THREADS, verify_password, password_hash, password)


async def warm_up() -> None:
    """Make the unknown-user hash before the first login, so that login does not take twice as
    long as others (and tell that the account does not exist). Called when the API starts."""
    await asyncio.get_running_loop().run_in_executor(_HASH_THREADS, _dummy)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    token_type: TokenType
    jti: str
    expires_at: datetime
    family_id: str | None = None
    role: str | None = None


def encode_token(
    settings: Settings,
    *,
    subject: str,
    token_type: TokenType,
    jti: str | None = None,
    family_id: str | None = None,
    role: str | None = None,
    now: datetime | None = None,
) -> tuple[str, TokenClaims]:
    now = now or datetime.now(UTC)
    ttl = settings.access_token_ttl_seconds if token_type == "access" else settings.refresh_token_ttl_seconds
    expires = now + timedelta(seconds=ttl)
    claims = TokenClaims(
        subject=subject,
        token_type=token_type,
        jti=jti or str(uuid.uuid4()),
        expires_at=expires,
        family_id=family_id,
        role=role,
    )
    payload: dict[str, Any] = {
        "sub": subject,
        "type": token_type,
        "jti": claims.jti,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    if family_id:
        payload["fam"] = family_id
    if role:
        payload["role"] = role
    token = jwt.encode(payload, settings.jwt_key(), algorithm=settings.jwt_algorithm)
    return token, claims


#: Tokens whose signature and claims were verified, by (token, type, key, algorithm, audience,
#: issuer): a client sends the same access token with every request, and checking its signature
#: again each time was ~4 % of the API's CPU on a small request. Expiry is checked on every use;
#: revocation is not a property of the token (``registry.authcache`` checks the session).
_VERIFIED: OrderedDict[tuple[str, ...], TokenClaims] = OrderedDict()
_VERIFIED_MAX = 4096


def decode_token(settings: Settings, token: str, *, expected_type: TokenType) -> TokenClaims:
    """Decode and verify a token. Only the configured algorithm is accepted (never ``none``)."""
    key = (token, expected_type, settings.jwt_key(), settings.jwt_algorithm, settings.jwt_audience, settings.jwt_issuer)
    claims = _VERIFIED.get(key)
    if claims is not None:
        if claims.expires_at <= datetime.now(UTC):
            _VERIFIED.pop(key, None)
            raise AuthenticationFailed("token expired")
        return claims
    claims = _decode(settings, token, expected_type=expected_type)
    _VERIFIED[key] = claims
    while len(_VERIFIED) > _VERIFIED_MAX:
        _VERIFIED.popitem(last=False)
    return claims


def _decode(settings: Settings, token: str, *, expected_type: TokenType) -> TokenClaims:
    try:
        payload = jwt.decode(
            token,
            settings.jwt_key(),
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "type", "jti", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthenticationFailed("token expired") from exc
    except jwt.PyJWTError as exc:
        raise AuthenticationFailed("invalid token") from exc
    if payload.get("type") != expected_type:
        raise AuthenticationFailed(f"expected an {expected_type} token")
    return TokenClaims(
        subject=str(payload["sub"]),
        token_type=expected_type,
        jti=str(payload["jti"]),
        expires_at=datetime.fromtimestamp(payload["exp"], UTC),
        family_id=payload.get("fam"),
        role=payload.get("role"),
    )
