"""Alert evaluation: what opens and closes incidents.

* **Series rules and "not succeeded for" job rules** are evaluated by one evaluator run every
  ``AUTOPLAT_ALERTS_TICK_SECONDS`` (a Temporal schedule of the maintenance workflow,
  ``autoplat-alerts-evaluate``), each rule when its own interval has passed. One schedule for all
  rules, not one per rule: on a small box the Temporal server's CPU is the ceiling, and 200 rules
  as 200 schedules would be 200 workflow runs a minute where one run reads them all.
* **Event rules and "failed N times in a row" job rules** are evaluated when the dispatcher
  dispatches each stored event (:func:`on_events`, called from registry/services/dispatch.py).

Rules that are off (``enabled`` false) or paused (their module is disabled) are not evaluated.

Either way the outcome is a list of :class:`Signal` sent to incident workflows with
:func:`send_signals` *before* the evaluation state commits: a failed send rolls the state back and
the next evaluation sends again, and the workflow takes a repeated fire as a refresh (or drops it,
by its key), so nothing is lost and nothing opens twice.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from activities.alerts_types import (
    CLOSED,
    INCIDENT_WORKFLOW,
    Clear,
    Fire,
    IncidentInput,
    incident_workflow_id,
)
from registry.models import AlertRule, AlertState, Event, Execution, ExecutionStatus, Incident, Job, SeriesPoint
from registry.services import alerts

if TYPE_CHECKING:
    from temporalio.client import Client

log = logging.getLogger(__name__)

FAILED = (ExecutionStatus.FAILED.value, ExecutionStatus.TIMED_OUT.value)


@dataclass
class Signal:
    """A fire or a clear for the incident workflow of (rule, label set)."""

    workflow_id: str
    incident: IncidentInput
    fire: Fire | None = None
    clear: Clear | None = None


def incident_input(rule: AlertRule, labels: dict[str, str]) -> IncidentInput:
    merged = {**(rule.labels or {}), **labels}
    return IncidentInput(
        rule_id=rule.id,
        rule_name=rule.name,
        group_key=alerts.group_key(merged),
        labels=merged,
        severity=rule.severity,
        routes=list(rule.routes or []),
        escalation=rule.escalation,
        resolve_after_minutes=rule.resolve_after_minutes,
        auto_resolve=rule.source != "event",
    )


def _signal(rule: AlertRule, labels: dict[str, str]) -> Signal:
    spec = incident_input(rule, labels)
    return Signal(workflow_id=incident_workflow_id(rule.id, spec.group_key), incident=spec)


def _fire(rule: AlertRule, labels: dict[str, str], context: dict[str, Any], now: datetime, **kw: Any) -> Signal:
    signal = _signal(rule, labels)
    context = {"rule": {"id": rule.id, "name": rule.name, "severity": rule.severity}, "labels": signal.incident.labels,
               **context}  # fmt: skip
    shown = ", ".join(f"{k}={v}" for k, v in labels.items())
    signal.fire = Fire(
        title=f"{rule.name} ({shown})" if shown else rule.name,
        message=alerts.render(rule.message, context),
        at=now.isoformat(),
        value=context.get("value"),
        **kw,
    )
    return signal


def _clear(rule: AlertRule, labels: dict[str, str], now: datetime, reason: str, value: float | None = None) -> Signal:
    signal = _signal(rule, labels)
    signal.clear = Clear(at=now.isoformat(), reason=reason, value=value)
    return signal


async def _states(session: AsyncSession, rule: AlertRule) -> dict[str, AlertState]:
    rows = await session.scalars(select(AlertState).where(AlertState.rule_id == rule.id))
    return {row.group_key: row for row in rows}


def _state(session: AsyncSession, states: dict[str, AlertState], rule: AlertRule, labels: dict[str, str]) -> AlertState:
    key = alerts.group_key({**(rule.labels or {}), **labels})
    state = states.get(key)
    if state is None:
        state = AlertState(rule_id=rule.id, group_key=key, labels=labels, breaches=0, firing=False)
        session.add(state)
        states[key] = state
    return state


# --- series rules ---------------------------------------------------------------------------------
@dataclass
class SeriesData:
    """Points of one field per label set, in time order (ts, value)."""

    labels: dict[int, dict[str, str]]
    points: dict[int, list[tuple[datetime, float]]]


async def series_data(session: AsyncSession, cond: dict[str, Any], start: datetime, end: datetime) -> SeriesData | None:
    from registry.services import series as store

    found = await store.module_manifest(session=session, name=cond["module"])
    if found is None:
        return None
    row = await store.get_series(session=session, module_id=found[0], name=cond["series"])
    if row is None or cond["field"] not in (row.fields or []):
        return SeriesData(labels={}, points={})
    ids = await store.label_sets(session=session, series_id=row.id, filters=cond.get("labels") or None)
    points: dict[int, list[tuple[datetime, float]]] = {i: [] for i in ids}
    if ids:
        rows = await session.execute(
            select(SeriesPoint.label_set_id, SeriesPoint.ts, SeriesPoint.value)
            .where(
                SeriesPoint.series_id == row.id,
                SeriesPoint.field == row.fields.index(cond["field"]),
                SeriesPoint.ts > start,
                SeriesPoint.ts <= end,
            )
            .order_by(SeriesPoint.label_set_id, SeriesPoint.ts)
        )
        for ls, ts, value in rows:
            if int(ls) in points:
                when = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
                points[int(ls)].append((when, float(value)))
    return SeriesData(labels=ids, points=points)


def _window(points: list[tuple[datetime, float]], start: datetime, end: datetime) -> list[float]:
    times = [p[0] for p in points]
    lo, hi = bisect.bisect_right(times, start), bisect.bisect_right(times, end)
    return [v for _, v in points[lo:hi]]


async def evaluate_series(
    session: AsyncSession, rule: AlertRule, now: datetime, cache: dict[str, SeriesData | None] | None = None
) -> list[Signal]:
    """One evaluation of a series rule at ``now``. ``cache``: the points read in this pass, shared
    by the rules that read the same series, field, filters and span (one query, not one per rule)."""
    cond = rule.condition
    window = timedelta(minutes=cond["window_minutes"])
    no_data = timedelta(minutes=cond["no_data_minutes"]) if cond.get("no_data_minutes") else None
    start = now - max(window, no_data or window)
    key = json.dumps([cond["module"], cond["series"], cond["field"], cond.get("labels") or {}, start.isoformat()],
                     sort_keys=True)  # fmt: skip
    if cache is not None and key in cache:
        data = cache[key]
    else:
        data = await series_data(session, cond, start, now)
        if cache is not None:
            cache[key] = data
    if data is None:
        return []
    states = await _states(session, rule)
    out: list[Signal] = []
    active = alerts.in_windows(rule.active or [], now)
    for ls, labels in data.labels.items():
        points = data.points.get(ls, [])
        value = alerts.aggregate(cond["agg"], _window(points, now - window, now))
        silent = no_data is not None and not _window(points, now - no_data, now)
        key = alerts.group_key({**(rule.labels or {}), **labels})
        state = states.get(key)
        if state is None:
            if not silent and (value is None or not alerts.breaches(cond["op"], value, cond["threshold"])):
                continue  # nothing to remember: a quiet label set costs no row and no write
            state = _state(session, states, rule, labels)
        step = alerts.advance(state, cond, value, silent, now)
        context = {"value": value, "threshold": cond["threshold"], **{k: cond[k] for k in
                   ("module", "series", "field", "agg", "window_minutes")}}  # fmt: skip
        if step.fire and active and alerts.cooled_down(state, rule.cooldown_seconds, now):
            state.firing = True
            state.last_opened_at = now  # the cooldown counts from here (the workflow's open sets it too)
            since = state.since or now
            if silent and value is None:
                context["value"] = None
            out.append(_fire(rule, labels, context, now, since=since.isoformat()))
        elif step.clear:
            state.firing = False
            out.append(_clear(rule, labels, now, f"{cond['agg']} {cond['field']} = {value:.6g}", value))
    return out


# --- job rules ------------------------------------------------------------------------------------
async def _target_jobs(session: AsyncSession, target: str) -> list[Job]:
    job = await session.get(Job, target)
    if job is not None:
        return [job]
    module, _, job_type = target.partition(".")
    return list(await session.scalars(select(Job).where(Job.module_name == module, Job.job_type == job_type)))


def _job_labels(job: Job) -> dict[str, str]:
    return {"module": job.module_name, "job_type": job.job_type, "job_id": job.id}


async def evaluate_stale_jobs(session: AsyncSession, rule: AlertRule, now: datetime) -> list[Signal]:
    """``not_succeeded_minutes``: the newest COMPLETED run of each target job is too old."""
    limit = timedelta(minutes=rule.condition["not_succeeded_minutes"])
    states = await _states(session, rule)
    out = []
    for job in await _target_jobs(session, rule.condition["job"]):
        last = await session.scalar(
            select(Execution.finished_at)
            .where(Execution.job_id == job.id, Execution.status == ExecutionStatus.COMPLETED.value)
            .order_by(Execution.finished_at.desc())
            .limit(1)
        )
        reference = max(t for t in (last, rule.created_at, job.created_at) if t is not None)
        labels = _job_labels(job)
        state = _state(session, states, rule, labels)
        stale = now - reference > limit
        if stale and not state.firing:
            if alerts.in_windows(rule.active or [], now) and alerts.cooled_down(state, rule.cooldown_seconds, now):
                state.firing = True
                state.last_opened_at = now
                state.since = reference + limit
                context = {"job": {"id": job.id, "module": job.module_name, "job_type": job.job_type,
                                   "name": job.name}, "value": (now - reference).total_seconds() / 60}  # fmt: skip
                out.append(_fire(rule, labels, context, now, since=state.since.isoformat()))
        elif not stale and state.firing:
            state.firing = False
            out.append(_clear(rule, labels, now, "the job succeeded"))
    return out


async def _failure_streak(session: AsyncSession, job_id: str, n: int) -> tuple[int, str | None]:
    """Failed runs in a row at the head of the job's finished runs (at most ``n``), and the last error."""
    rows = (
        await session.execute(
            select(Execution.status, Execution.error)
            .where(
                Execution.job_id == job_id,
                Execution.status.in_([*FAILED, ExecutionStatus.COMPLETED.value]),
            )
            .order_by(Execution.finished_at.desc().nulls_last(), Execution.created_at.desc())
            .limit(n)
        )
    ).all()
    streak = 0
    for status, _ in rows:
        if status not in FAILED:
            break
        streak += 1
    error = rows[0][1] if rows and rows[0][0] in FAILED else None
    return streak, (error or {}).get("message") if isinstance(error, dict) else None


