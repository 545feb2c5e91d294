"""The manifest's ``ui`` section (docs/manifest.md#ui): what registration refuses, and what
``GET /ui/pages`` and ``GET /ui/modules/{name}/pages/{page}`` answer each role."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from registry.manifest.validate import validate_manifest
from tests.jobs.helpers import write_module
from tests.routes.route_helpers import MODULES, deploy

CODE = """
def answer(ctx):
    return {"items": [{"id": "a", "name": "first", "kw": 1.5}], "total": 3}
"""
JOBS = [{"name": "answer", "displayName": "Answer", "description": "answers", "handler": "answer"}]
ROUTES = [
    {"method": "GET", "path": "/things", "job": "answer"},
    {"method": "GET", "path": "/things/{thing_id}", "job": "answer"},
    {
        "method": "POST",
        "path": "/things",
        "job": "answer",
        "bodySchema": {"type": "object", "properties": {"name": {"type": "string"}}},
    },
    {"method": "POST", "path": "/things/{thing_id}/poke", "job": "answer"},
    {"method": "GET", "path": "/report", "job": "answer", "permission": "operator"},
]
SERIES = [{"name": "meter", "fields": {"kwh": {"type": "counter"}, "watts": {"type": "gauge"}}, "labels": ["site"]}]
UI = {
    "pages": [
        {
            "name": "overview",
            "title": "Overview",
            "refreshSeconds": 30,
            "inputs": [
                {"name": "thing", "type": "select", "source": {"route": "GET /things", "items": "items"}},
                {"name": "range", "type": "range", "default": "24h"},
            ],
            "panels": [
                {"type": "stat", "title": "Total", "source": {"route": "GET /things"}, "value": "total"},
                {"type": "table", "source": {"route": "GET /things"}, "items": "items", "columns": [{"value": "name"}]}
                | {
                    "actions": [
                        {"label": "Poke", "route": "POST /things/{thing_id}/poke", "path": {"thing_id": "{row.id}"}}
                    ]
                },
                {"type": "timeseries", "source": {"series": "meter", "fields": ["watts"], "from": "{range.from}"}},
                {"type": "form", "route": "POST /things"},
                {"type": "markdown", "text": "staff only", "permission": "operator"},
            ],
        },
        {
            "name": "billing",
            "title": "Billing",
            "permission": "operator",
            "panels": [{"type": "link", "label": "CSV", "route": "GET /report", "download": True}],
        },
    ]
}


def manifest(ui: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "paged",
        "version": "1.0.0",
        "displayName": "Paged",
        "description": "pages",
        "author": "tests",
        "jobs": [{**JOBS[0], "handler": "paged.handlers:answer"}],
        "routes": ROUTES,
        "series": SERIES,
        "permissions": {"services": ["series"]},
        "ui": ui,
    }


def errors(ui: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.path, e.code) for e in validate_manifest(manifest(ui)).errors]


def test_a_complete_ui_section_is_valid() -> None:
    assert errors(UI) == []


def _broken(change: Any) -> dict[str, Any]:
    ui = copy.deepcopy(UI)
    change(ui["pages"][0])
    return ui


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda p: p["panels"][0]["source"].update(route="GET /nowhere"),
            ("/ui/pages/0/panels/0/source/route", "ui.unknown_route"),
        ),
        (
            lambda p: p["panels"][0]["source"].update(route="POST /things"),
            ("/ui/pages/0/panels/0/source/route", "ui.route_method"),
        ),
        (
            lambda p: p["panels"][0]["source"].update(route="GET /things/{thing_id}"),
            ("/ui/pages/0/panels/0/source/route", "ui.route_param_missing"),
        ),
        (
            lambda p: p["panels"][2]["source"].update(series="nope"),
            ("/ui/pages/0/panels/2/source/series", "ui.unknown_series"),
        ),
        (
            lambda p: p["panels"][2]["source"].update(fields=["volts"]),
            ("/ui/pages/0/panels/2/source/fields/0", "ui.unknown_field"),
        ),
        (
            lambda p: p["panels"][2]["source"].update(labels={"room": "x"}),
            ("/ui/pages/0/panels/2/source/labels/room", "ui.unknown_label"),
        ),
        (
            lambda p: p["panels"][2]["source"].update({"from": "{since}"}),
            ("/ui/pages/0/panels/2/source/from", "ui.unknown_input"),
        ),
        (
            lambda p: p["panels"][2]["source"].update({"from": "{thing.from}"}),
            ("/ui/pages/0/panels/2/source/from", "ui.unknown_input"),
        ),
        (lambda p: p["panels"][3].update(route="GET /things"), ("/ui/pages/0/panels/3/route", "ui.route_method")),
        (
            lambda p: p["panels"][3].update(route="POST /things/{thing_id}/poke"),
            ("/ui/pages/0/panels/3/route", "ui.route_param_missing"),
        ),
        (lambda p: p["panels"][0].pop("value"), ("/ui/pages/0/panels/0", "ui.panel_incomplete")),
        (
            lambda p: p["inputs"].append({"name": "thing", "type": "text"}),
            ("/ui/pages/0/inputs/2/name", "ui.duplicate_input"),
        ),
        (
            lambda p: p["inputs"].append({"name": "pick", "type": "select"}),
            ("/ui/pages/0/inputs/2", "ui.select_without_options"),
        ),
        (
            lambda p: p["panels"][1]["actions"][0]["path"].update(thing_id="{thing_ref}"),
            ("/ui/pages/0/panels/1/actions/0/path/thing_id", "ui.unknown_input"),
        ),
        (
            lambda p: p["panels"][2]["source"].update(route="GET /things"),
            ("/ui/pages/0/panels/2/source/fields", "ui.source_mixed"),
        ),
        (
            lambda p: p["panels"][1]["actions"][0].update(form=True),
            ("/ui/pages/0/panels/1/actions/0/form", "ui.form_without_schema"),
        ),
        (
            lambda p: p["panels"][1]["actions"][0].update(body={"who": "{nobody}"}),
            ("/ui/pages/0/panels/1/actions/0/body/who", "ui.unknown_input"),
        ),
        (
            lambda p: p["panels"][1]["actions"][0].update(body={"on": True}, form=True, schema={"type": "object"}),
            ("/ui/pages/0/panels/1/actions/0/body", "ui.action_body_and_form"),
        ),
        (lambda p: p.update(name="billing"), ("/ui/pages/1/name", "ui.duplicate_page")),
    ],
)
def test_registration_names_what_is_wrong(change: Any, expected: tuple[str, str]) -> None:
    if expected[1] == "ui.duplicate_page":
        ui = copy.deepcopy(UI)
        ui["pages"][1]["name"] = "overview"
    else:
        ui = _broken(change)
    assert expected in errors(ui), errors(ui)


def test_the_schema_refuses_unknown_panel_types_and_keys() -> None:
    found = errors(_broken(lambda p: p["panels"].append({"type": "iframe", "src": "https://example.com"})))
    assert {code for _, code in found} >= {"schema.enum", "schema.additionalProperties"}, found


async def _deploy(client: Any, headers: dict[str, str], tmp_path: Path) -> None:
    extra = {"routes": ROUTES, "series": SERIES, "permissions": {"services": ["series"]}, "ui": UI}
    await deploy(client, headers, write_module(tmp_path, name="paged", code=CODE, jobs=JOBS, extra=extra))


async def test_pages_by_role(
    client: Any, tmp_path: Path, admin_headers: Any, operator_headers: Any, viewer_headers: Any
) -> None:
    await _deploy(client, admin_headers, tmp_path)

    r = await client.get("/api/v1/ui/pages", headers=viewer_headers)
    assert r.status_code == 200, r.text
    assert r.json()["modules"] == [
        {
            "module": "paged",
            "display_name": "Paged",
            "pages": [{"name": "overview", "title": "Overview", "description": None}],
        }
    ]
    r = await client.get("/api/v1/ui/pages", headers=operator_headers)
    assert [p["name"] for p in r.json()["modules"][0]["pages"]] == ["overview", "billing"]

    # A viewer's page: the operator-only panel left out, what it may call marked.
    r = await client.get("/api/v1/ui/modules/paged/pages/overview", headers=viewer_headers)
    assert r.status_code == 200, r.text
    page = r.json()
    assert [p["type"] for p in page["panels"]] == ["stat", "table", "timeseries", "form"]
    assert page["refresh_seconds"] == 30
    assert page["routes"]["GET /things"] == {
        "method": "GET",
        "path": "/things",
        "permission": "viewer",
        "allowed": True,
    }
    assert page["routes"]["POST /things"]["allowed"] is False
    assert page["routes"]["POST /things/{thing_id}/poke"]["allowed"] is False
    # A form without a schema of its own gets its route's bodySchema.
    assert page["panels"][3]["schema"] == ROUTES[2]["bodySchema"]
    r = await client.get("/api/v1/ui/modules/paged/pages/overview", headers=operator_headers)
    assert [p["type"] for p in r.json()["panels"]][-1] == "markdown"
    assert r.json()["routes"]["POST /things"]["allowed"] is True

    r = await client.get("/api/v1/ui/modules/paged/pages/billing", headers=viewer_headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    r = await client.get("/api/v1/ui/modules/paged/pages/missing", headers=viewer_headers)
    assert r.status_code == 404

    # A disabled module has no pages.
    r = await client.post(f"{MODULES}/paged/disable", headers=admin_headers)
    assert r.status_code == 200, r.text
    r = await client.get("/api/v1/ui/pages", headers=viewer_headers)
    assert r.json()["modules"] == []
    r = await client.get("/api/v1/ui/modules/paged/pages/overview", headers=viewer_headers)
    assert r.status_code == 404


def test_the_consumption_monitor_pages_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    data = json.loads((root / "example_modules" / "consumption_monitor" / "manifest.json").read_text())
    report = validate_manifest(data)
    assert report.errors == [], report.errors
    assert [p["name"] for p in data["ui"]["pages"]] == ["live", "endpoints", "history", "reports"]
