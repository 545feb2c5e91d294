"""Alert rules: validation, storage, and the pure parts of evaluation (conditions, active windows,
message templates). See docs/alerting.md.

A rule has one condition source:

* ``series``: an aggregation of one field of a module's series over a window, per label set,
  compared with a threshold; "for N evaluations", a resolve threshold (hysteresis), no data;
* ``event``: a name pattern plus conditions on payload paths joined by AND / OR;
* ``job``: a job (id, or ``<module>.<job-type>``) failed N times in a row, or has not succeeded
  for a duration.

Every check names the field it refuses (``details[].loc`` as FastAPI does), and a refused rule
writes nothing. One checker (:func:`check`) serves the API and module manifests alike: what a
condition may name comes from a :class:`Scope`, the registry's for the API, the module's own
manifest for the rules a module ships (registry/manifest/validate.py, registry/services/module_alerts.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.errors import Conflict, InvalidInput, NotFound
from registry.manifest import event_pattern_matches, event_pattern_problem
from registry.models import AlertRule, AlertState, Job
from registry.services.common import Actor

SEVERITIES = ("info", "warning", "critical")
SOURCES = ("series", "event", "job")
#: Incident transitions a route can ask to be told about.
NOTIFY_ON = ("opened", "acknowledged", "escalated", "resolved", "dismissed")
DEFAULT_NOTIFY_ON = ["opened", "escalated", "resolved"]
SERIES_OPS = ("gt", "gte", "lt", "lte")
SERIES_AGGS = ("avg", "min", "max", "sum", "count", "last", "increase")
EVENT_OPS = ("eq", "ne", "gt", "lt", "gte", "lte", "contains", "not_contains", "exists")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


#: Where a rule comes from: made through the API, or shipped in a module's manifest.
ORIGINS = ("api", "module")


class RuleInvalid(InvalidInput):
    """One refused field of a rule: ``loc`` inside the rule, ``kind`` the manifest's issue code
    suffix (``alert.<kind>``, docs/manifest.md)."""

    def __init__(self, loc: list[Any], msg: str, kind: str = "invalid") -> None:
        where = ".".join(str(p) for p in loc)
        super().__init__(f"{where}: {msg}", details=[{"loc": ["body", *loc], "msg": msg}])
        self.loc = list(loc)
        self.msg = msg
        self.kind = kind


def _bad(loc: list[Any], msg: str, kind: str = "invalid") -> RuleInvalid:
    return RuleInvalid(loc, msg, kind)


@dataclass(frozen=True)
class Scope:
    """What a rule's condition may name.

    Attributes:
        manifests: Module name -> manifest, for the modules the condition names.
        job_ids: The job ids the condition names that exist.
        own: Set for the rules a module ships: its series only (``condition.module`` defaults to
            it), its job types only; the event condition has no module filter, so event rules are
            not scoped.
    """

    manifests: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    job_ids: frozenset[str] = frozenset()
    own: str | None = None

    @classmethod
    def of_module(cls, name: str, manifest: Mapping[str, Any]) -> Scope:
        return cls(manifests={name: manifest}, own=name)


async def registry_scope(session: AsyncSession, data: Mapping[str, Any]) -> Scope:
    """The registry's scope for a rule given through the API: what its condition names, read once."""
    from registry.services import series as store

    cond = data.get("condition")
    cond = cond if isinstance(cond, dict) else {}
    wanted: set[str] = set()
    job_ids: set[str] = set()
    if data.get("source") == "series" and isinstance(cond.get("module"), str):
        wanted.add(cond["module"])
    target = cond.get("job")
    if data.get("source") == "job" and isinstance(target, str) and target:
        if await session.get(Job, target) is not None:
            job_ids.add(target)
        elif "." in target:
            wanted.add(target.partition(".")[0])
    manifests = {}
    for name in wanted:
        found = await store.module_manifest(session=session, name=name)
        if found is not None:
            manifests[name] = found[1]
    return Scope(manifests=manifests, job_ids=frozenset(job_ids))


