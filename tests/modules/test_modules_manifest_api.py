"""The manifest contract over HTTP: the published schema, POST /modules/validate (every error path
and code; never a 500 for any JSON), and registrations refused for their manifest."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from registry.manifest import manifest_json_schema

MODULES = "/api/v1/modules"


def valid(**extra: Any) -> dict[str, Any]:
    data = {
        "name": "demo-mod",
        "version": "1.0.0",
        "displayName": "Demo",
        "description": "Demo module",
        "author": "Tests",
        "jobs": [
            {"name": "sync", "description": "Sync", "handler": "demo_mod.jobs:run", "schedule": {"cron": "0 * * * *"}},
            {"name": "report", "description": "Report", "handler": "demo_mod.jobs:run"},
        ],  # fmt: skip
    }
    data.update(extra)
    return data


def broken(mutate: Any) -> dict[str, Any]:
    data = valid()
    mutate(data)
    return data


#: (manifest, JSON pointer, code) — each must be reported exactly at that path with that code.
INVALID = {
    "missing name": (broken(lambda d: d.pop("name")), "", "schema.required"),
    "bad name": (valid(name="Bad_Name"), "/name", "schema.pattern"),
    "short name": (valid(name="ab"), "/name", "schema.minLength"),
    "bad version": (valid(version="1.0"), "/version", "schema.pattern"),
    "unknown field": (valid(colour="blue"), "", "schema.additionalProperties"),
    "jobs not a list": (valid(jobs={}), "/jobs", "schema.type"),
    "handler and steps": (
        broken(lambda d: d["jobs"][0].update(steps=[{"name": "a", "handler": "m:f"}])), "/jobs/0", "schema.oneOf"
    ),
    "bad handler": (
        broken(lambda d: d["jobs"][0].update(handler="not a handler")), "/jobs/0/handler", "schema.pattern"
    ),
    "bad cron": (broken(lambda d: d["jobs"][0].update(schedule={"cron": "61 * * * *"})), "/jobs/0/schedule/cron",
                 "cron.invalid"),
    "bad timezone": (broken(lambda d: d["jobs"][0].update(schedule={"cron": "@daily", "timezone": "Mars/Base"})),
                     "/jobs/0/schedule/timezone", "timezone.invalid"),
    "duplicate job": (broken(lambda d: d["jobs"][1].update(name="sync")), "/jobs/1/name", "job.duplicate"),
    "unknown listener job": (valid(events={"listeners": [{"pattern": "a.*", "job": "nope"}]}),
                             "/events/listeners/0/job", "listener.unknown_job"),
    "bad listener pattern": (valid(events={"listeners": [{"pattern": "a.b*", "job": "sync"}]}),
                             "/events/listeners/0/pattern", "event.invalid_pattern"),
    "bad dependency range": (valid(dependencies={"other-mod": "not-a-range"}), "/dependencies/other-mod",
                             "dependency.invalid_range"),
    "self dependency": (valid(dependencies={"demo-mod": "*"}), "/dependencies/demo-mod", "dependency.self"),
    "bad config default": (valid(config={"type": "object", "properties": {"n": {"type": "integer", "default": "x"}}}),
                           "/config/properties/n/default", "config.default_invalid"),
    "bad service": (valid(permissions={"services": ["teleport"]}), "/permissions/services/0", "schema.enum"),
}  # fmt: skip


async def test_the_manifest_schema_is_published(api):
    r = await api.client.get(f"{MODULES}/manifest-schema", headers=api.headers)
    assert r.status_code == 200
    assert r.json() == manifest_json_schema()
    assert r.json()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


async def test_validate_reports_each_error_at_its_path_with_its_code(api):
    r = await api.client.post(f"{MODULES}/validate", json=valid(), headers=api.headers)
    assert r.status_code == 200 and r.json() == {"valid": True, "errors": [], "warnings": []}
    r = await api.client.post(f"{MODULES}/validate", json={"manifest": valid()}, headers=api.headers)
    assert r.json()["valid"] is True

    for case, (data, path, code) in INVALID.items():
        for body in (data, {"manifest": data}):
            r = await api.client.post(f"{MODULES}/validate", json=body, headers=api.headers)
            assert r.status_code == 200, (case, r.text)
            report = r.json()
            assert report["valid"] is False, case
            assert (path, code) in {(e["path"], e["code"]) for e in report["errors"]}, (case, report)
            assert all(set(e) == {"path", "code", "message"} and e["message"] for e in report["errors"])

    r = await api.client.post(
        f"{MODULES}/validate", json=valid(permissions={"services": ["http"]}), headers=api.headers
    )
    assert r.json()["valid"] is True
    assert [(w["path"], w["code"]) for w in r.json()["warnings"]] == [("/permissions", "permissions.no_hosts")]


async def test_validate_answers_odd_bodies_without_a_500(api):
    headers = {**api.headers, "content-type": "application/json"}
    cases = {
        b"": 400,
        b"not json": 400,
        b"[" * 100_000: 400,  # nested past the parser's recursion limit
        b'"\\ud800"': 400,  # an unpaired surrogate can be neither stored nor echoed
        b"1" * 5000: 400,  # integer over Python's digit limit
        b'{"name": NaN}': 200,
        b"null": 200,
        b'"a string"': 200,
        b"[1, 2, 3]": 200,
        b'{"manifest": 5}': 200,
        b'{"name": "\\u0000\\u202e"}': 200,
        json.dumps(
            {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
        ).encode(): 200,
    }
    for body, status in cases.items():
        r = await api.client.post(f"{MODULES}/validate", content=body, headers=headers)
        assert r.status_code == status, (body[:40], r.text)
        if status == 200:
            assert r.json()["valid"] is False, body[:40]
    r = await api.client.post(f"{MODULES}/validate", content=b" " * (3 * 1024 * 1024), headers=headers)
    assert r.status_code == 413


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
KEYS = ["name", "version", "displayName", "description", "author", "jobs", "events", "config", "permissions",
        "dependencies", "python", "routes", "metadata"]  # fmt: skip
JOB_KEYS = ["name", "description", "handler", "steps", "schedule", "timeoutSeconds", "retries", "overlap", "config"]
MANIFEST_LIKE = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(KEYS, JSON),
        "jobs": st.lists(st.dictionaries(st.sampled_from(JOB_KEYS), JSON, max_size=6), max_size=3),
        "name": st.sampled_from(["demo-mod", "x", "Demo"]) | JSON,
    },
)


async def test_validate_never_fails_on_random_json(api):
    examples: list[Any] = []

    @settings(max_examples=50, database=None, deadline=None)
    @given(st.one_of(JSON, MANIFEST_LIKE, MANIFEST_LIKE.map(lambda m: {"manifest": m})))
    def collect(body: Any) -> None:
        examples.append(body)

    collect()
    headers = {**api.headers, "content-type": "application/json"}
    for body in examples:
        r = await api.client.post(f"{MODULES}/validate", content=json.dumps(body), headers=headers)
        assert r.status_code == 200, (body, r.text)
        assert set(r.json()) == {"valid", "errors", "warnings"}


async def test_registration_refuses_invalid_manifests_and_stores_nothing(api, db, settings):
    for case in ("missing name", "bad cron", "duplicate job", "unknown listener job", "bad config default"):
        data, path, code = INVALID[case]
        data = copy.deepcopy(data)
        data.setdefault("name", "demo-mod")
        if case == "missing name":
            folder = api.folder(valid(name=f"case-{len(case)}"), root=api.root / "x")
            r = await api.client.post(MODULES, json={"path": str(folder), "manifest": INVALID[case][0]},
                                      headers=api.headers)  # fmt: skip
        else:
            folder = api.folder(data, root=api.root / case.replace(" ", "-"))
            r = await api.client.post(MODULES, json={"path": str(folder)}, headers=api.headers)
        assert r.status_code == 422, (case, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_manifest"
        assert (path, code) in {(e["path"], e["code"]) for e in error["details"]["errors"]}, (case, error)
        assert set(error["details"]) == {"errors", "warnings"}

    # Handler references are checked against the code shipped with the manifest.
    folder = api.folder(code="def other(ctx):\n    return 1\n", root=api.root / "handlers")
    r = await api.client.post(MODULES, json={"path": str(folder)}, headers=api.headers)
    assert r.status_code == 422
    errors = {(e["path"], e["code"]) for e in r.json()["error"]["details"]["errors"]}
    assert ("/jobs/0/handler", "handler.unresolvable") in errors

    assert await db.counts() == (0, 0)
    assert not (settings.state_dir / "code").exists()


async def test_a_manifest_in_the_body_wins_over_the_folders(api):
    folder = api.folder()
    data = json.loads((folder / "manifest.json").read_text())
    data["description"] = "given in the request"
    module = await api.register(folder, manifest=data)
    assert module["description"] == "given in the request" and module["manifest"] == data


async def test_a_duplicate_name_is_a_409(api, db):
    await api.register(api.folder())
    r = await api.client.post(MODULES, json={"path": str(api.folder(version="2.0.0"))}, headers=api.headers)
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "conflict" and "upgrade" in error["message"]
    assert error["details"] == {"name": "demo-mod", "version": "1.0.0", "status": "REGISTERED"}
    assert await db.counts() == (1, 1)
