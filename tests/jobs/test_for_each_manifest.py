"""The manifest side of ``forEach`` steps: the schema's bounds and defaults, the first-step rule,
the SDK's model, and the plan the workflow gets."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from autoplat.manifest import Manifest
from registry.manifest.validate import validate_manifest
from registry.services.runs import run_plan

BASE: dict[str, Any] = {
    "name": "fan-out",
    "version": "1.0.0",
    "displayName": "Fan out",
    "description": "a forEach step",
    "author": "tests",
    "jobs": [
        {
            "name": "collect",
            "description": "one item per endpoint",
            "steps": [
                {"name": "due", "handler": "fan_out.jobs:due"},
                {"name": "read", "handler": "fan_out.jobs:read", "forEach": {}},
                {"name": "record", "handler": "fan_out.jobs:record"},
            ],
        }
    ],
}


def _with(for_each: Any, *, step: int = 1) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    steps = manifest["jobs"][0]["steps"]
    steps[1].pop("forEach")
    steps[step]["forEach"] = for_each
    return manifest


def _errors(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.code, e.path) for e in validate_manifest(manifest).errors]


def test_a_forEach_step_after_the_first_is_valid_and_so_is_the_sdk_model():
    manifest = _with({"concurrency": 100, "maxItems": 10000, "continueOnItemError": True})
    assert _errors(manifest) == []
    step = Manifest.model_validate(manifest).jobs[0].steps[1]  # type: ignore[index]
    assert step.for_each is not None and step.for_each.concurrency == 100
    assert Manifest.model_validate(BASE).jobs[0].steps[1].for_each.max_items == 1000  # type: ignore[index,union-attr]


def test_forEach_on_the_first_step_is_refused_with_its_own_code():
    assert _errors(_with({}, step=0)) == [("step.forEachFirst", "/jobs/0/steps/0/forEach")]


@pytest.mark.parametrize(
    ("for_each", "code", "path"),
    [
        ({"concurrency": 0}, "schema.minimum", "/concurrency"),
        ({"concurrency": 101}, "schema.maximum", "/concurrency"),
        ({"maxItems": 0}, "schema.minimum", "/maxItems"),
        ({"maxItems": 10001}, "schema.maximum", "/maxItems"),
        ({"continueOnItemError": "yes"}, "schema.type", "/continueOnItemError"),
        ({"parallel": 2}, "schema.additionalProperties", ""),
        (True, "schema.type", ""),
    ],
)
def test_forEach_bounds(for_each: Any, code: str, path: str):
    assert _errors(_with(for_each)) == [(code, "/jobs/0/steps/1/forEach" + path)]


def test_the_plan_carries_forEach_with_its_defaults():
    manifest = _with({"concurrency": 4})
    plan = run_plan(
        execution_id="e",
        module="fan-out",
        module_version="1.0.0",
        bundle_sha256=None,
        job=None,
        job_type="collect",
        definition=manifest["jobs"][0],
        heartbeat_timeout_seconds=10,
    )
    assert [s.for_each for s in plan.steps] == [
        None,
        {"concurrency": 4, "maxItems": 1000, "continueOnItemError": False},
        None,
    ]


def test_the_job_types_api_shows_the_fan_out_with_its_defaults():
    from registry.models import Module
    from registry.services.modules import job_types

    manifest = _with({"concurrency": 4})
    [collect] = job_types(Module(name="fan-out", version="1.0.0", manifest=manifest))
    assert [s["for_each"] for s in collect["steps"]] == [
        None,
        {"concurrency": 4, "max_items": 1000, "continue_on_item_error": False},
        None,
    ]
