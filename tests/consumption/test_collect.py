"""The collect job in the SDK harness: due endpoints read concurrently, each bad meter a readable error
of its own, counters that go backwards or reset, incidents after repeated failures, budgets."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from consumption_monitor import model, routes
from consumption_monitor.simulator import TOKEN, Meter

from autoplat.testing import arun_job
from tests.consumption.helpers import CONFIG, MODULE, call, json_endpoint, memory


async def _create(services: Any, body: dict[str, Any]) -> str:
    status, answer, _ = await call(services, routes.create_endpoint, "POST", "/endpoints", body=body)
    assert status == 201, answer
    return str(answer["id"])


async def _collect(services: Any, **config: Any) -> Any:
    result = await arun_job(
        MODULE, "collect", module_config={**CONFIG, **config}, memory=services, allow_private="loopback"
    )
    assert result.status == "COMPLETED", result.error  # no endpoint can fail the run
    return result


async def _age(services: Any, seconds: int = 600) -> None:
    """Make every endpoint due again, as if its poll interval had passed."""
    for doc in await services.storage.query("health:", limit=100):
        health = dict(doc.value)
        last = model.now() - timedelta(seconds=seconds)
        health["last_attempt_at"] = model.iso(last)
        if health.get("last_reading_at"):
            health["last_reading_at"] = model.iso(last)
        await services.storage.put(doc.key, health)


async def test_one_broken_endpoint_never_fails_the_run_and_each_error_is_its_own(sim):
    services = memory()
    good = await _create(services, json_endpoint(f"{sim.url}/open/rack-a.json", power_threshold_w=2000))
    bearer = await _create(
        services,
        json_endpoint(
            f"{sim.url}/bearer/rack-b.json", client="beta", auth={"type": "bearer"}, credentials={"token": TOKEN}
        ),
    )
    sim.meters["spare"] = Meter("spare", 10.0, 100.0)  # the meter of the misconfigured endpoints
    bad = {
        "broken": json_endpoint(f"{sim.url}/open/broken.json", name="broken"),
        "html": json_endpoint(f"{sim.url}/page", name="html instead of json"),
        "huge": json_endpoint(f"{sim.url}/huge", name="50 MB"),
        "slow": json_endpoint(f"{sim.url}/slow", name="never answers", timeout_seconds=1),
        "path": json_endpoint(
            f"{sim.url}/open/spare.json", name="bad path", fields={"total_kwh": {"path": "$.meter.kwh"}}
        ),
        "regex": json_endpoint(
            f"{sim.url}/open/spare.json",
            name="regex",
            fields={"voltage_v": {"path": "$.meter.voltage", "regex": r"(\d+) kV"}},
        ),
        "prom": {
            **json_endpoint(f"{sim.url}/open/spare/metrics", name="no sample"),
            "protocol": "prometheus",
            "fields": {"total_kwh": {"metric": "pdu_energy_kwh_total"}},  # two outlets: which one?
        },
        "off": json_endpoint(f"{sim.url}/open/spare.json", name="disabled", enabled=False),
    }
    ids = {key: await _create(services, body) for key, body in bad.items()}
    result = await _collect(services, retries=1, failure_threshold=1)
    summary = result.result
    assert (summary["endpoints"], summary["due"], summary["read"], summary["failed"]) == (10, 9, 2, 7), summary
    errors = summary["errors"]
    assert errors[ids["broken"]] == f"{sim.url}/open/broken.json answered 500 (after 2 attempts)"
    assert errors[ids["html"]].startswith("expected JSON, got HTML: '<!DOCTYPE html><html><body><h1>Welcome")
    assert errors[ids["huge"]] == "the answer is larger than 5242880 bytes: refused"
    assert errors[ids["slow"]] == "no complete reading within 1 s (after 2 attempts)"
    assert errors[ids["path"]] == "JSON path '$.meter.kwh': $.meter has no 'kwh'"
    assert errors[ids["regex"]] == "voltage_v: regex '(\\\\d+) kV' matched nothing in '230,4 V'"
    assert errors[ids["prom"]] == "2 samples match pdu_energy_kwh_total: add label matchers to pick one"

    # Readings of the good ones only, with their labels; health recorded for every endpoint tried.
    written = services.series.written("power")
    assert sorted((p.labels["endpoint"], p.labels["client"]) for p in written) == sorted(
        [(good, "acme"), (bearer, "beta")]
    )
    status, listed, _ = await call(services, routes.list_endpoints, "GET", "/endpoints")
    health = {e["id"]: e["health"] for e in listed["items"]}
    assert health[good]["status"] == "online" and health[good]["last_values"]["total_kwh"] == 1234.75
    assert health[ids["broken"]]["status"] == "error" and health[ids["broken"]]["consecutive_failures"] == 1
    assert health[ids["broken"]]["last_error"] == errors[ids["broken"]]
    assert health[ids["off"]]["status"] == "disabled"
    # Incidents: every failing endpoint (threshold 1 here), and rack A over its 2 kW threshold.
    opened = {i["key"]: i for i in services.alerts.open()}
    assert set(opened) == {f"endpoint-failing:{i}" for k, i in ids.items() if k != "off"} | {f"power-over:{good}"}
    assert opened[f"power-over:{good}"]["severity"] == "critical"
    assert opened[f"power-over:{good}"]["labels"] == {"endpoint": good, "client": "acme"}
    assert "answered 500" in opened[f"endpoint-failing:{ids['broken']}"]["message"]
    assert any("rack A: current_a=9.332, power_w=2150" in e["message"] for e in result.logs)

    # Nothing is due a minute later; once due again, a repaired meter resolves its incident.
    again = await _collect(services, failure_threshold=1)
    assert again.result["due"] == 0
    sim.meters["broken"].fail = False
    sim.meters["rack-a"].power_w = 1800.0
    await _age(services)
    await _collect(services, retries=0, failure_threshold=1)
    assert services.alerts.incidents[f"endpoint-failing:{ids['broken']}"]["status"] == "resolved"
    assert services.alerts.incidents[f"power-over:{good}"]["status"] == "resolved"
    # Offline: no reading for three intervals.
    await _age(services, seconds=3 * 300 + 60)
    status, listed, _ = await call(services, routes.list_endpoints, "GET", "/endpoints", query={"status": "offline"})
    assert good in [e["id"] for e in listed["items"]]


async def test_a_counter_going_backwards_is_refused_and_a_reset_is_kept(sim):
    services = memory()
    eid = await _create(services, json_endpoint(f"{sim.url}/open/rack-a.json"))
    meter = sim.meters["rack-a"]
    meter.step_kwh = 0.0

    async def read(total: float) -> dict[str, Any]:
        meter.total_kwh = total
        await _age(services)
        outcome = await _collect(services)
        return dict(outcome.result)

    assert (await read(1000.0))["read"] == 1
    glitch = await read(990.0)  # 1 % lower: a glitch, refused
    assert glitch["errors"][eid] == (
        "total_kwh went backwards from 1000 to 990: reading refused "
        "(a reset reads below 10% of the last total, or is confirmed by the next reading)"
    )
    assert (await read(990.5))["read"] == 1  # the lower level confirmed: a replaced meter, a reset
    assert (await read(1.5))["read"] == 1  # far lower at once: a reset
    assert (await read(2.0))["read"] == 1
    totals = [p.values["total_kwh"] for p in sorted(services.series.written("power"), key=lambda p: p.ts)]
    assert totals == [1000.0, 990.5, 1.5, 2.0]


async def test_a_client_over_its_monthly_budget_opens_an_incident(sim):
    services = memory()
    await _create(services, json_endpoint(f"{sim.url}/open/rack-a.json"))
    sim.meters["rack-a"].step_kwh = 30.0
    budgets = {"client_budgets_kwh": {"acme": 50, "beta": 10}}
    first = await _collect(services, **budgets)
    assert first.result["budgets"]["acme"] == {"kwh": 0.0, "budget_kwh": 50.0, "over": False}
    for _ in range(2):
        await _age(services)
        outcome = await _collect(services, **budgets)
    assert outcome.result["budgets"]["acme"] == {"kwh": 60.0, "budget_kwh": 50.0, "over": True}
    assert outcome.result["budgets"]["beta"]["over"] is False
    [incident] = services.alerts.open()
    assert incident["key"].startswith("budget:acme:") and incident["labels"] == {"client": "acme"}
    assert "acme used 60 kWh" in incident["message"]


async def test_each_due_endpoint_is_an_item_of_its_own_retried_on_its_own(sim):
    """``due`` hands ``read`` ids and names only (Temporal keeps items in history); each endpoint is
    one item, and a transient failure is retried for that endpoint alone, ``retries`` times."""
    services = memory()
    good = await _create(services, json_endpoint(f"{sim.url}/open/rack-a.json"))
    broken = await _create(services, json_endpoint(f"{sim.url}/open/broken.json", name="broken"))
    result = await _collect(services, retries=2)
    due, read, record = result.steps
    assert sorted(due.result, key=lambda i: i["name"]) == [
        {"id": broken, "name": "broken"},
        {"id": good, "name": "rack A"},
    ]
    assert read.items is not None and len(read.items) == 2
    by_id = {r.result["id"]: r.result for r in read.items}
    assert set(by_id[good]) == {"id", "at", "values", "reset", "backwards_total"}
    assert by_id[broken]["error"] == f"{sim.url}/open/broken.json answered 500 (after 3 attempts)"
    tries = [r for r in sim.requests if r["target"].startswith("/open/")]
    assert sorted(r["target"] for r in tries) == ["/open/broken.json"] * 3 + ["/open/rack-a.json"]
    assert record.result["errors"] == {broken: by_id[broken]["error"]}
    assert (record.result["due"], record.result["read"], record.result["failed"]) == (2, 1, 1)
    # A reading that fails for good right away is not retried.
    await _age(services)
    sim.requests.clear()
    gone = await _create(services, json_endpoint(f"{sim.url}/open/nothing-here.json", name="missing"))
    again = await _collect(services, retries=2)
    assert gone in again.result["errors"]
    assert sum(1 for r in sim.requests if r["target"] == "/open/nothing-here.json") == 1
