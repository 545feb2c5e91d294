"""Validation of module manifests, and helpers for the configuration schemas they embed.

:func:`validate_manifest` checks a manifest in three passes and never raises:

1. a guard pass rejecting values that are not plain JSON, nested too deep or too large;
2. the JSON Schema (``schema.json``, draft 2020-12), reporting every error;
3. semantic checks the schema cannot express (unique names, cron, timezones, references between
   listeners, routes and jobs, version ranges, embedded config schemas and their defaults,
   handler files). They only look at well-typed parts and skip a value that already has a
   schema error, so one mistake is reported once.

Every issue has a stable ``code`` (see docs/manifest.md) and the JSON pointer of the value at
fault.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.protocols import Validator

from registry.manifest import semver
from registry.manifest.cron import parse_cron, validate_cron, validate_timezone
from registry.manifest.ui import check_ui

__all__ = [
    "MAX_JSON_DEPTH",
    "json_problem",
    "MANIFEST_SCHEMA",
    "MASK",
    "ManifestIssue",
    "ValidationReport",
    "apply_config_defaults",
    "event_pattern_matches",
    "event_pattern_problem",
    "json_pointer",
    "manifest_json_schema",
    "mask_secrets",
    "secret_fields",
    "secret_keys",
    "secret_parts",
    "unmask_secrets",
    "validate_config",
    "validate_manifest",
]

logger = logging.getLogger(__name__)

MASK = "********"
MAX_DEPTH = 40
MAX_NODES = 100_000
MAX_ISSUES = 200
_MAX_MESSAGE = 300
_MISSING_KEYWORDS = frozenset({"required", "dependentRequired", "minProperties"})
_HANDLER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_EVENT_SEGMENT_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_ROUTE_PARAM_RE = re.compile(r"\{[^/}]*\}")

MANIFEST_SCHEMA: dict[str, Any] = json.loads(
    resources.files("registry.manifest").joinpath("schema.json").read_text(encoding="utf-8"),
)


def manifest_json_schema() -> dict[str, Any]:
    """Return a copy of the manifest JSON Schema (draft 2020-12), safe to modify or serve."""
    return copy.deepcopy(MANIFEST_SCHEMA)


@dataclass(frozen=True)
class ManifestIssue:
    """One problem found in a manifest or a configuration.

    Attributes:
        path: JSON pointer (RFC 6901) of the value at fault, e.g. ``/jobs/0/schedule/cron``;
            ``""`` is the whole document.
        code: Stable machine-readable code, e.g. ``schema.required`` or ``cron.invalid``.
        message: Human-readable explanation.
    """

    path: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """Return the issue as a JSON-ready dict."""
        return {"path": self.path, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`validate_manifest`.

    Attributes:
        errors: Problems that make the manifest unusable.
        warnings: Likely mistakes that do not block registration.
    """

    errors: list[ManifestIssue] = field(default_factory=list)
    warnings: list[ManifestIssue] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"valid", "errors", "warnings"}`` as JSON-ready data."""
        return {
            "valid": self.valid,
            "errors": [issue.to_dict() for issue in self.errors],
            "warnings": [issue.to_dict() for issue in self.warnings],
        }


def json_pointer(parts: Iterable[object]) -> str:
    """Build an RFC 6901 JSON pointer from path parts (keys and indexes)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _short(value: object, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


# --- a JSON Schema validator whose "pattern" follows ECMA-262 ----------------------------------


@functools.lru_cache(maxsize=512)
def _compile_ecma(pattern: str) -> re.Pattern[str]:
    # In ECMA-262 (the regex dialect of JSON Schema) "$" only matches at the very end; in Python
    # it also matches before a final newline, so "name\n" would pass "^[a-z]+$".
    out: list[str] = []
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        elif char == "$" and not in_class:
            out.append(r"\Z")
            continue
        out.append(char)
    return re.compile("".join(out))


def _ecma_pattern(
    validator: Validator,
    pattern: str,
    instance: object,
    schema: object,
) -> Iterator[ValidationError]:
    if not isinstance(instance, str) or not isinstance(pattern, str):
        return
    try:
        compiled = _compile_ecma(pattern)
    except re.error as exc:
        yield ValidationError(f"invalid regular expression {pattern!r}: {exc}")
        return
    if compiled.search(instance) is None:
        yield ValidationError(f"{_short(instance)} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


@functools.cache
def _manifest_validator() -> Validator:
    return _Validator(MANIFEST_SCHEMA)


@functools.cache
def _meta_validator() -> Validator:
    return _Validator(Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _schema_message(error: ValidationError) -> str:
    keyword = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    if keyword == "type":
        expected = error.validator_value
        wanted = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return f"expected {wanted}, got {_json_type(error.instance)}"
    if keyword in ("oneOf", "anyOf") and isinstance(schema.get("x-errorMessage"), str):
        return str(schema["x-errorMessage"])
    if keyword == "const":
        return f"must be {_short(error.validator_value)}"
    if keyword == "enum" and isinstance(error.validator_value, list):
        return f"{_short(error.instance)} is not one of {', '.join(_short(v) for v in error.validator_value)}"
    return _truncate(error.message)


# --- the guard pass ----------------------------------------------------------------------------


def _non_json_reason(value: object) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a JSON number"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 63:
        return "integer out of the 64-bit range"
    if isinstance(value, dict) and not all(isinstance(key, str) for key in value):
        return "object keys must be strings"
    if value is not None and not isinstance(value, str | bool | int | float | list | dict):
        return f"{type(value).__name__} is not a JSON value"
    return None


def _guard(data: object) -> list[ManifestIssue]:
    """Reject what is not plain JSON, or too deep or too large to validate safely."""
    issues: list[ManifestIssue] = []
    stack: list[tuple[object, tuple[object, ...]]] = [(data, ())]
    nodes = 0
    while stack and len(issues) < MAX_ISSUES:
        value, path = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return [ManifestIssue("", "manifest.too_large", f"the manifest has more than {MAX_NODES} values")]
        if len(path) > MAX_DEPTH:
            message = f"nested deeper than {MAX_DEPTH} levels"
            return [ManifestIssue(json_pointer(path), "manifest.too_deep", message)]
        reason = _non_json_reason(value)
        if reason is not None:
            issues.append(ManifestIssue(json_pointer(path), "manifest.not_json", reason))
        elif isinstance(value, dict):
            stack.extend((item, (*path, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
    return issues


#: Deepest nesting accepted in stored JSON from callers (event payloads, job and module config).
MAX_JSON_DEPTH = 64


def json_problem(value: object, *, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """Why ``value`` can't be stored and served back as JSON, or None: ``(json pointer, reason)``.

    Refused: nesting deeper than ``max_depth``, NaN and infinities (not JSON), lone surrogates
    (not UTF-8), NUL characters (PostgreSQL text cannot hold them), integers beyond 64 bits and
    anything that isn't a JSON value. Iterative, so a deep value can't exhaust the stack.
    """
    stack: list[tuple[object, tuple[object, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) > max_depth:
            return json_pointer(path), f"nested deeper than {max_depth} levels"
        if isinstance(item, str):
            reason = _text_problem(item)
            if reason:
                return json_pointer(path), reason
            continue
        reason = _non_json_reason(item)
        if reason is not None:
            return json_pointer(path), reason
        if isinstance(item, dict):
            for key, sub in item.items():
                reason = _text_problem(key)
                if reason:
                    return json_pointer(path), f"an object key: {reason}"
                stack.append((sub, (*path, key)))
        elif isinstance(item, list):
            stack.extend((sub, (*path, i)) for i, sub in enumerate(item))
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "NUL character in a string"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "lone surrogate in a string (not valid Unicode)"
    return None


# --- report building ---------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.errors: list[ManifestIssue] = []
        self.warnings: list[ManifestIssue] = []
        self.schema_error_paths: set[str] = set()
        self.full = False

    def error(self, path: str, code: str, message: str) -> None:
        if self.full:
            return
        if len(self.errors) >= MAX_ISSUES:
            message = f"stopped after {MAX_ISSUES} errors"
            self.errors.append(ManifestIssue("", "manifest.too_many_errors", message))
            self.full = True
            return
        self.errors.append(ManifestIssue(path, code, _truncate(message)))

    def semantic_error(self, path: str, code: str, message: str) -> None:
        # A value that already failed the schema is not checked again.
        if path not in self.schema_error_paths:
            self.error(path, code, message)

    def has_schema_error_within(self, path: str) -> bool:
        return any(p == path or p.startswith(path + "/") for p in self.schema_error_paths)

    def warning(self, path: str, code: str, message: str) -> None:
        if len(self.warnings) < MAX_ISSUES and path not in self.schema_error_paths:
            self.warnings.append(ManifestIssue(path, code, _truncate(message)))

    def report(self) -> ValidationReport:
        return ValidationReport(errors=list(self.errors), warnings=list(self.warnings))


def validate_manifest(
    data: object,
    *,
    code_root: Path | None = None,
    check_handlers: bool = True,
) -> ValidationReport:
    """Validate a parsed ``manifest.json``.

    Never raises, whatever ``data`` is: every problem is returned as an issue.

    Args:
        data: The parsed JSON document.
        code_root: The module folder. When given (and ``check_handlers``), each handler's module
            file must exist under ``code_root / python.codeRoot`` and define the function at
            top level; this is a static check (``ast``), nothing is imported.
        check_handlers: Set to False to skip the handler check even with a ``code_root``.

    Returns:
        The errors and warnings found; ``report.valid`` is True when there is no error.
    """
    out = _Collector()
    try:
        guard_issues = _guard(data)
        if guard_issues:
            return ValidationReport(errors=guard_issues)
        for error in _manifest_validator().iter_errors(data):
            path = json_pointer(error.absolute_path)
            out.schema_error_paths.add(path)
            out.error(path, f"schema.{error.validator}", _schema_message(error))
            if out.full:
                break
        if isinstance(data, dict) and not out.full:
            _check_semantics(data, out, code_root if check_handlers else None)
    except Exception as exc:  # a validator must report, not crash; this is a bug if it happens
        logger.exception("manifest validation failed")
        message = f"validator failure: {type(exc).__name__}"
        out.errors.append(ManifestIssue("", "manifest.internal_error", message))
    return out.report()


# --- semantic checks ---------------------------------------------------------------------------


def _items(value: object) -> list[tuple[int, dict[str, Any]]]:
    """Index and value of each object in ``value`` if it is an array."""
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _config_keys(schema: object) -> set[str]:
    props = _obj(schema).get("properties")
    return set(props) if isinstance(props, dict) else set()


#: Module names a module may not take: its events' ``source`` is its name, and these are the platform's.
RESERVED_MODULE_NAMES = frozenset({"platform"})


def _check_semantics(data: dict[str, Any], out: _Collector, code_root: Path | None) -> None:
    if isinstance(data.get("name"), str) and data["name"] in RESERVED_MODULE_NAMES:
        out.semantic_error("/name", "name.reserved", f"the module name {data['name']!r} is reserved for the platform")
    jobs = _items(data.get("jobs"))
    module_config = data.get("config")
    job_configs: dict[str, object] = {}

    seen_jobs: set[str] = set()
    for i, job in jobs:
        base = f"/jobs/{i}"
        name = job.get("name")
        if isinstance(name, str):
            if name in seen_jobs:
                out.semantic_error(
                    f"{base}/name",
                    "job.duplicate",
                    f"job {name!r} is declared more than once",
                )
            seen_jobs.add(name)
            job_configs.setdefault(name, job.get("config"))
        _check_job(job, base, out)

    if "config" in data:
        _check_config_schema(module_config, "/config", out)
    # References to jobs are only checked when every job's name is known.
    raw_jobs = data.get("jobs")
    complete = isinstance(raw_jobs, list) and all(
        isinstance(job, dict) and isinstance(job.get("name"), str) for job in raw_jobs
    )
    _check_events(data, out, seen_jobs, complete, job_configs, module_config)
    _check_routes(data, out, seen_jobs, complete, module_config)
    _check_dependencies(data, out)
    _check_permissions(data, out)
    _check_series(data, out)
    _check_alerts(data, out)
    check_ui(data, out.semantic_error)
    if code_root is not None:
        _check_handlers(data, jobs, code_root, out)


def _check_job(job: dict[str, Any], base: str, out: _Collector) -> None:
    seen_steps: set[str] = set()
    for k, step in _items(job.get("steps")):
        name = step.get("name")
        if isinstance(name, str):
            if name in seen_steps:
                out.semantic_error(
                    f"{base}/steps/{k}/name",
                    "step.duplicate",
                    f"step {name!r} is declared more than once",
                )
            seen_steps.add(name)
        _check_retries(step.get("retries"), f"{base}/steps/{k}/retries", out)
        if k == 0 and "forEach" in step:
            out.semantic_error(
                f"{base}/steps/0/forEach",
                "step.forEachFirst",
                "the first step cannot have forEach: it fans out over the list the previous step returns",
            )
    _check_retries(job.get("retries"), f"{base}/retries", out)

    schedule = job.get("schedule")
    if isinstance(schedule, dict):
        cron = schedule.get("cron")
        if isinstance(cron, str):
            problem = validate_cron(cron)
            if problem is not None:
                out.semantic_error(
                    f"{base}/schedule/cron",
                    "cron.invalid",
                    f"invalid cron {_short(cron)}: {problem}",
                )
            elif (per_minute := parse_cron(cron).runs_per_minute) > 1:
                out.warning(
                    f"{base}/schedule/cron",
                    "schedule.frequent",
                    f"{_short(cron)} fires up to {per_minute} times a minute; is the seconds field intended?",
                )
        tz = schedule.get("timezone")
        if isinstance(tz, str) and not validate_timezone(tz):
            out.semantic_error(
                f"{base}/schedule/timezone",
                "timezone.invalid",
                f"unknown IANA timezone {_short(tz)}",
            )

    if "config" in job:
        _check_config_schema(job.get("config"), f"{base}/config", out)
    _check_create_job(job, f"{base}/createJob", out)


def _check_create_job(job: dict[str, Any], base: str, out: _Collector) -> None:
    """A ``createJob`` object: a valid cron, and a config that passes the job type's schema
    (defaults applied) without secret fields (a manifest is not a place for secrets)."""
    spec = job.get("createJob")
    if not isinstance(spec, dict) or out.has_schema_error_within(base):
        return
    schedule = spec.get("schedule")
    if isinstance(schedule, dict) and isinstance(schedule.get("cron"), str):
        problem = validate_cron(schedule["cron"])
        if problem is not None:
            out.semantic_error(
                f"{base}/schedule/cron", "cron.invalid", f"invalid cron {_short(schedule['cron'])}: {problem}"
            )
        tz = schedule.get("timezone")
        if isinstance(tz, str) and not validate_timezone(tz):
            out.semantic_error(f"{base}/schedule/timezone", "timezone.invalid", f"unknown IANA timezone {_short(tz)}")
    config = spec.get("config")
    raw = job.get("config")
    schema: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if not isinstance(config, dict) or _schema_issues(schema):
        return
    for key in sorted(secret_keys(schema) & set(config)):
        out.semantic_error(
            f"{base}/config/{key}", "create_job.secret", f"{key!r} is secret: set it on the job, not in the manifest"
        )
    for issue in validate_config(schema, apply_config_defaults(schema, config)):
        out.semantic_error(f"{base}/config{issue.path}", "create_job.config", issue.message)


def _check_retries(retries: object, base: str, out: _Collector) -> None:
    if not isinstance(retries, dict):
        return
    initial = retries.get("initialIntervalSeconds", 1)
    maximum = retries.get("maximumIntervalSeconds")
    numeric = (int, float)
    if (
        isinstance(initial, numeric)
        and isinstance(maximum, numeric)
        and not isinstance(initial, bool)
        and not isinstance(maximum, bool)
        and maximum < initial
    ):
        out.semantic_error(
            f"{base}/maximumIntervalSeconds",
            "retries.invalid",
            f"maximumIntervalSeconds ({maximum}) is below initialIntervalSeconds ({initial})",
        )


def event_pattern_problem(pattern: str) -> str | None:
    """Return why a listener pattern is invalid, or None if it is valid."""
    for segment in pattern.split("."):
        if segment in ("*", "**"):
            continue
        if not segment:
            return "empty segment (two dots in a row, or a leading or trailing dot)"
        if "*" in segment:
            return f"segment {segment!r} mixes a wildcard with text; use * or ** as a whole segment"
        if not _EVENT_SEGMENT_RE.fullmatch(segment):
            return f"segment {segment!r} must start with a lower-case letter or a digit"
    return None


def event_pattern_matches(pattern: str, name: str) -> bool:
    """Return whether an event name matches a listener pattern.

    ``*`` matches exactly one segment, ``**`` any number of segments including none:
    ``data.*`` matches ``data.synced`` but not ``data`` or ``data.a.b``; ``data.**`` matches all
    three.

    Args:
        pattern: A valid listener pattern.
        name: A dotted event name.

    Returns:
        True if the name matches.
    """
    pat, segs = pattern.split("."), name.split(".")
    # Greedy wildcard matching with backtracking to the last "**"; no recursion, O(len * len).
    i = j = 0
    star, resume = -1, 0
    while j < len(segs):
        if i < len(pat) and pat[i] == "**":
            star, resume = i, j
            i += 1
        elif i < len(pat) and pat[i] in ("*", segs[j]):
            i += 1
            j += 1
        elif star >= 0:
            resume += 1
            i, j = star + 1, resume
        else:
            return False
    while i < len(pat) and pat[i] == "**":
        i += 1
    return i == len(pat)


def _check_events(
    data: dict[str, Any],
    out: _Collector,
    jobs: set[str],
    complete: bool,
    job_configs: dict[str, object],
    module_config: object,
) -> None:
    events = _obj(data.get("events"))
    for k, listener in _items(events.get("listeners")):
        base = f"/events/listeners/{k}"
        pattern = listener.get("pattern")
        if isinstance(pattern, str):
            problem = event_pattern_problem(pattern)
            if problem:
                out.semantic_error(
                    f"{base}/pattern",
                    "event.invalid_pattern",
                    f"invalid pattern {_short(pattern)}: {problem}",
                )
        job = listener.get("job")
        if isinstance(job, str) and complete and job not in jobs:
            out.semantic_error(f"{base}/job", "listener.unknown_job", f"no job named {job!r} in this module")
        mapping = listener.get("mapping")
        if isinstance(job, str) and job in jobs and isinstance(mapping, dict):
            known = _config_keys(job_configs.get(job)) | _config_keys(module_config)
            if known:
                for key in mapping:
                    if key not in known:
                        out.warning(
                            f"{base}/mapping/{json_pointer([key])[1:]}",
                            "listener.mapping_unknown_key",
                            f"{key!r} is not a config property of job {job!r} or of the module",
                        )


def _check_routes(
    data: dict[str, Any],
    out: _Collector,
    jobs: set[str],
    complete: bool,
    module_config: object,
) -> None:
    """Routes: job references, path shapes, schemas, public / permission / wait consistency, and the
    signing secret, which must be a secret of the module config (a route call has no job row)."""
    seen: set[tuple[str, str]] = set()
    module_keys = _config_keys(module_config)
    module_secrets = secret_fields(_obj(module_config))
    for k, route in _items(data.get("routes")):
        base = f"/routes/{k}"
        job = route.get("job")
        if isinstance(job, str) and complete and job not in jobs:
            out.semantic_error(f"{base}/job", "route.unknown_job", f"no job named {job!r} in this module")
        method, path = route.get("method"), route.get("path")
        if isinstance(method, str) and isinstance(path, str):
            key = (method, _ROUTE_PARAM_RE.sub("{}", path))
            if key in seen:
                out.semantic_error(
                    f"{base}/path",
                    "route.duplicate",
                    f"another route already serves {method} {path}",
                )
            seen.add(key)
            params = [p[1:-1] for p in _ROUTE_PARAM_RE.findall(path)]
            repeated = sorted({p for p in params if params.count(p) > 1})
            if repeated:
                out.semantic_error(
                    f"{base}/path",
                    "route.duplicate_param",
                    f"path parameter(s) {', '.join(repeated)} appear more than once in {path}",
                )
        for schema_key in ("bodySchema", "querySchema"):
            if isinstance(route.get(schema_key), dict):
                for issue in _schema_issues(route[schema_key]) + _ref_issues(route[schema_key]):
                    out.semantic_error(
                        f"{base}/{schema_key}{issue.path}",
                        "route.schema_invalid",
                        issue.message,
                    )
        if route.get("public") is True and "permission" in route:
            out.semantic_error(
                f"{base}/permission",
                "route.public_with_permission",
                "a public route is served without a login, so it cannot require a role",
            )
        if "waitSeconds" in route and route.get("mode") == "async":
            out.semantic_error(
                f"{base}/waitSeconds",
                "route.wait_on_async",
                "waitSeconds applies to sync routes only; an async route answers 202 at once",
            )
        auth = route.get("auth")
        secret_key = _obj(auth).get("secretConfigKey")
        if isinstance(secret_key, str):
            if secret_key not in module_keys:
                out.semantic_error(
                    f"{base}/auth/secretConfigKey",
                    "route.auth_secret_unknown",
                    f"{secret_key!r} is not a property of the module config",
                )
            elif secret_key not in module_secrets:
                out.semantic_error(
                    f"{base}/auth/secretConfigKey",
                    "route.auth_secret_not_secret",
                    f'module config property {secret_key!r} must be marked "secret": true',
                )
        if route.get("public") is True and auth is None:
            out.warning(
                f"{base}/public",
                "route.public_unauthenticated",
                "a public route without auth can be called by anyone who can reach the platform",
            )


def _check_dependencies(data: dict[str, Any], out: _Collector) -> None:
    own_name = data.get("name")
    for name, spec in _obj(data.get("dependencies")).items():
        path = json_pointer(["dependencies", name])
        if name == own_name:
            out.semantic_error(path, "dependency.self", "a module cannot depend on itself")
        elif isinstance(spec, str) and not semver.is_valid_range(spec):
            out.semantic_error(
                path,
                "dependency.invalid_range",
                f"{_short(spec)} is not a valid semver range",
            )


def _check_permissions(data: dict[str, Any], out: _Collector) -> None:
    permissions = _obj(data.get("permissions"))
    services = set(_strings(permissions.get("services")))
    hosts = _strings(permissions.get("hosts"))
    # Point at the closest value that exists in the document.
    at = "/permissions" if "permissions" in data else ""
    services_at = f"{at}/services" if "services" in permissions else at
    hosts_at = f"{at}/hosts" if "hosts" in permissions else at
    reaches_out = services & {"http", "browser"}
    if hosts and not reaches_out:
        out.warning(
            services_at,
            "permissions.missing_http",
            "hosts are listed but neither the http nor the browser service",
        )
    if reaches_out and not hosts:
        out.warning(
            hosts_at,
            "permissions.no_hosts",
            f"{' and '.join(sorted(reaches_out))} requested but no host is allowed",
        )
    emits = _obj(data.get("events")).get("emits")
    if isinstance(emits, list) and emits and "events" not in services:
        out.warning(
            services_at,
            "permissions.missing_events",
            "the module declares emitted events but not the events service",
        )


def _check_series(data: dict[str, Any], out: _Collector) -> None:
    """Series: unique names, labels apart from fields (they share a CSV row), rollups kept at least
    as long as raw points, and the series service requested."""
    seen: set[str] = set()
    entries = _items(data.get("series"))
    for k, entry in entries:
        base = f"/series/{k}"
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen:
                out.semantic_error(f"{base}/name", "series.duplicate", f"series {name!r} is declared more than once")
            seen.add(name)
        fields = set(_obj(entry.get("fields")))
        for j, label in enumerate(_strings(entry.get("labels"))):
            if label in fields or label == "ts":
                out.semantic_error(
                    f"{base}/labels/{j}",
                    "series.name_clash",
                    f"label {label!r} has the name of a field or of the timestamp column",
                )
        if "ts" in fields:
            out.semantic_error(
                json_pointer(["series", k, "fields", "ts"]), "series.name_clash", "a field may not be called 'ts'"
            )
        retention = _obj(entry.get("retention"))
        raw, rollup = retention.get("rawDays", 400), retention.get("rollupDays", 1826)
        if isinstance(raw, int) and isinstance(rollup, int) and rollup < raw:
            out.semantic_error(
                f"{base}/retention/rollupDays",
                "series.retention_invalid",
                f"hourly rollups must be kept at least as long as raw points ({rollup} < {raw} days)",
            )
    services = set(_strings(_obj(data.get("permissions")).get("services")))
    if entries and "series" not in services:
        out.warning(
            "/series",
            "permissions.missing_series",
            "the module declares series but does not request the series service",
        )


def _check_alerts(data: dict[str, Any], out: _Collector) -> None:
    """Alert rules: unique names, and each rule checked by the platform's rule checker in the
    module's own scope (its series and job types): one checker for the API and manifests."""
    entries = _items(data.get("alerts"))
    if not entries:
        return
    # Imported here: the rule checker lives with the rules (it needs no database in this scope).
    from registry.services import alerts

    seen: set[str] = set()
    own = data.get("name")
    # Series and jobs with schema errors would make every rule reading them fail twice.
    scoped = (
        isinstance(own, str) and not out.has_schema_error_within("/series") and not out.has_schema_error_within("/jobs")
    )
    for i, entry in entries:
        base = f"/alerts/{i}"
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen:
                out.semantic_error(f"{base}/name", "alert.duplicate", f"alert rule {name!r} is declared more than once")
            seen.add(name)
        if not scoped or out.has_schema_error_within(base):
            continue
        try:
            alerts.check(entry, alerts.Scope.of_module(str(own), data), default_interval=60)
        except alerts.RuleInvalid as exc:
            out.semantic_error(json_pointer(["alerts", i, *exc.loc]), f"alert.{exc.kind}", exc.msg)


# --- embedded configuration schemas ------------------------------------------------------------


def _schema_issues(schema: object) -> list[ManifestIssue]:
    """Problems making ``schema`` an invalid JSON Schema (paths relative to it)."""
    try:
        return [
            ManifestIssue(json_pointer(e.absolute_path), "config.schema_invalid", _truncate(e.message))
            for e in _meta_validator().iter_errors(schema)
        ]
    except Exception as exc:  # arbitrary author schemas: unresolvable $ref and the like
        message = f"cannot check schema: {type(exc).__name__}: {exc}"
        return [ManifestIssue("", "config.schema_invalid", message)]


def _ref_issues(schema: dict[str, Any]) -> list[ManifestIssue]:
    """Every ``$ref`` of a schema must point inside it (``#...``) and resolve: a request is never
    the moment to find a dangling reference."""
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    issues: list[ManifestIssue] = []
    try:
        resolver = (
            Registry()
            .with_resource("urn:route-schema", DRAFT202012.create_resource(schema))
            .resolver("urn:route-schema")
        )
    except Exception as exc:  # noqa: BLE001 - arbitrary author schemas
        return [ManifestIssue("", "config.schema_invalid", f"cannot check schema: {exc}")]

    def walk(node: object, path: list[str]) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                if not ref.startswith("#"):
                    message = f"$ref {ref!r} is not local"
                    issues.append(ManifestIssue(json_pointer(path), "config.schema_invalid", message))
                else:
                    try:
                        resolver.lookup(ref)
                    except Unresolvable:
                        issues.append(
                            ManifestIssue(json_pointer(path), "config.schema_invalid", f"$ref {ref!r} does not resolve")
                        )
            for key, value in node.items():
                walk(value, [*path, str(key)])
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, [*path, str(index)])

    walk(schema, [])
    return issues


def _default_pointer(schema: object, instance_path: Sequence[object]) -> str | None:
    """Where in a config schema the default behind the value at ``instance_path`` is declared."""
    keys: list[str] = []
    for part in instance_path:
        if not isinstance(part, str):
            break
        keys.append(part)
    for n in range(len(keys), 0, -1):
        pointer = "".join(f"/properties/{json_pointer([k])[1:]}" for k in keys[:n]) + "/default"
        if _resolves(schema, pointer):
            return pointer
    return None


def _resolves(document: object, pointer: str) -> bool:
    node = document
    for raw in pointer.split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _missing_only(error: ValidationError) -> bool:
    """True if the error would go away once the user supplies values (not a bad default)."""
    if error.validator in _MISSING_KEYWORDS:
        return True
    if error.validator in ("anyOf", "oneOf") and error.context:
        branches: dict[object, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        return any(all(_missing_only(e) for e in errs) for errs in branches.values())
    return False


def _walk_defaults(
    validator: Validator,
    schema: Mapping[str, Any],
    base: str,
    out: _Collector,
    reported: set[str],
) -> None:
    props = schema.get("properties")
    if not isinstance(props, dict):
        return
    for key, sub in props.items():
        if not isinstance(sub, dict):
            continue
        path = f"{base}/properties/{json_pointer([key])[1:]}"
        if "default" in sub:
            if sub.get("secret") is True:
                out.warning(
                    f"{path}/default",
                    "config.secret_default",
                    "a secret should not have a default in the manifest",
                )
            errors = list(validator.evolve(schema=sub).iter_errors(sub["default"]))
            if errors:
                reported.add(f"{path}/default")
                details = "; ".join(_schema_message(e) for e in errors[:3])
                out.semantic_error(f"{path}/default", "config.default_invalid", f"invalid default: {details}")
        _walk_defaults(validator, sub, path, out, reported)


def _check_config_schema(schema: object, base: str, out: _Collector) -> None:
    if not isinstance(schema, dict) or out.has_schema_error_within(base):
        return
    issues = _schema_issues(schema)
    for issue in issues:
        out.semantic_error(base + issue.path, issue.code, issue.message)
    if issues:
        return
    try:
        validator = _Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        reported: set[str] = set()
        _walk_defaults(validator, schema, base, out, reported)
        # Defaults can be fine one by one and still break a rule of the whole object.
        for error in validator.iter_errors(apply_config_defaults(schema, {})):
            if _missing_only(error):
                continue
            pointer = _default_pointer(schema, list(error.absolute_path))
            if pointer is not None and base + pointer in reported:
                continue
            target = base + pointer if pointer is not None else base
            out.semantic_error(
                target,
                "config.default_invalid",
                f"defaults do not satisfy the schema: {_schema_message(error)}",
            )
    except Exception as exc:  # arbitrary author schemas: unresolvable $ref and the like
        out.semantic_error(
            base,
            "config.schema_invalid",
            f"cannot evaluate schema: {type(exc).__name__}: {exc}",
        )


def apply_config_defaults(schema: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` with the schema's defaults filled in.

    Missing properties get a deep copy of their ``default``; object properties are filled
    recursively, and a missing object property without a default is created when its own
    properties have defaults. Values present in ``config`` (even ``null``) are kept.

    Args:
        schema: A configuration JSON Schema (``{"type": "object", "properties": {...}}``).
        config: The configuration values.

    Returns:
        A new dict; the inputs are not modified.
    """
    result: dict[str, Any] = dict(config) if isinstance(config, Mapping) else {}
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return result
    for key, sub in props.items():
        if not isinstance(sub, Mapping):
            continue
        if key in result:
            if isinstance(result[key], dict) and isinstance(sub.get("properties"), Mapping):
                result[key] = apply_config_defaults(sub, result[key])
        elif "default" in sub:
            value = copy.deepcopy(sub["default"])
            if isinstance(value, dict) and isinstance(sub.get("properties"), Mapping):
                value = apply_config_defaults(sub, value)
            result[key] = value
        elif isinstance(sub.get("properties"), Mapping):
            nested = apply_config_defaults(sub, {})
            if nested:
                result[key] = nested
    return result


def secret_fields(schema: Mapping[str, Any]) -> set[str]:
    """Return the top-level property names marked ``"secret": true`` in a config schema."""
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return set()
    return {key for key, sub in props.items() if isinstance(sub, Mapping) and sub.get("secret") is True}


def _holds_secret(schema: object) -> bool:
    """True when ``schema`` is a secret or has one below it (object properties, array items)."""
    if not isinstance(schema, Mapping):
        return False
    if schema.get("secret") is True:
        return True
    props = schema.get("properties")
    if isinstance(props, Mapping) and any(_holds_secret(sub) for sub in props.values()):
        return True
    return _holds_secret(schema.get("items"))


def secret_keys(schema: Mapping[str, Any]) -> set[str]:
    """Top-level property names that hold a secret: marked ``"secret": true`` themselves, or with one
    in a nested object or in array items. Such a value is stored encrypted as a whole (and never in
    a run's workflow input)."""
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return set()
    return {key for key, sub in props.items() if _holds_secret(sub)}


def unmask_secrets(schema: Mapping[str, Any], value: Any, stored: Any) -> Any:
    """``value`` as written by a client that got the masked form back: each secret that reads
    ``"********"`` takes the ``stored`` value at the same place (secrets are write-only)."""
    if not isinstance(schema, Mapping):
        return value
    if schema.get("secret") is True:
        return stored if value == MASK else value
    if isinstance(value, dict):
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        old = stored if isinstance(stored, dict) else {}
        return {k: unmask_secrets(props.get(k) or {}, v, old.get(k)) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        old_items = stored if isinstance(stored, list) else []
        item = schema["items"]
        return [unmask_secrets(item, v, old_items[i] if i < len(old_items) else None) for i, v in enumerate(value)]
    return value


def secret_parts(schema: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Only the secrets of ``config``, where they are (``{"db": {"password": ...}}``): a handler's
    ``ctx.secrets``, and what its logs are masked of."""
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping) or not isinstance(config, Mapping):
        return {}
    parts = {key: _secret_part(sub, config[key]) for key, sub in props.items() if key in config}
    return {key: part for key, part in parts.items() if part is not None}


def _secret_part(schema: Any, value: Any) -> Any:
    if not isinstance(schema, Mapping) or value is None:
        return None
    if schema.get("secret") is True:
        return value
    if isinstance(value, dict):
        return secret_parts(schema, value) or None
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, Mapping):
        found = [_secret_part(items, v) for v in value]
        return found if any(f is not None for f in found) else None
    return None


def _mask_value(schema: Mapping[str, Any], value: Any) -> Any:
    if schema.get("secret") is True:
        return MASK if value is not None else None
    if isinstance(value, dict):
        return mask_secrets(schema, value)
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, Mapping):
        return [_mask_value(items, v) for v in value]
    return value


def mask_secrets(schema: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` where every secret that is set reads ``"********"``.

    Secrets are properties marked ``"secret": true``, at the top level, inside nested object
    properties or in array items. Secrets that are absent or ``null`` stay as they are, so a reader
    can tell "unset" from "set".

    Args:
        schema: A configuration JSON Schema.
        config: The configuration values.

    Returns:
        A new dict, safe to log or return from the API.
    """
    result: dict[str, Any] = dict(config) if isinstance(config, Mapping) else {}
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return result
    for key, sub in props.items():
        if key in result and isinstance(sub, Mapping):
            result[key] = _mask_value(sub, result[key])
    return result


def validate_config(schema: Mapping[str, Any], config: object) -> list[ManifestIssue]:
    """Validate configuration values against a config schema. Never raises.

    Apply :func:`apply_config_defaults` first if defaults should count. Formats (``email``,
    ``uri``, ``date-time``...) are checked.

    Args:
        schema: A configuration JSON Schema.
        config: The configuration values.

    Returns:
        Issues with paths relative to the config (``/smtp/port``) and code ``config.invalid``;
        ``config.schema_invalid`` issues if the schema itself is broken. Secret values are
        never echoed in messages.
    """
    issues = _schema_issues(schema)
    if issues:
        return issues
    guard = _guard(config)
    if guard:
        return guard
    secrets = _all_secret_paths(schema)
    try:
        validator = _Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        result: list[ManifestIssue] = []
        for error in validator.iter_errors(config):
            path = json_pointer(error.absolute_path)
            secret = any(path == s or path.startswith(s + "/") for s in secrets)
            message = f"invalid value ({error.validator})" if secret else _schema_message(error)
            result.append(ManifestIssue(path, "config.invalid", message))
            if len(result) >= MAX_ISSUES:
                break
        return result
    except Exception as exc:  # arbitrary author schemas: unresolvable $ref and the like
        message = f"cannot evaluate schema: {type(exc).__name__}: {exc}"
        return [ManifestIssue("", "config.schema_invalid", message)]


def _all_secret_paths(schema: object, prefix: str = "") -> set[str]:
    props = _obj(schema).get("properties")
    paths: set[str] = set()
    if isinstance(props, dict):
        for key, sub in props.items():
            path = prefix + json_pointer([key])
            if isinstance(sub, dict):
                if sub.get("secret") is True:
                    paths.add(path)
                else:
                    paths |= _all_secret_paths(sub, path)
    return paths


# --- handler files -----------------------------------------------------------------------------


def _top_level_names(statements: Iterable[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in statements:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.For | ast.While | ast.With | ast.AsyncWith | ast.AsyncFor):
            names |= _top_level_names(node.body) | _top_level_names(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try | ast.TryStar):
            names |= _top_level_names(node.body) | _top_level_names(node.orelse)
            names |= _top_level_names(node.finalbody)
            for handler in node.handlers:
                names |= _top_level_names(handler.body)
    return names


def _check_handlers(
    data: dict[str, Any],
    jobs: list[tuple[int, dict[str, Any]]],
    code_root: Path,
    out: _Collector,
) -> None:
    rel = _obj(data.get("python")).get("codeRoot", ".")
    if not isinstance(rel, str) or "/python/codeRoot" in out.schema_error_paths:
        return
    try:
        root = Path(code_root).resolve()
        base = (root / rel).resolve()
    except (OSError, ValueError, RuntimeError):
        return
    if not base.is_relative_to(root):
        return
    cache: dict[Path, set[str] | str] = {}
    for i, job in jobs:
        targets = [(f"/jobs/{i}/handler", job.get("handler"))]
        for k, step in _items(job.get("steps")):
            targets.append((f"/jobs/{i}/steps/{k}/handler", step.get("handler")))
        for path, handler in targets:
            if isinstance(handler, str) and _HANDLER_RE.fullmatch(handler):
                problem = _handler_problem(handler, base, root, cache)
                if problem:
                    out.semantic_error(path, "handler.unresolvable", problem)


def _handler_problem(handler: str, base: Path, root: Path, cache: dict[Path, set[str] | str]) -> str | None:
    module, function = handler.split(":")
    parts = module.split(".")
    # A package directory wins over a module file of the same name, as in Python's import system.
    candidates = [base.joinpath(*parts, "__init__.py"), base.joinpath(*parts[:-1], parts[-1] + ".py")]
    source = next((c for c in candidates if c.is_file()), None)
    shown = "/".join(parts) + ".py"
    if source is None:
        return f"module {module!r} not found: no {shown} or {'/'.join(parts)}/__init__.py under the code root"
    shown = source.relative_to(base).as_posix()
    if source not in cache:
        cache[source] = _parse_names(source, root)
    names = cache[source]
    if isinstance(names, str):
        return f"{shown}: {names}"
    if function not in names:
        return f"{function!r} is not defined at the top level of {shown}"
    return None


def _parse_names(source: Path, root: Path) -> set[str] | str:
    try:
        if not source.resolve().is_relative_to(root):
            return "file is outside the module folder"
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except SyntaxError as exc:
        return f"syntax error at line {exc.lineno}: {exc.msg}"
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        return f"cannot read: {type(exc).__name__}"
    return _top_level_names(tree.body)