def _job_matches(target: str, payload: dict[str, Any]) -> bool:
    return payload.get("job_id") == target or f"{payload.get('module')}.{payload.get('job_type')}" == target


# --- rules by batch -------------------------------------------------------------------------------
def due(rule: AlertRule, now: datetime, slack: float) -> bool:
    last = rule.last_evaluated_at
    return last is None or (now - last).total_seconds() + slack >= rule.interval_seconds


async def evaluate_due(session: AsyncSession, *, now: datetime | None = None, slack: float = 0.5) -> list[Signal]:
    """Series rules and "not succeeded for" job rules whose interval has passed."""
    now = now or datetime.now(UTC)
    rules = await session.scalars(
        select(AlertRule).where(
            AlertRule.enabled.is_(True), AlertRule.paused_reason.is_(None), AlertRule.source.in_(("series", "job"))
        )
    )
    out: list[Signal] = []
    cache: dict[str, SeriesData | None] = {}
    for rule in rules:
        if rule.source == "job" and "not_succeeded_minutes" not in rule.condition:
            continue
        if not due(rule, now, slack):
            continue
        try:
            async with session.begin_nested():
                if rule.source == "series":
                    out += await evaluate_series(session, rule, now, cache)
                else:
                    out += await evaluate_stale_jobs(session, rule, now)
        except Exception:  # noqa: BLE001 - one broken rule must not stop the others
            log.exception("alert rule %s (%s) could not be evaluated", rule.name, rule.id)
        rule.last_evaluated_at = now
    return out


