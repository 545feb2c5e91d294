"""Endpoints of the consumption monitor: validation, storage layout, credentials, health.

Storage (``ctx.storage``, the module's private documents):

- ``endpoint:<id>``: the endpoint as configured, **without** credentials;
- ``cred:<id>``: ``{"sealed": ...}``, the endpoint's credentials sealed with the module's vault
  (``ctx.vault``: a key of this module's own, derived by the platform from its secret key; the
  handler never holds it). Documents written by 0.2 and earlier are ``{"token": ...}``, sealed with
  the module config's legacy ``credentials_key``: still read while that key is set, and replaced by
  a vault-sealed one when the endpoint's credentials are set again. No route ever answers this
  document;
- ``health:<id>``: what the collection job learned (last attempt, last reading, last error,
  consecutive failures), kept apart so a scrape never races an edit of the endpoint.

Every check of an endpoint lives in :func:`check_endpoint`, shared by create, update and the
``test`` routes, so a bad endpoint is refused with a 422 naming the field before anything is stored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from autoplat import JobError

TYPES = ("pdu", "power_meter", "smart_plug", "custom")
PROTOCOLS = ("json", "prometheus", "html")
AUTH_TYPES = ("none", "basic", "bearer", "header", "form")
FIELDS = ("total_kwh", "power_w", "voltage_v", "current_a", "power_factor")
#: The one vocabulary of browser steps, for the login form and the scraper alike.
ACTIONS = ("goto", "click", "fill", "wait", "wait_for_selector", "extract")
DECIMALS = ("auto", "dot", "comma")
CREDENTIAL_KEYS = ("username", "password", "token")
MAX_STEPS = 30
MIN_INTERVAL, MAX_INTERVAL, DEFAULT_INTERVAL = 60, 86_400, 300
#: A status of "offline": no reading for this many poll intervals.
OFFLINE_AFTER_INTERVALS = 3
_LABEL_SAFE = re.compile(r"[\x00-\x1f\x7f]")


class Invalid(Exception):
    """A refused endpoint: ``details`` as the platform's validation errors (``loc``, ``msg``)."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details))
        self.details = details


@dataclass
class _Checker:
    errors: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, loc: list[Any], msg: str) -> None:
        self.errors.append({"loc": ["body", *loc], "msg": msg, "type": "value_error"})

    def text(
        self, data: dict[str, Any], key: str, loc: list[Any], *, required: bool = False, max_len: int = 200
    ) -> str:
        value = data.get(key)
        if value is None or value == "":
            if required:
                self.fail([*loc, key], "is required")
            return ""
        if not isinstance(value, str) or len(value) > max_len or _LABEL_SAFE.search(value):
            self.fail([*loc, key], f"must be a string of at most {max_len} characters without control characters")
            return ""
        return value.strip()

    def regex(self, spec: dict[str, Any], loc: list[Any]) -> None:
        pattern = spec.get("regex")
        if pattern is None:
            return
        if not isinstance(pattern, str) or not pattern or len(pattern) > 500:
            self.fail([*loc, "regex"], "must be a non-empty string of at most 500 characters")
            return
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            self.fail([*loc, "regex"], f"does not compile: {exc}")
            return
        if compiled.groups < 1:
            self.fail([*loc, "regex"], "needs a capture group around the number, e.g. '([0-9.,]+) kWh'")


def _check_url(c: _Checker, value: Any, loc: list[Any]) -> str:
    if not isinstance(value, str) or len(value) > 2000:
        c.fail(loc, "must be an http(s) URL of at most 2000 characters")
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        c.fail(loc, "must be an http(s) URL with a host, e.g. http://10.0.4.12:8080/status.json")
        return ""
    if parts.username or parts.password:
        c.fail(loc, "must not carry credentials: give them in 'credentials' (stored encrypted)")
        return ""
    return value