def group_key(labels: dict[str, Any]) -> str:
    """The stable key of a label set (incidents group per (rule, this key))."""
    return hashlib.sha256(json.dumps(labels, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


# --- message templates ----------------------------------------------------------------------------
def placeholders(template: str) -> list[str]:
    return [m.group(1) for m in _PLACEHOLDER.finditer(template)]


def lookup(context: Any, path: str) -> Any:
    value = context
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def render(template: str, context: dict[str, Any]) -> str:
    """``{{path}}`` replaced by the value at ``path`` of ``context`` (numbers compactly, absent as ``?``)."""

    def one(match: re.Match[str]) -> str:
        value = lookup(context, match.group(1))
        if value is None:
            return "?"
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, dict | list):
            return json.dumps(value, sort_keys=True)
        return str(value)

    return _PLACEHOLDER.sub(one, template)


def _template_roots(source: str, condition: dict[str, Any], labels: Iterable[str]) -> dict[str, set[str] | None]:
    """Root -> allowed second segments (None: anything below) of the paths a template may use."""
    roots: dict[str, set[str] | None] = {
        "rule": {"name", "severity", "id"},
        "labels": set(labels),
        "value": set(),
        "threshold": set(),
    }
    if source == "series":
        roots.update({"module": set(), "series": set(), "field": set(), "agg": set(), "window_minutes": set()})
    elif source == "event":
        roots.update({"event": None})
    else:
        roots.update({"job": {"id", "module", "job_type", "name"}, "failures": set(), "execution": None})
    return roots


def check_template(template: str, roots: dict[str, set[str] | None]) -> None:
    for path in placeholders(template):
        if not _PATH.match(path):
            raise _bad(["message"], f"placeholder {{{{{path}}}}} is not a dotted path", "template")
        head, _, rest = path.partition(".")
        if head not in roots:
            raise _bad(
                ["message"],
                f"placeholder {{{{{path}}}}} names no known value; use {', '.join(sorted(roots))}",
                "template",
            )
        allowed = roots[head]
        if allowed is None:
            continue
        second = rest.partition(".")[0]
        if (not allowed and rest) or (allowed and second not in allowed):
            hint = f"; {head}.* is one of {', '.join(sorted(allowed))}" if allowed else ""
            raise _bad(["message"], f"placeholder {{{{{path}}}}} references a missing path{hint}", "template")


# --- active windows -------------------------------------------------------------------------------
def _hhmm(value: Any, loc: list[Any]) -> time | None:
    if not isinstance(value, str) or not _HHMM.match(value):
        raise _bad(loc, f"{value!r} is not a time of day HH:MM (00:00-24:00)")
    if value == "24:00":
        return None
    return time(int(value[:2]), int(value[3:]))


def normalize_windows(windows: Any) -> list[dict[str, Any]]:
    if windows is None:
        return []
    if not isinstance(windows, list):
        raise _bad(["active"], "a list of windows")
    out = []
    for i, win in enumerate(windows):
        if not isinstance(win, dict):
            raise _bad(["active", i], "a window is an object with start, end, days and tz")
        unknown = set(win) - {"start", "end", "days", "tz"}
        if unknown:
            raise _bad(["active", i, sorted(unknown)[0]], "unknown key; use start, end, days, tz")
        start = win.get("start", "00:00")
        end = win.get("end", "24:00")
        _hhmm(start, ["active", i, "start"])
        _hhmm(end, ["active", i, "end"])
        if start == end:
            raise _bad(["active", i, "end"], "end equals start: an empty window")
        days = win.get("days", list(DAYS))
        if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
            raise _bad(["active", i, "days"], f"a non-empty list of {', '.join(DAYS)}")
        tz = win.get("tz", "UTC")
        if not _is_zone(tz):
            raise _bad(["active", i, "tz"], f"{tz!r} is not an IANA timezone (like Europe/Berlin)")
        out.append({"start": start, "end": end, "days": [d for d in DAYS if d in days], "tz": tz})
    return out


def _is_zone(tz: Any) -> bool:
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        return False
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def in_windows(windows: list[dict[str, Any]], at: datetime) -> bool:
    """True when ``at`` falls in one of the windows (none: always). An overnight window
    (22:00-06:00) belongs to the weekday it starts on."""
    if not windows:
        return True
    for win in windows:
        local = at.astimezone(ZoneInfo(win["tz"]))
        minute = local.hour * 60 + local.minute
        start, end = _minutes(win["start"]), _minutes(win["end"])
        today = DAYS[local.weekday()]
        yesterday = DAYS[(local.weekday() - 1) % 7]
        if start < end:
            if today in win["days"] and start <= minute < end:
                return True
        else:  # overnight
            if today in win["days"] and minute >= start:
                return True
            if yesterday in win["days"] and minute < end:
                return True
    return False


# --- conditions -----------------------------------------------------------------------------------
def _number(value: Any, loc: list[Any], *, positive: bool = False, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(loc, "a finite number")
    if positive and value <= 0:
        raise _bad(loc, "greater than 0")
    if minimum is not None and value < minimum:
        raise _bad(loc, f"at least {minimum:g}")
    return float(value)


def _int(value: Any, loc: list[Any], minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(loc, f"an integer of at least {minimum}")
    return value


def _only(data: dict[str, Any], allowed: set[str], loc: list[Any]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _bad([*loc, unknown[0]], f"unknown key; use {', '.join(sorted(allowed))}")


def _series_condition(scope: Scope, cond: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    from registry.services import series as store

    loc = ["condition"]
    _only(
        cond,
        {"module", "series", "field", "agg", "window_minutes", "op", "threshold", "resolve_threshold",
         "for_evaluations", "no_data_minutes", "labels"},
        loc,
    )  # fmt: skip
    module = cond.get("module", scope.own)
    if not isinstance(module, str) or not module:
        raise _bad([*loc, "module"], "the module whose series the rule reads")
    if scope.own is not None and module != scope.own:
        raise _bad(
            [*loc, "module"],
            f"a module's rule reads its own series only ({scope.own!r}), not {module!r}",
            "other_module",
        )
    manifest = scope.manifests.get(module)
    if manifest is None:
        raise _bad([*loc, "module"], f"unknown module {module!r}", "unknown_module")
    defs = store.declared(dict(manifest))
    name = cond.get("series")
    if name not in defs:
        raise _bad(
            [*loc, "series"],
            f"module {module!r} declares no series {name!r}; it has {sorted(defs) or 'none'}",
            "unknown_series",
        )
    defn = defs[name]
    fld = cond.get("field")
    if fld not in defn.fields:
        raise _bad(
            [*loc, "field"],
            f"series {name!r} has no field {fld!r}; it has {', '.join(sorted(defn.fields))}",
            "unknown_field",
        )
    agg = cond.get("agg", "avg")
    if agg not in SERIES_AGGS:
        raise _bad([*loc, "agg"], f"one of {', '.join(SERIES_AGGS)}")
    if agg == "increase" and defn.fields[fld] != "counter":
        raise _bad([*loc, "agg"], f"increase needs a counter; {fld!r} is a gauge", "not_counter")
    op = cond.get("op", "gt")
    if op not in SERIES_OPS:
        raise _bad([*loc, "op"], f"one of {', '.join(SERIES_OPS)}")
    threshold = _number(cond.get("threshold"), [*loc, "threshold"])
    out: dict[str, Any] = {
        "module": module,
        "series": name,
        "field": fld,
        "agg": agg,
        "window_minutes": _number(cond.get("window_minutes", 5), [*loc, "window_minutes"], positive=True),
        "op": op,
        "threshold": threshold,
        "for_evaluations": _int(cond.get("for_evaluations", 1), [*loc, "for_evaluations"]),
    }
    if cond.get("resolve_threshold") is not None:
        resolve = _number(cond["resolve_threshold"], [*loc, "resolve_threshold"])
        if (op in ("gt", "gte") and resolve > threshold) or (op in ("lt", "lte") and resolve < threshold):
            side = "at or below" if op in ("gt", "gte") else "at or above"
            raise _bad([*loc, "resolve_threshold"], f"must be {side} the threshold ({threshold:g}) for op {op}")
        out["resolve_threshold"] = resolve
    if cond.get("no_data_minutes") is not None:
        out["no_data_minutes"] = _number(cond["no_data_minutes"], [*loc, "no_data_minutes"], positive=True)
    filters = cond.get("labels") or {}
    if not isinstance(filters, dict):
        raise _bad([*loc, "labels"], "an object of label -> value")
    for key, value in filters.items():
        if key not in defn.labels:
            raise _bad(
                [*loc, "labels", key],
                f"series {name!r} has no label {key!r}; it has {list(defn.labels)}",
                "unknown_label",
            )
        if not isinstance(value, str):
            raise _bad([*loc, "labels", key], "a string")
    out["labels"] = dict(filters)
    return out, list(defn.labels)


def _event_condition(cond: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    loc = ["condition"]
    _only(cond, {"pattern", "conditions", "join", "group_by"}, loc)
    pattern = cond.get("pattern")
    problem = event_pattern_problem(pattern) if isinstance(pattern, str) else "not a string"
    if problem:
        raise _bad([*loc, "pattern"], f"invalid event pattern {pattern!r}: {problem}", "invalid_pattern")
    join = cond.get("join", "and")
    if join not in ("and", "or"):
        raise _bad([*loc, "join"], "and or or")
    checks = []
    raw = cond.get("conditions") or []
    if not isinstance(raw, list):
        raise _bad([*loc, "conditions"], "a list of {path, op, value}")
    for i, check in enumerate(raw):
        where = [*loc, "conditions", i]
        if not isinstance(check, dict):
            raise _bad(where, "an object {path, op, value}")
        _only(check, {"path", "op", "value"}, where)
        path = check.get("path")
        if not isinstance(path, str) or not _PATH.match(path):
            raise _bad([*where, "path"], "a dotted payload path like 'meter.power'")
        op = check.get("op", "eq")
        if op not in EVENT_OPS:
            raise _bad([*where, "op"], f"one of {', '.join(EVENT_OPS)}")
        if op != "exists" and "value" not in check:
            raise _bad([*where, "value"], f"op {op} needs a value")
        if op in ("gt", "lt", "gte", "lte"):
            _number(check.get("value"), [*where, "value"])
        checks.append({"path": path, "op": op, **({"value": check["value"]} if "value" in check else {})})
    group_by = cond.get("group_by") or []
    if not isinstance(group_by, list) or any(not isinstance(p, str) or not _PATH.match(p) for p in group_by):
        raise _bad([*loc, "group_by"], "a list of payload paths whose values make the incident's labels")
    return {"pattern": pattern, "conditions": checks, "join": join, "group_by": group_by}, [
        p.replace(".", "_") for p in group_by
    ]


def _job_condition(scope: Scope, cond: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    loc = ["condition"]
    _only(cond, {"job", "failures", "not_succeeded_minutes"}, loc)
    target = cond.get("job")
    if not isinstance(target, str) or not target:
        raise _bad([*loc, "job"], "a job id or <module>.<job-type>")
    if scope.own is not None:
        # A module's rule watches its own job types (job ids are not known when it registers).
        target = target if "." in target else f"{scope.own}.{target}"
        if target.partition(".")[0] != scope.own:
            raise _bad(
                [*loc, "job"],
                f"a module's rule watches its own job types only ({scope.own}.<job-type>)",
                "other_module",
            )
    if target not in scope.job_ids:
        module_name, dot, job_type = target.partition(".")
        manifest = scope.manifests.get(module_name) if dot else None
        jobs = (manifest or {}).get("jobs")
        names = [j.get("name") for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []
        if manifest is None or job_type not in names:
            raise _bad(
                [*loc, "job"], f"no job {target!r} and no job type of that name (<module>.<job-type>)", "unknown_job"
            )
    has_failures = cond.get("failures") is not None
    has_stale = cond.get("not_succeeded_minutes") is not None
    if has_failures == has_stale:
        raise _bad([*loc, "failures"], "give exactly one of failures (N in a row) or not_succeeded_minutes")
    out: dict[str, Any] = {"job": target}
    if has_failures:
        out["failures"] = _int(cond["failures"], [*loc, "failures"])
    else:
        out["not_succeeded_minutes"] = _number(
            cond["not_succeeded_minutes"], [*loc, "not_succeeded_minutes"], positive=True
        )
    return out, ["module", "job_type", "job_id"]


def _routes(routes: Any) -> list[dict[str, Any]]:
    if routes is None:
        return []
    if not isinstance(routes, list):
        raise _bad(["routes"], "a list of {severities, channels, on}")
    out = []
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            raise _bad(["routes", i], "an object {severities, channels, on}")
        _only(route, {"severities", "channels", "on"}, ["routes", i])
        severities = route.get("severities", list(SEVERITIES))
        if not isinstance(severities, list) or not severities or any(s not in SEVERITIES for s in severities):
            raise _bad(["routes", i, "severities"], f"a non-empty list of {', '.join(SEVERITIES)}")
        channels = route.get("channels")
        if not isinstance(channels, list) or not channels or any(not isinstance(c, str) or not c for c in channels):
            raise _bad(["routes", i, "channels"], "a non-empty list of channel names (AUTOPLAT_NOTIFY_CHANNELS)")
        on = route.get("on", DEFAULT_NOTIFY_ON)
        if not isinstance(on, list) or not on or any(t not in NOTIFY_ON for t in on):
            raise _bad(["routes", i, "on"], f"a non-empty list of {', '.join(NOTIFY_ON)}")
        out.append({"severities": list(severities), "channels": list(channels), "on": list(on)})
    return out


def _escalation(value: Any, severity: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(["escalation"], "an object {after_minutes, severity, channels}")
    _only(value, {"after_minutes", "severity", "channels"}, ["escalation"])
    after = _number(value.get("after_minutes"), ["escalation", "after_minutes"], positive=True)
    raised = value.get("severity", severity)
    if raised not in SEVERITIES:
        raise _bad(["escalation", "severity"], f"one of {', '.join(SEVERITIES)}")
    if SEVERITIES.index(raised) < SEVERITIES.index(severity):
        raise _bad(["escalation", "severity"], f"escalation raises the severity; {raised} is below {severity}")
    channels = value.get("channels") or []
    if not isinstance(channels, list) or any(not isinstance(c, str) or not c for c in channels):
        raise _bad(["escalation", "channels"], "a list of channel names")
    return {"after_minutes": after, "severity": raised, "channels": list(channels)}


async def validate(session: AsyncSession, data: dict[str, Any], *, default_interval: int) -> dict[str, Any]:
    """A rule given through the API, checked against the registry (:func:`check`)."""
    return check(data, await registry_scope(session, data), default_interval=default_interval)


def check(data: Mapping[str, Any], scope: Scope, *, default_interval: int) -> dict[str, Any]:
    """A rule's fields, checked and normalised (defaults filled); raises :class:`RuleInvalid` (422)
    naming the field. What the condition may name comes from ``scope``."""
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise _bad(["name"], "1-200 characters")
    severity = data.get("severity", "warning")
    if severity not in SEVERITIES:
        raise _bad(["severity"], f"one of {', '.join(SEVERITIES)}")
    source = data.get("source")
    if source not in SOURCES:
        raise _bad(["source"], f"one of {', '.join(SOURCES)}")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict):
        raise _bad(["labels"], "an object of label -> value")
    for key, value in labels.items():
        if not _LABEL.match(str(key)) or not isinstance(value, str) or not 0 < len(value) <= 200:
            raise _bad(["labels", key], "labels are lowercase names with string values of 1-200 characters")
    cond = data.get("condition")
    if not isinstance(cond, dict):
        raise _bad(["condition"], f"an object with the fields of a {source} condition")
    if source == "series":
        condition, group_labels = _series_condition(scope, cond)
    elif source == "event":
        condition, group_labels = _event_condition(cond)
    else:
        condition, group_labels = _job_condition(scope, cond)
    message = data.get("message")
    if not isinstance(message, str) or not message.strip() or len(message) > 4000:
        raise _bad(["message"], "a template of 1-4000 characters with {{path}} placeholders")
    check_template(message, _template_roots(source, condition, [*group_labels, *labels]))
    interval = data.get("interval_seconds")
    interval = default_interval if interval is None else _int(interval, ["interval_seconds"], 1)
    cooldown = _int(data.get("cooldown_seconds") or 0, ["cooldown_seconds"], 0)
    resolve_after = data.get("resolve_after_minutes")
    if resolve_after is not None:
        resolve_after = _number(resolve_after, ["resolve_after_minutes"], positive=True)
    description = data.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 4000):
        raise _bad(["description"], "at most 4000 characters")
    return {
        "name": name.strip(),
        "description": description,
        "enabled": bool(data.get("enabled", True)),
        "severity": severity,
        "labels": dict(labels),
        "message": message,
        "source": source,
        "condition": condition,
        "interval_seconds": interval,
        "cooldown_seconds": cooldown,
        "active": normalize_windows(data.get("active")),
        "routes": _routes(data.get("routes")),
        "escalation": _escalation(data.get("escalation"), severity),
        "resolve_after_minutes": resolve_after,
    }


# --- storage --------------------------------------------------------------------------------------
async def get_rule(*, session: AsyncSession, rule_id: str) -> AlertRule:
    rule = await session.get(AlertRule, rule_id)
    if rule is None:
        raise NotFound(f"alert rule {rule_id!r} not found", details={"rule_id": rule_id})
    return rule


async def list_rules(
    *, session: AsyncSession, source: str | None = None, enabled: bool | None = None, module: str | None = None
) -> list[AlertRule]:
    query = select(AlertRule).order_by(AlertRule.name)
    if source is not None:
        query = query.where(AlertRule.source == source)
    if enabled is not None:
        query = query.where(AlertRule.enabled.is_(enabled))
    if module is not None:
        query = query.where(AlertRule.module_name == module)
    return list(await session.scalars(query))


async def _unique_name(session: AsyncSession, name: str, rule_id: str | None = None) -> None:
    query = select(func.count()).select_from(AlertRule).where(AlertRule.name == name)
    if rule_id is not None:
        query = query.where(AlertRule.id != rule_id)
    if await session.scalar(query):
        raise Conflict(f"an alert rule named {name!r} exists", details={"name": name})


async def create_rule(*, session: AsyncSession, data: dict[str, Any], actor: Actor, default_interval: int) -> AlertRule:
    fields = await validate(session, data, default_interval=default_interval)
    await _unique_name(session, fields["name"])
    rule = AlertRule(**fields, created_by=actor.email)
    session.add(rule)
    await session.flush()
    return rule


async def update_rule(*, session: AsyncSession, rule_id: str, data: dict[str, Any], default_interval: int) -> AlertRule:
    """A partial update: the given fields over the stored ones, checked whole. A module's rule that
    changes is marked ``modified``: upgrades of the module leave it alone (docs/alerting.md)."""
    rule = await get_rule(session=session, rule_id=rule_id)
    merged = {**as_fields(rule), **data}
    fields = await validate(session, merged, default_interval=default_interval)
    await _unique_name(session, fields["name"], rule.id)
    if rule.origin == "module" and fields != as_fields(rule):
        rule.modified = True
    await replace_fields(session=session, rule=rule, fields=fields)
    return rule


async def replace_fields(*, session: AsyncSession, rule: AlertRule, fields: dict[str, Any]) -> None:
    """Store checked ``fields`` on ``rule``; what evaluation remembered goes when the condition changed
    or the rule was turned off."""
    changed_condition = (fields["source"], fields["condition"]) != (rule.source, rule.condition)
    for key, value in fields.items():
        setattr(rule, key, value)
    if changed_condition or not fields["enabled"]:
        # What was remembered about the old condition no longer applies.
        await session.execute(delete(AlertState).where(AlertState.rule_id == rule.id))
    rule.updated_at = datetime.now(UTC)
    await session.flush()


async def delete_rule(*, session: AsyncSession, rule_id: str) -> AlertRule:
    rule = await get_rule(session=session, rule_id=rule_id)
    await session.delete(rule)
    await session.flush()
    return rule


def as_fields(rule: AlertRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "description": rule.description,
        "enabled": rule.enabled,
        "severity": rule.severity,
        "labels": dict(rule.labels or {}),
        "message": rule.message,
        "source": rule.source,
        "condition": dict(rule.condition or {}),
        "interval_seconds": rule.interval_seconds,
        "cooldown_seconds": rule.cooldown_seconds,
        "active": list(rule.active or []),
        "routes": list(rule.routes or []),
        "escalation": rule.escalation,
        "resolve_after_minutes": rule.resolve_after_minutes,
    }


# --- event conditions -----------------------------------------------------------------------------
def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return actual is not _ABSENT
    if actual is _ABSENT:
        return op in ("ne", "not_contains")
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op in ("contains", "not_contains"):
        try:
            found = expected in actual if isinstance(actual, str | list | dict) else False
        except TypeError:
            found = False
        return found if op == "contains" else not found
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        return False
    return {"gt": actual > expected, "lt": actual < expected, "gte": actual >= expected, "lte": actual <= expected}[op]


_ABSENT = object()


def _payload_value(payload: Any, path: str) -> Any:
    value = payload
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _ABSENT
    return value


def event_matches(condition: dict[str, Any], name: str, payload: Any) -> bool:
    if not event_pattern_matches(condition["pattern"], name):
        return False
    checks = [_compare(c["op"], _payload_value(payload, c["path"]), c.get("value")) for c in condition["conditions"]]
    if not checks:
        return True
    return any(checks) if condition.get("join") == "or" else all(checks)


def event_labels(condition: dict[str, Any], payload: Any) -> dict[str, str]:
    out = {}
    for path in condition.get("group_by") or []:
        value = _payload_value(payload, path)
        out[path.replace(".", "_")] = "" if value is _ABSENT else str(value)[:200]
    return out


# --- series arithmetic ----------------------------------------------------------------------------
def aggregate(agg: str, values: list[float]) -> float | None:
    """One aggregation of a window's values (in time order); None when there are none."""
    if not values:
        return None
    if agg == "avg":
        return sum(values) / len(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    if agg == "sum":
        return float(sum(values))
    if agg == "count":
        return float(len(values))
    if agg == "last":
        return values[-1]
    total = 0.0  # increase: a drop is a reset from 0
    for before, after in zip(values, values[1:], strict=False):
        total += after - before if after >= before else after
    return total


def breaches(op: str, value: float, threshold: float) -> bool:
    return {"gt": value > threshold, "gte": value >= threshold, "lt": value < threshold, "lte": value <= threshold}[op]


def clears(condition: dict[str, Any], value: float) -> bool:
    """The condition has cleared: past the resolve threshold if there is one (hysteresis), else no breach."""
    resolve = condition.get("resolve_threshold")
    if resolve is None:
        return not breaches(condition["op"], value, condition["threshold"])
    if condition["op"] in ("gt", "gte"):
        return value <= resolve if condition["op"] == "gt" else value < resolve
    return value >= resolve if condition["op"] == "lt" else value > resolve


@dataclass
class Step:
    """What one evaluation of one label set decided."""

    fire: bool = False
    clear: bool = False


def advance(state: AlertState, condition: dict[str, Any], value: float | None, no_data: bool, now: datetime) -> Step:
    """Move one (rule, label set)'s state by one evaluation: count breaches, fire after
    ``for_evaluations`` in a row, clear past the resolve threshold (or when data is back)."""
    breach = no_data or (value is not None and breaches(condition["op"], value, condition["threshold"]))
    step = Step()
    if breach:
        if not state.breaches:
            state.since = now
        state.breaches = (state.breaches or 0) + 1
        if not state.firing and state.breaches >= condition.get("for_evaluations", 1):
            step.fire = True
    elif value is not None:
        state.breaches = 0
        state.since = None
        if state.firing and clears(condition, value):
            step.clear = True
    if step.fire or step.clear:
        state.value = value  # kept when something happens, not at every evaluation (no write per pass)
    return step


def cooled_down(state: AlertState, cooldown_seconds: int, now: datetime) -> bool:
    return state.last_opened_at is None or now - state.last_opened_at >= timedelta(seconds=cooldown_seconds)