async def _open_incident(session: AsyncSession, rule: AlertRule, key: str) -> bool:
    found = await session.scalar(
        select(Incident.id)
        .where(Incident.rule_id == rule.id, Incident.group_key == key, Incident.status.not_in(CLOSED))
        .limit(1)
    )
    return found is not None


async def on_events(session: AsyncSession, batch: Sequence[Event]) -> list[Signal]:
    """Event rules and "failed N times in a row" job rules, for a batch of stored events."""
    interesting = [e for e in batch if not e.name.startswith(("alert.", "incident."))]
    if not interesting:
        return []
    rules = list(
        await session.scalars(
            select(AlertRule).where(
                AlertRule.enabled.is_(True), AlertRule.paused_reason.is_(None), AlertRule.source.in_(("event", "job"))
            )
        )
    )
    if not rules:
        return []
    now = datetime.now(UTC)
    out: list[Signal] = []
    for event in interesting:
        for rule in rules:
            if rule.source == "event":
                signal = await _event_rule(session, rule, event, now)
            elif event.name.startswith("job.") and "failures" in rule.condition:
                signal = await _job_failure_rule(session, rule, event, now)
            else:
                signal = None
            if signal is not None:
                out.append(signal)
    return out


async def _event_rule(session: AsyncSession, rule: AlertRule, event: Event, now: datetime) -> Signal | None:
    if not alerts.event_matches(rule.condition, event.name, event.payload):
        return None
    labels = alerts.event_labels(rule.condition, event.payload)
    states = await _states(session, rule)
    state = _state(session, states, rule, labels)
    key = state.group_key
    if not await _open_incident(session, rule, key):
        if not alerts.in_windows(rule.active or [], now) or not alerts.cooled_down(state, rule.cooldown_seconds, now):
            return None
        state.last_opened_at = now  # the cooldown counts from this open
    state.firing = True
    context = {"event": {"id": event.id, "name": event.name, "source": event.source, "payload": event.payload}}
    return _fire(rule, labels, context, now, key=event.id, since=event.received_at.isoformat())


