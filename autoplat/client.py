"""A small synchronous client of the autoplat API, for the CLI and scripts.

Only the standard library and httpx: module tooling never imports the platform itself.

Example:
    >>> from pathlib import Path
    >>> from autoplat.client import register_module
    >>> register_module(Path("example_modules/data_sync"), api_url="http://127.0.0.1:8000",
    ...                 user="admin@example.com", password="...", enable=True)  # doctest: +SKIP
    {'name': 'data-sync', 'version': '1.0.0', 'status': 'ENABLED', ...}
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import httpx

__all__ = ["pack_module", "register_module"]

API_PREFIX = "/api/v1"
#: Folders and files left out of an uploaded bundle (as the server does for a server path).
EXCLUDED_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".svn", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")


def pack_module(path: Path) -> bytes:
    """Pack a module folder as a deterministic ``.tar.gz`` (sorted entries, mtime 0, owner root).

    Raises:
        RuntimeError: the folder holds a symbolic link or a special file.
    """
    root = Path(path)
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_folder(tar, root, ())
    return buffer.getvalue()


def _add_folder(tar: tarfile.TarFile, root: Path, rel: tuple[str, ...]) -> None:
    with os.scandir(root.joinpath(*rel)) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        parts = (*rel, entry.name)
        info = tarfile.TarInfo("/".join(parts))
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        if entry.is_symlink():
            raise RuntimeError(f"{'/'.join(parts)}: symbolic links cannot be uploaded")
        if entry.is_dir(follow_symlinks=False):
            if entry.name in EXCLUDED_DIRS:
                continue
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            _add_folder(tar, root, parts)
        elif entry.is_file(follow_symlinks=False):
            if entry.name.endswith(_EXCLUDED_SUFFIXES):
                continue
            st = entry.stat(follow_symlinks=False)
            info.size, info.mode = st.st_size, 0o755 if st.st_mode & 0o111 else 0o644
            with open(entry.path, "rb") as fh:
                tar.addfile(info, fh)
        else:
            raise RuntimeError(f"{'/'.join(parts)}: only regular files and folders can be uploaded")


def _error(response: httpx.Response) -> str:
    """The API's error message, with manifest issues when there are some."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    message = f"HTTP {response.status_code} {error.get('code', 'error')}: {error.get('message', '')}"
    details = error.get("details")
    if isinstance(details, dict) and isinstance(details.get("errors"), list):
        lines = [f"  {i.get('path') or '/'} [{i.get('code')}] {i.get('message')}" for i in details["errors"]]
        message += "\n" + "\n".join(lines)
    return message


class _Api:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def call(self, method: str, url: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"{method} {self.client.base_url}{url}: {exc}") from exc
        if response.status_code not in ok:
            raise RuntimeError(f"{method} {url}: {_error(response)}")
        return response


def _base_url(api_url: str) -> str:
    base = api_url.rstrip("/")
    return base if base.endswith(API_PREFIX) else base + API_PREFIX


def register_module(
    path: Path,
    *,
    api_url: str,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    upload: bool = False,
    install: bool = True,
    enable: bool = False,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Register a module folder with a running API, then install and enable it as asked.

    Re-running is safe: a module already registered at the same version is reused, one at an
    older version is upgraded, and steps already done (installed, enabled) are skipped.

    Args:
        path: The module folder (with manifest.json).
        api_url: Base URL of the API, e.g. ``http://127.0.0.1:8000``.
        token: An access token; otherwise ``user`` and ``password`` log in.
        user: Email or username to log in with.
        password: Password to log in with.
        upload: Upload the folder as a bundle instead of sending its path (for a remote API).
        install: Install after registering.
        enable: Enable after installing.
        timeout: Seconds allowed for each HTTP call (install imports the code).

    Returns:
        The module as the API returns it (``name``, ``version``, ``status``, ...).

    Raises:
        RuntimeError: with the API's error message when a call fails.
    """
    folder = Path(path).resolve()
    try:
        local = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        name = str(local["name"])
        version = str(local["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"cannot read the name and version from {folder / 'manifest.json'}: {exc}") from exc

    with httpx.Client(base_url=_base_url(api_url), timeout=timeout) as client:
        api = _Api(client)
        if token is None:
            if not (user and password):
                raise RuntimeError("give an access token, or a user and password to log in")
            tokens = api.call("POST", "/auth/login", json={"login": user, "password": password}).json()
            token = tokens["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"

        def code_request() -> dict[str, Any]:
            if upload:
                return {"files": {"bundle": (f"{name}-{version}.tar.gz", pack_module(folder), "application/gzip")}}
            return {"json": {"path": str(folder)}}

        response = api.call("POST", "/modules", ok=(201, 409), **code_request())
        if response.status_code == 409:
            module = api.call("GET", f"/modules/{name}", ok=(200, 404)).json()
            if "error" in module:  # the 409 was about something else
                raise RuntimeError(f"POST /modules: {_error(response)}")
            if module["version"] != version:
                module = api.call("POST", f"/modules/{name}/upgrade", **code_request()).json()
        else:
            module = response.json()

        if install and module["status"] in ("REGISTERED", "FAILED"):
            module = api.call("POST", f"/modules/{name}/install").json()
        if enable and module["status"] in ("INSTALLED", "DISABLED"):
            module = api.call("POST", f"/modules/{name}/enable").json()
        return dict(module)
