"""Queries and reports over the power series: a month's increase across a meter reset, in a
timezone; the billing CSV; consumption per day; raw and daily readings; the live view."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from consumption_monitor import routes
from consumption_monitor.reports import month_bounds

from tests.consumption.helpers import call, json_endpoint, memory

BERLIN = "Europe/Berlin"


def _last_month() -> str:
    first = datetime.now(ZoneInfo(BERLIN)).replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")


async def _setup() -> tuple[Any, str, str, str, datetime, datetime]:
    services = memory()
    ids = []
    for body in (
        json_endpoint("http://127.0.0.1:9/a.json"),
        json_endpoint("http://127.0.0.1:9/b.json", name="=HYPERLINK(1)", client="beta", location=""),
    ):
        status, created, _ = await call(services, routes.create_endpoint, "POST", "/endpoints", body=body)
        assert status == 201, created
        ids.append(created["id"])
    month = _last_month()
    start, end = month_bounds(month, BERLIN)
    a = {"endpoint": ids[0], "client": "acme"}
    b = {"endpoint": ids[1], "client": "beta"}
    points = [
        (start - timedelta(minutes=30), a, {"total_kwh": 95.0}),  # 23:30 the day before, in Berlin
        (start + timedelta(minutes=30), a, {"total_kwh": 100.0}),  # +5 in the month (Berlin), not in UTC
        (start + timedelta(days=9), a, {"total_kwh": 110.0}),  # +10
        (start + timedelta(days=14), a, {"total_kwh": 120.0}),  # +10
        (start + timedelta(days=15), a, {"total_kwh": 2.0}),  # the meter was replaced: +2 from 0
        (start + timedelta(days=19), a, {"total_kwh": 7.0}),  # +5
        (end + timedelta(minutes=30), a, {"total_kwh": 9.0}),  # next month in Berlin, still this one in UTC
        (start + timedelta(days=4), b, {"total_kwh": 50.0, "power_w": 500.0}),  # the first reading: +0
        (start + timedelta(days=24), b, {"total_kwh": 60.5, "power_w": 700.0}),  # +10.5
    ]
    await services.series.write_many("power", [{"ts": ts, "labels": lab, "values": v} for ts, lab, v in points])
    return services, ids[0], ids[1], month, start, end


async def test_monthly_report_counts_across_a_meter_reset_in_the_chosen_timezone_and_exports_csv():
    services, a, b, month, start, end = await _setup()
    status, report, _ = await call(
        services, routes.monthly_report, "GET", "/reports/monthly", query={"month": month, "tz": BERLIN}
    )
    assert status == 200, report
    assert report["clients"] == [
        {"client": "acme", "endpoints": 1, "kwh": 32.0},
        {"client": "beta", "endpoints": 1, "kwh": 10.5},
    ]
    assert [(r["endpoint"], r["kwh"], r["readings"], r["peak_power_w"]) for r in report["endpoints"]] == [
        (a, 32.0, 5, None),
        (b, 10.5, 2, 700.0),
    ]
    assert report["kwh"] == 42.5 and report["from"] == start.isoformat() and report["to"] == end.isoformat()
    # The same month in UTC: the readings around midnight fall on the other side.
    _, utc, _ = await call(services, routes.monthly_report, "GET", "/r", query={"month": month, "tz": "UTC"})
    assert [c["kwh"] for c in utc["clients"]] == [29.0, 10.5]

    status, csv, _ = await call(
        services, routes.monthly_report, "GET", "/r", query={"month": month, "tz": BERLIN, "format": "csv"}
    )
    assert csv.splitlines() == [
        "month,client,endpoint_id,endpoint,location,kwh,readings,peak_power_w",
        f"{month},acme,{a},rack A,DC1 / row 4,32.0,5,",
        f"{month},beta,{b},'=HYPERLINK(1),,10.5,2,700.0",  # a formula-looking name stays text
    ]
    status, by_client, _ = await call(
        services,
        routes.monthly_report,
        "GET",
        "/r",
        query={"month": month, "tz": BERLIN, "format": "csv", "by": "client"},
    )
    assert by_client.splitlines() == ["month,client,endpoints,kwh", f"{month},acme,1,32.0", f"{month},beta,1,10.5"]


async def test_consumption_readings_and_live():
    services, a, b, month, start, end = await _setup()
    query = {"period": "day", "tz": BERLIN, "from": start.isoformat(), "to": (start + timedelta(days=20)).isoformat()}
    status, per_day, _ = await call(
        services, routes.consumption, "GET", "/consumption", query={**query, "client": "acme"}
    )
    assert status == 200, per_day
    [row] = per_day["endpoints"]
    assert [bucket["kwh"] for bucket in row["buckets"]] == [5.0, 10.0, 10.0, 2.0, 5.0]
    assert datetime.fromisoformat(row["buckets"][0]["start"]) == start and row["kwh"] == 32.0
    assert per_day["clients"] == [{"client": "acme", "buckets": row["buckets"], "kwh": 32.0}]
    status, weekly, _ = await call(services, routes.consumption, "GET", "/c", query={**query, "period": "week"})
    # beta's only reading up to "to" is its first: nothing used yet.
    assert [(c["client"], c["kwh"]) for c in weekly["clients"]] == [("acme", 32.0), ("beta", 0.0)]

    window = {"from": (start - timedelta(hours=1)).isoformat(), "to": (end + timedelta(hours=1)).isoformat()}
    status, raw, _ = await call(services, routes.readings, "GET", "/r", params={"endpoint_id": a}, query=window)
    assert [p["values"]["total_kwh"] for p in raw["points"]] == [95.0, 100.0, 110.0, 120.0, 2.0, 7.0, 9.0]
    status, daily, _ = await call(
        services, routes.readings, "GET", "/r", params={"endpoint_id": b}, query={**window, "step": "day", "tz": BERLIN}
    )
    assert [p["values"]["power_w"]["max"] for p in daily["points"]] == [500.0, 700.0]
    assert [p["values"]["total_kwh"]["increase"] for p in daily["points"]] == [0.0, 10.5]

    status, live, _ = await call(services, routes.live, "GET", "/live")
    assert [(i["id"], i["status"], i["values"]["total_kwh"]) for i in live["items"]] == [
        (a, "pending", 9.0),
        (b, "pending", 60.5),
    ]
    assert live["summary"] == {"endpoints": 2, "pending": 2, "power_w": 0.0, "total_kwh": 69.5}

    for handler, q, needle in [
        (routes.consumption, {"tz": "Mars/Olympus"}, "not an IANA timezone"),
        (routes.consumption, {"from": "yesterday"}, "ISO 8601"),
        (routes.consumption, {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "before"),
        (routes.monthly_report, {"tz": "Nowhere"}, "not an IANA timezone"),
    ]:
        status, answer, _ = await call(services, handler, "GET", "/x", query=q)
        assert status == 422 and needle in answer["error"]["message"], (q, answer)
    status, answer, _ = await call(services, routes.readings, "GET", "/r", params={"endpoint_id": "nope"})
    assert status == 404 and answer["error"]["code"] == "not_found"
