"""Incidents end to end on a real Temporal dev server, PostgreSQL and a local webhook receiver.

1. A series rule evaluated by the platform's schedule: a meter above its threshold opens one
   incident (not the meter below it), the webhook gets "opened" exactly once, platform events are
   stored, an operator acknowledges over the API (note and actor on the timeline; a second ack is a
   409 naming the state), the incident resolves by itself when the reading falls below the resolve
   threshold, and "resolved" is delivered once; an unconfigured channel's failed send is recorded.
2. An event rule on dispatch, with its notification's worker SIGKILLed while the request is out:
   the send is retried on another worker with the same delivery id and recorded once as sent; the
   escalation timer raises the severity meanwhile and notifies once; a later alert refreshes the
   open incident; an operator dismisses it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from activities.services.series import SeriesService
from registry.models import Event
from tests.alerts.helpers import add_meters_module, receiver
from tests.conftest import eventually, running_worker

ROOT = Path(__file__).resolve().parents[2]


async def _incidents(client: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/alerts/incidents", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def _detail(client: Any, headers: dict[str, str], incident_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/alerts/incidents/{incident_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_series_rule_opens_notifies_acknowledges_and_resolves(
    temporal_settings, temporal_env, client, sessions, operator_headers, viewer_headers
):
    from workflows.maintenance import ensure_maintenance_schedule

    settings = temporal_settings
    settings.alerts_tick_seconds = 1
    await add_meters_module(sessions)
    db = SeriesService(SimpleNamespace(settings=settings, sessions=sessions)).module_series("meters")
    async with receiver() as hook:
        settings.notify_channels = {"ops": {"type": "webhook", "url": hook.url, "secret": "s3cret"}}
        rule = {
            "name": "meter over 3 kW",
            "severity": "critical",
            "source": "series",
            "message": "{{labels.meter}} draws {{value}} W (limit {{threshold}})",
            "interval_seconds": 1,
            "condition": {"module": "meters", "series": "meter", "field": "power_w", "agg": "last",
                          "window_minutes": 10, "op": "gt", "threshold": 3000, "resolve_threshold": 2500},
            "routes": [{"channels": ["ops", "nowhere"], "on": ["opened", "acknowledged", "resolved"]}],
        }  # fmt: skip
        r = await client.post("/api/v1/alerts/rules", json=rule, headers=operator_headers)
        assert r.status_code == 201, r.text
        rule_id = r.json()["id"]
        await db.write_many(
            "meter",
            [
                (datetime.now(UTC), {"site": "berlin", "meter": "m1"}, {"power_w": 3500.0}),
                (datetime.now(UTC), {"site": "berlin", "meter": "m2"}, {"power_w": 1000.0}),
            ],
        )
        async with running_worker(settings, temporal_env.client):
            await ensure_maintenance_schedule(temporal_env.client, settings)
            try:
                firing = await eventually(
                    lambda: _incidents(client, viewer_headers, status="firing"), timeout=30, what="an incident"
                )
                assert len(firing) == 1
                incident = firing[0]
                assert incident["labels"] == {"site": "berlin", "meter": "m1"}
                assert incident["severity"] == "critical" and incident["rule_id"] == rule_id
                assert incident["message"] == "m1 draws 3500 W (limit 3000)"
                assert incident["allowed_actions"] == ["acknowledge", "resolve", "dismiss"]
                iid = incident["id"]

                async def sent(transition: str) -> list[dict[str, Any]] | None:
                    detail = await _detail(client, viewer_headers, iid)
                    rows = [n for n in detail["notifications"] if n["transition"] == transition]
                    return rows if len(rows) == 2 and all(n["status"] != "sending" for n in rows) else None

                opened = {n["channel"]: n for n in await eventually(lambda: sent("opened"), what="opened sends")}
                assert opened["ops"]["status"] == "sent" and opened["ops"]["attempts"] == 1
                # A channel nobody configured: the incident is open, the failure recorded, not retried.
                assert opened["nowhere"]["status"] == "failed" and opened["nowhere"]["attempts"] == 1
                assert "unknown notification channel 'nowhere'" in opened["nowhere"]["error"]
                [delivery] = hook.by_transition("opened")
                assert delivery["headers"]["x-autoplat-delivery"] == opened["ops"]["delivery_id"]
                assert "x-autoplat-signature" in delivery["headers"]
                assert delivery["body"]["subject"] == "[CRITICAL] meter over 3 kW (site=berlin, meter=m1)"
                assert delivery["body"]["data"]["incident_id"] == iid

                # Acknowledged over the API, by an operator, with a note.
                r = await client.post(
                    f"/api/v1/alerts/incidents/{iid}/acknowledge", json={"note": "on it"}, headers=operator_headers
                )
                assert r.status_code == 200, r.text
                acked = r.json()
                assert acked["status"] == "acknowledged" and acked["allowed_actions"] == ["resolve", "dismiss"]
                entry = acked["timeline"][-1]
                assert entry["kind"] == "acknowledged" and entry["note"] == "on it"
                assert entry["actor"].startswith("operator")
                r = await client.post(f"/api/v1/alerts/incidents/{iid}/acknowledge", headers=operator_headers)
                assert r.status_code == 409, r.text
                assert r.json()["error"]["details"]["current_state"] == "acknowledged"
                r = await client.post(f"/api/v1/alerts/incidents/{iid}/resolve", headers=viewer_headers)
                assert r.status_code == 403

                # The reading falls below the resolve threshold: resolved by the platform.
                await db.write("meter", {"site": "berlin", "meter": "m1"}, {"power_w": 2400.0})
                await eventually(lambda: sent("resolved"), timeout=30, what="the incident to resolve")
                detail = await _detail(client, viewer_headers, iid)
                assert detail["status"] == "resolved" and detail["allowed_actions"] == []
                assert [e["kind"] for e in detail["timeline"]] == ["opened", "acknowledged", "resolved"]
                assert detail["timeline"][-1]["actor"] == "system"
                assert "condition cleared" in detail["timeline"][-1]["note"]
                r = await client.post(f"/api/v1/alerts/incidents/{iid}/acknowledge", headers=operator_headers)
                assert r.status_code == 409 and "it is resolved" in r.json()["error"]["message"]
                # Exactly one delivery per transition the route asked for, each with its own id.
                assert [len(hook.by_transition(t)) for t in ("opened", "acknowledged", "resolved")] == [1, 1, 1]
                assert len({r["headers"]["x-autoplat-delivery"] for r in hook.requests}) == len(hook.requests) == 3
                r = await client.get(
                    "/api/v1/alerts/incidents", params={"label": "meter:m1", "severity": "critical"},
                    headers=viewer_headers,
                )  # fmt: skip
                assert [i["id"] for i in r.json()["items"]] == [iid]
                assert await _incidents(client, viewer_headers, label="meter:m2") == []
                async with sessions() as session:
                    names = list(
                        await session.scalars(
                            select(Event.name).where(Event.name.like("alert.%") | Event.name.like("incident.%"))
                        )
                    )
                assert sorted(names) == sorted(
                    ["alert.fired", "incident.opened", "incident.acknowledged", "incident.resolved"]
                )
            finally:
                async for listed in await temporal_env.client.list_schedules():
                    await temporal_env.client.get_schedule_handle(listed.id).delete()


def _worker_env(settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPLAT_")}
    env.update(
        AUTOPLAT_DATABASE_URL=settings.database_url,
        AUTOPLAT_REDIS_URL=settings.redis_url,
        AUTOPLAT_REDIS_PREFIX=settings.redis_prefix,
        AUTOPLAT_TEMPORAL_ADDRESS=settings.temporal_address,
        AUTOPLAT_TASK_QUEUE=settings.task_queue,
        AUTOPLAT_JWT_SECRET=settings.jwt_secret.get_secret_value(),
        AUTOPLAT_STATE_DIR=str(settings.state_dir),
        AUTOPLAT_MAINTENANCE_SCHEDULE="false",
        AUTOPLAT_HTTP_ALLOW_PRIVATE="loopback",
        AUTOPLAT_NOTIFY_CHANNELS=__import__("json").dumps(settings.notify_channels),
        AUTOPLAT_HANDLER_POOL_SIZE="0",
    )
    return env


WORKER_MAIN = (
    "import asyncio\n"
    "from registry.settings import Settings\n"
    "from workflows.worker import run_worker\n"
    "asyncio.run(run_worker(Settings()))\n"
)


async def test_a_worker_killed_mid_send_sends_once_per_delivery_id(
    temporal_settings, temporal_env, client, sessions, operator_headers, viewer_headers, tmp_path
):
    # (temporal_settings first: the API's dispatcher takes the test's task queue when it starts.)
    from workflows.client import connect
    from workflows.worker import WorkerDeps, build_worker

    settings = temporal_settings
    async with receiver() as hook:
        hook.hold_first = True
        settings.notify_channels = {"ops": {"type": "webhook", "url": hook.url}}
        rule = {
            "name": "alarm",
            "severity": "warning",
            "source": "event",
            "message": "{{event.payload.meter}} raised level {{event.payload.level}}",
            "condition": {"pattern": "meter.alarm", "conditions": [{"path": "level", "op": "gte", "value": 5},
                          {"path": "meter", "op": "exists"}], "join": "and", "group_by": ["meter"]},
            "routes": [{"channels": ["ops"]}],
            # Unacknowledged for 3 s: critical, and the route's channel is told again (a durable timer).
            "escalation": {"after_minutes": 0.05, "severity": "critical"},
        }  # fmt: skip
        r = await client.post("/api/v1/alerts/rules", json=rule, headers=operator_headers)
        assert r.status_code == 201, r.text

        # Workflow tasks run here on a worker that takes no activity; the activities (the send)
        # go to a worker process, SIGKILLed while its request is out.
        opened: list[WorkerDeps] = []
        tasks: list[tuple[Any, asyncio.Task[None]]] = []

        async def start(**kwargs: Any) -> None:
            deps = WorkerDeps.open(settings)
            opened.append(deps)
            w = build_worker(await connect(settings), deps, graceful_shutdown_seconds=2, **kwargs)
            tasks.append((w, asyncio.create_task(w.run())))

        proc: asyncio.subprocess.Process | None = None
        try:
            await start(no_remote_activities=True)
            with (tmp_path / "worker.log").open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", WORKER_MAIN,
                    cwd=str(ROOT), env=_worker_env(settings), stdout=out, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            for level in (2, 7):  # the first does not match
                r = await client.post(
                    "/api/v1/events", json={"name": "meter.alarm", "payload": {"meter": "m1", "level": level}},
                    headers=operator_headers,
                )  # fmt: skip
                assert r.status_code in (201, 202), r.text
            await asyncio.wait_for(hook.arrived.wait(), timeout=60)  # a fresh interpreter is slow on a busy box
            [incident] = await _incidents(client, viewer_headers, status="firing")
            assert incident["message"] == "m1 raised level 7" and incident["labels"] == {"meter": "m1"}
            row = (await _detail(client, viewer_headers, incident["id"]))["notifications"]
            assert [(n["status"], n["attempts"]) for n in row] == [("sending", 1)]
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            hook.release.set()  # the first request ends with nobody left to read the answer

            await start()  # another worker, taking activities too

            async def settled() -> list[dict[str, Any]] | None:
                sends = (await _detail(client, viewer_headers, incident["id"]))["notifications"]
                return sends if len(sends) == 2 and all(n["status"] != "sending" for n in sends) else None

            sends = {n["transition"]: n for n in await eventually(settled, timeout=30, what="sends recorded")}
            send = sends["opened"]
            assert send["status"] == "sent" and send["attempts"] == 2, send
            # The request was repeated with the same delivery id: one notification for the receiver.
            assert [r["headers"]["x-autoplat-delivery"] for r in hook.by_transition("opened")] == [
                send["delivery_id"]
            ] * 2
            # Escalated while nobody acknowledged (the timer ran while the activity worker was dead).
            assert sends["escalated"]["status"] == "sent" and sends["escalated"]["attempts"] == 1
            [escalated] = hook.by_transition("escalated")
            assert escalated["body"]["subject"].startswith("[escalated: CRITICAL]")
            detail = await _detail(client, viewer_headers, incident["id"])
            assert detail["severity"] == "critical" and detail["escalated"] is True
            assert [e["kind"] for e in detail["timeline"]] == ["opened", "escalated"]

            # A later alert of the same label set joins the open incident (no second incident, no send).
            r = await client.post(
                "/api/v1/events", json={"name": "meter.alarm", "payload": {"meter": "m1", "level": 9}},
                headers=operator_headers,
            )  # fmt: skip

            async def refreshed() -> dict[str, Any] | None:
                detail = await _detail(client, viewer_headers, incident["id"])
                return detail if detail["fire_count"] == 2 else None

            detail = await eventually(refreshed, what="the incident to count the second alert")
            assert detail["message"] == "m1 raised level 9"
            assert [e["kind"] for e in detail["timeline"]] == ["opened", "escalated", "fired"]
            assert len(await _incidents(client, viewer_headers)) == 1
            r = await client.post(
                f"/api/v1/alerts/incidents/{incident['id']}/dismiss",
                json={"note": "test rig"},
                headers=operator_headers,
            )
            assert r.status_code == 200 and r.json()["status"] == "dismissed", r.text
            assert len(hook.requests) == 3  # the route does not ask for "dismissed"

            # The next alert of that label set opens a new incident (also while the last is closing).
            r = await client.post(
                "/api/v1/events", json={"name": "meter.alarm", "payload": {"meter": "m1", "level": 6}},
                headers=operator_headers,
            )  # fmt: skip
            [second] = await eventually(
                lambda: _incidents(client, viewer_headers, status="firing"), what="a second incident"
            )
            assert second["id"] != incident["id"] and second["message"] == "m1 raised level 6"
            assert second["workflow_id"] == incident["workflow_id"] and second["fire_count"] == 1
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            for w, _ in tasks:
                await w.shutdown()
            await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
            for deps in opened:
                await deps.close()


async def test_an_alert_while_the_last_incident_closes_opens_the_next(
    temporal_settings, worker, temporal_env, sessions
):
    """A fire signal that reaches the incident's workflow after it resolved, while its "resolved"
    notification is still out, is not lost: the workflow continues as the next incident."""
    from activities.alerts_types import Clear, Fire, IncidentInput, incident_workflow_id
    from registry.models import Incident
    from registry.services.alerts_eval import Signal, send_signals

    async with receiver() as hook:
        temporal_settings.notify_channels = {"ops": {"type": "webhook", "url": hook.url}}
        hook.hold_transition = "resolved"
        route = {"severities": ["warning"], "channels": ["ops"], "on": ["opened", "resolved"]}
        spec = IncidentInput(
            rule_id=None, rule_name="module m", group_key="g1", labels={"module": "m"}, severity="warning",
            module_name="m", dedup_key="k", routes=[route],
        )  # fmt: skip
        wid = incident_workflow_id(None, "g1", "m")
        now = datetime.now(UTC).isoformat()

        async def signal(**kw: Any) -> None:
            await send_signals(
                temporal_env.client, temporal_settings.task_queue, [Signal(workflow_id=wid, incident=spec, **kw)]
            )

        async def rows() -> list[Incident]:
            async with sessions() as session:
                return list(await session.scalars(select(Incident).order_by(Incident.opened_at)))

        await signal(fire=Fire(title="first", message="one", at=now, key="a"))
        await eventually(lambda: asyncio.sleep(0, len(hook.by_transition("opened")) == 1), what="opened sent")
        await signal(clear=Clear(at=now, reason="fine again"))
        await eventually(lambda: asyncio.sleep(0, len(hook.by_transition("resolved")) == 1), what="resolved out")
        await signal(fire=Fire(title="second", message="two", at=now, key="b"))  # the run is closing
        hook.release.set()
        incidents = await eventually(lambda: _two(rows), what="the next incident")
        assert [(i.title, i.status) for i in incidents] == [("first", "resolved"), ("second", "firing")]
        assert incidents[0].workflow_id == incidents[1].workflow_id == wid
        assert incidents[0].run_id != incidents[1].run_id


async def _two(rows: Any) -> Any:
    found = await rows()
    return found if len(found) == 2 else None
