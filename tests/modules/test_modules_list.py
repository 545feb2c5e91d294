"""Reading the registry: the list (summaries; filters, search, pagination), one module (the full manifest), its
job types."""

from __future__ import annotations

import json

MODULES = "/api/v1/modules"


async def test_the_list_is_a_summary_and_the_detail_has_the_full_manifest(api):
    """Regression: the seed showed ``"manifest": {}``; lists now carry no manifest at all (a module's
    can be 256 KiB), the detail carries it whole."""
    folder = api.folder()
    original = json.loads((folder / "manifest.json").read_text())
    await api.register(folder)
    r = await api.client.get(MODULES, headers=api.headers)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"items", "total", "page", "limit", "total_exact", "has_more"}
    (item,) = body["items"]
    assert "manifest" not in item and "config" not in item
    assert item["name"] == "demo-mod" and item["version"] == "1.0.0" and item["bundle_sha256"]
    assert item["job_types"] == 2 and item["allowed_actions"] == ["install", "delete", "upgrade"]
    detail = await api.get("demo-mod")
    assert detail["manifest"] == original
    assert [j["name"] for j in detail["manifest"]["jobs"]] == ["sync", "pipeline"]
    assert detail["manifest"]["jobs"][0]["config"]["properties"]["batch"]["default"] == 10
    assert {k: v for k, v in detail.items() if k not in ("manifest", "config")} == item


async def test_filters_search_and_pagination(api):
    await api.enabled(name="alpha-mod", description="Moves invoices around")
    await api.installed(name="beta-mod", displayName="Beta 100% reliable")
    await api.register(api.folder(name="gamma-mod"))

    async def names(**params: object) -> list[str]:
        r = await api.client.get(MODULES, params=params, headers=api.headers)
        assert r.status_code == 200, r.text
        return [m["name"] for m in r.json()["items"]]

    assert await names() == ["alpha-mod", "beta-mod", "gamma-mod"]
    assert await names(status="ENABLED") == ["alpha-mod"]
    assert await names(status="REGISTERED") == ["gamma-mod"]
    assert await names(status="FAILED") == []
    assert await names(search="INVOICE") == ["alpha-mod"]  # description, case-insensitive
    assert await names(search="100%") == ["beta-mod"]  # display name; % is literal
    assert await names(search="%") == ["beta-mod"]
    assert await names(search="gamma") == ["gamma-mod"]
    assert await names(search="mod", status="INSTALLED") == ["beta-mod"]

    r = await api.client.get(MODULES, params={"limit": 2, "page": 2}, headers=api.headers)
    assert (r.json()["total"], r.json()["page"], r.json()["limit"]) == (3, 2, 2)
    assert [m["name"] for m in r.json()["items"]] == ["gamma-mod"]
    r = await api.client.get(MODULES, params={"status": "BOGUS"}, headers=api.headers)
    assert r.status_code == 422


async def test_job_types_shape(api):
    await api.register(api.folder())
    r = await api.client.get(f"{MODULES}/demo-mod/job-types", headers=api.headers)
    assert r.status_code == 200
    body = r.json()
    assert (body["total"], body["page"]) == (2, 1)
    sync, pipeline = body["items"]
    assert {"name", "description", "config_schema", "schedule"} <= set(sync)
    assert sync == {
        "name": "sync",
        "display_name": "sync",
        "description": "Sync things",
        "workflow_type": "demo-mod.sync",
        "handler": "demo_mod.jobs:run",
        "steps": [],
        "schedule": "0 * * * *",
        "timezone": "Europe/Paris",
        "config_schema": sync["config_schema"],
        "defaults": {"url": "http://127.0.0.1/x", "batch": 10},
        "secret_fields": ["token"],
        "timeout_seconds": 120,
        "max_attempts": 3,
        "retries": 2,
        "create_job": False,
        "retry_policy": {
            "max_attempts": 3,
            "initial_interval_seconds": 2,
            "backoff_coefficient": 2,
            "maximum_interval_seconds": None,
            "non_retryable_errors": [],
        },
        "overlap": "buffer_one",
        "catchup_window_seconds": 60,
        "task_queue": None,
        "notifications": {},
        "listeners": [{"pattern": "demo.*"}],
    }
    assert sync["config_schema"]["properties"]["token"]["secret"] is True
    assert pipeline["handler"] is None and pipeline["schedule"] is None and pipeline["timezone"] is None
    assert [s["name"] for s in pipeline["steps"]] == ["first", "second"]
    assert pipeline["steps"][1] == {
        "name": "second", "handler": "demo_mod.jobs:step_two", "timeout_seconds": 30, "retry_policy": None,
        "for_each": None,
    }  # fmt: skip
    assert pipeline["config_schema"] == {"type": "object", "properties": {}}
    assert (pipeline["timeout_seconds"], pipeline["retries"], pipeline["overlap"]) == (300, 0, "skip")

    r = await api.client.get(f"{MODULES}/demo-mod/job-types", params={"limit": 1, "page": 2}, headers=api.headers)
    assert [j["name"] for j in r.json()["items"]] == ["pipeline"]
