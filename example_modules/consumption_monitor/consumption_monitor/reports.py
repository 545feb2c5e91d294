"""Consumption from the ``power`` series: counter increases per period, per endpoint and client.

Energy is always a counter **increase** computed by the platform's series queries: the step from
the last reading before a period counts in the period, and a drop of ``total_kwh`` counts as a
meter reset (from 0), so replacing a meter mid-month neither loses nor invents energy.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from autoplat.series import floor_time, next_edge
from consumption_monitor.jobs import NO_CLIENT, SERIES

STEPS = {"hour": "1h", "day": "1d", "week": "1w", "month": "1mo"}


def _round(value: float | None) -> float:
    return round(value or 0.0, 3)


def _iso(ts: datetime) -> str:
    return ts.isoformat()


async def consumption(
    ctx: Any,
    *,
    period: str,
    start: datetime | None,
    end: datetime | None,
    tz: str,
    names: dict[str, dict[str, Any]],
    client: str | None = None,
) -> dict[str, Any]:
    """kWh per ``period`` bucket (in ``tz``) per endpoint and per client, from ``start`` to ``end``
    (default: the current period so far)."""
    step = STEPS[period]
    zone = ZoneInfo(tz)
    end = end or datetime.now(zone)
    start = start or floor_time(end, step, zone)
    buckets = await ctx.series.rollup(
        SERIES,
        start,
        end,
        step=step,
        tz=tz,
        agg={"total_kwh": ["increase"]},
        fields=["total_kwh"],
        labels={"client": client} if client else None,
    )
    per_endpoint: dict[str, dict[str, Any]] = {}
    per_client: dict[str, dict[str, float]] = {}
    for bucket in buckets:
        kwh = _round((bucket.values.get("total_kwh") or {}).get("increase"))
        endpoint_id, owner = bucket.labels["endpoint"], bucket.labels["client"]
        row = per_endpoint.setdefault(
            endpoint_id,
            {
                "endpoint": endpoint_id,
                "name": names.get(endpoint_id, {}).get("name", "(deleted endpoint)"),
                "client": owner,
                "buckets": [],
                "kwh": 0.0,
            },
        )
        row["buckets"].append({"start": _iso(bucket.ts), "kwh": kwh})
        row["kwh"] = _round(row["kwh"] + kwh)
        slot = per_client.setdefault(owner, {})
        slot[_iso(bucket.ts)] = _round(slot.get(_iso(bucket.ts), 0.0) + kwh)
    clients: list[dict[str, Any]] = [
        {
            "client": name,
            "buckets": [{"start": ts, "kwh": kwh} for ts, kwh in sorted(slots.items())],
            "kwh": _round(sum(slots.values())),
        }
        for name, slots in sorted(per_client.items())
    ]
    return {
        "period": period,
        "tz": tz,
        "from": _iso(start),
        "to": _iso(end),
        "endpoints": sorted(per_endpoint.values(), key=lambda r: (r["client"], r["name"])),
        "clients": clients,
        "kwh": _round(sum(float(c["kwh"]) for c in clients)),
    }


def month_bounds(month: str, tz: str) -> tuple[datetime, datetime]:
    """``2026-11`` in ``tz``: local midnight of the 1st to local midnight of the next 1st."""
    zone = ZoneInfo(tz)
    year, number = (int(part) for part in month.split("-"))
    start = datetime(year, number, 1, tzinfo=zone)
    return start, next_edge(start, "1mo", zone)


async def monthly(ctx: Any, *, month: str, tz: str, names: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The billing report of a calendar month: kWh, readings and peak power per endpoint, kWh per client."""
    start, end = month_bounds(month, tz)
    buckets = await ctx.series.rollup(
        SERIES,
        start,
        end,
        step="1mo",
        tz=tz,
        agg={"total_kwh": ["increase", "count"], "power_w": ["max"]},
        fields=["total_kwh", "power_w"],
    )
    rows = []
    for bucket in buckets:
        energy = bucket.values.get("total_kwh") or {}
        if not energy:
            continue  # power-only meters (smart plugs without a counter) bill nothing
        endpoint_id = bucket.labels["endpoint"]
        meta = names.get(endpoint_id, {})
        rows.append(
            {
                "endpoint": endpoint_id,
                "name": meta.get("name", "(deleted endpoint)"),
                "location": meta.get("location", ""),
                "client": bucket.labels["client"],
                "kwh": _round(energy.get("increase")),
                "readings": int(energy.get("count") or 0),
                "peak_power_w": (bucket.values.get("power_w") or {}).get("max"),
            }
        )
    rows.sort(key=lambda r: (r["client"] == NO_CLIENT, r["client"], r["name"]))
    clients: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = clients.setdefault(row["client"], {"client": row["client"], "endpoints": 0, "kwh": 0.0})
        entry["endpoints"] += 1
        entry["kwh"] = _round(entry["kwh"] + row["kwh"])
    return {
        "month": month,
        "tz": tz,
        "from": _iso(start),
        "to": _iso(end),
        "clients": list(clients.values()),
        "endpoints": rows,
        "kwh": _round(sum(r["kwh"] for r in rows)),
    }


def _cell(value: Any) -> Any:
    # A spreadsheet runs a cell starting with = + - @ as a formula: names come from users.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def monthly_csv(report: dict[str, Any], *, by: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if by == "client":
        writer.writerow(["month", "client", "endpoints", "kwh"])
        for entry in report["clients"]:
            writer.writerow([report["month"], _cell(entry["client"]), entry["endpoints"], entry["kwh"]])
    else:
        writer.writerow(["month", "client", "endpoint_id", "endpoint", "location", "kwh", "readings", "peak_power_w"])
        for row in report["endpoints"]:
            writer.writerow(
                [
                    report["month"],
                    _cell(row["client"]),
                    row["endpoint"],
                    _cell(row["name"]),
                    _cell(row["location"]),
                    row["kwh"],
                    row["readings"],
                    _cell(row["peak_power_w"]),
                ]
            )
    return out.getvalue()


def default_range(step: str) -> tuple[datetime, datetime]:
    from datetime import UTC

    end = datetime.now(UTC)
    return end - (timedelta(days=1) if step in ("raw", "1h") else timedelta(days=31)), end
