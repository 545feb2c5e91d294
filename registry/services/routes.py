"""Module HTTP routes: the route table of a module, matching, input validation, webhook signatures,
and the sealing of the body values a route's ``bodySchema`` marks ``"secret": true``.

A module route is the serverless HTTP trigger of a job type (``manifest.routes``). The API layer
(``api/routes/module_routes.py``) asks :class:`RouteCache` for the table of a module on every call;
the cache re-reads the module only when its row changed (``Module.revision`` is bumped on every
lifecycle or config change), so enabling, disabling or upgrading a module changes its routes at
once on every API process, without a restart and without a message bus.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from activities.types import RunPlan
from autoplat.vault import MAX_VALUE_BYTES, VaultError
from registry.errors import AuthenticationFailed, InvalidInput, PermissionDenied, ServiceUnavailable
from registry.models import Module, ModuleStatus
from registry.services.runs import run_plan

#: Least role for a route that names none: reading is for viewers, anything else for operators.
ROLE_RANK = {"viewer": 1, "operator": 2, "admin": 3}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Request headers never handed to module code (they carry the caller's platform credentials).
_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
#: Query properties typed like this in ``querySchema`` are converted from their string form.
_CONVERTIBLE = {"integer", "number", "boolean"}


class RouteInputInvalid(InvalidInput):
    """Query or body not matching the route's JSON Schema (422, like FastAPI's own validation)."""

    code = "validation_error"


@dataclass(frozen=True)
class RouteSpec:
    """One compiled entry of ``manifest.routes``."""

    method: str
    path: str
    segments: tuple[str | None, ...]
    """Literal segments, ``None`` where a ``{param}`` sits."""
    params: tuple[str | None, ...]
    job: str
    permission: str
    public: bool
    #: ``html: true``: may answer text/html inline when the operator allows it.
    html: bool
    mode: str
    wait_seconds: float | None
    body_schema: dict[str, Any] | None
    query_schema: dict[str, Any] | None
    auth: dict[str, Any] | None
    #: ``bodySchema`` marks some value ``"secret": true``: the API seals them (:func:`seal_body`).
    secret_body: bool
    #: Sort key: a literal segment wins over a parameter at the same position.
    specificity: tuple[int, ...]

    @classmethod
    def from_manifest(cls, raw: Mapping[str, Any]) -> RouteSpec:
        method = str(raw["method"]).upper()
        path = str(raw["path"])
        parts = split_path(path)
        segments: list[str | None] = []
        params: list[str | None] = []
        for part in parts:
            m = _PARAM.match(part)
            segments.append(None if m else part)
            params.append(m.group(1) if m else None)
        public = bool(raw.get("public", False))
        permission = str(raw.get("permission") or ("viewer" if method == "GET" else "operator"))
        auth = dict(raw["auth"]) if isinstance(raw.get("auth"), dict) else None
        if auth is not None:
            auth.setdefault("header", "X-Signature")
            auth.setdefault("timestampHeader", "X-Timestamp")
            auth.setdefault("toleranceSeconds", 300)
        wait = raw.get("waitSeconds")
        return cls(
            method=method,
            path=path,
            segments=tuple(segments),
            params=tuple(params),
            job=str(raw["job"]),
            permission=permission,
            public=public,
            html=raw.get("html") is True,
            mode=str(raw.get("mode") or "sync"),
            wait_seconds=float(wait) if isinstance(wait, int | float) else None,
            body_schema=raw.get("bodySchema") if isinstance(raw.get("bodySchema"), dict) else None,
            query_schema=raw.get("querySchema") if isinstance(raw.get("querySchema"), dict) else None,
            auth=auth,
            secret_body=holds_secret(raw.get("bodySchema")),
            specificity=tuple(0 if s is not None else 1 for s in segments),
        )

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for part, literal, name in zip(parts, self.segments, self.params, strict=True):
            if literal is not None:
                if part != literal:
                    return None
            elif name is not None:
                found[name] = part
        return found


@dataclass(frozen=True)
class RouteMatch:
    route: RouteSpec
    params: dict[str, str]


@dataclass
class RouteTable:
    """The routes of one module as of one revision of its row."""

    module: str
    status: str
    version: str
    revision: int
    routes: list[RouteSpec]
    #: Job type definitions by name (timeouts, steps) of the current version.
    jobs: dict[str, dict[str, Any]]
    #: Module config in clear with defaults: holds the signing secrets of public routes.
    config: dict[str, Any]
    #: The current version's code bundle (what a run started now loads).
    bundle_sha256: str | None = None
    _validators: dict[tuple[int, str], Draft202012Validator] = field(default_factory=dict)

    @property
    def serving(self) -> bool:
        return self.status == ModuleStatus.ENABLED.value

    def match(self, method: str, parts: Sequence[str]) -> RouteMatch | None:
        """The route serving ``method`` at the URL-decoded path segments ``parts``, most literal first."""
        candidates = [
            (route, params)
            for route in self.routes
            if route.method == method and (params := route.match(parts)) is not None
        ]
        if not candidates:
            return None
        route, params = min(candidates, key=lambda c: c[0].specificity)
        return RouteMatch(route=route, params=params)

    def plan(self, job_type: str, *, heartbeat_timeout_seconds: int) -> RunPlan | None:
        """The plan of a run of ``job_type`` on this version (its execution id left empty)."""
        definition = self.jobs.get(job_type)
        if definition is None:
            return None
        return run_plan(
            execution_id="",
            module=self.module,
            module_version=self.version,
            bundle_sha256=self.bundle_sha256,
            job=None,
            job_type=job_type,
            definition=definition,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )

    def allowed_methods(self, parts: Sequence[str]) -> list[str]:
        """Methods served at ``parts`` (for a 405's ``Allow``); empty when nothing serves it."""
        return sorted({r.method for r in self.routes if r.match(parts) is not None}, key=METHODS.index)

    def validator(self, route: RouteSpec, which: str) -> Draft202012Validator:
        key = (self.routes.index(route), which)
        if key not in self._validators:
            schema = route.body_schema if which == "body" else route.query_schema
            self._validators[key] = Draft202012Validator(schema or {})
        return self._validators[key]


def split_path(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def build_table(module: Module, *, config: dict[str, Any]) -> RouteTable:
    manifest = module.manifest or {}
    routes = [RouteSpec.from_manifest(r) for r in manifest.get("routes") or [] if isinstance(r, dict)]
    jobs = {str(j["name"]): j for j in manifest.get("jobs") or [] if isinstance(j, dict) and "name" in j}
    return RouteTable(
        module=module.name,
        status=module.status,
        version=module.version,
        revision=module.revision,
        routes=routes,
        jobs=jobs,
        config=config,
        bundle_sha256=module.bundle_sha256,
    )


_Key = tuple[str, int, str, str]


class RouteCache:
    """Per-process cache of route tables, checked against the registry on every call.

    The check is one small indexed query (id, revision, status, version of the module row); the
    manifest and the config are re-read only when one of those changed. Any API process therefore
    serves a module's routes as the registry says at that moment: no restart, no pub/sub message
    that could be lost.
    """

    def __init__(self, *, config_loader: Callable[[Module], dict[str, Any]]) -> None:
        self._config_loader = config_loader
        self._tables: dict[str, tuple[_Key, RouteTable]] = {}

    async def table(self, *, session: AsyncSession, module: str) -> RouteTable | None:
        row = (
            await session.execute(
                select(Module.id, Module.revision, Module.status, Module.version).where(Module.name == module)
            )
        ).first()
        if row is None:
            self._tables.pop(module, None)
            return None
        key: _Key = (row.id, row.revision, row.status, row.version)
        cached = self._tables.get(module)
        if cached is not None and cached[0] == key:
            return cached[1]
        full = await session.get(Module, row.id, populate_existing=True)
        if full is None:
            return None
        table = build_table(full, config=self._config_loader(full))
        # Keyed by what was read with the manifest, so a change racing this read is seen next call.
        self._tables[module] = ((full.id, full.revision, full.status, full.version), table)
        return table


# --- who may call ----------------------------------------------------------------------------------


def check_role(route: RouteSpec, role: str) -> None:
    if ROLE_RANK.get(role, 0) < ROLE_RANK[route.permission]:
        raise PermissionDenied(
            f"role {role} cannot call {route.method} {route.path}: it needs {route.permission}",
            details={"required_role": route.permission},
        )


def verify_signature(
    route: RouteSpec, table: RouteTable, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> str:
    """Check an ``hmac-sha256`` signature over ``"<timestamp>.<raw body>"``; returns the signature.

    Raises:
        AuthenticationFailed: missing or malformed headers, a timestamp outside the tolerance
            window, or a signature that does not match.
        ServiceUnavailable: the module has no value for its signing secret (a setup problem the
            caller cannot fix).
    """
    auth = route.auth or {}
    secret = table.config.get(str(auth.get("secretConfigKey")))
    if not isinstance(secret, str) or not secret:
        raise ServiceUnavailable(
            f"route {route.method} {route.path} of module {table.module} cannot verify callers: "
            "its signing secret is not configured"
        )
    signature = headers.get(str(auth["header"]).lower(), "").strip()
    stamp = headers.get(str(auth["timestampHeader"]).lower(), "").strip()
    if not signature:
        raise AuthenticationFailed(f"missing signature header {auth['header']}")
    if not re.fullmatch(r"[0-9]{1,12}", stamp):  # ASCII digits only ("¹²³".isdigit() is True)
        raise AuthenticationFailed(f"missing or malformed timestamp header {auth['timestampHeader']}")
    tolerance = int(auth["toleranceSeconds"])
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance:
        raise AuthenticationFailed(
            f"the signed timestamp is more than {tolerance}s away from the server clock (replayed or delayed)"
        )
    expected = hmac.new(secret.encode("utf-8"), stamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    given = signature.removeprefix("sha256=").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", given):
        raise AuthenticationFailed("the request signature is not a hex SHA-256 HMAC")
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("ascii")):
        raise AuthenticationFailed("the request signature does not match")
    return given


def sign(secret: str, body: bytes, timestamp: int | None = None) -> tuple[str, str]:
    """(timestamp, hex signature) for a request body: what a webhook sender computes."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return stamp, hmac.new(secret.encode("utf-8"), stamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


async def refuse_replay(
    route: RouteSpec, module: str, signature: str, remember: Callable[[str, int], Awaitable[bool]]
) -> None:
    """Accept a signature once within its tolerance window (``remember`` is SET NX with a TTL)."""
    ttl = 2 * int((route.auth or {}).get("toleranceSeconds", 300)) + 1
    if not await remember(f"route-signature:{module}:{signature}", ttl):
        raise AuthenticationFailed("this signed request was already accepted (replay)")


# --- what the handler receives -----------------------------------------------------------------------


def _issue_details(where: str, errors: list[ValidationError]) -> list[dict[str, Any]]:
    return [
        {"loc": [where, *[str(p) for p in e.absolute_path]], "msg": e.message[:500], "type": str(e.validator)}
        for e in errors
    ]


def _converted(value: str, schema: object) -> Any:
    types = schema.get("type") if isinstance(schema, dict) else None
    kinds = set(types) if isinstance(types, list) else {types}
    if not kinds & _CONVERTIBLE:
        return value
    if "boolean" in kinds and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if "integer" in kinds and re.fullmatch(r"[+-]?\d{1,18}", value):
        return int(value)
    if "number" in kinds:
        try:
            number = float(value)
        except ValueError:
            return value
        return number if number == number and abs(number) != float("inf") else value
    return value


def query_values(route: RouteSpec, table: RouteTable, items: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The query as a dict (repeated keys become lists), converted and validated against ``querySchema``."""
    query: dict[str, Any] = {}
    for key, value in items:
        if key in query:
            previous = query[key]
            query[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            query[key] = value
    schema = route.query_schema
    if schema is None:
        return query
    raw_props = schema.get("properties")
    props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
    for key, value in list(query.items()):
        sub = props.get(key)
        if isinstance(value, list) or (isinstance(sub, dict) and sub.get("type") == "array"):
            items_schema = sub.get("items") if isinstance(sub, dict) else None
            values = value if isinstance(value, list) else [value]
            query[key] = [_converted(v, items_schema) for v in values]
        else:
            query[key] = _converted(value, sub)
    errors = _errors(table, route, "query", query)
    if errors:
        raise RouteInputInvalid(
            "query parameters do not match the route's querySchema", details=_issue_details("query", errors)
        )
    return query


def _errors(table: RouteTable, route: RouteSpec, which: str, instance: Any) -> list[ValidationError]:
    try:
        return sorted(table.validator(route, which).iter_errors(instance), key=lambda e: list(e.absolute_path))
    except Exception as exc:  # noqa: BLE001 - a schema registered before $refs were checked
        raise ServiceUnavailable(
            f"route {route.method} {route.path} of module {table.module} has a {which} schema that cannot be "
            "evaluated; fix the module's manifest"
        ) from exc


#: Validation messages that name properties, never the value checked (safe when it holds a secret).
_NAMES_ONLY = frozenset({"required", "additionalProperties", "unevaluatedProperties", "dependentRequired"})


def check_body(route: RouteSpec, table: RouteTable, body: Any) -> None:
    if route.body_schema is None:
        return
    errors = _errors(table, route, "body", body)
    if errors:
        details = _issue_details("body", errors)
        secrets = secret_paths(route, body)
        for error, detail in zip(errors, details, strict=True):
            at = list(error.absolute_path)
            # A message about a secret, or about a value holding one, may quote it: not echoed.
            if any(at[: len(s)] == s for s in secrets) or (
                error.validator not in _NAMES_ONLY and any(s[: len(at)] == at for s in secrets)
            ):
                detail["msg"] = f"invalid value ({error.validator})"
        raise RouteInputInvalid("request body does not match the route's bodySchema", details=details)


# --- secret body fields -----------------------------------------------------------------------------

#: How deep ``$ref`` / ``allOf`` / ``anyOf`` / ``oneOf`` are followed looking for secrets (cycles end here).
_MAX_SCHEMA_DEPTH = 32


def holds_secret(schema: object) -> bool:
    """True when ``"secret": true`` appears anywhere in ``schema`` (a cheap test before the walk)."""
    if isinstance(schema, dict):
        return schema.get("secret") is True or any(holds_secret(v) for v in schema.values())
    if isinstance(schema, list):
        return any(holds_secret(v) for v in schema)
    return False


def _pointer(root: Mapping[str, Any], ref: str) -> object:
    """The subschema a local ``$ref`` (``#``, ``#/$defs/x``) names, or None."""
    node: object = root
    for raw in ref[1:].split("/")[1:] if ref != "#" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _applying(root: Mapping[str, Any], schemas: Sequence[object], depth: int = 0) -> list[Mapping[str, Any]]:
    """``schemas`` and what applies at the same place through local ``$ref`` and ``allOf`` / ``anyOf`` /
    ``oneOf`` (a value that is secret in any branch is sealed)."""
    found: list[Mapping[str, Any]] = []
    if depth > _MAX_SCHEMA_DEPTH:
        return found
    for schema in schemas:
        if not isinstance(schema, dict):
            continue
        found.append(schema)
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            found += _applying(root, [_pointer(root, ref)], depth + 1)
        for key in ("allOf", "anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list):
                found += _applying(root, branches, depth + 1)
    return found


def _seal_at(
    root: Mapping[str, Any],
    schemas: Sequence[object],
    value: Any,
    path: list[str | int],
    seal: Callable[[Any], str],
    sealed: list[list[str | int]],
) -> Any:
    applying = _applying(root, schemas)
    if value is None or not applying:
        return value
    if any(s.get("secret") is True for s in applying):
        sealed.append(path)
        return seal(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            subs: list[object] = []
            for s in applying:
                props = s.get("properties")
                if isinstance(props, dict) and key in props:
                    subs.append(props[key])
                elif isinstance(s.get("additionalProperties"), dict):
                    subs.append(s["additionalProperties"])
            out[key] = _seal_at(root, subs, item, [*path, key], seal, sealed)
        return out
    if isinstance(value, list):
        items: list[Any] = []
        for index, item in enumerate(value):
            subs = []
            for s in applying:
                prefix = s.get("prefixItems")
                if isinstance(prefix, list) and index < len(prefix):
                    subs.append(prefix[index])
                elif isinstance(s.get("items"), dict):
                    subs.append(s["items"])
            items.append(_seal_at(root, subs, item, [*path, index], seal, sealed))
        return items
    return value


def secret_paths(route: RouteSpec, body: Any) -> list[list[str | int]]:
    """Where ``body`` holds values its route's ``bodySchema`` marks secret (as :func:`seal_body` finds them)."""
    if route.body_schema is None or not route.secret_body:
        return []
    found: list[list[str | int]] = []
    _seal_at(route.body_schema, [route.body_schema], body, [], lambda _: "", found)
    return found


def seal_body(route: RouteSpec, body: Any, seal: Callable[[Any], str]) -> tuple[Any, list[list[str | int]]]:
    """``body`` with each value its ``bodySchema`` marks ``"secret": true`` sealed by ``seal`` (the
    module's vault), and the paths of those values (``ctx.request.secret_fields``).

    Secrets are found under ``properties``, ``additionalProperties``, ``items`` and ``prefixItems``,
    through local ``$ref`` and ``allOf`` / ``anyOf`` / ``oneOf``; a ``null`` is left as it is.

    Raises:
        RouteInputInvalid: A secret value is too large to seal.
    """
    schema = route.body_schema
    if schema is None or not route.secret_body:
        return body, []
    sealed: list[list[str | int]] = []

    def checked(value: Any) -> str:
        try:
            return seal(value)
        except VaultError as exc:
            where = ".".join(str(p) for p in sealed[-1]) or "body"
            raise RouteInputInvalid(
                f"{where}: a secret value is at most {MAX_VALUE_BYTES} bytes of JSON",
                details=[{"loc": ["body", *sealed[-1]], "msg": exc.message, "type": "value_error"}],
            ) from None

    return _seal_at(schema, [schema], body, [], checked, sealed), sealed


def handler_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Request headers for ``ctx.request.headers`` (lower-case names, platform credentials removed)."""
    out: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in _PRIVATE_HEADERS:
            continue
        out[lname] = f"{out[lname]}, {value}" if lname in out else value
    return out


# --- what the caller gets back ----------------------------------------------------------------------


def route_response(result: Any) -> tuple[Any, int, dict[str, str]]:
    """(body, status, headers) from a finished route call's stored result."""
    if isinstance(result, dict) and result.get("__route_response__") is True:
        status = result.get("status")
        raw_headers = result.get("headers")
        headers: dict[str, Any] = raw_headers if isinstance(raw_headers, dict) else {}
        return (
            result.get("body"),
            status if isinstance(status, int) else 200,
            {str(k): str(v) for k, v in headers.items()},
        )
    return result, 200, {}


# --- keeping answers from running script on the API's origin ----------------------------------------

#: Media types a browser renders as a document that can run script (or load what does).
_MARKUP = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml", "text/xsl", "text/vtt"}
)
_HTML = frozenset({"text/html", "application/xhtml+xml"})
#: Security headers the server sets on every module route answer; a handler's own are dropped.
SECURITY_HEADERS = frozenset({"content-security-policy", "x-content-type-options"})


def media_type(content_type: str | None) -> str | None:
    """``text/html`` from ``text/html; charset=utf-8``; None when no Content-Type was set."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def is_json(media: str | None) -> bool:
    """No Content-Type (the answer is JSON by default), ``application/json`` or ``*+json``."""
    return (
        media is None or media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
    )


def safety_headers(route: RouteSpec, content_type: str | None, *, html_allowed: bool) -> dict[str, str]:
    """Headers that keep a handler's answer from attacking the console (same origin as the API).

    Every answer: ``X-Content-Type-Options: nosniff`` (the browser believes the Content-Type).
    Non-JSON answers: ``Content-Security-Policy: sandbox`` (an opaque origin, no script, no forms).
    Markup (HTML, XML, SVG) or an empty / unknown type: ``Content-Disposition: attachment`` too,
    unless it is HTML on a route declaring ``html: true`` and ``AUTOPLAT_MODULE_ROUTES_ALLOW_HTML``
    is on.
    """
    media = media_type(content_type)
    headers = {"X-Content-Type-Options": "nosniff"}
    if is_json(media):
        return headers
    headers["Content-Security-Policy"] = "sandbox"
    inline_html = media in _HTML and route.html and html_allowed
    if (media in _MARKUP or not media or "/" not in media or media.endswith("+xml")) and not inline_html:
        headers["Content-Disposition"] = "attachment"
    return headers