def _check_extraction(c: _Checker, protocol: str, spec: Any, loc: list[Any]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        c.fail(loc, "must be an object")
        return {}
    out: dict[str, Any] = {}
    if protocol == "json":
        out["path"] = c.text(spec, "path", loc, required=True, max_len=500)
    elif protocol == "prometheus":
        out["metric"] = c.text(spec, "metric", loc, required=True)
        if out["metric"] and not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", out["metric"]):
            c.fail([*loc, "metric"], "is not a Prometheus metric name")
        labels = spec.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            c.fail([*loc, "labels"], "must map label names to the values to match")
        out["labels"] = dict(labels) if isinstance(labels, dict) else {}
    else:
        out["selector"] = c.text(spec, "selector", loc, required=True, max_len=500)
    c.regex(spec, loc)
    if spec.get("regex") is not None:
        out["regex"] = spec["regex"]
    decimal = spec.get("decimal", "auto")
    if decimal not in DECIMALS:
        c.fail([*loc, "decimal"], f"must be one of {', '.join(DECIMALS)}")
    out["decimal"] = decimal
    scale = spec.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < 1e9:
        c.fail([*loc, "scale"], "must be a positive number (e.g. 0.001 for Wh -> kWh)")
    out["scale"] = scale
    unknown = set(spec) - {"path", "metric", "labels", "selector", "regex", "decimal", "scale"}
    if unknown:
        c.fail(loc, f"unknown keys: {', '.join(sorted(unknown))}")
    return out


def _check_steps(c: _Checker, steps: Any, loc: list[Any]) -> list[dict[str, Any]]:
    if steps is None:
        return []
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        c.fail(loc, f"must be a list of at most {MAX_STEPS} steps")
        return []
    out: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        where = [*loc, i]
        if not isinstance(step, dict) or step.get("action") not in ACTIONS:
            c.fail([*where, "action"], f"must be one of {', '.join(ACTIONS)}")
            continue
        action = step["action"]
        clean: dict[str, Any] = {"action": action}
        if action == "goto":
            clean["url"] = _check_url(c, step.get("url"), [*where, "url"])
        elif action in ("click", "fill", "wait_for_selector", "extract"):
            clean["selector"] = c.text(step, "selector", where, required=True, max_len=500)
        if action == "fill":
            value = step.get("value")
            if not isinstance(value, str) or len(value) > 1000:
                c.fail([*where, "value"], "must be a string ({{username}} and {{password}} are the credentials)")
            clean["value"] = value if isinstance(value, str) else ""
        if action == "wait":
            seconds = step.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 30:
                c.fail([*where, "seconds"], "must be a number of seconds, more than 0 and at most 30")
            clean["seconds"] = seconds
        if action == "wait_for_selector" and step.get("timeout_seconds") is not None:
            t = step["timeout_seconds"]
            if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 60:
                c.fail([*where, "timeout_seconds"], "must be more than 0 and at most 60")
            clean["timeout_seconds"] = t
        if action == "extract":
            if step.get("field") not in FIELDS:
                c.fail([*where, "field"], f"must be one of {', '.join(FIELDS)}")
            clean["field"] = step.get("field")
            c.regex(step, where)
            for key in ("regex", "decimal", "scale"):
                if key in step:
                    clean[key] = step[key]
        out.append(clean)
    return out


def check_endpoint(data: Any, *, existing: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """Validate a create body (or an update merged over ``existing``).

    Returns ``(endpoint, credentials)``: the endpoint to store (without secrets) and the credentials
    given (a dict), ``None`` (clear them) or ``...`` (not given: keep what is stored).

    Raises:
        Invalid: every problem found, each with its ``loc``.
    """
    c = _Checker()
    if not isinstance(data, dict):
        raise Invalid([{"loc": ["body"], "msg": "must be a JSON object", "type": "type_error"}])
    credentials: Any = data.get("credentials", ...)
    merged = {**(existing or {}), **{k: v for k, v in data.items() if k != "credentials"}}
    known = {
        "name",
        "type",
        "vendor",
        "location",
        "client",
        "url",
        "protocol",
        "auth",
        "fields",
        "steps",
        "poll_interval_seconds",
        "enabled",
        "power_threshold_w",
        "timeout_seconds",
    }
    unknown = set(data) - known - {"credentials"}
    if existing is None and unknown:
        c.fail([], f"unknown fields: {', '.join(sorted(unknown))}")
    elif existing is not None:
        unknown -= {"id", "created_at", "updated_at", "health", "credentials_set"}
        if unknown:
            c.fail([], f"unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {
        "name": c.text(merged, "name", [], required=True),
        "vendor": c.text(merged, "vendor", []),
        "location": c.text(merged, "location", []),
        "client": c.text(merged, "client", []),
    }
    out["type"] = merged.get("type", "power_meter")
    if out["type"] not in TYPES:
        c.fail(["type"], f"must be one of {', '.join(TYPES)}")
    out["url"] = _check_url(c, merged.get("url"), ["url"])
    protocol = merged.get("protocol")
    if protocol not in PROTOCOLS:
        c.fail(["protocol"], f"must be one of {', '.join(PROTOCOLS)}")
        protocol = "json"
    out["protocol"] = protocol

    auth = merged.get("auth") or {"type": "none"}
    if not isinstance(auth, dict) or auth.get("type") not in AUTH_TYPES:
        c.fail(["auth", "type"], f"must be one of {', '.join(AUTH_TYPES)}")
        auth = {"type": "none"}
    clean_auth: dict[str, Any] = {"type": auth["type"]}
    if auth["type"] == "header":
        clean_auth["header"] = c.text(auth, "header", ["auth"], required=True, max_len=100)
        if clean_auth["header"] and not re.fullmatch(r"[A-Za-z0-9-]+", clean_auth["header"]):
            c.fail(["auth", "header"], "must be an HTTP header name")
    if auth["type"] == "form":
        if protocol != "html":
            c.fail(["auth", "type"], "a login form needs protocol html (the browser)")
        clean_auth["steps"] = _check_steps(c, auth.get("steps"), ["auth", "steps"])
        if not clean_auth["steps"]:
            c.fail(["auth", "steps"], "a login form needs its steps (goto, fill {{username}} / {{password}}, click)")
    if auth["type"] in ("basic", "bearer", "header") and protocol == "html":
        # The browser sends no custom headers per request: HTML endpoints log in with a form.
        c.fail(["auth", "type"], "html endpoints authenticate with 'none' or 'form'")
    unknown_auth = set(auth) - {"type", "header", "steps"}
    if unknown_auth:
        c.fail(["auth"], f"unknown keys: {', '.join(sorted(unknown_auth))} (credentials go in 'credentials')")
    out["auth"] = clean_auth

    fields = merged.get("fields")
    out["fields"] = {}
    if not isinstance(fields, dict):
        c.fail(["fields"], f"must map some of {', '.join(FIELDS)} to how each is read")
    else:
        for name, spec in fields.items():
            if name not in FIELDS:
                c.fail(["fields", name], f"is not a field; fields are {', '.join(FIELDS)}")
                continue
            out["fields"][name] = _check_extraction(c, protocol, spec, ["fields", name])
    out["steps"] = _check_steps(c, merged.get("steps"), ["steps"])
    if out["steps"] and protocol != "html":
        c.fail(["steps"], "steps are for protocol html (the browser)")
    extracted = {s["field"] for s in out["steps"] if s["action"] == "extract"}
    if not out["fields"] and not extracted and isinstance(fields, dict):
        c.fail(["fields"], "read at least one field (total_kwh for billing)")

    interval = merged.get("poll_interval_seconds", DEFAULT_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int) or not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        c.fail(["poll_interval_seconds"], f"must be an integer from {MIN_INTERVAL} to {MAX_INTERVAL}")
    out["poll_interval_seconds"] = interval
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        c.fail(["enabled"], "must be true or false")
    out["enabled"] = enabled
    threshold = merged.get("power_threshold_w")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold <= 0
    ):
        c.fail(["power_threshold_w"], "must be a positive number of watts, or null")
    out["power_threshold_w"] = threshold
    timeout = merged.get("timeout_seconds")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 1 <= timeout <= 120
    ):
        c.fail(["timeout_seconds"], "must be from 1 to 120 seconds, or null (the module default)")
    out["timeout_seconds"] = timeout

    if credentials is not ... and credentials is not None:
        if not isinstance(credentials, dict) or set(credentials) - set(CREDENTIAL_KEYS):
            c.fail(["credentials"], f"must be an object with some of {', '.join(CREDENTIAL_KEYS)}")
        elif not all(isinstance(v, str) and 0 < len(v) <= 1000 for v in credentials.values()):
            c.fail(["credentials"], "values must be non-empty strings of at most 1000 characters")
    needs = {
        "basic": ("username", "password"),
        "bearer": ("token",),
        "header": ("token",),
        "form": ("username", "password"),
    }
    wanted = needs.get(clean_auth["type"], ())
    if wanted and isinstance(credentials, dict):
        missing = [k for k in wanted if k not in credentials]
        if missing:
            c.fail(["credentials"], f"auth {clean_auth['type']} needs {', '.join(missing)}")
    elif wanted and credentials is None:
        c.fail(["credentials"], f"auth {clean_auth['type']} needs {', '.join(wanted)}")
    elif wanted and credentials is ... and not (existing or {}).get("credentials_set"):
        c.fail(["credentials"], f"auth {clean_auth['type']} needs {', '.join(wanted)}")
    if c.errors:
        raise Invalid(c.errors)
    return out, credentials


