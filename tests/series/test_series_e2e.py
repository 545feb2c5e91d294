"""A job writes and reads points through ctx.series from its confined handler process; the API
answers them (JSON, CSV, the latest per label set, 422s); another module sees none of them; the
maintenance workflow rolls the hours up and the answers stay the same."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.helpers import put_module, write_module

CODE = """
from datetime import datetime, timedelta


def record(ctx):
    start = datetime.fromisoformat(ctx.config["start"])
    points = [
        {
            "ts": start + timedelta(minutes=15 * i),
            "labels": {"meter": m},
            "values": {"energy_kwh": 100.0 + i, "power_w": float(i % 4)},
        }
        for m in ("m1", "m2")
        for i in range(192)
    ]
    written = ctx.series.write_many_sync("meter", points)
    ctx.series.write_sync("meter", {"meter": "m3"}, {"power_w": 1.5}, at=start)
    return {"written": written}


async def bad(ctx):
    await ctx.series.write("meter", {"meter": "m1"}, {"power_w": float("nan")})


async def read(ctx):
    start = datetime.fromisoformat(ctx.config["start"])
    days = await ctx.series.rollup(
        "meter", start, start + timedelta(days=2), step="1d", agg={"energy_kwh": ["increase"]}, labels={"meter": "m1"}
    )
    latest = await ctx.series.latest("meter")
    raw = await ctx.series.range("meter", start, start + timedelta(hours=1), labels={"meter": "m2"})
    return {
        "days": [[b.ts.isoformat(), b.values["energy_kwh"]["increase"]] for b in days],
        "latest": sorted(p.labels["meter"] for p in latest),
        "raw": [p.values for p in raw],
    }
