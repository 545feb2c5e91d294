"""``forEach`` steps in the local harness (``run_job`` / ``autoplat_run_job``): the platform's
semantics without Temporal: item order, the concurrency limit, item errors with and without
``continueOnItemError``, bad input, ``ctx.item`` / ``ctx.item_index`` and tagged logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autoplat.errors import JobError
from autoplat.testing import ItemFailed, run_job, run_step
from tests.jobs.helpers import write_module

CODE = """
import asyncio

from autoplat import JobError

STATE = {"in": 0, "max": 0}


def items(ctx):
    return ctx.config["items"]


async def each(ctx, item):
    assert item == ctx.item
    STATE["in"] += 1
    STATE["max"] = max(STATE["max"], STATE["in"])
    await asyncio.sleep(0)  # let the other items in
    STATE["in"] -= 1
    ctx.logger.info("item %s", ctx.item_index)
    if item == "job":
        raise JobError(f"refused {ctx.item_index}")
    if item == "boom":
        raise RuntimeError("boom")
    if item == "flaky" and ctx.attempt == 1:
        raise RuntimeError("flaky")
    return {"index": ctx.item_index, "item": item}


def summary(ctx, values):
    return {"values": values, "max": STATE["max"], "item": ctx.item, "index": ctx.item_index}
"""


def _module(tmp_path: Path, for_each: dict[str, Any]) -> Path:
    return write_module(
        tmp_path,
        name="harness-fan",
        code=CODE,
        jobs=[
            {
                "name": "fan",
                "description": "fans out",
                "config": {"type": "object", "properties": {"items": {}}},
                "steps": [
                    {"name": "items", "handler": "items"},
                    {"name": "each", "handler": "each", "forEach": for_each},
                    {"name": "summary", "handler": "summary"},
                ],
            }
        ],
    )


def test_items_run_in_order_within_the_concurrency_limit(tmp_path):
    folder = _module(tmp_path, {"concurrency": 3})
    result = run_job(folder, "fan", config={"items": list("abcdefg")})
    assert result.status == "COMPLETED", result.error
    assert result.result["values"] == [{"index": i, "item": c} for i, c in enumerate("abcdefg")]
    assert result.result["max"] == 3
    assert (result.result["item"], result.result["index"]) == (None, None)  # outside a forEach step
    each = result.steps[1]
    assert each.items is not None and len(each.items) == 7
    assert sorted(e["item"] for e in each.logs) == list(range(7))


def test_continue_on_item_error_gives_one_envelope_per_item(tmp_path):
    folder = _module(tmp_path, {"continueOnItemError": True})
    result = run_job(folder, "fan", config={"items": ["a", "boom", "job"]})
    assert result.status == "COMPLETED", result.error
    assert result.result["values"] == [
        {"ok": True, "value": {"index": 0, "item": "a"}},
        {"ok": False, "error": {"message": "RuntimeError: boom", "type": "RuntimeError"}},
        {"ok": False, "error": {"message": "refused 2", "type": "JobError"}},
    ]


def test_without_it_the_first_failed_item_fails_the_job_naming_its_index(tmp_path):
    folder = _module(tmp_path, {"concurrency": 1})
    result = run_job(folder, "fan", config={"items": ["a", "job", "c"]})
    assert result.status == "FAILED"
    error = result.error
    assert isinstance(error, ItemFailed) and error.index == 1 and isinstance(error.error, JobError)
    assert str(error) == "item 1 of step each failed: JobError: refused 1"
    assert len(result.steps) == 2  # the summary never ran
    assert [r.result for r in result.steps[1].items or []] == [{"index": 0, "item": "a"}, None]  # "c" never started


@pytest.mark.parametrize(
    ("items", "for_each", "message"),
    [
        ({"a": 1}, {}, "step each runs once per item of a list, and the previous step returned an object"),
        (None, {}, "step each runs once per item of a list, and the previous step returned null"),
        (["a", "b"], {"maxItems": 1}, "step each got 2 items, over its forEach.maxItems of 1"),
    ],
)
def test_no_list_or_too_many_items_fail_the_job(tmp_path, items, for_each, message):
    result = run_job(_module(tmp_path, for_each), "fan", config={"items": items})
    assert result.status == "FAILED"
    assert isinstance(result.error, JobError) and result.error.message == message


def test_items_retry_up_to_the_steps_attempts_and_keep_every_runs_logs(tmp_path):
    folder = write_module(
        tmp_path,
        name="harness-retry",
        code=CODE,
        jobs=[
            {
                "name": "fan",
                "description": "fans out",
                "config": {"type": "object", "properties": {"items": {}}},
                "steps": [
                    {"name": "items", "handler": "items"},
                    {
                        "name": "each",
                        "handler": "each",
                        "retries": {"maxAttempts": 2},
                        "forEach": {"continueOnItemError": True},
                    },
                    {"name": "summary", "handler": "summary"},
                ],
            }
        ],
    )
    result = run_job(folder, "fan", config={"items": ["flaky", "boom", "job"]})
    assert result.status == "COMPLETED", result.error
    assert [v["ok"] for v in result.result["values"]] == [True, False, False]
    attempts = [(e["item"], e["attempt"]) for e in result.steps[1].logs]
    assert sorted(attempts) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1)]  # a JobError is not retried


def test_run_step_can_play_one_item():
    def handler(ctx, item):
        ctx.logger.info("got %s", item)
        return (ctx.item, ctx.item_index)

    result = run_step(handler, item={"id": 7}, item_index=3, previous=["ignored"])
    assert result.result == ({"id": 7}, 3)
    assert [(e["message"], e["item"]) for e in result.logs] == [("got {'id': 7}", 3)]
    assert json.dumps(result.logs[0])  # a plain JSON entry