# --- credentials -------------------------------------------------------------------------------


async def seal_credentials(vault: Any, credentials: dict[str, str]) -> dict[str, str]:
    """The ``cred:<id>`` document: the credentials sealed with the module's vault (``ctx.vault``)."""
    return {"sealed": await vault.seal(credentials)}


def _legacy_fernet(key: str) -> Any:
    from cryptography.fernet import Fernet

    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode("utf-8")).digest()))


def unseal_legacy(module_config: dict[str, Any], token: str) -> dict[str, str]:
    """Credentials sealed by 0.2 and earlier: Fernet with a key derived (SHA-256) from the module
    config's ``credentials_key``. Read until the endpoint's credentials are set again."""
    from cryptography.fernet import InvalidToken

    key = module_config.get("credentials_key")
    if not isinstance(key, str) or not key:
        raise JobError(
            "the endpoint's credentials were sealed by an earlier version with credentials_key, which is not "
            "set: set it back in the module config, or give the endpoint its credentials again"
        )
    try:
        value = json.loads(_legacy_fernet(key).decrypt(token.encode("ascii")))
    except (InvalidToken, ValueError) as exc:
        raise JobError("the endpoint's credentials cannot be decrypted: was credentials_key changed?") from exc
    return {str(k): str(v) for k, v in value.items()}