"""
SERIES = [
    {
        "name": "meter",
        "fields": {"energy_kwh": {"type": "counter", "unit": "kWh"}, "power_w": {"type": "gauge"}},
        "labels": ["meter"],
    }
]
START = {"type": "object", "properties": {"start": {"type": "string"}}}
JOBS = [
    {"name": "record", "description": "record", "handler": "record", "config": START},
    {"name": "bad", "description": "bad", "handler": "bad"},
    {"name": "read", "description": "read", "handler": "read", "config": START},
]


@pytest.fixture
async def modules(sessions: Any, settings: Any, tmp_path: Path) -> None:
    for name, extra in (
        ("meters", {"series": SERIES, "permissions": {"services": ["series"]}}),
        ("spy", {"series": SERIES, "permissions": {"services": ["series"]}}),  # same names, its own data
        ("nope", {"series": SERIES}),  # never asked for the service
    ):
        await put_module(
            sessions, settings.state_dir, write_module(tmp_path, name=name, code=CODE, jobs=JOBS, extra=extra)
        )


async def _run(client: Any, headers: dict[str, str], module: str, job_type: str, **config: Any) -> dict[str, Any]:
    body = {
        "module": module,
        "job_type": job_type,
        "name": f"{module}-{job_type}-{uuid.uuid4().hex[:6]}",
        "config": config,
    }
    r = await client.post("/api/v1/jobs", json={**body, "schedule": None}, headers=headers)
    assert r.status_code == 201, r.text
    r = await client.post(f"/api/v1/jobs/{r.json()['id']}/execute?wait=true", headers=headers)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


async def test_a_job_writes_series_the_api_reads_and_rollups_agree(
    worker, client, modules, operator_headers, viewer_headers, temporal_env, temporal_settings
):
    start = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    iso = start.isoformat()
    first = await _run(client, operator_headers, "meters", "record", start=iso)
    assert first["status"] == "COMPLETED", first
    assert first["result"] == {"written": 384}
    again = await _run(client, operator_headers, "meters", "record", start=iso)  # a retried step: no duplicate
    assert again["result"] == {"written": 384}

    failed = await _run(client, operator_headers, "meters", "bad")
    assert failed["status"] == "FAILED" and "NaN and infinities are refused" in failed["error"]["message"], failed
    nope = await _run(client, operator_headers, "nope", "read", start=iso)
    assert nope["status"] == "FAILED" and "does not declare the series service" in nope["error"]["message"], nope

    mine = await _run(client, operator_headers, "meters", "read", start=iso)
    assert mine["result"]["days"] == [[iso, 95.0], [(start + timedelta(days=1)).isoformat(), 96.0]]
    assert mine["result"]["latest"] == ["m1", "m2", "m3"]
    assert [v["energy_kwh"] for v in mine["result"]["raw"]] == [100.0, 101.0, 102.0, 103.0]
    theirs = await _run(client, operator_headers, "spy", "read", start=iso)
    assert theirs["result"] == {"days": [], "latest": [], "raw": []}  # a module reads only its own series

    # The API, for every role (viewer here).
    listed = (await client.get("/api/v1/series?module=meters", headers=viewer_headers)).json()
    assert listed["items"] == [
        {
            "name": "meter",
            "description": "",
            "fields": {"energy_kwh": "counter", "power_w": "gauge"},
            "labels": ["meter"],
            "retention": {"rawDays": 400, "rollupDays": 1826},
            "label_sets": 3,
            "label_values": {"meter": ["m1", "m2", "m3"]},
        }
    ]
    q = {"module": "meters", "series": "meter"}
    raw = await client.get(
        "/api/v1/series/query",
        params={**q, "from": iso, "to": (start + timedelta(hours=1)).isoformat(), "label": "meter:m2"},
        headers=viewer_headers,
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["source"] == "raw" and [g["labels"] for g in body["groups"]] == [{"meter": "m2"}]
    assert [p["values"] for p in body["groups"][0]["points"]][:2] == [
        {"energy_kwh": 100.0, "power_w": 0.0},
        {"energy_kwh": 101.0, "power_w": 1.0},
    ]
    daily = {
        **q,
        "from": iso,
        "to": (start + timedelta(days=2)).isoformat(),
        "step": "1d",
        "agg": ["energy_kwh:increase", "power_w:max"],
        "label": "meter:m1",
    }
    before = (await client.get("/api/v1/series/query", params=daily, headers=viewer_headers)).json()
    assert [[p["values"]["energy_kwh"]["increase"] for p in g["points"]] for g in before["groups"]] == [[95.0, 96.0]]
    assert before["aggregations"] == {"energy_kwh": ["increase"], "power_w": ["max"]}
    latest = (await client.get("/api/v1/series/query", params={**q, "latest": "true"}, headers=viewer_headers)).json()
    assert [(g["labels"]["meter"], len(g["points"])) for g in latest["groups"]] == [("m1", 1), ("m2", 1), ("m3", 1)]
    csv = await client.get("/api/v1/series/query", params={**daily, "format": "csv"}, headers=viewer_headers)
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines() == [
        "ts,meter,energy_kwh_increase,power_w_max",
        f"{iso},m1,95.0,3.0",
        f"{(start + timedelta(days=1)).isoformat()},m1,96.0,3.0",
    ]

    # Clear refusals.
    for params, status, needle in [
        ({**daily, "step": "2h"}, 422, "request validation failed"),
        ({**q, "field": "volts"}, 422, "unknown field 'volts'"),
        ({**q, "from": iso, "to": iso}, 422, "must be before to"),
        ({**q, "label": "meter"}, 422, "is not name:value"),
        ({**q, "latest": "true", "step": "1h"}, 422, "leave step out"),
        ({**q, "agg": "power_w:increase", "step": "1d"}, 422, "increase applies to counter fields"),
        ({**q, "tz": "Nowhere/City", "step": "1d"}, 422, "not an IANA timezone"),
        ({**q, "series": "other"}, 404, "declares no series 'other'"),
        ({"module": "ghost", "series": "meter"}, 404, "module 'ghost' not found"),
    ]:
        r = await client.get("/api/v1/series/query", params=params, headers=viewer_headers)
        assert r.status_code == status and needle in r.json()["error"]["message"], (params, r.text)
    too_many = await client.get(
        "/api/v1/series/query",
        params={**q, "from": (start - timedelta(days=200)).isoformat(), "to": iso, "step": "1m"},
        headers=viewer_headers,
    )
    assert too_many.status_code == 422
    error = too_many.json()["error"]
    assert error["details"] == {"limit": 100_000, "suggested_step": "1h"}
    assert "more than 100000 points" in error["message"] and "step=1h" in error["message"]

    # The rollup schedule's workflow on the worker: the same answers, now from the rollups.
    result = await temporal_env.client.execute_workflow(
        "autoplat.maintenance",
        "series-rollup",
        id=f"series-rollup-{uuid.uuid4().hex[:6]}",
        task_queue=temporal_settings.task_queue,
    )
    assert result["hours_rolled_up"] == 2 * 48 + 1
    after = (await client.get("/api/v1/series/query", params=daily, headers=viewer_headers)).json()
    assert after["source"] == "rollup" and after["groups"] == before["groups"]
