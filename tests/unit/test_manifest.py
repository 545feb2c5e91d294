"""The manifest contract: schema, validator, semver ranges, cron, config helpers, SDK model."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydantic
import pytest
from jsonschema import Draft202012Validator

import autoplat.manifest as sdk
import registry.manifest as rm
from registry.manifest import (
    MANIFEST_SCHEMA,
    ManifestIssue,
    ValidationReport,
    apply_config_defaults,
    event_pattern_matches,
    mask_secrets,
    next_runs,
    parse_range,
    parse_version,
    secret_fields,
    to_temporal_cron,
    validate_config,
    validate_cron,
    validate_manifest,
    validate_timezone,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"


def load_doc_example() -> dict[str, Any]:
    """The full example of docs/manifest.md, so the documentation cannot drift from the schema."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- example:start -->\s*```json\n(.*?)```\s*<!-- example:end -->", text, re.S)
    assert block, "docs/manifest.md lost its example markers"
    data: dict[str, Any] = json.loads(block.group(1))
    return data


EXAMPLE = load_doc_example()


def example() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE)


def codes(issues: list[ManifestIssue]) -> list[tuple[str, str]]:
    return [(i.code, i.path) for i in issues]


# --- the schema and the example ----------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema_with_the_expected_id() -> None:
    Draft202012Validator.check_schema(MANIFEST_SCHEMA)
    assert MANIFEST_SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert MANIFEST_SCHEMA["$id"] == "https://autoplat.dev/schemas/manifest.json"
    assert rm.manifest_json_schema() == MANIFEST_SCHEMA
    assert rm.manifest_json_schema() is not MANIFEST_SCHEMA