async def _job_failure_rule(session: AsyncSession, rule: AlertRule, event: Event, now: datetime) -> Signal | None:
    payload = event.payload or {}
    if not _job_matches(rule.condition["job"], payload) or not payload.get("job_id"):
        return None
    job = await session.get(Job, payload["job_id"])
    if job is None:
        return None
    labels = _job_labels(job)
    states = await _states(session, rule)
    state = _state(session, states, rule, labels)
    if event.name == "job.completed":
        state.breaches = 0
        if state.firing:
            state.firing = False
            return _clear(rule, labels, now, "the job succeeded")
        return None
    if event.name not in ("job.failed", "job.timed_out"):
        return None
    needed = rule.condition["failures"]
    streak, error = await _failure_streak(session, job.id, needed)
    state.breaches = streak
    if streak < needed or state.firing:
        return None
    if not alerts.in_windows(rule.active or [], now) or not alerts.cooled_down(state, rule.cooldown_seconds, now):
        return None
    state.firing = True
    state.last_opened_at = now
    context = {
        "job": {"id": job.id, "module": job.module_name, "job_type": job.job_type, "name": job.name},
        "failures": streak,
        "value": float(streak),
        "threshold": float(needed),
        "execution": {"id": payload.get("execution_id"), "error": error or payload.get("error")},
    }
    return _fire(rule, labels, context, now, key=event.id, since=event.received_at.isoformat())


# --- to Temporal ------------------------------------------------------------------------------------
async def send_signals(client: Client, task_queue: str, signals: Sequence[Signal], *, in_flight: int = 16) -> None:
    """Fire: signal-with-start the incident workflow (joins the open incident or starts a new one).
    Clear: signal it if it runs (a closed incident needs nothing)."""
    from temporalio.service import RPCError, RPCStatusCode

    gate = asyncio.Semaphore(in_flight)

    async def one(signal: Signal) -> None:
        async with gate:
            if signal.fire is not None:
                await client.start_workflow(
                    INCIDENT_WORKFLOW,
                    signal.incident,
                    id=signal.workflow_id,
                    task_queue=task_queue,
                    start_signal="fire",
                    start_signal_args=[signal.fire],
                )
            else:
                try:
                    await client.get_workflow_handle(signal.workflow_id).signal("clear", signal.clear)
                except RPCError as exc:
                    if exc.status != RPCStatusCode.NOT_FOUND:
                        raise

    await asyncio.gather(*(one(s) for s in signals))


