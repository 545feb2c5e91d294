"""Loading module code per (module, version) from its immutable folder.

Two versions of one module may be loaded in one worker (a running execution finishes on the
version it started with while new ones use the upgrade). Both ship the same top-level package
names, so each version's modules are imported with the folder on ``sys.path`` and then moved in
``sys.modules`` under a private alias prefix. Module code should import its own package at
module level (or relatively); that is what module authors do anyway.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

_LOCK = threading.RLock()
_CACHE: dict[tuple[str, str], Callable[..., Any]] = {}


class HandlerNotFound(Exception):
    """The handler reference does not resolve in the module's code."""


def _alias(key: str) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in key)
    return f"_autoplat_code_{safe}"


def _is_under(module: types.ModuleType, root: str) -> bool:
    path = getattr(module, "__file__", None)
    if path:
        return os.path.abspath(path).startswith(root + os.sep)
    paths = getattr(module, "__path__", None) or []
    return bool(paths) and any(os.path.abspath(p).startswith(root + os.sep) for p in paths)


def load_handler(root: Path, ref: str, *, key: str) -> Callable[..., Any]:
    """Return the callable ``ref`` (``pkg.mod:func``) from the code folder ``root``.

    ``key`` identifies the code version (e.g. ``module@version#sha``); loads are cached by it.
    """
    cache_key = (key, ref)
    with _LOCK:
        cached = _CACHE.get(cache_key)
        if cached is not None:
            return cached
        module_name, _, attr = ref.partition(":")
        alias = _alias(key)
        qualified = f"{alias}.{module_name}"
        module = sys.modules.get(qualified)
        if module is None:
            module = _import_isolated(root, module_name, alias)
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise HandlerNotFound(f"{ref}: {attr!r} is not a callable of {module_name}")
        _CACHE[cache_key] = fn
        return fn  # type: ignore[no-any-return]


def _import_isolated(root: Path, module_name: str, alias: str) -> types.ModuleType:
    root_str = os.path.abspath(str(root))
    before = set(sys.modules)
    top = module_name.split(".")[0]
    # Stash same-named modules of another version so this import reads this folder.
    stashed: dict[str, types.ModuleType] = {}
    for name in list(sys.modules):
        if name == top or name.startswith(top + "."):
            stashed[name] = sys.modules.pop(name)
    sys.path.insert(0, root_str)
    try:
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise HandlerNotFound(f"cannot import {module_name}: {exc}") from exc
    finally:
        try:
            sys.path.remove(root_str)
        except ValueError:
            pass
        loaded = {
            name: mod
            for name in set(sys.modules) - before
            if (mod := sys.modules.get(name)) is not None and _is_under(mod, root_str)
        }
        for name in loaded:
            sys.modules.pop(name, None)
        sys.modules.update(stashed)
        if alias not in sys.modules:
            sys.modules[alias] = types.ModuleType(alias)
        for name, mod in loaded.items():
            sys.modules[f"{alias}.{name}"] = mod
    return module


def forget(key_prefix: str) -> None:
    """Drop cached handlers whose key starts with ``key_prefix`` (tests, uninstalls)."""
    with _LOCK:
        for cache_key in [k for k in _CACHE if k[0].startswith(key_prefix)]:
            del _CACHE[cache_key]
