"""Route body fields marked ``"secret": true`` (in a nested object and in array items) are sealed by
the API with the module's vault key before the run starts: every step's handler gets them in clear,
while the workflow's Temporal history (every payload, decoded), the execution row, the execution API
answers and the logs hold only tokens."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from registry.crypto import module_vault
from tests.jobs.helpers import history_payloads
from tests.routes.route_helpers import deploy, route_module

NAME = "secret-routes"
BASE = f"/api/v1/m/{NAME}"
CLEAR = ("pw-clear-7f3a91", "key-clear-91b2c4", "key-clear-c4d5e6", "tok-clear-e6f7a8")

CODE = """
EXPECTED = {
    "password": "pw-clear-7f3a91",
    "keys": ["key-clear-91b2c4", "key-clear-c4d5e6"],
    "tokens": ["tok-clear-e6f7a8"],
}


def _seen(ctx):
    body = ctx.request.body
    return {
        "password_ok": body["credentials"]["password"] == EXPECTED["password"],
        "keys_ok": [k["key"] for k in body["keys"]] == EXPECTED["keys"],
        "tokens_ok": body["tokens"] == EXPECTED["tokens"],
        "username": body["credentials"]["username"],
        "names": [k["name"] for k in body["keys"]],
        "note": body.get("note"),
        "secret_fields": ctx.request.secret_fields,
    }


def check(ctx):
    ctx.logger.info("first step for %s", ctx.request.body["credentials"]["username"])
    return _seen(ctx)


async def again(ctx, previous):
    # A later step opens the sealed values again (each step's input holds only tokens).
    return {"first": previous, "second": _seen(ctx)}