# --- preview --------------------------------------------------------------------------------------
@dataclass
class Preview:
    fired: int
    evaluations: int
    groups: int
    first: list[dict[str, Any]]
    note: str | None = None


async def preview(session: AsyncSession, fields: dict[str, Any], *, now: datetime | None = None,
                  hours: int = 24) -> Preview:  # fmt: skip
    """How often a (validated) rule would have fired in the last ``hours``, from stored series
    points, events or runs; active windows and cooldown apply, as in evaluation."""
    now = now or datetime.now(UTC)
    start = now - timedelta(hours=hours)
    rule = AlertRule(**{**fields, "id": "preview"})
    cooldown = timedelta(seconds=fields["cooldown_seconds"])
    fired: list[dict[str, Any]] = []
    last_open: dict[str, datetime] = {}

    def fire(labels: dict[str, str], at: datetime, value: Any) -> bool:
        key = alerts.group_key(labels)
        if not alerts.in_windows(rule.active or [], at):
            return False
        if key in last_open and at - last_open[key] < cooldown:
            return False
        last_open[key] = at
        fired.append({"at": at.isoformat(), "labels": labels, "value": value})
        return True

    cond = fields["condition"]
    if fields["source"] == "series":
        window = timedelta(minutes=cond["window_minutes"])
        no_data = timedelta(minutes=cond["no_data_minutes"]) if cond.get("no_data_minutes") else None
        data = await series_data(session, cond, start - max(window, no_data or window), now)
        step = timedelta(seconds=max(fields["interval_seconds"], 60 if hours > 1 else 1))
        steps = int((now - start) / step)
        for ls, labels in (data.labels if data else {}).items():
            points = data.points.get(ls, []) if data else []
            state = AlertState(breaches=0, firing=False)
            for k in range(1, steps + 1):
                at = start + k * step
                value = alerts.aggregate(cond["agg"], _window(points, at - window, at))
                silent = no_data is not None and not _window(points, at - no_data, at)
                result = alerts.advance(state, cond, value, silent, at)
                if result.fire and fire(labels, at, value):
                    state.firing = True
                elif result.clear:
                    state.firing = False
        return Preview(fired=len(fired), evaluations=steps * len(data.labels if data else {}),
                       groups=len(data.labels if data else {}), first=fired[:20])  # fmt: skip
    if fields["source"] == "event":
        stored = await session.scalars(
            select(Event)
            .where(Event.received_at >= start, Event.received_at <= now)
            .order_by(Event.received_at)
            .limit(50_000)
        )
        seen = 0
        for event in stored:
            if event.name.startswith(("alert.", "incident.")):
                continue
            seen += 1
            if alerts.event_matches(cond, event.name, event.payload):
                fire(alerts.event_labels(cond, event.payload), event.received_at, None)
        return Preview(fired=len(fired), evaluations=seen, groups=len(last_open), first=fired[:20])
    if "failures" in cond:
        jobs = await _target_jobs(session, cond["job"])
        runs = 0
        for job in jobs:
            rows = await session.execute(
                select(Execution.status, Execution.finished_at)
                .where(Execution.job_id == job.id, Execution.finished_at >= start,
                       Execution.status.in_([*FAILED, ExecutionStatus.COMPLETED.value]))
                .order_by(Execution.finished_at)
            )  # fmt: skip
            streak = 0
            for status, finished in rows:
                runs += 1
                streak = streak + 1 if status in FAILED else 0
                if streak == cond["failures"] and finished is not None:
                    fire(_job_labels(job), finished, float(streak))
        return Preview(fired=len(fired), evaluations=runs, groups=len(jobs), first=fired[:20])
    note = "a preview of not_succeeded_minutes is not computed: it depends on the runs to come"
    return Preview(fired=0, evaluations=0, groups=0, first=[], note=note)


def dispatch_observer(client_factory: Any, task_queue: str) -> Any:
    """The dispatcher's alerting hook: evaluate event and job-outcome rules on each batch and
    signal their incidents (before the batch commits; see the module docstring)."""

    async def observe(session: AsyncSession, batch: list[Event]) -> None:
        signals = await on_events(session, batch)
        if signals:
            await send_signals(await client_factory(), task_queue, signals)

    return observe
