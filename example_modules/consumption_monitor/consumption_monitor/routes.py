"""HTTP routes of the consumption monitor (``manifest.routes``, under ``/api/v1/m/consumption-monitor``).

Endpoints: ``GET/POST /endpoints``, ``GET/PATCH/DELETE /endpoints/{endpoint_id}``,
``POST /endpoints/{endpoint_id}/test`` (read it now), ``POST /endpoints/test`` (try a configuration
before saving it). Data: ``GET /endpoints/{endpoint_id}/readings``, ``GET /live``,
``GET /consumption``, ``GET /reports/monthly`` (JSON or CSV).

Credentials are write-only: a body may carry ``credentials``, whose ``password`` and ``token`` the
route's ``bodySchema`` marks secret (the platform seals them before the run starts, so its history
holds only tokens, and opens them for the handler); they are stored sealed with ``ctx.vault`` and no
answer carries them (``credentials_set`` only).
Refusals use the platform's error body ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from autoplat import JobContext
from autoplat.series import SeriesError
from consumption_monitor import model, reports, scrape
from consumption_monitor.jobs import SERIES, Settings, read_endpoint
from consumption_monitor.scrape import ScrapeError


def _error(ctx: JobContext, status: int, code: str, message: str, details: Any = None) -> dict[str, Any]:
    ctx.response.status = status
    return {"error": {"code": code, "message": message, "details": details}}


def _invalid(ctx: JobContext, details: list[dict[str, Any]]) -> dict[str, Any]:
    first = details[0]
    where = ".".join(str(p) for p in first["loc"][1:]) or "body"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return _error(ctx, 422, "validation_error", f"{where}: {first['msg']}{more}", details)


def _body(ctx: JobContext) -> Any:
    return ctx.request.body if ctx.request else None


def _query(ctx: JobContext) -> dict[str, Any]:
    return dict(ctx.request.query) if ctx.request else {}


def _param(ctx: JobContext) -> str:
    return str(ctx.request.params.get("endpoint_id", "")) if ctx.request else ""


async def _find(ctx: JobContext) -> dict[str, Any] | None:
    endpoint_id = _param(ctx)
    found = await ctx.storage.get(f"endpoint:{endpoint_id}") if endpoint_id else None
    return dict(found) if found else None


def _not_found(ctx: JobContext) -> dict[str, Any]:
    return _error(ctx, 404, "not_found", f"endpoint {_param(ctx)!r} not found")


async def _answer(ctx: JobContext, endpoint: dict[str, Any]) -> dict[str, Any]:
    health = await ctx.storage.get(f"health:{endpoint['id']}")
    return model.public(endpoint, health, model.now(), has_credentials=bool(endpoint.get("credentials_set")))


async def _store_credentials(ctx: JobContext, endpoint_id: str, credentials: Any) -> None:
    """Store (sealed) or clear the credentials; ``...`` (not given) keeps what is stored."""
    if credentials is ...:
        return
    if credentials is None:
        await ctx.storage.delete(f"cred:{endpoint_id}")
        return
    await ctx.storage.put(f"cred:{endpoint_id}", await model.seal_credentials(ctx.vault, credentials))


# --- endpoints ------------------------------------------------------------------------------------


async def list_endpoints(ctx: JobContext) -> dict[str, Any]:
    """``GET /endpoints?client=&status=``: every endpoint with its health, by client then name."""
    query = _query(ctx)
    at = model.now()
    healths = await model.load_health(ctx.storage)
    items = [
        model.public(e, healths.get(e["id"]), at, has_credentials=bool(e.get("credentials_set")))
        for e in await model.load_endpoints(ctx.storage)
    ]
    if query.get("client"):
        items = [i for i in items if i["client"] == query["client"]]
    if query.get("status"):
        items = [i for i in items if i["health"]["status"] == query["status"]]
    items.sort(key=lambda i: (i["client"], i["name"]))
    return {"items": items, "count": len(items)}


async def create_endpoint(ctx: JobContext) -> dict[str, Any]:
    """``POST /endpoints``: 201 with the endpoint (its credentials sealed, never echoed)."""
    try:
        endpoint, credentials = model.check_endpoint(_body(ctx))
    except model.Invalid as exc:
        return _invalid(ctx, exc.details)
    stamp = model.iso(model.now())
    endpoint = {"id": model.new_id(), **endpoint, "created_at": stamp, "updated_at": stamp}
    endpoint["credentials_set"] = isinstance(credentials, dict)
    await _store_credentials(ctx, endpoint["id"], credentials)
    await ctx.storage.put(f"endpoint:{endpoint['id']}", endpoint)
    ctx.logger.info("endpoint %s created (%s, %s)", endpoint["name"], endpoint["protocol"], endpoint["auth"]["type"])
    ctx.response.status = 201
    return await _answer(ctx, endpoint)


async def get_endpoint(ctx: JobContext) -> dict[str, Any]:
    endpoint = await _find(ctx)
    return await _answer(ctx, endpoint) if endpoint else _not_found(ctx)


async def update_endpoint(ctx: JobContext) -> dict[str, Any]:
    """``PATCH /endpoints/{id}``: the fields given change; ``credentials`` replaces them (``null`` clears)."""
    existing = await _find(ctx)
    if existing is None:
        return _not_found(ctx)
    try:
        endpoint, credentials = model.check_endpoint(_body(ctx), existing=existing)
    except model.Invalid as exc:
        return _invalid(ctx, exc.details)
    await _store_credentials(ctx, existing["id"], credentials)
    has = existing.get("credentials_set", False) if credentials is ... else isinstance(credentials, dict)
    updated = {
        "id": existing["id"],
        **endpoint,
        "created_at": existing["created_at"],
        "updated_at": model.iso(model.now()),
        "credentials_set": has,
    }
    await ctx.storage.put(f"endpoint:{existing['id']}", updated)
    return await _answer(ctx, updated)


async def delete_endpoint(ctx: JobContext) -> dict[str, Any] | None:
    """``DELETE /endpoints/{id}``: 204; its readings stay in the series (reports name it deleted)."""
    existing = await _find(ctx)
    if existing is None:
        return _not_found(ctx)
    for key in (f"endpoint:{existing['id']}", f"cred:{existing['id']}", f"health:{existing['id']}"):
        await ctx.storage.delete(key)
    ctx.response.status = 204
    return None


async def _try(ctx: JobContext, endpoint: dict[str, Any], credentials: dict[str, str] | None) -> dict[str, Any]:
    settings = Settings.of(ctx.module_config)
    started = model.now()
    try:
        if credentials is None:
            values = await read_endpoint(ctx, endpoint, settings)
        else:
            values = await scrape.read(
                ctx,
                endpoint,
                credentials,
                timeout=float(endpoint.get("timeout_seconds") or settings.timeout_seconds),
                max_bytes=settings.max_response_bytes,
                retries=0,
            )
    except ScrapeError as exc:
        answer: dict[str, Any] = {"ok": False, "error": exc.message}
        if endpoint["protocol"] == "html":
            # A page still loading would hold the screenshot too: there is nothing to see yet.
            shot = {"error": "no screenshot: the page did not load"} if exc.timed_out else None
            answer["screenshot"] = shot or await _screenshot(ctx, endpoint["id"])
        ctx.logger.warning("test of %s: %s", endpoint["name"], exc.message)
        return answer
    duration = int((model.now() - started).total_seconds() * 1000)
    return {"ok": True, "values": values, "duration_ms": duration, "read_at": model.iso(started)}


async def _screenshot(ctx: JobContext, endpoint_id: str) -> Any:
    try:
        async with asyncio.timeout(10):
            shot = await ctx.browser.screenshot(f"test-{endpoint_id}.png")
        return {"name": shot.get("name"), "url": shot.get("url"), "size": shot.get("size")}
    except Exception as exc:  # no page yet (the first navigation failed), or no browser here
        return {"error": f"no screenshot: {type(exc).__name__}"}


async def test_endpoint(ctx: JobContext) -> dict[str, Any]:
    """``POST /endpoints/{id}/test``: read it now; ``{"ok": true, "values"}`` or ``{"ok": false, "error"}``
    (plus a screenshot artifact for HTML endpoints). Nothing is stored."""
    endpoint = await _find(ctx)
    if endpoint is None:
        return _not_found(ctx)
    return await _try(ctx, endpoint, None)


async def test_configuration(ctx: JobContext) -> dict[str, Any]:
    """``POST /endpoints/test``: a create body, read once and not stored."""
    try:
        endpoint, credentials = model.check_endpoint(_body(ctx))
    except model.Invalid as exc:
        return _invalid(ctx, exc.details)
    return await _try(ctx, {"id": "trial", **endpoint}, credentials if isinstance(credentials, dict) else {})


# --- data -----------------------------------------------------------------------------------------


def _when(ctx: JobContext, query: dict[str, Any], name: str) -> datetime | None | dict[str, Any]:
    value = query.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        return _error(
            ctx,
            422,
            "validation_error",
            f"{name}: an ISO 8601 time with an offset, e.g. 2026-11-01T00:00:00Z",
            [{"loc": ["query", name], "msg": "not an ISO 8601 time with an offset", "type": "value_error"}],
        )
    return parsed


def _tz(ctx: JobContext, query: dict[str, Any]) -> str | dict[str, Any]:
    tz = str(query.get("tz") or Settings.of(ctx.module_config).timezone)
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return _error(
            ctx,
            422,
            "validation_error",
            f"tz: {tz!r} is not an IANA timezone",
            [{"loc": ["query", "tz"], "msg": "not an IANA timezone", "type": "value_error"}],
        )
    return tz


async def _names(ctx: JobContext) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in await model.load_endpoints(ctx.storage)}


async def readings(ctx: JobContext) -> dict[str, Any]:
    """``GET /endpoints/{id}/readings?from=&to=&step=raw|hour|day&tz=``: raw points or buckets
    (averages of the gauges, peak power, the energy used in each bucket)."""
    endpoint = await _find(ctx)
    if endpoint is None:
        return _not_found(ctx)
    query = _query(ctx)
    step = {"raw": "raw", "hour": "1h", "day": "1d"}[query.get("step", "raw")]
    start, end = _when(ctx, query, "from"), _when(ctx, query, "to")
    tz = _tz(ctx, query)
    for checked in (start, end, tz):
        if isinstance(checked, dict):
            return checked
    default_start, default_end = reports.default_range(step)
    start = start if isinstance(start, datetime) else default_start
    end = end if isinstance(end, datetime) else default_end
    if start >= end:
        return _error(
            ctx,
            422,
            "validation_error",
            "from must be before to",
            [{"loc": ["query", "from"], "msg": "must be before to", "type": "value_error"}],
        )
    labels = {"endpoint": endpoint["id"]}
    points: list[dict[str, Any]] = []
    try:
        if step == "raw":
            for p in await ctx.series.range(SERIES, start, end, labels=labels, limit=10_000):
                points.append({"ts": p.ts.isoformat(), "values": p.values})
        else:
            agg = {
                "total_kwh": ["increase", "last"],
                "power_w": ["avg", "max"],
                "voltage_v": ["avg"],
                "current_a": ["avg"],
                "power_factor": ["avg"],
            }
            for b in await ctx.series.rollup(SERIES, start, end, step=step, tz=str(tz), agg=agg, labels=labels):
                points.append({"ts": b.ts.isoformat(), "values": b.values})
    except SeriesError as exc:  # too many points for the range
        return _error(ctx, 422, "validation_error", str(exc), exc.details)
    points.sort(key=lambda p: p["ts"])
    return {
        "endpoint": endpoint["id"],
        "name": endpoint["name"],
        "step": query.get("step", "raw"),
        "from": start.isoformat(),
        "to": end.isoformat(),
        "points": points,
    }


async def live(ctx: JobContext) -> dict[str, Any]:
    """``GET /live``: the newest reading of every endpoint with its status, and totals."""
    at = model.now()
    endpoints = await model.load_endpoints(ctx.storage)
    healths = await model.load_health(ctx.storage)
    latest = {p.labels["endpoint"]: p for p in await ctx.series.latest(SERIES)}
    items = []
    counts: dict[str, int] = {}
    power = energy = 0.0
    for e in sorted(endpoints, key=lambda e: (e.get("client", ""), e["name"])):
        health = healths.get(e["id"]) or {}
        status = model.status_of(e, health, at)
        counts[status] = counts.get(status, 0) + 1
        point = latest.get(e["id"])
        values = dict(point.values) if point is not None else {}
        if status in ("online", "error") and "power_w" in values:
            power += values["power_w"]
        energy += values.get("total_kwh", 0.0)
        items.append(
            {
                "id": e["id"],
                "name": e["name"],
                "type": e["type"],
                "client": e.get("client", ""),
                "location": e.get("location", ""),
                "status": status,
                "read_at": point.ts.isoformat() if point is not None else None,
                "values": values,
                "last_error": health.get("last_error") if status != "online" else None,
                "power_threshold_w": e.get("power_threshold_w"),
            }
        )
    return {
        "at": model.iso(at),
        "items": items,
        "summary": {"endpoints": len(items), **counts, "power_w": round(power, 3), "total_kwh": round(energy, 3)},
    }


async def consumption(ctx: JobContext) -> dict[str, Any]:
    """``GET /consumption?period=hour|day|week|month&from=&to=&tz=&client=``: kWh per bucket, per
    endpoint and per client (default: the current period so far)."""
    query = _query(ctx)
    start, end, tz = _when(ctx, query, "from"), _when(ctx, query, "to"), _tz(ctx, query)
    for checked in (start, end, tz):
        if isinstance(checked, dict):
            return checked
    s = start if isinstance(start, datetime) else None
    e = end if isinstance(end, datetime) else None
    if s is not None and e is not None and s >= e:
        return _error(
            ctx,
            422,
            "validation_error",
            "from must be before to",
            [{"loc": ["query", "from"], "msg": "must be before to", "type": "value_error"}],
        )
    try:
        return await reports.consumption(
            ctx,
            period=query.get("period", "day"),
            start=s,
            end=e,
            tz=str(tz),
            names=await _names(ctx),
            client=query.get("client"),
        )
    except SeriesError as exc:  # a range too long for the period
        return _error(ctx, 422, "validation_error", str(exc), exc.details)


async def monthly_report(ctx: JobContext) -> Any:
    """``GET /reports/monthly?month=YYYY-MM&tz=&format=json|csv&by=client|endpoint``: billing."""
    query = _query(ctx)
    tz = _tz(ctx, query)
    if isinstance(tz, dict):
        return tz
    month = query.get("month") or datetime.now(ZoneInfo(tz)).strftime("%Y-%m")
    report = await reports.monthly(ctx, month=month, tz=tz, names=await _names(ctx))
    if query.get("format") == "csv":
        by = query.get("by", "endpoint")
        ctx.response.headers["Content-Type"] = "text/csv; charset=utf-8"
        ctx.response.headers["Content-Disposition"] = f'attachment; filename="consumption-{month}-by-{by}.csv"'
        return reports.monthly_csv(report, by=by)
    return report
