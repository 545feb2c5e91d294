"""``ctx.vault`` and the secret fields of route bodies, answered by the worker (autoplat/vault.py).

Each step gets its module's vault: a :class:`KeyVault` with the key derived from the platform's
secret key and the module's name (registry/crypto.py). In a handler process, ``ctx.vault`` calls
come back here (activities/handlers.py), so the key never leaves the worker.

A module route's body arrives with the values its ``bodySchema`` marks ``"secret": true`` sealed
by the API (registry/services/routes.py), at the paths listed in ``request.secret_fields``: the
workflow input, every step's activity input and the execution row hold only tokens. They are
opened here, for the step's handler only: ``ctx.request`` is replaced by a copy with the values in
clear.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from activities.types import StepInput
from autoplat._sync import loop_runner
from autoplat.context import HttpRequest, JobContext
from autoplat.vault import KeyVault, VaultError
from registry.crypto import vault_key


class VaultService:
    """The provider: module vault keys, derived once per module per worker."""

    def __init__(self, deps: Any) -> None:
        self._secret = deps.settings.encryption_key()
        self._keys: dict[str, bytes] = {}

    def activities(self) -> list[Callable[..., Any]]:
        return []

    def vault(self, module: str, runner: Any = None) -> KeyVault:
        key = self._keys.get(module)
        if key is None:
            key = self._keys[module] = vault_key(self._secret, module)
        return KeyVault(key, runner=runner)

    async def contribute(self, inp: StepInput, ctx: JobContext) -> dict[str, Any]:
        vault = self.vault(inp.module, loop_runner(asyncio.get_running_loop()))
        members: dict[str, Any] = {"vault": vault}
        if ctx.request is not None and ctx.request.secret_fields:
            members["request"] = opened(ctx.request, vault)
        return members


def opened(request: HttpRequest, vault: KeyVault) -> HttpRequest:
    """A copy of ``request`` whose sealed body values are in clear.

    Raises:
        VaultError: A sealed value does not open (the platform's secret key changed between the
            call and the run, or the run's input was altered).
    """
    body = copy.deepcopy(request.body)
    for path in request.secret_fields:
        if not path:
            body = _open(vault, body, path)
            continue
        parent = body
        for part in path[:-1]:
            parent = _child(parent, part, path)
        last = path[-1]
        if isinstance(parent, dict) and isinstance(last, str) and last in parent:
            parent[last] = _open(vault, parent[last], path)
        elif isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent):
            parent[last] = _open(vault, parent[last], path)
        else:
            raise VaultError(f"the request body has no sealed value at {_where(path)}")
    return dataclasses.replace(request, body=body)


def _child(node: Any, part: str | int, path: list[str | int]) -> Any:
    if isinstance(node, dict) and isinstance(part, str) and part in node:
        return node[part]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    raise VaultError(f"the request body has no sealed value at {_where(path)}")


def _open(vault: KeyVault, token: Any, path: list[str | int]) -> Any:
    try:
        return vault.open_now(token)
    except VaultError as exc:
        raise VaultError(f"the request body's secret field {_where(path)} cannot be opened: {exc.message}") from None


def _where(path: list[str | int]) -> str:
    return ".".join(str(p) for p in path) or "(the whole body)"


def provider(deps: Any) -> VaultService:
    return VaultService(deps)