def _walk_properties(schema: object, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (pointer, subschema) under a ``properties`` keyword, walking subschemas only."""
    if not isinstance(schema, dict):
        return []
    found: list[tuple[str, dict[str, Any]]] = []
    for name, sub in schema.get("properties", {}).items():
        found.append((f"{path}/properties/{name}", sub))
        found += _walk_properties(sub, f"{path}/properties/{name}")
    for keyword in ("$defs",):
        for name, sub in schema.get(keyword, {}).items():
            found += _walk_properties(sub, f"{path}/{keyword}/{name}")
    for keyword in ("items", "additionalProperties", "if", "then", "else", "propertyNames"):
        found += _walk_properties(schema.get(keyword), f"{path}/{keyword}")
    for keyword in ("oneOf", "anyOf", "allOf"):
        for k, sub in enumerate(schema.get(keyword, [])):
            found += _walk_properties(sub, f"{path}/{keyword}/{k}")
    return found


def test_every_schema_property_has_a_title_and_a_description() -> None:
    defs = MANIFEST_SCHEMA["$defs"]
    missing = []
    for path, prop in _walk_properties(MANIFEST_SCHEMA):
        target = defs[prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else {}
        for key in ("title", "description"):
            if key not in prop and key not in target:
                missing.append(f"{path}: {key}")
    assert missing == []


def test_the_documented_example_is_valid_without_warnings() -> None:
    report = validate_manifest(example())
    assert report.errors == []
    assert report.warnings == []
    assert report.valid
    assert report.to_dict() == {"valid": True, "errors": [], "warnings": []}


def test_a_minimal_manifest_is_valid() -> None:
    minimal = {
        "name": "hello",
        "version": "0.1.0",
        "displayName": "Hello",
        "description": "Says hello.",
        "author": "me",
        "jobs": [],
    }
    assert validate_manifest(minimal).valid


# --- error codes, with their exact JSON pointer --------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.strip("/").split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _delete(path: str) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.strip("/").split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[int(last) if isinstance(node, list) else last]

    return apply


def _append(path: str, value: object) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        for part in path.strip("/").split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part]
        node.append(value)

    return apply


ERROR_CASES: list[tuple[str, Mutation, str, str]] = [
    ("missing name", _delete("/name"), "schema.required", ""),
    ("missing job description", _delete("/jobs/2/description"), "schema.required", "/jobs/2"),
    ("unknown top-level key", _set("/extra", 1), "schema.additionalProperties", ""),
    ("unknown job key", _set("/jobs/1/cron", "0 * * * *"), "schema.additionalProperties", "/jobs/1"),
    ("name not kebab-case", _set("/name", "Data_Sync"), "schema.pattern", "/name"),
    ("name with a trailing newline", _set("/name", "data-sync\n"), "schema.pattern", "/name"),
    ("name too short", _set("/name", "ab"), "schema.minLength", "/name"),
    ("version not semver", _set("/version", "1.2"), "schema.pattern", "/version"),
    ("version with leading zero", _set("/version", "01.2.0"), "schema.pattern", "/version"),
    (
        "codeRoot escaping the module",
        _set("/python/codeRoot", "../other"),
        "schema.pattern",
        "/python/codeRoot",
    ),
    ("jobs not an array", _set("/jobs", {}), "schema.type", "/jobs"),
    ("timeout as a string", _set("/jobs/0/timeoutSeconds", "10"), "schema.type", "/jobs/0/timeoutSeconds"),
    (
        "timeout above a day",
        _set("/jobs/0/timeoutSeconds", 86401),
        "schema.maximum",
        "/jobs/0/timeoutSeconds",
    ),
    ("bad handler", _set("/jobs/1/handler", "data_sync.report"), "schema.pattern", "/jobs/1/handler"),
    (
        "handler and steps",
        _set("/jobs/1/steps", [{"name": "a", "handler": "a:b"}]),
        "schema.oneOf",
        "/jobs/1",
    ),
    ("neither handler nor steps", _delete("/jobs/2/handler"), "schema.oneOf", "/jobs/2"),
    ("empty steps", _set("/jobs/0/steps", []), "schema.minItems", "/jobs/0/steps"),
    ("unknown overlap", _set("/jobs/0/overlap", "sometimes"), "schema.enum", "/jobs/0/overlap"),
    (
        "catch-up below 10 s",
        _set("/jobs/0/catchupWindowSeconds", 5),
        "schema.minimum",
        "/jobs/0/catchupWindowSeconds",
    ),
    (
        "zero initial interval",
        _set("/jobs/0/retries/initialIntervalSeconds", 0),
        "schema.exclusiveMinimum",
        "/jobs/0/retries/initialIntervalSeconds",
    ),
    (
        "too many attempts",
        _set("/jobs/0/retries/maxAttempts", 101),
        "schema.maximum",
        "/jobs/0/retries/maxAttempts",
    ),
    (
        "schedule without cron",
        _set("/jobs/1/schedule", {"timezone": "UTC"}),
        "schema.required",
        "/jobs/1/schedule",
    ),
    ("config of another type", _set("/config/type", "array"), "schema.const", "/config/type"),
    (
        "secret not a boolean",
        _set("/config/properties/apiToken/secret", "yes"),
        "schema.type",
        "/config/properties/apiToken/secret",
    ),
    (
        "duplicate service",
        _set("/permissions/services", ["http", "http"]),
        "schema.uniqueItems",
        "/permissions/services",
    ),
    ("unknown service", _set("/permissions/services/0", "ftp"), "schema.enum", "/permissions/services/0"),
    (
        "host with a scheme",
        _set("/permissions/hosts/0", "https://x.com"),
        "schema.pattern",
        "/permissions/hosts/0",
    ),
    ("route path without slash", _set("/routes/0/path", "sync"), "schema.pattern", "/routes/0/path"),
    ("route path with trailing slash", _set("/routes/0/path", "/sync/"), "schema.pattern", "/routes/0/path"),
    ("unknown method", _set("/routes/0/method", "HEAD"), "schema.enum", "/routes/0/method"),
    ("emitted event name", _set("/events/emits/1", "Health.Alert"), "schema.pattern", "/events/emits/1"),
    (
        "emitted event object without name",
        _delete("/events/emits/0/name"),
        "schema.required",
        "/events/emits/0",
    ),
    (
        "listener pattern characters",
        _set("/events/listeners/0/pattern", "Health.#"),
        "schema.pattern",
        "/events/listeners/0/pattern",
    ),
    ("dependency name", _set("/dependencies", {"Notify": "^1.0.0"}), "schema.pattern", "/dependencies"),
    ("cron syntax", _set("/jobs/0/schedule/cron", "61 * * * *"), "cron.invalid", "/jobs/0/schedule/cron"),
    (
        "cron never fires",
        _set("/jobs/0/schedule/cron", "0 0 30 2 *"),
        "cron.invalid",
        "/jobs/0/schedule/cron",
    ),
    ("cron L extension", _set("/jobs/0/schedule/cron", "0 0 L * *"), "cron.invalid", "/jobs/0/schedule/cron"),
    (
        "timezone",
        _set("/jobs/1/schedule/timezone", "Mars/Olympus"),
        "timezone.invalid",
        "/jobs/1/schedule/timezone",
    ),
    ("duplicate job", _set("/jobs/3/name", "health-check"), "job.duplicate", "/jobs/3/name"),
    ("duplicate step", _set("/jobs/0/steps/1/name", "fetch"), "step.duplicate", "/jobs/0/steps/1/name"),
    (
        "maximum interval below initial",
        _set("/jobs/0/retries/maximumIntervalSeconds", 2),
        "retries.invalid",
        "/jobs/0/retries/maximumIntervalSeconds",
    ),
    (
        "step maximum interval below the default initial",
        _set("/jobs/0/steps/1/retries", {"maximumIntervalSeconds": 0.5}),
        "retries.invalid",
        "/jobs/0/steps/1/retries/maximumIntervalSeconds",
    ),
    (
        "listener job",
        _set("/events/listeners/1/job", "weekly-report"),
        "listener.unknown_job",
        "/events/listeners/1/job",
    ),
    (
        "wildcard mixed with text",
        _set("/events/listeners/1/pattern", "data.sync*"),
        "event.invalid_pattern",
        "/events/listeners/1/pattern",
    ),
    (
        "empty pattern segment",
        _set("/events/listeners/1/pattern", "data..synced"),
        "event.invalid_pattern",
        "/events/listeners/1/pattern",
    ),
    (
        "triple star",
        _set("/events/listeners/1/pattern", "data.***"),
        "event.invalid_pattern",
        "/events/listeners/1/pattern",
    ),
    (
        "segment starting with -",
        _set("/events/listeners/1/pattern", "data.-x"),
        "event.invalid_pattern",
        "/events/listeners/1/pattern",
    ),
    ("route job", _set("/routes/2/job", "nope"), "route.unknown_job", "/routes/2/job"),
    (
        "route with the same shape",
        _append("/routes", {"method": "POST", "path": "/webhooks/crm/{kind}", "job": "hourly-sync"}),
        "route.duplicate",
        "/routes/3/path",
    ),
    (
        "route body schema",
        _set("/routes/1/bodySchema/required", "id"),
        "route.schema_invalid",
        "/routes/1/bodySchema/required",
    ),
    (
        "route secret key",
        _set("/routes/1/auth/secretConfigKey", "nope"),
        "route.auth_secret_unknown",
        "/routes/1/auth/secretConfigKey",
    ),
    (
        "dependency range",
        _set("/dependencies/notify-kit", "^^1"),
        "dependency.invalid_range",
        "/dependencies/notify-kit",
    ),
    ("self dependency", _set("/dependencies/data-sync", "*"), "dependency.self", "/dependencies/data-sync"),
    (
        "range key escaped",
        _set("/dependencies", {"a/b~c": "nope"}),
        "dependency.invalid_range",
        "/dependencies/a~1b~0c",
    ),
    (
        "config schema keyword",
        _set("/jobs/0/config/properties/table/type", "strin"),
        "config.schema_invalid",
        "/jobs/0/config/properties/table/type",
    ),
    (
        "config schema regex",
        _set("/jobs/0/config/properties/table/pattern", "("),
        "config.schema_invalid",
        "/jobs/0/config/properties/table/pattern",
    ),
    (
        "default out of range",
        _set("/jobs/0/config/properties/batchSize/default", 0),
        "config.default_invalid",
        "/jobs/0/config/properties/batchSize/default",
    ),
    (
        "nested default of the wrong type",
        _set("/config/properties/warehouse/properties/port/default", "5432"),
        "config.default_invalid",
        "/config/properties/warehouse/properties/port/default",
    ),
    (
        "default breaking a rule of the whole object",
        _set("/config/allOf", [{"properties": {"warehouse": {"properties": {"port": {"maximum": 1024}}}}}]),
        "config.default_invalid",
        "/config/properties/warehouse/properties/port/default",
    ),
    (
        "default email format",
        _set("/jobs/1/config/properties/recipients/default", ["not-an-email"]),
        "config.default_invalid",
        "/jobs/1/config/properties/recipients/default",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "code", "path"),
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_each_error_code_is_reported_at_its_json_pointer(mutate: Mutation, code: str, path: str) -> None:
    doc = example()
    mutate(doc)
    report = validate_manifest(doc)
    if code in ("job.duplicate", "dependency.invalid_range"):
        # Renaming a job also orphans its listener; a bad key also fails the key-name rule.
        assert (code, path) in codes(report.errors), codes(report.errors)
    else:
        assert codes(report.errors) == [(code, path)]
    assert not report.valid


def test_a_value_failing_the_schema_is_not_reported_again_by_semantic_checks() -> None:
    doc = example()
    doc["jobs"][0]["schedule"]["cron"] = "x" * 300
    assert codes(validate_manifest(doc).errors) == [("schema.maxLength", "/jobs/0/schedule/cron")]


def test_required_config_values_without_default_are_not_default_errors() -> None:
    doc = example()
    doc["config"]["anyOf"] = [{"required": ["apiToken"]}, {"required": ["webhookSecret"]}]
    assert validate_manifest(doc).valid


WARNING_CASES: list[tuple[str, Mutation, str, str]] = [
    (
        "every 10 seconds",
        _set("/jobs/2/schedule/cron", "*/10 * * * * *"),
        "schedule.frequent",
        "/jobs/2/schedule/cron",
    ),
    (
        "hosts without http",
        _set("/permissions/services", ["storage", "events"]),
        "permissions.missing_http",
        "/permissions/services",
    ),
    ("http without hosts", _set("/permissions/hosts", []), "permissions.no_hosts", "/permissions/hosts"),
    (
        "emits without events",
        _set("/permissions/services", ["http"]),
        "permissions.missing_events",
        "/permissions/services",
    ),
    ("no permissions at all", _delete("/permissions"), "permissions.missing_events", ""),
    (
        "secret default",
        _set("/config/properties/apiToken/default", "t0k3n"),
        "config.secret_default",
        "/config/properties/apiToken/default",
    ),
    (
        "unknown mapping key",
        _set("/events/listeners/0/mapping/a~b", "x"),
        "listener.mapping_unknown_key",
        "/events/listeners/0/mapping/a~0b",
    ),
    (
        "public route without auth",
        _delete("/routes/1/auth"),
        "route.public_unauthenticated",
        "/routes/1/public",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "code", "path"),
    [c[1:] for c in WARNING_CASES],
    ids=[c[0] for c in WARNING_CASES],
)
def test_each_warning_code_is_reported_at_its_json_pointer(mutate: Mutation, code: str, path: str) -> None:
    doc = example()
    mutate(doc)
    report = validate_manifest(doc)
    assert report.errors == []
    assert codes(report.warnings) == [(code, path)]
    assert report.valid


def test_a_six_field_cron_firing_once_a_minute_is_not_frequent() -> None:
    doc = example()
    doc["jobs"][2]["schedule"]["cron"] = "0 */5 * * * *"
    assert validate_manifest(doc).warnings == []


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


GUARD_CASES: list[tuple[str, object, str, str]] = [
    ("NaN", {"name": float("nan")}, "manifest.not_json", "/name"),
    ("infinity", {"jobs": [float("inf")]}, "manifest.not_json", "/jobs/0"),
    ("a set", {"metadata": {"tags": {"a"}}}, "manifest.not_json", "/metadata/tags"),
    ("a non-string key", {"metadata": {1: "x"}}, "manifest.not_json", "/metadata"),
    ("a huge integer", {"jobs": [{"timeoutSeconds": 10**30}]}, "manifest.not_json", "/jobs/0/timeoutSeconds"),
    ("too deep", {"metadata": {"a": _nested(45)}}, "manifest.too_deep", "/metadata/a" + "/0" * 39),
    ("too large", {"metadata": {"a": list(range(100_001))}}, "manifest.too_large", ""),
]


@pytest.mark.parametrize(
    ("data", "code", "path"),
    [c[1:] for c in GUARD_CASES],
    ids=[c[0] for c in GUARD_CASES],
)
def test_values_that_are_not_plain_json_or_too_big_are_rejected_first(
    data: object,
    code: str,
    path: str,
) -> None:
    assert codes(validate_manifest(data).errors) == [(code, path)]


def test_errors_are_capped() -> None:
    report = validate_manifest({"jobs": list(range(500))})
    assert len(report.errors) == rm.validate.MAX_ISSUES + 1
    assert report.errors[-1].code == "manifest.too_many_errors"


@pytest.mark.parametrize("data", [None, 1, "manifest", [], True, 1.5, {"name": None}])
def test_any_json_value_gets_a_report(data: object) -> None:
    report = validate_manifest(data)
    assert isinstance(report, ValidationReport)
    assert not report.valid


# --- handler resolution --------------------------------------------------------------------------


def _module_folder(root: Path) -> Path:
    src = root / "src" / "data_sync"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "sync.py").write_text(
        "def fetch_changes(ctx):\n    pass\n\nasync def upsert(ctx, rows):\n    pass\n",
    )
    (src / "report").mkdir()
    (src / "report" / "__init__.py").write_text("from .impl import daily_report as daily_report\n")
    (src / "health.py").write_text(
        "import sys\nif sys.version_info >= (3, 11):\n    def check(ctx):\n        pass\n"
        "else:\n    check = None\nnotify_on_call: object = lambda ctx: None\n"
    )
    return root


def test_handlers_resolve_statically_from_the_code_root(tmp_path: Path) -> None:
    report = validate_manifest(example(), code_root=_module_folder(tmp_path))
    assert report.valid, report.errors


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (_set("/jobs/2/handler", "data_sync.missing:check"), "/jobs/2/handler", "not found"),
        (_set("/jobs/2/handler", "data_sync.health:nope"), "/jobs/2/handler", "'nope' is not defined"),
        (_set("/jobs/0/steps/1/handler", "data_sync.sync:helper"), "/jobs/0/steps/1/handler", "not defined"),
        (_set("/python/codeRoot", "."), "/jobs/1/handler", "not found"),
    ],
)
def test_unresolvable_handlers(tmp_path: Path, mutate: Mutation, path: str, fragment: str) -> None:
    doc = example()
    mutate(doc)
    report = validate_manifest(doc, code_root=_module_folder(tmp_path))
    issues = [i for i in report.errors if i.path == path]
    assert [i.code for i in issues] == ["handler.unresolvable"]
    assert fragment in issues[0].message


def test_a_handler_file_with_a_syntax_error_is_unresolvable(tmp_path: Path) -> None:
    root = _module_folder(tmp_path)
    (root / "src" / "data_sync" / "health.py").write_text("def check(:\n")
    report = validate_manifest(example(), code_root=root)
    assert ("handler.unresolvable", "/jobs/2/handler") in codes(report.errors)
    assert "syntax error" in report.errors[0].message


def test_handlers_are_not_checked_without_a_code_root_or_when_disabled(tmp_path: Path) -> None:
    assert validate_manifest(example()).valid
    assert validate_manifest(example(), code_root=tmp_path, check_handlers=False).valid
    assert not validate_manifest(example(), code_root=tmp_path).valid


# --- semver --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("0.0.0", (0, 0, 0, (), ())),
        ("1.2.3", (1, 2, 3, (), ())),
        ("10.20.30-rc.1+build.5", (10, 20, 30, ("rc", 1), ("build", "5"))),
        ("1.0.0-0A.is.legal", (1, 0, 0, ("0A", "is", "legal"), ())),
        ("1.0.0+001", (1, 0, 0, (), ("001",))),
    ],
)
def test_parse_version(text: str, parts: tuple[object, ...]) -> None:
    v = parse_version(text)
    assert (v.major, v.minor, v.patch, v.prerelease, v.build) == parts
    assert str(v) == text


@pytest.mark.parametrize(
    "text",
    ["1.2", "1.2.3.4", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3+", "v1.2.3", " 1.2.3", "1.2.3\n", "", "١.2.3"],
)
def test_parse_version_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


def test_version_precedence_follows_semver_2() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
        "10.0.0",
    ]
    versions = [parse_version(v) for v in ordered]
    shuffled = versions[3:] + versions[:3]
    assert sorted(shuffled) == versions
    assert all(a < b for a, b in zip(versions, versions[1:], strict=False))
    assert parse_version("1.0.0+a") == parse_version("1.0.0+b")
    assert len({parse_version("1.0.0+a"), parse_version("1.0.0")}) == 1


RANGE_CASES = [
    ("*", "0.0.1", True),
    ("*", "1.0.0-alpha", False),
    ("", "3.0.0", True),
    ("1.2.3", "1.2.3", True),
    ("1.2.3", "1.2.4", False),
    ("=1.2.3", "1.2.3+build", True),
    ("^1.2.3", "1.9.9", True),
    ("^1.2.3", "1.2.2", False),
    ("^1.2.3", "2.0.0", False),
    ("^1.2.3", "2.0.0-0", False),
    ("^1.2.3", "1.5.0-beta", False),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.0.3", "0.0.3", True),
    ("^0.0.3", "0.0.4", False),
    ("^0.0.x", "0.0.9", True),
    ("^0.0.x", "0.1.0", False),
    ("^0.x", "0.9.0", True),
    ("^0.x", "1.0.0", False),
    ("^1.2.3-beta.2", "1.2.3-beta.4", True),
    ("^1.2.3-beta.2", "1.2.4-beta.1", False),
    ("~1.2.3", "1.2.9", True),
    ("~1.2.3", "1.3.0", False),
    ("~1.2", "1.2.0", True),
    ("~1", "1.9.0", True),
    ("~1", "2.0.0", False),
    ("~>1.2", "1.2.5", True),
    (">=1.0.0 <2.0.0", "1.5.0", True),
    (">=1.0.0 <2.0.0", "2.0.0", False),
    (">= 1.0.0  < 2.0.0", "1.0.0", True),
    ("1.x", "1.4.0", True),
    ("1.x", "2.0.0", False),
    ("1.2.x", "1.2.7", True),
    ("1.2.x", "1.3.0", False),
    ("1.*", "1.0.0", True),
    (">1", "2.0.0", True),
    (">1", "1.9.9", False),
    ("<1.2", "1.1.9", True),
    ("<1.2", "1.2.0-beta", False),
    ("<=1.2", "1.2.9", True),
    ("<=1.2", "1.3.0", False),
    ("1.2.3 - 2.0.0", "2.0.0", True),
    ("1.2.3 - 2.0.0", "2.0.1", False),
    ("1.2.3 - 2.0.0", "1.2.2", False),
    ("1.2 - 2.3", "2.3.9", True),
    ("1.2 - 2.3", "2.4.0", False),
    ("^1.0.0 || ^2.0.0", "2.5.0", True),
    ("^1.0.0 || ^2.0.0", "3.0.0", False),
    (">1.2.3-alpha.3", "1.2.3-alpha.7", True),
    (">1.2.3-alpha.3", "3.4.5-beta.4", False),
    (">1.2.3-alpha.3", "3.4.5", True),
    ("<*", "0.0.0", False),
]


@pytest.mark.parametrize(("text", "version", "expected"), RANGE_CASES)
def test_range_contains(text: str, version: str, expected: bool) -> None:
    assert parse_range(text).contains(parse_version(version)) is expected
    assert (parse_version(version) in parse_range(text)) is expected


@pytest.mark.parametrize(
    "text",
    ["^", "^^1", "1.2.3 ||", "||", "x.1.2", ">=1.0.0 - 2", "abc", "1.x-beta", "1.2.3 -", "latest"],
)
def test_invalid_ranges(text: str) -> None:
    assert not rm.is_valid_range(text)
    with pytest.raises(ValueError):
        parse_range(text)


def test_is_valid_range_on_non_strings() -> None:
    assert not rm.is_valid_range(None)
    assert not rm.is_valid_range(1)
    assert rm.is_valid_range(">=1.0.0 <2.0.0 || 3.x")


# --- cron and timezones --------------------------------------------------------------------------

CRON_CASES: list[tuple[object, bool]] = [
    ("0 * * * *", True),
    ("0 0 * * *", True),
    ("*/5 * * * *", True),
    ("  0  0 * * *  ", True),
    ("0 9 * * mon-fri", True),
    ("0 9 1 JAN,jul *", True),
    ("0 0 * * 7", True),
    ("5/15 * * * *", True),
    ("30 0 * * * *", True),
    ("*/10 * * * * *", True),
    ("@hourly", True),
    ("@daily", True),
    ("@weekly", True),
    ("@monthly", True),
    ("@yearly", True),
    ("@annually", True),
    ("@every 5m", False),
    ("@often", False),
    ("* * * *", False),
    ("0 0 * * * * *", False),
    ("60 * * * *", False),
    ("0 24 * * *", False),
    ("0 0 0 * *", False),
    ("0 0 * 13 *", False),
    ("0 0 * * 8", False),
    ("5-1 * * * *", False),
    ("*/0 * * * *", False),
    ("0,,5 * * * *", False),
    ("0 0 ? * *", False),
    ("0 0 L * *", False),
    ("0 0 * * 1#2", False),
    ("H * * * *", False),
    ("0 0 * * monday", False),
    ("0 0 30 2 *", False),
    ("0 0 31 4 *", False),
    ("", False),
    (None, False),
    (5, False),
]


@pytest.mark.parametrize(("expr", "ok"), CRON_CASES)
def test_validate_cron(expr: object, ok: bool) -> None:
    result = validate_cron(expr)
    assert (result is None) is ok, result
    if not ok:
        assert isinstance(result, str) and result


@pytest.mark.parametrize(
    ("tz", "ok"),
    [("UTC", True), ("Europe/Paris", True), ("America/New_York", True), ("Mars/Olympus", False),
     ("", False), ("../etc/passwd", False), ("Europe", False), (None, False), ("Europe/Paris\x00", False)],
)  # fmt: skip
def test_validate_timezone(tz: object, ok: bool) -> None:
    assert validate_timezone(tz) is ok


@pytest.mark.parametrize(
    ("expr", "temporal"),
    [
        ("0 * * * *", "0 * * * *"),
        (" 0  *  * * * ", "0 * * * *"),
        ("30 0 * * * *", "30 0 * * * * *"),
        ("@daily", "@daily"),
    ],
)
def test_to_temporal_cron(expr: str, temporal: str) -> None:
    assert to_temporal_cron(expr) == temporal


def test_next_runs_in_a_non_utc_timezone() -> None:
    runs = next_runs("0 9 * * mon-fri", "Europe/Paris", n=3, after=datetime(2024, 1, 5, 12, 0))
    assert [r.isoformat() for r in runs] == [
        "2024-01-08T09:00:00+01:00",
        "2024-01-09T09:00:00+01:00",
        "2024-01-10T09:00:00+01:00",
    ]
    assert all(r.tzinfo == ZoneInfo("Europe/Paris") for r in runs)


def test_next_runs_six_fields_have_leading_seconds() -> None:
    runs = next_runs("15 30 * * * *", "UTC", n=2, after=datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC")))
    assert [r.isoformat() for r in runs] == ["2024-01-01T00:30:15+00:00", "2024-01-01T01:30:15+00:00"]


def test_next_runs_follow_temporal_dst_and_day_rules() -> None:
    # 02:00 does not exist in Paris on 2024-03-31: Temporal skips the run that day.
    spring = next_runs("0 2 * * *", "Europe/Paris", n=2, after=datetime(2024, 3, 30, 12))
    assert [r.date().isoformat() for r in spring] == ["2024-04-01", "2024-04-02"]
    # 01:30 happens twice in New York on 2024-11-03: it runs twice.
    fall = next_runs("30 1 * * *", "America/New_York", n=3, after=datetime(2024, 11, 2, 12))
    assert [(r.isoformat(), r.fold) for r in fall[:2]] == [
        ("2024-11-03T01:30:00-04:00", 0),
        ("2024-11-03T01:30:00-05:00", 1),
    ]
    # Day of month AND day of week: the 1st when it is a Monday.
    both = next_runs("0 0 1 * mon", "UTC", n=2, after=datetime(2024, 1, 2))
    assert [r.date().isoformat() for r in both] == ["2024-04-01", "2024-07-01"]


def test_next_runs_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        next_runs("0 0 * *", "UTC")
    with pytest.raises(ValueError):
        next_runs("0 0 * * *", "Nowhere/City")
    with pytest.raises(ValueError):
        next_runs("0 0 * * *", "UTC", n=0)


# --- events --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("data.synced", "data.synced", True),
        ("data.synced", "data.synced.x", False),
        ("data.*", "data.synced", True),
        ("data.*", "data", False),
        ("data.*", "data.a.b", False),
        ("*.alert", "health.alert", True),
        ("data.**", "data", True),
        ("data.**", "data.synced", True),
        ("data.**", "data.a.b", True),
        ("**.failed", "failed", True),
        ("**.failed", "job.x.failed", True),
        ("**.failed", "job.x.failed.not", False),
        ("a.**.z", "a.z", True),
        ("a.**.z", "a.b.c.z", True),
        ("**", "anything.at.all", True),
        ("*", "one", True),
        ("*", "one.two", False),
    ],
)
def test_event_pattern_matches(pattern: str, name: str, expected: bool) -> None:
    assert rm.event_pattern_problem(pattern) is None
    assert event_pattern_matches(pattern, name) is expected


# --- config helpers ------------------------------------------------------------------------------

CONFIG_SCHEMA: dict[str, Any] = EXAMPLE["config"]


def test_apply_config_defaults_fills_missing_values_recursively() -> None:
    config = {"apiToken": "t", "warehouse": {"port": 6543}}
    filled = apply_config_defaults(CONFIG_SCHEMA, config)
    assert filled == {
        "apiUrl": "https://api.crm.example.com",
        "apiToken": "t",
        "warehouse": {"host": "db.warehouse.example.com", "port": 6543},
    }
    assert config == {"apiToken": "t", "warehouse": {"port": 6543}}
    assert apply_config_defaults(CONFIG_SCHEMA, {})["warehouse"] == {
        "host": "db.warehouse.example.com",
        "port": 5432,
    }
    assert apply_config_defaults(CONFIG_SCHEMA, {"apiUrl": None})["apiUrl"] is None


def test_secret_fields_and_masking() -> None:
    assert secret_fields(CONFIG_SCHEMA) == {"apiToken", "webhookSecret"}
    config = {
        "apiToken": "t0k3n",
        "webhookSecret": None,
        "apiUrl": "https://x",
        "warehouse": {"password": "pw", "port": 1},
    }
    assert mask_secrets(CONFIG_SCHEMA, config) == {
        "apiToken": rm.MASK,
        "webhookSecret": None,
        "apiUrl": "https://x",
        "warehouse": {"password": "********", "port": 1},
    }
    assert config["apiToken"] == "t0k3n"
    assert secret_fields({}) == set()
    assert mask_secrets({}, {"a": 1}) == {"a": 1}


def test_validate_config_reports_paths_inside_the_config_without_echoing_secrets() -> None:
    config = apply_config_defaults(CONFIG_SCHEMA, {"apiToken": 12345, "warehouse": {"port": 70000}})
    issues = validate_config(CONFIG_SCHEMA, config)
    assert sorted(codes(issues)) == [("config.invalid", "/apiToken"), ("config.invalid", "/warehouse/port")]
    assert all("12345" not in i.message for i in issues)
    assert validate_config(CONFIG_SCHEMA, apply_config_defaults(CONFIG_SCHEMA, {"apiToken": "t"})) == []
    assert codes(validate_config(CONFIG_SCHEMA, {})) == [("config.invalid", ""), ("config.invalid", "")]
    emails = {"type": "object", "properties": {"to": {"type": "array", "items": {"format": "email"}}}}
    bad_email = validate_config(emails, {"to": ["a@example.com", "nobody"]})
    assert codes(bad_email) == [("config.invalid", "/to/1")]
    assert codes(validate_config({"type": 3}, {})) == [("config.schema_invalid", "/type")]
    unresolvable = validate_config({"$ref": "https://example.com/nowhere.json"}, {})
    assert codes(unresolvable) == [("config.schema_invalid", "")]


# --- the SDK model -------------------------------------------------------------------------------


def test_pydantic_model_round_trips_the_example() -> None:
    manifest = sdk.Manifest.model_validate(example())
    assert manifest.name == "data-sync"
    assert manifest.job("hourly-sync").steps is not None
    assert manifest.job("daily-report").schedule == sdk.Schedule(cron="0 0 * * *", timezone="Europe/Paris")
    data = manifest.to_json_dict()
    assert sdk.Manifest.model_validate(data) == manifest
    assert validate_manifest(data).valid
    assert data["jobs"][0]["retries"]["nonRetryableErrors"] == ["PermissionError"]
    assert data["$schema"] == EXAMPLE["$schema"]
    # Everything written is kept; only defaults are added.
    assert data["events"] == EXAMPLE["events"]
    assert data["config"] == EXAMPLE["config"]


def test_pydantic_model_accepts_python_names_and_rejects_what_the_schema_rejects() -> None:
    job = sdk.JobType(name="run", description="x", handler="pkg.mod:run", timeout_seconds=10)
    assert job.to_json_dict() == {
        "name": "run",
        "description": "x",
        "handler": "pkg.mod:run",
        "timeoutSeconds": 10,
        "overlap": "skip",
    }
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        sdk.JobType(name="run", description="x")
    with pytest.raises(pydantic.ValidationError):
        sdk.JobType(name="Run", description="x", handler="pkg.mod:run")
    with pytest.raises(pydantic.ValidationError):
        sdk.JobType.model_validate({"name": "run", "description": "x", "handler": "a:b", "extra": 1})
    with pytest.raises(pydantic.ValidationError):
        sdk.RetryPolicy(initial_interval_seconds=5, maximum_interval_seconds=1)
    with pytest.raises(pydantic.ValidationError):
        sdk.PythonSettings(code_root="../x")
    with pytest.raises(pydantic.ValidationError):
        sdk.JobType(name="run", description="x", handler="a:b", config={"type": "array"})


def test_load_manifest_reads_a_module_folder(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(EXAMPLE), encoding="utf-8")
    assert sdk.load_manifest(tmp_path).name == "data-sync"
    assert sdk.load_manifest(tmp_path / "manifest.json").version == "1.2.0"
    with pytest.raises(FileNotFoundError):
        sdk.load_manifest(tmp_path / "missing")


def test_the_sdk_model_does_not_import_the_platform() -> None:
    code = "import sys, autoplat.manifest; sys.exit(any(m.split('.')[0] == 'registry' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_public_api_snapshot() -> None:
    assert sorted(rm.__all__) == [
        "CRON_ALIASES",
        "Comparator",
        "CronSpec",
        "MANIFEST_SCHEMA",
        "MASK",
        "MAX_JSON_DEPTH",
        "ManifestIssue",
        "Range",
        "ValidationReport",
        "Version",
        "apply_config_defaults",
        "event_pattern_matches",
        "event_pattern_problem",
        "is_valid_range",
        "is_valid_version",
        "json_pointer",
        "json_problem",
        "manifest_json_schema",
        "mask_secrets",
        "min_interval_seconds",
        "next_runs",
        "parse_cron",
        "parse_range",
        "parse_version",
        "secret_fields",
        "secret_keys",
        "secret_parts",
        "to_temporal_cron",
        "unmask_secrets",
        "validate_config",
        "validate_cron",
        "validate_manifest",
        "validate_timezone",
    ]
    assert sorted(sdk.__all__) == [
        "AuthMethod",
        "EmittedEvent",
        "Events",
        "ForEach",
        "HttpMethod",
        "JobType",
        "Listener",
        "Manifest",
        "Notifications",
        "OverlapPolicy",
        "Permissions",
        "PythonSettings",
        "RetryPolicy",
        "Route",
        "RouteAuth",
        "RouteMode",
        "Schedule",
        "Series",
        "SeriesField",
        "SeriesRetention",
        "Service",
        "Step",
        "load_manifest",
    ]
