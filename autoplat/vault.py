"""``ctx.vault``: seal a value into an opaque token only this module can open again.

A module that must keep a secret it was given (an endpoint's password, an API token a user
entered) seals it and stores the token anywhere (``ctx.storage``, its job state, a result)::

    async def save(ctx):
        token = await ctx.vault.seal({"password": ctx.request.body["password"]})   # "apv1:gAAAA..."
        await ctx.storage.put("cred:db", {"token": token})

    async def use(ctx):
        credentials = await ctx.vault.open((await ctx.storage.get("cred:db"))["token"])

Any JSON value (at most :data:`MAX_VALUE_BYTES` of JSON) becomes an ASCII token ``apv1:<Fernet
token>`` (AES-128-CBC + HMAC-SHA256). The key is the module's own, derived by the platform from its
secret key (``AUTOPLAT_SECRET_KEY``) and the module's name: a token sealed by one module cannot be
opened by another, and a token altered in any way does not open. Handlers never hold the key:
the worker seals and opens for them (docs/services.md, "Vault").

Async methods for async handlers, ``*_sync`` twins for sync handlers (like ``ctx.storage``). A
token that does not open raises :class:`VaultError` (fails the step, no retry).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from autoplat._sync import Runner
from autoplat.errors import JobError
from autoplat.storage import _Twins

__all__ = ["MAX_VALUE_BYTES", "PREFIX", "KeyVault", "VaultBase", "VaultError"]

#: What every token starts with (the format's version: a later format gets another prefix).
PREFIX = "apv1:"
#: Largest value sealed, as compact JSON.
MAX_VALUE_BYTES = 64 * 1024
#: Largest token opened: the token of a value of MAX_VALUE_BYTES is about 88 KiB.
MAX_TOKEN_CHARS = 128 * 1024


class VaultError(JobError):
    """A value that cannot be sealed (not JSON, too large) or a token that cannot be opened (not a
    token, altered, sealed for another module, or sealed before the platform's secret key changed).
    Fails the step without a retry."""


def check_value(value: Any) -> bytes:
    """``value`` as compact JSON bytes, refused when it is not JSON or larger than the cap."""
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise VaultError(f"the value to seal is not JSON-serialisable: {exc}") from None
    if len(encoded) > MAX_VALUE_BYTES:
        raise VaultError(
            f"the value to seal is {len(encoded)} bytes of JSON: at most {MAX_VALUE_BYTES}",
            details={"limit_bytes": MAX_VALUE_BYTES},
        )
    return encoded


def check_token(token: Any) -> str:
    """``token`` when it has the shape of a vault token (it may still not open)."""
    if not isinstance(token, str) or not token.startswith(PREFIX):
        raise VaultError(f"not a vault token: a token is a string starting with {PREFIX!r}, made by ctx.vault.seal")
    if len(token) > MAX_TOKEN_CHARS:
        raise VaultError(f"not a vault token: longer than {MAX_TOKEN_CHARS} characters")
    return token


class VaultBase(_Twins):
    """``ctx.vault``. Subclasses implement :meth:`_seal` and :meth:`_open`."""

    def __init__(self, *, runner: Runner | None = None) -> None:
        self._runner = runner

    def __bool__(self) -> bool:
        return True

    async def seal(self, value: Any) -> str:
        """Seal ``value`` (any JSON, at most 64 KiB of it) into an ASCII token for this module.

        Each call gives a different token (random IV), even for the same value.

        Raises:
            VaultError: The value is not JSON or is too large.
        """
        check_value(value)
        return await self._seal(value)

    async def open(self, token: str) -> Any:
        """The value sealed in ``token`` (as JSON: tuples come back as lists).

        Raises:
            VaultError: Not a token, altered, sealed for another module, or sealed under a
                platform secret key that has changed since.
        """
        return await self._open(check_token(token))

    def seal_sync(self, value: Any) -> str:
        """:meth:`seal` for sync handlers."""
        return self._sync(self.seal(value))  # type: ignore[no-any-return]

    def open_sync(self, token: str) -> Any:
        """:meth:`open` for sync handlers."""
        return self._sync(self.open(token))

    async def _seal(self, value: Any) -> str:
        raise NotImplementedError

    async def _open(self, token: str) -> Any:
        raise NotImplementedError


class KeyVault(VaultBase):
    """A vault that holds its key: the worker's (one per module) and the test harness's.

    Args:
        key: A Fernet key (urlsafe base64 of 32 bytes); :meth:`generate` makes a random one.
    """

    def __init__(self, key: bytes, *, runner: Runner | None = None) -> None:
        from cryptography.fernet import Fernet  # not imported by handler processes, which hold no key

        super().__init__(runner=runner)
        self._fernet = Fernet(key)

    @classmethod
    def generate(cls, *, runner: Runner | None = None) -> KeyVault:
        """A vault with a random key (the harness gives each test its own)."""
        return cls(base64.urlsafe_b64encode(os.urandom(32)), runner=runner)

    def seal_now(self, value: Any) -> str:
        """:meth:`seal`, synchronously (the platform's own code: the API seals route bodies)."""
        return PREFIX + self._fernet.encrypt(check_value(value)).decode("ascii")

    def open_now(self, token: Any) -> Any:
        """:meth:`open`, synchronously."""
        from cryptography.fernet import InvalidToken

        raw = check_token(token)[len(PREFIX) :]
        try:
            return json.loads(self._fernet.decrypt(raw.encode("ascii")))
        except (InvalidToken, UnicodeError, ValueError):
            raise VaultError(
                "the vault token cannot be opened: it was altered, sealed for another module, or sealed "
                "before the platform's secret key (AUTOPLAT_SECRET_KEY) changed"
            ) from None

    async def _seal(self, value: Any) -> str:
        return self.seal_now(value)

    async def _open(self, token: str) -> Any:
        return self.open_now(token)
