"""The pytest plugin's fixtures (loaded from the ``pytest11`` entry point, as for any module author)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from autoplat import HttpRequest, JobError
from autoplat.testing import LocalContext, NotMocked
from tests.jobs.helpers import write_module

CODE = """
from autoplat import JobError

async def fetch(ctx):
    items = await ctx.http.get_json("https://api.example.com/items")
    await ctx.storage.put("count", len(items))
    await ctx.notify.slack("https://hooks.example.com/x", f"{len(items)} items")
    await ctx.emit("demo.fetched", {"n": len(items)})
    return len(items)

def fetch_sync(ctx):
    items = ctx.http.get_json_sync("https://api.example.com/items")
    ctx.state.update_sync(lambda s: {"runs": s.get("runs", 0) + 1})
    ctx.notify.email("ops@example.com", "fetched", f"{len(items)} items")
    return len(items)

def store(ctx):
    ctx.storage.put_sync("k", 1)

def browse(ctx):
    ctx.browser.navigate("https://api.example.com/")
"""
PERMISSIONS = {
    "services": ["http", "storage", "notify", "events", "browser"],
    "hosts": ["api.example.com", "hooks.example.com"],
}
JOBS = [
    {"name": "fetch", "description": "async", "handler": "fetch"},
    {"name": "fetch-sync", "description": "sync", "handler": "fetch_sync"},
    {"name": "store", "description": "no storage declared", "handler": "store"},
    {"name": "browse", "description": "uses the browser", "handler": "browse"},
]


def test_ctx_runs_sync_and_async_handlers_with_memory_services(autoplat_ctx, autoplat_state, autoplat_http):
    autoplat_http.add("api.example.com", json=[1, 2, 3])

    def sync_handler(ctx):
        ctx.logger.info("n=%d", ctx.config["n"])
        ctx.storage.put_sync("doc", {"n": ctx.config["n"]})
        ctx.state.set_sync({"cursor": 7})
        ctx.emit_sync("demo.sync", {"n": 1})
        return ctx.http.get_json_sync("https://api.example.com/x")

    async def async_handler(ctx):
        doc = await ctx.storage.get("doc")
        with pytest.raises(RuntimeError, match="for sync handlers"):
            ctx.storage.get_sync("doc")  # the platform's rule: in async handlers, await
        return doc["n"] * 2

    autoplat_ctx.config["n"] = 21
    assert sync_handler(autoplat_ctx) == [1, 2, 3]  # called directly, as a worker calls a sync handler
    assert autoplat_ctx.run(async_handler) == 42
    assert autoplat_ctx.run(sync_handler) == [1, 2, 3]
    assert (
        autoplat_ctx.messages[0] == "n=21" and "HTTP GET https://api.example.com/x -> 200" in autoplat_ctx.messages[1]
    )
    assert [e["name"] for e in autoplat_ctx.emitted] == ["demo.sync", "demo.sync"]
    assert autoplat_state.get_sync().value == {"cursor": 7}  # the fixture is the ctx's state
    assert [r.url.path for r in autoplat_http.requests_to("api.example.com")] == ["/x", "/x"]


def test_unmocked_host_fails_clearly_and_mocks_match_method_and_path(autoplat_ctx, autoplat_http):
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503 if len(calls) == 1 else 200, json={"try": len(calls)})

    autoplat_http.add("api.example.com", json={"any": True})
    autoplat_http.add("api.example.com", "POST", "/items", status=201, json={"id": 3})
    autoplat_http.add("flaky.example.com", responder=flaky)

    async def handler(ctx):
        created = await ctx.http.post_json("https://api.example.com/items", json={"x": 1})
        other = await ctx.http.get_json("https://api.example.com/items")
        retried = await ctx.http.get_json("https://flaky.example.com/")
        return created, other, retried

    assert autoplat_ctx.run(handler) == ({"id": 3}, {"any": True}, {"try": 2})  # a 503 is retried, as live
    with pytest.raises(NotMocked, match=r"autoplat_http.add\('elsewhere.example.com'"):
        autoplat_ctx.run(lambda ctx: ctx.http.get_sync("https://elsewhere.example.com/"))
    assert issubclass(NotMocked, JobError)  # fails the step without retry, like a refused host


def test_run_job_gives_every_declared_service_and_refuses_the_others(
    tmp_path, autoplat_run_job, autoplat_http, autoplat_notify, autoplat_storage, autoplat_events, autoplat_state
):
    folder = write_module(
        tmp_path, name="plug-demo", code=CODE, jobs=JOBS, package="plug_demo", extra={"permissions": PERMISSIONS}
    )
    autoplat_http.add("api.example.com", json=["a", "b"])
    result = autoplat_run_job("fetch", module=folder)
    assert (result.status, result.result) == ("COMPLETED", 2), result.error
    assert autoplat_storage.documents["count"].value == 2
    assert [(n["type"], n["text"]) for n in autoplat_notify.sent] == [("slack", "2 items")]
    assert [(e["name"], e["payload"]) for e in autoplat_events] == [("demo.fetched", {"n": 2})]

    assert autoplat_run_job("fetch-sync", module=folder).result == 2
    assert autoplat_run_job("fetch-sync", module=folder).result == 2
    assert asyncio.run(autoplat_state.get()).value == {"runs": 2}  # state kept between runs
    assert [n["to"] for n in autoplat_notify.sent[1:]] == [["ops@example.com"], ["ops@example.com"]]

    # A declared browser is not simulated here, and the message says what to do instead.
    browsed = autoplat_run_job("browse", module=folder)
    assert browsed.status == "FAILED" and "does not simulate ctx.browser" in str(browsed.error)

    # A manifest without storage in permissions.services: ctx.storage is refused, as on the platform.
    bare = write_module(tmp_path, name="plug-bare", code=CODE, jobs=JOBS, package="plug_bare")
    refused = autoplat_run_job("store", module=bare)
    assert refused.status == "FAILED" and "permissions.services" in str(refused.error)


def test_context_for_a_job_type_takes_its_defaults(tmp_path, autoplat_context):
    jobs = [
        {
            "name": "greet",
            "description": "greets",
            "handler": "greet",
            "config": {"type": "object", "properties": {"who": {"type": "string", "default": "world"}}},
        }
    ]
    code = "def greet(ctx):\n    return (ctx.request.query.get('who') if ctx.request else None) or ctx.config['who']\n"
    folder = write_module(tmp_path, name="greet-mod", code=code, jobs=jobs, package="greet_mod")
    ctx = LocalContext.create(module_dir=folder, job_type="greet")
    try:
        from greet_mod.handlers import greet

        assert ctx.run(greet) == "world"
        ctx.request = HttpRequest(method="GET", path="/greet", query={"who": "ops"})
        assert ctx.run(greet) == "ops"
        assert ctx.module == "greet-mod"
        with pytest.raises(RuntimeError, match="not available here"):
            ctx.notify.email("a@example.com", "s", "t")  # not declared by this manifest
    finally:
        ctx.close()
    bare = autoplat_context(config={"who": "x"})
    assert bare.config == {"who": "x"} and bare.module == "test-module"
