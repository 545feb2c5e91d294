"""The operator commands of ``autoplat``: log in once, then drive a running platform over its REST API.

Only httpx and the standard library: these commands never import the registry, so they work from
any machine that can reach the API (and the API's permissions apply to them as to the console).

Decisions:

- **Credentials** live in ``$AUTOPLAT_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/autoplat`` (default
  ``~/.config/autoplat``), file ``credentials.json``, mode 0600 in a 0700 folder. It holds the
  API URL, the login and the token pair; never the password.
- **Refresh** uses the body flow of ``POST /auth/refresh`` (the ``autoplat_refresh`` cookie is for
  browsers). Refresh tokens work once and replaying a spent one revokes the whole session, so two
  CLI processes refreshing at the same moment would log each other out: a refresh holds an
  exclusive lock on the credentials file and re-reads it first (whoever comes second uses the
  pair the first one stored).
- **Exit codes** say what happened (see :data:`EXIT_CODES`, docs/cli.md); anything that needs the
  user to act (no API, no login, login expired, bad input) is one line on stderr and exit 2.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import httpx
import typer

__all__ = ["EXIT_CODES", "register"]

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
#: Refresh this long before the access token expires (clock skew, slow requests).
REFRESH_MARGIN_SECONDS = 30
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED", "SKIPPED"})

OK, RUN_FAILED, USER_ACTION, REFUSED, WAIT_TIMEOUT, SERVER_ERROR = 0, 1, 2, 3, 4, 5
EXIT_CODES = {
    OK: "done (and, for `jobs run --wait` / `logs --follow`, the run COMPLETED)",
    RUN_FAILED: "the run ended FAILED, TIMED_OUT, CANCELLED or SKIPPED",
    USER_ACTION: "you need to act: API unreachable, not logged in, login expired, wrong password, bad arguments",
    REFUSED: "the API refused the request (not found, forbidden, invalid input, conflict); its message is printed",
    WAIT_TIMEOUT: "`--wait` ran out before the run finished (it keeps running; its id is printed)",
    SERVER_ERROR: "the API failed or is unavailable (5xx), or a stream broke off",
}

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """Printed as one line on stderr; the process exits with ``code``."""

    def __init__(self, message: str, code: int = USER_ACTION) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _fail(message: str, code: int = USER_ACTION) -> NoReturn:
    raise CliError(message, code)


def _json_of(response: httpx.Response) -> Any:
    """The body as JSON, or one line saying this is not the autoplat API (a wrong ``--api``)."""
    try:
        return response.json()
    except ValueError:
        _fail(
            f"{response.request.url} answered {response.status_code} with no JSON: is --api / "
            "AUTOPLAT_API_URL the autoplat API (e.g. http://127.0.0.1:8000)?"
        )


def _event_data(event: dict[str, str]) -> dict[str, Any]:
    """A server-sent event's JSON data, or one line saying the stream is not what was expected."""
    try:
        data = json.loads(event.get("data") or "")
    except ValueError:
        shown = (event.get("data") or "")[:80]
        _fail(f"the stream sent data that is not JSON ({shown!r}): is --api the autoplat API?", SERVER_ERROR)
    if not isinstance(data, dict):
        _fail("the stream sent data that is not a JSON object: is --api the autoplat API?", SERVER_ERROR)
    return data


def command(fn: F) -> F:
    """Turn :class:`CliError` (and a Ctrl-C) into one line and an exit code, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            typer.secho(f"error: {exc.message}", fg="red", err=True)
            raise typer.Exit(exc.code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# --- credentials -----------------------------------------------------------------------------------


def config_dir() -> Path:
    """``$AUTOPLAT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/autoplat``, else ``~/.config/autoplat``."""
    explicit = os.environ.get("AUTOPLAT_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "autoplat"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _read_credentials() -> dict[str, Any] | None:
    path = credentials_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _fail(f"cannot read {path} ({exc}): remove it and run `autoplat login`")
    return data if isinstance(data, dict) else None


def _private_folder() -> Path:
    """The config folder, created 0700, and made 0700 again if it exists more open."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)
    return folder