async def load_credentials(ctx: Any, endpoint_id: str) -> dict[str, str]:
    """The endpoint's credentials in clear (``{}`` when it has none): opened with ``ctx.vault``, or
    with the legacy ``credentials_key`` for a document an earlier version wrote."""
    doc = await ctx.storage.get(f"cred:{endpoint_id}")
    if not doc:
        return {}
    if "sealed" in doc:
        value = await ctx.vault.open(doc["sealed"])
        return {str(k): str(v) for k, v in value.items()}
    return unseal_legacy(ctx.module_config, doc["token"])


# --- storage ----------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts is not None else None


def new_id() -> str:
    return uuid.uuid4().hex[:12]


async def load_endpoints(storage: Any) -> list[dict[str, Any]]:
    docs = await storage.query("endpoint:", limit=1000)
    return [dict(d.value) for d in docs]


async def load_health(storage: Any) -> dict[str, dict[str, Any]]:
    docs = await storage.query("health:", limit=1000)
    return {d.key.removeprefix("health:"): dict(d.value) for d in docs}


def status_of(endpoint: dict[str, Any], health: dict[str, Any] | None, at: datetime) -> str:
    """``disabled``, ``pending`` (never tried), ``offline`` (no reading for 3 intervals), ``error``
    (the last attempt failed) or ``online``."""
    if not endpoint.get("enabled", True):
        return "disabled"
    if not health or not health.get("last_attempt_at"):
        return "pending"
    window = OFFLINE_AFTER_INTERVALS * int(endpoint.get("poll_interval_seconds", DEFAULT_INTERVAL))
    since = health.get("last_reading_at") or endpoint.get("created_at")
    if since and (at - datetime.fromisoformat(since)).total_seconds() > window:
        return "offline"
    if health.get("consecutive_failures", 0) > 0:
        return "error"
    return "online"


def public(
    endpoint: dict[str, Any], health: dict[str, Any] | None, at: datetime, *, has_credentials: bool
) -> dict[str, Any]:
    """An endpoint as routes answer it: no credentials, only whether some are set."""
    health = health or {}
    return {
        **endpoint,
        "credentials_set": has_credentials,
        "health": {
            "status": status_of(endpoint, health, at),
            "last_attempt_at": health.get("last_attempt_at"),
            "last_reading_at": health.get("last_reading_at"),
            "last_values": health.get("last_values"),
            "last_error": health.get("last_error"),
            "last_error_at": health.get("last_error_at"),
            "consecutive_failures": health.get("consecutive_failures", 0),
        },
    }
