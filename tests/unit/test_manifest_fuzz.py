"""Property tests: the manifest validator reports on any input and never raises."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.manifest import (
    ValidationReport,
    is_valid_range,
    next_runs,
    parse_range,
    parse_version,
    to_temporal_cron,
    validate_cron,
    validate_manifest,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"
_BLOCK = re.search(r"<!-- example:start -->\s*```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
assert _BLOCK, "docs/manifest.md lost its example markers"
EXAMPLE: dict[str, Any] = json.loads(_BLOCK.group(1))

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Keys of the manifest vocabulary, so random documents often reach the deeper checks.
VOCABULARY = [
    "name", "version", "displayName", "description", "author", "jobs", "handler", "steps", "schedule",
    "cron", "timezone", "timeoutSeconds", "retries", "maxAttempts", "maximumIntervalSeconds", "config",
    "type", "properties", "default", "secret", "events", "emits", "listeners", "pattern", "job",
    "mapping", "filter", "routes", "method", "path", "auth", "secretConfigKey", "public", "permissions",
    "hosts", "services", "dependencies", "python", "codeRoot", "$ref", "required", "items", "metadata",
]  # fmt: skip

keys = st.sampled_from(VOCABULARY) | st.text(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(
        ["0 * * * *", "*/5 * * * * *", "Europe/Paris", "data.**", "a:b", "^1.0.0", "object", "/x/{y}"],
    )
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)

_POINTER_SEGMENT = re.compile(r"([^~]|~[01])*")


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _resolve(document: object, pointer: str) -> bool:
    node = document
    for raw in pointer.split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False
    return True


def _check_report(report: object, document: object) -> None:
    assert isinstance(report, ValidationReport)
    json.dumps(report.to_dict())
    for issue in [*report.errors, *report.warnings]:
        assert isinstance(issue.path, str)
        assert issue.path == "" or issue.path.startswith("/"), issue
        assert all(_POINTER_SEGMENT.fullmatch(s) for s in issue.path.split("/")[1:]), issue
        assert issue.code != "manifest.internal_error", issue
        assert issue.code and issue.message
        if issue.code not in ("manifest.too_deep", "manifest.too_large"):
            assert _resolve(document, issue.path), issue
    assert report.valid == (not report.errors)


@FUZZ
@given(json_values)
def test_arbitrary_json_values_get_a_report(data: object) -> None:
    _check_report(validate_manifest(data), data)


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return doc


@FUZZ
@given(mutated_manifests())
def test_mutated_manifests_get_a_report(doc: dict[str, Any]) -> None:
    _check_report(validate_manifest(doc), doc)


cron_texts = st.text(alphabet="0123456789*/,- ?LW#@abcdefjlmnorstuwy", max_size=24) | st.lists(
    st.sampled_from(["*", "0", "5", "*/15", "1-5", "mon-fri", "jan", "7", "59", "3/20", "1,15"]),
    min_size=4,
    max_size=7,
).map(" ".join)


@FUZZ
@given(cron_texts)
def test_cron_validation_never_raises_and_valid_expressions_have_runs(expr: str) -> None:
    problem = validate_cron(expr)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert next_runs(expr, "Europe/Paris", n=2)
        assert to_temporal_cron(expr).split()[0] == expr.split()[0]


range_texts = st.text(alphabet="0123456789.x*^~<>=|- abv+", max_size=20)


@FUZZ
@given(range_texts)
def test_range_parsing_only_raises_value_error(text: str) -> None:
    valid = is_valid_range(text)
    try:
        parse_range(text)
    except ValueError:
        assert not valid
    else:
        assert valid


versions = st.tuples(
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.lists(st.integers(0, 3) | st.sampled_from(["alpha", "beta", "rc"]), max_size=2),
).map(lambda t: f"{t[0]}.{t[1]}.{t[2]}" + ("-" + ".".join(map(str, t[3])) if t[3] else ""))


@FUZZ
@given(versions, versions)
def test_caret_ranges_agree_with_their_expansion(low: str, candidate: str) -> None:
    lo, v = parse_version(low), parse_version(candidate)
    if lo.major > 0:
        in_bounds = lo <= v < parse_version(f"{lo.major + 1}.0.0-0")
        # npm: a prerelease is only selected by a range naming a prerelease of the same release.
        prerelease_ok = not v.prerelease or (bool(lo.prerelease) and lo.release == v.release)
        assert parse_range(f"^{low}").contains(v) is (in_bounds and prerelease_ok)