def _write_credentials(data: dict[str, Any]) -> None:
    folder = _private_folder()
    path = credentials_path()
    tmp = folder / f".credentials-{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """An exclusive lock shared by every CLI process of this user (refresh, login, logout)."""
    folder = _private_folder()
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _base(api_url: str) -> str:
    base = api_url.rstrip("/")
    return base[: -len(API_PREFIX)] if base.endswith(API_PREFIX) else base


def _tokens_record(api_url: str, login: str, tokens: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    return {
        "api_url": api_url,
        "login": login,
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "access_expires_at": now + float(tokens.get("expires_in") or 0),
        "refresh_expires_at": now + float(tokens.get("refresh_expires_in") or 0),
    }


# --- the API client --------------------------------------------------------------------------------


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"
    message = f"{error.get('message') or response.reason_phrase} (HTTP {response.status_code} {error.get('code', '')})"
    details = error.get("details")
    if isinstance(details, dict) and isinstance(details.get("errors"), list):
        message += "".join(
            f"\n  {i.get('path') or '/'} [{i.get('code')}] {i.get('message')}" for i in details["errors"]
        )
    elif isinstance(details, list) and response.status_code == 422:
        message += "".join(f"\n  {'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in details[:10])
    return message


def _code_for(status: int) -> int:
    if status == 401:
        return USER_ACTION
    if status >= 500:
        return SERVER_ERROR
    return REFUSED


@dataclass
class Api:
    """A logged-in API session: refreshes its access token when needed, and says what to do when it can't."""

    base_url: str
    creds: dict[str, Any] | None
    token: str | None = None  # AUTOPLAT_TOKEN: used as is, never refreshed
    timeout: float = 30.0

    @classmethod
    def open(cls, api_url: str | None) -> Api:
        env_token = os.environ.get("AUTOPLAT_TOKEN")
        creds = _read_credentials()
        if env_token:
            return cls(base_url=_base(api_url or DEFAULT_API_URL), creds=None, token=env_token)
        if creds is None or not creds.get("refresh_token"):
            where = f" --api {api_url}" if api_url else ""
            _fail(f"not logged in: run `autoplat login{where}` (or set AUTOPLAT_TOKEN)")
        stored = _base(str(creds["api_url"]))
        if api_url is not None and _base(api_url) != stored:
            _fail(f"logged in to {stored}, not {_base(api_url)}: run `autoplat login --api {_base(api_url)}`")
        return cls(base_url=stored, creds=creds)

    def url(self, path: str) -> str:
        return f"{self.base_url}{API_PREFIX}{path}"

    def _unreachable(self, exc: Exception) -> NoReturn:
        _fail(
            f"cannot reach the API at {self.base_url} ({type(exc).__name__}): start it (./run.sh), "
            "or point to it with --api / AUTOPLAT_API_URL"
        )

    def _access_token(self, *, force_refresh: bool = False) -> str:
        if self.token is not None:
            return self.token
        assert self.creds is not None
        if force_refresh or time.time() >= float(self.creds.get("access_expires_at", 0)) - REFRESH_MARGIN_SECONDS:
            self._refresh(spent=self.creds["access_token"] if force_refresh else None)
        return str(self.creds["access_token"])

    def _refresh(self, *, spent: str | None) -> None:
        assert self.creds is not None
        expired = "your login has expired or was ended: run `autoplat login`"
        with _locked():
            current = _read_credentials() or {}
            fresh = current.get("access_token") != self.creds.get("access_token") and current.get("refresh_token")
            if fresh and time.time() < float(current.get("access_expires_at", 0)) - REFRESH_MARGIN_SECONDS:
                self.creds = current  # another process refreshed meanwhile
                return
            if spent is None and time.time() >= float(self.creds.get("refresh_expires_at", 0)):
                _fail(expired)
            try:
                response = httpx.post(
                    self.url("/auth/refresh"), json={"refresh_token": self.creds["refresh_token"]}, timeout=self.timeout
                )
            except httpx.HTTPError as exc:
                self._unreachable(exc)
            if response.status_code == 401:
                _fail(expired)
            if response.status_code != 200:
                _fail(f"refreshing the login failed: {_error_message(response)}", _code_for(response.status_code))
            self.creds = _tokens_record(self.base_url, str(self.creds.get("login", "")), response.json())
            _write_credentials(self.creds)

    def _headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, *, ok: Sequence[int] = (200, 201, 202, 204), **kwargs: Any) -> Any:
        """Send, refreshing once on a 401; returns the JSON body (``None`` for 204)."""
        response = self.raw(method, path, **kwargs)
        if response.status_code not in ok:
            _fail(_error_message(response), _code_for(response.status_code))
        return None if response.status_code == 204 or not response.content else _json_of(response)

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", self.timeout)
        for attempt in (1, 2):
            headers = {**kwargs.pop("headers", {}), **self._headers(self._access_token(force_refresh=attempt == 2))}
            try:
                response = httpx.request(method, self.url(path), headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                self._unreachable(exc)
            if response.status_code != 401 or self.token is not None or attempt == 2:
                if response.status_code == 401:
                    _fail(
                        "the API refused the login (401): run `autoplat login`"
                        if self.token is None
                        else "the API refused AUTOPLAT_TOKEN (401): get a fresh token or unset it and `autoplat login`"
                    )
                return response
            kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def stream(self, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> Iterator[httpx.Response]:
        """A server-sent event stream (no read timeout: the server sends keep-alives)."""
        token = self._access_token()
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            with httpx.stream(
                "GET", self.url(path), headers={**(headers or {}), **self._headers(token)}, timeout=timeout, **kwargs
            ) as response:
                if response.status_code == 401 and self.token is None:
                    response.close()
                    token = self._access_token(force_refresh=True)
                    with httpx.stream(
                        "GET", self.url(path), headers={**(headers or {}), **self._headers(token)}, timeout=timeout
                    ) as again:
                        yield self._checked(again)
                    return
                yield self._checked(response)
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                self._unreachable(exc)
            _fail(f"the stream broke off ({type(exc).__name__}): run the command again", SERVER_ERROR)

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code != 200:
            response.read()
            if response.status_code == 401:
                _fail("the API refused the login (401): run `autoplat login`")
            _fail(_error_message(response), _code_for(response.status_code))
        return response


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The events of a ``text/event-stream`` answer (``event``, ``id``, ``data`` fields)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
            continue
        if line.startswith(":"):
            continue  # keep-alive
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        fields[key] = f"{fields[key]}\n{value}" if key == "data" and key in fields else value


# --- output ----------------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str | Callable[[dict[str, Any]], Any]]]
) -> None:
    """Plain aligned columns (greppable, no box drawing); ``columns`` are (title, key or getter)."""
    if not rows:
        typer.echo("(none)")
        return
    cells = [
        [_cell(get(row) if callable(get) else row.get(get)) for _, get in columns]  # type: ignore[arg-type]
        for row in rows
    ]
    widths = [max(len(title), *(len(r[i]) for r in cells)) for i, (title, _) in enumerate(columns)]
    typer.echo("  ".join(title.upper().ljust(w) for (title, _), w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        shown = json.dumps(value, default=str) if isinstance(value, dict | list) else _cell(value)
        typer.echo(f"{key.ljust(width)}  {shown}")


def _when(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def _json_arg(value: str | None, what: str) -> Any:
    if value is None:
        return None
    if value.startswith("@"):
        try:
            value = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"{what}: cannot read {value[1:]}: {exc}")
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        _fail(f"{what} is not valid JSON ({exc}); e.g. --{what} '{{\"key\": 1}}'")
    if not isinstance(parsed, dict):
        _fail(f"{what} must be a JSON object, e.g. --{what} '{{\"key\": 1}}'")
    return parsed


def _log_line(entry: dict[str, Any]) -> str:
    ts = str(entry.get("ts", ""))[11:23]
    step = f" [{entry['step']}]" if entry.get("step") else ""
    line = f"{ts} {str(entry.get('level', 'INFO')):<7}{step} {entry.get('message', '')}"
    if entry.get("exception"):
        line += "\n" + str(entry["exception"]).rstrip()
    return line


def _outcome(status: str) -> int:
    return OK if status == "COMPLETED" else RUN_FAILED


# --- option aliases --------------------------------------------------------------------------------

ApiOpt = Annotated[
    str | None,
    typer.Option(
        "--api",
        envvar="AUTOPLAT_API_URL",
        help=f"API base URL (default: the one you logged in to, else {DEFAULT_API_URL})",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON (for scripts)")]


# --- login / logout --------------------------------------------------------------------------------


@command
def login(
    api: ApiOpt = None,
    user: Annotated[str | None, typer.Option("--login", "-u", help="Email or username (asked if omitted)")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
) -> None:
    """Log in to an API and keep the session in your config folder (mode 0600)."""
    base = _base(api or DEFAULT_API_URL)
    if user is None:
        user = typer.prompt("login (email or username)")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True)
    if not user or not password:
        _fail("give a login and a password")
    try:
        response = httpx.post(f"{base}{API_PREFIX}/auth/login", json={"login": user, "password": password}, timeout=30)
    except httpx.HTTPError as exc:
        Api(base_url=base, creds=None)._unreachable(exc)
    if response.status_code == 401:
        _fail("wrong login or password")
    if response.status_code != 200:
        _fail(f"login failed: {_error_message(response)}", _code_for(response.status_code))
    tokens = _json_of(response)
    if not isinstance(tokens, dict) or "access_token" not in tokens:
        _fail(f"{base} did not answer like an autoplat API: check --api")
    with _locked():
        _write_credentials(_tokens_record(base, user, tokens))
    me = Api.open(base).request("GET", "/auth/me")
    typer.echo(f"logged in to {base} as {me.get('email')} ({me.get('role')}); session kept in {credentials_path()}")


@command
def logout() -> None:
    """End the session on the API and forget it here."""
    creds = _read_credentials()
    if creds is None:
        typer.echo("not logged in")
        return
    api = Api(base_url=_base(str(creds.get("api_url"))), creds=creds)
    ended = "ended"
    try:
        token = api._access_token()  # refreshed if it expired, so the API can end the session
        assert api.creds is not None
        response = httpx.post(
            api.url("/auth/logout"),
            json={"refresh_token": api.creds.get("refresh_token")},
            headers=api._headers(token),
            timeout=api.timeout,
        )
        if response.status_code not in (204, 401):
            ended = f"not ended on the API ({_error_message(response)})"
    except CliError as exc:
        ended = f"not ended on the API ({exc.message.split(':')[0]})"
    except httpx.HTTPError as exc:
        ended = f"not ended on the API (unreachable: {type(exc).__name__})"
    with _locked():
        credentials_path().unlink(missing_ok=True)
    typer.echo(f"logged out of {api.base_url}: session {ended}, local credentials removed")


# --- modules ---------------------------------------------------------------------------------------

modules_app = typer.Typer(
    help="Operate modules on a running API: list, show, enable, disable, upgrade. "
    "(Authoring a module folder: `autoplat module`.)",
    no_args_is_help=True,
)


@modules_app.command("list")
@command
def modules_list(api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Registered modules with their version and lifecycle status."""
    items = Api.open(api).request("GET", "/modules", params={"limit": 200})["items"]
    if as_json:
        return _print_json(items)
    _table(
        items,
        [("name", "name"), ("version", "version"), ("status", "status"), ("description", "description")],
    )


@modules_app.command("show")
@command
def modules_show(name: str, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """One module: status, version and its job types."""
    client = Api.open(api)
    module = client.request("GET", f"/modules/{name}")
    if as_json:
        return _print_json(module)
    _fields(
        [
            ("name", module.get("name")),
            ("version", module.get("version")),
            ("status", module.get("status")),
            ("reason", module.get("status_reason")),
            ("description", module.get("description")),
            ("revision", module.get("revision")),
        ]
    )
    jobs = ((module.get("manifest") or {}).get("jobs")) or []
    if jobs:
        typer.echo("")
        _table(jobs, [("job type", "name"), ("schedule", "schedule"), ("description", "description")])


def _transition(action: str) -> Callable[..., None]:
    @command
    def run(
        name: Annotated[str, typer.Argument(help="Module name")], api: ApiOpt = None, as_json: JsonOpt = False
    ) -> None:
        module = Api.open(api).request("POST", f"/modules/{name}/{action}")
        if as_json:
            return _print_json(module)
        typer.echo(f"{module['name']} {module['version']}: {module['status']}")

    run.__doc__ = f"{action.capitalize()} a module (its schedules, listeners and routes follow at once)."
    return run


modules_app.command("enable")(_transition("enable"))
modules_app.command("disable")(_transition("disable"))


@modules_app.command("upgrade")
@command
def modules_upgrade(
    name: str,
    path: Annotated[Path, typer.Argument(help="The new version's module folder")],
    upload: Annotated[
        bool, typer.Option("--upload/--path", help="Upload the folder as a bundle (default) or send its server path")
    ] = True,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch a module to the version in PATH; its lifecycle state is kept."""
    from autoplat.client import pack_module

    folder = path.resolve()
    if not (folder / "manifest.json").is_file():
        _fail(f"{folder} has no manifest.json")
    client = Api.open(api)
    client.timeout = 120.0  # the API imports the new code
    if upload:
        try:
            bundle = pack_module(folder)
        except RuntimeError as exc:
            _fail(str(exc))
        module = client.request(
            "POST", f"/modules/{name}/upgrade", files={"bundle": (f"{name}.tar.gz", bundle, "application/gzip")}
        )
    else:
        module = client.request("POST", f"/modules/{name}/upgrade", json={"path": str(folder)})
    if as_json:
        return _print_json(module)
    typer.echo(f"{module['name']} {module['version']}: {module['status']}")


# --- jobs ------------------------------------------------------------------------------------------

jobs_app = typer.Typer(help="Jobs on a running API: list, show, create, run.", no_args_is_help=True)


def _looks_like_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _job_id(client: Api, job: str) -> str:
    """A job id, or the id of the one job with that exact name."""
    if _looks_like_id(job):
        return job
    items = client.request("GET", "/jobs", params={"search": job, "limit": 200})["items"]
    matches = [j for j in items if j.get("name") == job]
    if not matches:
        _fail(f"no job named {job!r} (list them with `autoplat jobs list`)", REFUSED)
    if len(matches) > 1:
        _fail(f"{len(matches)} jobs are named {job!r}: use the id ({', '.join(j['id'] for j in matches)})", REFUSED)
    return str(matches[0]["id"])


@jobs_app.command("list")
@command
def jobs_list(
    module: Annotated[str | None, typer.Option(help="Only this module's jobs")] = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs with their schedule and last run."""
    params: dict[str, Any] = {"limit": 200}
    if module:
        params["module"] = module
    items = Api.open(api).request("GET", "/jobs", params=params)["items"]
    if as_json:
        return _print_json(items)
    _table(
        items,
        [
            ("id", "id"),
            ("name", "name"),
            ("module", "module"),
            ("job type", "job_type"),
            ("schedule", "schedule"),
            ("enabled", "enabled"),
            ("last run", lambda j: (j.get("last_execution") or {}).get("status")),
        ],
    )


@jobs_app.command("show")
@command
def jobs_show(
    job: Annotated[str, typer.Argument(help="Job id or name")], api: ApiOpt = None, as_json: JsonOpt = False
) -> None:
    """One job: schedule, config, next runs, last execution."""
    client = Api.open(api)
    row = client.request("GET", f"/jobs/{_job_id(client, job)}")
    if as_json:
        return _print_json(row)
    last = row.get("last_execution") or {}
    _fields(
        [
            ("id", row["id"]),
            ("name", row["name"]),
            ("module", row["module"]),
            ("job type", row["job_type"]),
            ("enabled", row["enabled"]),
            ("schedule", f"{row['schedule']} ({row['timezone']})" if row.get("schedule") else None),
            ("next runs", ", ".join(_when(t) or "" for t in row.get("next_runs") or []) or None),
            ("timeout", f"{row['timeout_seconds']} s"),
            ("config", row.get("config")),
            ("last run", f"{last['status']} {last['id']}" if last else None),
        ]
    )


@jobs_app.command("create")
@command
def jobs_create(
    module: str,
    job_type: str,
    name: Annotated[str | None, typer.Option(help="Job name (default: the job type)")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="Cron (5 fields, or 6 with seconds); 'none' for no schedule")
    ] = None,
    config: Annotated[str | None, typer.Option(help="Config as a JSON object, or @file.json")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled")] = False,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a job of a module's job type (omitted fields take the manifest's defaults)."""
    body: dict[str, Any] = {"module": module, "job_type": job_type, "name": name or job_type, "enabled": not disabled}
    if schedule is not None:
        body["schedule"] = None if schedule.lower() == "none" else schedule
    if config is not None:
        body["config"] = _json_arg(config, "config")
    row = Api.open(api).request("POST", "/jobs", json=body)
    if as_json:
        return _print_json(row)
    typer.echo(
        f"created job {row['name']} {row['id']}" + (f" (schedule {row['schedule']})" if row.get("schedule") else "")
    )


@jobs_app.command("run")
@command
def jobs_run(
    job: Annotated[str, typer.Argument(help="Job id or name")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result; exit 1 unless it COMPLETED")] = False,
    config: Annotated[str | None, typer.Option(help="Config override for this run (JSON object or @file)")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits (exit 4 when it runs out)")] = 300.0,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a job now (--wait: like a function call)."""
    client = Api.open(api)
    job_id = _job_id(client, job)
    body = {"config": _json_arg(config, "config")} if config is not None else {}
    params: dict[str, Any] = {}
    if wait:
        if not 0 < timeout <= 3600:
            _fail("--timeout must be between 0 and 3600 seconds")
        params = {"wait": "true", "wait_timeout": timeout}
        client.timeout = timeout + 30
    response = client.raw("POST", f"/jobs/{job_id}/execute", json=body, params=params)
    if response.status_code == 504 and wait:
        details = (response.json().get("error") or {}).get("details") or {}
        _fail(
            f"still running after {timeout:g} s: execution {details.get('execution_id')} "
            f"(follow it with `autoplat logs {details.get('execution_id')} --follow`)",
            WAIT_TIMEOUT,
        )
    if response.status_code not in (200, 202):
        _fail(_error_message(response), _code_for(response.status_code))
    execution = _json_of(response)
    if as_json:
        _print_json(execution)
    else:
        typer.echo(f"execution {execution['id']}: {execution['status']}")
        if wait and execution.get("error"):
            error = execution["error"]
            typer.echo(f"error: {error.get('type', '')}: {error.get('message', '')}".rstrip())
        elif wait and execution.get("result") is not None:
            typer.echo(f"result: {json.dumps(execution['result'], default=str)}")
    if wait:
        raise typer.Exit(_outcome(execution["status"]))


# --- executions ------------------------------------------------------------------------------------

executions_app = typer.Typer(help="Executions (runs): list, show, cancel, retry.", no_args_is_help=True)

_EXECUTION_COLUMNS: list[tuple[str, str | Callable[[dict[str, Any]], Any]]] = [
    ("id", "id"),
    ("module", "module"),
    ("job type", "job_type"),
    ("status", "status"),
    ("trigger", "trigger"),
    ("created", lambda e: _when(e.get("created_at"))),
    ("ms", "duration_ms"),
]


@executions_app.command("list")
@command
def executions_list(
    job: Annotated[str | None, typer.Option(help="Only this job's runs (id or name)")] = None,
    module: Annotated[str | None, typer.Option(help="Only this module's runs")] = None,
    status: Annotated[str | None, typer.Option(help="Statuses, comma-separated (e.g. FAILED,TIMED_OUT)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many, newest first")] = 20,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent executions, newest first."""
    client = Api.open(api)
    params: dict[str, Any] = {"limit": limit, "sort": "-created_at"}
    if job:
        params["job_id"] = _job_id(client, job)
    if module:
        params["module"] = module
    if status:
        params["status"] = status.upper()
    items = client.request("GET", "/executions", params=params)["items"]
    if as_json:
        return _print_json(items)
    _table(items, _EXECUTION_COLUMNS)


@executions_app.command("show")
@command
def executions_show(execution: str, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """One execution: status, steps, result or error (logs: `autoplat logs`)."""
    row = Api.open(api).request("GET", f"/executions/{execution}")
    if as_json:
        return _print_json(row)
    _fields(
        [
            ("id", row["id"]),
            ("job", row.get("job_id")),
            ("module", f"{row['module']} {row.get('module_version') or ''}".strip()),
            ("job type", row["job_type"]),
            ("status", row["status"] + (f" ({row['status_reason']})" if row.get("status_reason") else "")),
            ("trigger", row["trigger"]),
            ("attempt", row.get("attempt")),
            ("started", _when(row.get("started_at"))),
            ("finished", _when(row.get("finished_at"))),
            ("duration", f"{row['duration_ms']} ms" if row.get("duration_ms") is not None else None),
            ("result", row.get("result")),
            ("error", row.get("error")),
            ("temporal", row.get("temporal_url")),
        ]
    )


@executions_app.command("cancel")
@command
def executions_cancel(execution: str, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a running execution (it ends CANCELLED within seconds)."""
    row = Api.open(api).request("POST", f"/executions/{execution}/cancel")
    if as_json:
        return _print_json(row)
    typer.echo(f"execution {row['id']}: {row['status']} (cancel requested)")


@executions_app.command("retry")
@command
def executions_retry(execution: str, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Run a finished execution again with the same config; prints the new execution."""
    row = Api.open(api).request("POST", f"/executions/{execution}/retry")
    if as_json:
        return _print_json(row)
    typer.echo(f"execution {row['id']}: {row['status']} (retry of {execution})")


# --- logs ------------------------------------------------------------------------------------------


@command
def logs(
    execution: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream live lines until the run ends; exit 1 unless it COMPLETED")
    ] = False,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """An execution's log lines (--follow: live, over the API's SSE stream)."""
    client = Api.open(api)
    if not follow:
        body = client.request("GET", f"/executions/{execution}/logs")
        for entry in body["entries"]:
            typer.echo(json.dumps(entry, default=str) if as_json else _log_line(entry))
        return
    status: str | None = None
    with client.stream(f"/executions/{execution}/logs/stream") as response:
        typer.secho(f"-- following execution {execution}", err=True, fg="green")
        for event in sse_events(response):
            data = _event_data(event)
            if event.get("event") == "end":
                status = str(data.get("status"))
                break
            if event.get("event") == "notice":  # e.g. live lines unavailable: stored lines follow
                typer.secho(f"-- {data.get('message')}", err=True, fg="yellow")
                continue
            typer.echo(json.dumps(data, default=str) if as_json else _log_line(data))
    if status is None:
        _fail(f"the log stream ended before the run did: run `autoplat logs {execution} --follow` again", SERVER_ERROR)
    typer.secho(f"-- {status}", err=True, fg="green" if status == "COMPLETED" else "red")
    raise typer.Exit(_outcome(status))


# --- events ----------------------------------------------------------------------------------------

events_app = typer.Typer(help="The event bus: post an event, tail the live stream.", no_args_is_help=True)


@events_app.command("post")
@command
def events_post(
    name: Annotated[str, typer.Argument(help="Dotted lowercase name, e.g. data.synced")],
    payload: Annotated[str | None, typer.Option(help="JSON object, or @file.json")] = None,
    source: Annotated[str | None, typer.Option(help="Who sends it")] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="Your id for the event: posting it again changes nothing")
    ] = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish an event: stored, streamed live, and dispatched to the jobs listening to it."""
    body: dict[str, Any] = {"name": name, "payload": _json_arg(payload, "payload") or {}}
    if source:
        body["source"] = source
    if event_id:
        body["id"] = event_id
    row = Api.open(api).request("POST", "/events", json=body)
    if as_json:
        return _print_json(row)
    typer.echo(f"event {row['id']} (seq {row['seq']}): {row['name']}")


@events_app.command("tail")
@command
def events_tail(
    pattern: Annotated[str | None, typer.Option(help="Only names matching, e.g. 'data.*' or 'job.**'")] = None,
    after: Annotated[
        int | None, typer.Option(help="First replay the events after this seq (Last-Event-ID)", min=0)
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events", min=1)] = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Live events as they arrive (Ctrl-C stops); reconnects without a gap if the stream drops."""
    client = Api.open(api)
    params = {"pattern": pattern} if pattern else {}
    seen, cursor, drops = 0, after, 0
    while True:
        headers = {"Last-Event-ID": str(cursor)} if cursor is not None else {}
        try:
            with client.stream("/events/stream", headers=headers, params=params) as response:
                typer.secho(f"-- listening on {client.base_url}", err=True, fg="green")
                for event in sse_events(response):
                    data = _event_data(event)
                    cursor = int(data.get("seq", cursor or 0))
                    drops = 0
                    if as_json:
                        typer.echo(json.dumps(data, default=str))
                    else:
                        payload = json.dumps(data.get("payload"), default=str)
                        typer.echo(
                            f"{_when(data.get('occurred_at'))}  {data.get('name')}  {data.get('source')}  {payload}"
                        )
                    seen += 1
                    if count is not None and seen >= count:
                        return
        except CliError as exc:
            if exc.code != SERVER_ERROR or drops >= 5:
                raise
        drops += 1
        time.sleep(min(10.0, 0.5 * 2**drops))  # backoff before reconnecting (Ctrl-C stops)


# --- wiring ----------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the operator commands to the ``autoplat`` app."""
    app.command("login", rich_help_panel="Operate a running platform")(login)
    app.command("logout", rich_help_panel="Operate a running platform")(logout)
    app.add_typer(modules_app, name="modules", rich_help_panel="Operate a running platform")
    app.add_typer(jobs_app, name="jobs", rich_help_panel="Operate a running platform")
    app.add_typer(executions_app, name="executions", rich_help_panel="Operate a running platform")
    app.command("logs", rich_help_panel="Operate a running platform")(logs)
    app.add_typer(events_app, name="events", rich_help_panel="Operate a running platform")