"""

SECRET_STRING = {"type": "string", "secret": True}
BODY = {
    "type": "object",
    "required": ["credentials"],
    "properties": {
        "credentials": {
            "type": "object",
            "properties": {"username": {"type": "string"}, "password": {**SECRET_STRING, "minLength": 8}},
        },
        "keys": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}, "key": SECRET_STRING}},
        },
        "tokens": {"type": "array", "items": SECRET_STRING},
        "note": {"type": "string"},
    },
}
JOBS = [
    {
        "name": "create",
        "timeoutSeconds": 20,
        "steps": [{"name": "check", "handler": "check"}, {"name": "again", "handler": "again"}],
    }
]
ROUTES = [{"method": "POST", "path": "/things", "job": "create", "bodySchema": BODY}]


@pytest.fixture
async def mod(worker: Any, client: httpx.AsyncClient, admin_headers: dict[str, str], tmp_path: Path) -> None:
    await deploy(client, admin_headers, route_module(tmp_path, name=NAME, code=CODE, jobs=JOBS, routes=ROUTES))


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "credentials": {"username": "ada-visible", "password": CLEAR[0]},
        "keys": [{"name": "first", "key": CLEAR[1]}, {"name": "second", "key": CLEAR[2]}],
        "tokens": [CLEAR[3]],
        **extra,
    }


def _find_body(node: Any) -> Any:
    """The request body inside a workflow or activity input (``{"request": {"body": ...}}`` somewhere)."""
    if isinstance(node, dict):
        if isinstance(node.get("request"), dict) and "body" in node["request"]:
            return node["request"]["body"]
        for value in node.values():
            if (found := _find_body(value)) is not None:
                return found
    if isinstance(node, list):
        for value in node:
            if (found := _find_body(value)) is not None:
                return found
    return None


def _leaks(text: str) -> list[str]:
    return [value for value in CLEAR if value in text]


async def test_secret_body_fields_reach_the_handler_and_nothing_else(
    mod, client, operator_headers, admin_headers, pg_database, temporal_env, caplog
):
    caplog.set_level(logging.DEBUG)
    r = await client.post(f"{BASE}/things", json=_body(), headers=operator_headers)
    assert r.status_code == 200, r.text
    seen = {
        "password_ok": True,
        "keys_ok": True,
        "tokens_ok": True,
        "username": "ada-visible",
        "names": ["first", "second"],
        "note": None,
        "secret_fields": [["credentials", "password"], ["keys", 0, "key"], ["keys", 1, "key"], ["tokens", 0]],
    }
    assert r.json() == {"first": seen, "second": seen}
    execution_id = r.headers["X-Execution-ID"]
    answers = [r.text]

    for path in (
        f"/api/v1/executions/{execution_id}",
        f"/api/v1/executions/{execution_id}/logs",
        "/api/v1/executions?include=steps,config,result,error",
    ):
        r = await client.get(path, headers=operator_headers)
        assert r.status_code == 200, (path, r.text)
        answers.append(r.text)
    r = await client.get("/api/v1/audit", headers=admin_headers)
    assert r.status_code == 200, r.text
    answers.append(r.text)
    assert not _leaks("\n".join(answers))
    detail = json.loads(answers[1])
    assert detail["status"] == "COMPLETED"
    assert any("first step for ada-visible" in e["message"] for e in detail["logs"])

    # At rest: the execution rows as the database holds them (a route call keeps a summary of its
    # request, without the body).
    url = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        rows = [r[0] for r in conn.execute("SELECT row_to_json(e)::text FROM executions e").fetchall()]
        stored = conn.execute("SELECT input FROM executions WHERE id = %s", (execution_id,)).fetchone()[0]
    assert not _leaks("\n".join(rows))
    assert stored["request"]["path"] == "/things"

    # Temporal: every payload of the run's history (workflow input, each step's activity input and
    # result), decoded. The username (not secret) is found, so a clear secret would have been.
    history = await temporal_env.client.get_workflow_handle(detail["workflow_id"]).fetch_history()
    texts = history_payloads(history.to_json_dict())
    payloads = "\n".join(texts)
    assert "ada-visible" in payloads
    # The workflow input and both steps' activity inputs carry the body, with tokens for the secrets.
    bodies = [b for t in texts if (b := _find_body(json.loads(t))) is not None]
    assert len(bodies) >= 3, texts
    for body in bodies:
        assert body["credentials"]["password"].startswith("apv1:")
        assert [k["key"][:5] for k in body["keys"]] == ["apv1:", "apv1:"]
        assert body["tokens"][0].startswith("apv1:")
    assert not _leaks(payloads)
    assert not _leaks(json.dumps(history.to_json_dict()))

    # The processes' own log lines (API, worker).
    assert not _leaks("\n".join(record.getMessage() for record in caplog.records))


async def test_a_token_sent_in_a_field_that_is_not_secret_is_not_opened(mod, client, operator_headers, settings):
    # Whoever read a token (from Temporal's history, say) cannot have the platform open it for them
    # by sending it where no secret is expected: only the values the API sealed itself are opened.
    stolen = module_vault(settings.encryption_key(), NAME).seal_now("stolen-clear-value")
    r = await client.post(f"{BASE}/things", json=_body(note=stolen), headers=operator_headers)
    assert r.status_code == 200, r.text
    assert r.json()["first"]["note"] == stolen
    # Sent in a secret field, it is sealed once more and the handler gets it back as sent.
    body = _body()
    body["tokens"] = [stolen]
    r = await client.post(f"{BASE}/things", json=body, headers=operator_headers)
    assert r.status_code == 200, r.text
    assert r.json()["first"]["tokens_ok"] is False


async def test_secret_values_are_validated_in_clear_and_too_large_ones_refused(mod, client, operator_headers):
    short = _body()
    short["credentials"]["password"] = "short"
    r = await client.post(f"{BASE}/things", json=short, headers=operator_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert "short" not in r.text  # the value is not echoed

    huge = _body()
    huge["tokens"] = ["x" * (70 * 1024)]
    r = await client.post(f"{BASE}/things", json=huge, headers=operator_headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith("tokens.0: a secret value is at most 65536 bytes")
    assert error["details"][0]["loc"] == ["body", "tokens", 0]
