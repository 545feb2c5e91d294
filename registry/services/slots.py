"""The slots of a schedule: its nominal fire times under a daylight-saving policy, and the ledger of
what became of each one (docs/schedules.md).

A *slot* is one nominal fire time of a scheduled job, as a UTC instant. The pure functions here
(:func:`slots_between`, :func:`dst_calendar_times`, :func:`dst_drop_reason`) answer which instants a
cron in a timezone fires at once the job's DST policy is applied:

* a wall time that does not exist (the spring gap): ``shift`` runs it at the first valid minute after
  the gap (02:30 in a 02:00→03:00 gap runs at 03:00), ``skip`` does not run it;
* a wall time that exists twice (the autumn repeat): ``first`` runs it once, at its first occurrence,
  ``both`` at each, ``skip`` at neither.

The ledger (:func:`settle`, :func:`ledger`) stores each past slot once, with its outcome: ``ran``
(the execution), ``skipped`` (why) or ``missed`` (nothing explains why it did not run); a slot not
settled yet reads ``pending``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry import metrics
from registry.errors import InvalidInput
from registry.manifest.cron import parse_cron
from registry.models import Execution, ExecutionStatus, Job, Module, ModuleStatus, ScheduleSlot
from registry.services import events

log = logging.getLogger(__name__)

NONEXISTENT_POLICIES = ("shift", "skip")
AMBIGUOUS_POLICIES = ("first", "both", "skip")
DEFAULT_DST = {"nonexistent": "shift", "ambiguous": "first"}
OUTCOMES = ("ran", "skipped", "missed", "pending")
#: A slot is settled this long after its nominal time plus the job's catch-up window (a run that
#: Temporal started late, a worker busy, the mirror row not written yet).
SETTLE_GRACE = timedelta(seconds=60)
#: Slots stored per settle call (a paused minutely job resumed after a year settles over several).
SETTLE_MAX = 20_000
#: Slots named in one ``schedule.missed`` / ``schedule.skipped`` event (the event carries the count).
EVENT_SLOTS = 50


def check_dst(value: Any, loc: tuple[str, ...] = ("body", "dst")) -> dict[str, str]:
    """A ``dst`` policy object, with its defaults; ``InvalidInput`` names the bad field."""
    if value is None:
        return dict(DEFAULT_DST)
    if not isinstance(value, dict):
        raise InvalidInput("dst must be an object", details=[{"loc": list(loc), "msg": "an object"}])
    unknown = sorted(set(value) - set(DEFAULT_DST))
    if unknown:
        message = f"dst has no field {unknown[0]!r}; use nonexistent and ambiguous"
        raise InvalidInput(message, details=[{"loc": [*loc, unknown[0]], "msg": "unknown field"}])
    out = dict(DEFAULT_DST)
    for key, allowed in (("nonexistent", NONEXISTENT_POLICIES), ("ambiguous", AMBIGUOUS_POLICIES)):
        if key in value and value[key] is not None:
            if value[key] not in allowed:
                message = f"dst.{key} must be one of {', '.join(allowed)}, got {str(value[key])[:40]!r}"
                raise InvalidInput(message, details=[{"loc": [*loc, key], "msg": f"one of {list(allowed)}"}])
            out[key] = value[key]
    return out


def job_dst(job: Job) -> dict[str, str]:
    return {"nonexistent": job.dst_nonexistent or "shift", "ambiguous": job.dst_ambiguous or "first"}


@dataclass(frozen=True)
class Slot:
    """One nominal fire time: ``at`` (UTC), its wall time, and the DST policy applied, if any."""

    at: datetime
    wall: datetime
    dst: str | None = None


def _resolve(wall: datetime, zone: ZoneInfo) -> tuple[list[datetime], bool]:
    """The UTC instants of a naive wall time in ``zone``: ([], True) in a gap, two when repeated."""
    instants = []
    for fold in (0, 1):
        aware = wall.replace(tzinfo=zone, fold=fold)
        utc = aware.astimezone(UTC)
        if utc.astimezone(zone).replace(tzinfo=None) == wall and utc not in instants:
            instants.append(utc)
    instants.sort()
    return instants, not instants


def _gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first valid instant after the gap that swallows ``wall`` (the transition itself)."""
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)  # the offset after: before the gap
    high = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # the offset before: after the gap
    low, high = min(low, high), max(low, high)
    # Offsets change on whole minutes: binary search the minute the offset changes.
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(minutes=1):
        mid = low + timedelta(minutes=((high - low) // timedelta(minutes=1)) // 2)
        if mid.astimezone(zone).utcoffset() == before:
            low = mid
        else:
            high = mid
    return high


def _fmt_wall(wall: datetime) -> str:
    return wall.strftime("%H:%M:%S" if wall.second else "%H:%M")


def slots_between(
    cron: str, tz: str, start: datetime, end: datetime, dst: dict[str, str] | None = None, *, limit: int | None = None
) -> list[Slot]:
    """The slots of ``cron`` in ``tz`` with ``start <= at < end`` (UTC instants), ascending, with
    the DST policy applied. ``limit`` stops after that many (a count check passes ``limit + 1``)."""
    policy = dst or DEFAULT_DST
    zone = ZoneInfo(tz)
    spec = parse_cron(cron)
    # Walk the wall times (naive) of [start, end), widened by the largest offset change within it
    # (none: the exact window).
    spread = _offset_spread(tz, start, end) if tz != "UTC" else timedelta(0)
    pad = spread + timedelta(minutes=1) if spread else timedelta(0)
    wall_start = start.astimezone(zone).replace(tzinfo=None) - pad
    wall_end = end.astimezone(zone).replace(tzinfo=None) + pad
    it = croniter(spec.to_croniter(), wall_start - timedelta(seconds=1), ret_type=datetime, day_or=False)
    found: dict[datetime, Slot] = {}
    emitted = 0
    while True:
        wall = it.get_next(datetime)
        if wall >= wall_end:
            break
        instants, gap = _resolve(wall, zone)
        if gap:
            if policy["nonexistent"] == "skip":
                continue
            shifted = _gap_end(wall, zone)
            candidates: list[tuple[datetime, str | None]] = [
                (shifted, f"nonexistent {_fmt_wall(wall)} shifted to {_fmt_wall(shifted.astimezone(zone))}")
            ]
        elif len(instants) == 2:
            if policy["ambiguous"] == "skip":
                continue
            if policy["ambiguous"] == "first":
                candidates = [(instants[0], f"repeated {_fmt_wall(wall)}: first occurrence only")]
            else:
                candidates = [(instants[0], f"repeated {_fmt_wall(wall)}: first of both occurrences"),
                              (instants[1], f"repeated {_fmt_wall(wall)}: second of both occurrences")]  # fmt: skip
        else:
            candidates = [(instants[0], None)]
        for at, note in candidates:
            if not start <= at < end:
                continue
            if at in found:  # a shifted slot landing on a natural one: one run
                if note and found[at].dst is None:
                    found[at] = Slot(at, found[at].wall, f"{note} (same as a regular slot)")
                continue
            found[at] = Slot(at, at.astimezone(zone).replace(tzinfo=None), note)
            emitted += 1
        if limit is not None and emitted > limit + 2:
            # Instants are nearly ordered (a shift moves one forward by at most the gap): trim below.
            break
    slots = sorted(found.values(), key=lambda s: s.at)
    return slots[:limit] if limit is not None else slots


def next_slots(
    cron: str, tz: str, n: int, after: datetime | None = None, dst: dict[str, str] | None = None
) -> list[Slot]:
    """The next ``n`` slots strictly after ``after`` (default now)."""
    start = (after or datetime.now(UTC)).astimezone(UTC) + timedelta(microseconds=1)
    out: list[Slot] = []
    window = timedelta(days=2)
    for _ in range(40):
        out = slots_between(cron, tz, start, start + window, dst, limit=n)
        if len(out) >= n:
            return out[:n]
        window *= 4
    return out


def dst_calendar_times(
    cron: str, tz: str, start: datetime, end: datetime, dst: dict[str, str] | None = None
) -> list[datetime]:
    """Wall times (naive, in ``tz``) Temporal's cron does not fire but the policy wants: the shifted
    runs of nonexistent times. The schedule manager adds them as calendars (they are after the gap,
    so each names one instant). Temporal skips nonexistent times itself, and fires repeated times
    at each occurrence it computes; :func:`dst_drop_reason` drops the ones the policy does not want."""
    policy = dst or DEFAULT_DST
    if policy["nonexistent"] != "shift":
        return []
    zone = ZoneInfo(tz)
    out = []
    for slot in _transition_slots(cron, tz, start, end, policy):
        if slot.dst and slot.dst.startswith("nonexistent") and "same as a regular slot" not in slot.dst:
            out.append(slot.at.astimezone(zone).replace(tzinfo=None))
    return sorted(set(out))


def _transitions(tz: str, start: datetime, end: datetime) -> list[datetime]:
    """UTC instants (to the hour) around which ``tz`` changes its offset between start and end."""
    zone = ZoneInfo(tz)
    found = []
    at = start.replace(minute=0, second=0, microsecond=0)
    step = timedelta(hours=6)
    previous = at.astimezone(zone).utcoffset()
    while at < end:
        following = at + step
        offset = following.astimezone(zone).utcoffset()
        if offset != previous:
            found.append(at)
        previous = offset
        at = following
    return found


def _offset_spread(tz: str, start: datetime, end: datetime) -> timedelta:
    """The largest difference between two UTC offsets of ``tz`` around [start, end)."""
    zone = ZoneInfo(tz)
    offsets = set()
    at = start - timedelta(hours=6)
    while at <= end + timedelta(hours=6):
        offsets.add(at.astimezone(zone).utcoffset())
        at += timedelta(hours=6)
    offsets.add((end + timedelta(hours=6)).astimezone(zone).utcoffset())
    known = [o for o in offsets if o is not None]
    return max(known) - min(known) if known else timedelta(0)


def _transition_slots(cron: str, tz: str, start: datetime, end: datetime, policy: dict[str, str]) -> list[Slot]:
    """The policy's slots around each offset change of ``tz`` in [start, end): the instants within
    the change's size of it (the gap's shifted runs, the repeated wall times' occurrences)."""
    zone = ZoneInfo(tz)
    out: list[Slot] = []
    for around in _transitions(tz, start, end):
        low, high = around, around + timedelta(hours=6)
        before = low.astimezone(zone).utcoffset()
        while high - low > timedelta(minutes=1):
            mid = low + (high - low) / 2
            if mid.astimezone(zone).utcoffset() == before:
                low = mid
            else:
                high = mid
        after = high.astimezone(zone).utcoffset()
        size = abs((after or timedelta(0)) - (before or timedelta(0))) + timedelta(minutes=2)
        out.extend(slots_between(cron, tz, max(high - size, start), min(high + size, end), policy))
    return out


def is_policy_slot(cron: str, tz: str, nominal: datetime, dst: dict[str, str]) -> bool:
    """Whether a run Temporal started at ``nominal`` is one of the policy's slots. Only times near an
    offset change are checked: there Temporal's cron can fire a time the policy does not want (a
    repeated time excluded by a skip calendar comes back an hour later on Temporal 1.32)."""
    if tz == "UTC" or not _transitions(tz, nominal - timedelta(days=2), nominal + timedelta(days=2)):
        return True
    try:
        found = slots_between(cron, tz, nominal - timedelta(seconds=1), nominal + timedelta(seconds=1), dst)
    except (ValueError, KeyError):
        return True
    return any(slot.at == nominal for slot in found)


# --- the ledger ---------------------------------------------------------------------------------


@dataclass
class SlotView:
    at: datetime
    outcome: str
    reason: str | None = None
    execution_id: str | None = None
    execution_status: str | None = None
    trigger: str | None = None
    dst: str | None = None
    wall_time: str | None = None


def _state_reason(job: Job, module: Module | None) -> tuple[str | None, datetime | None]:
    """Why the schedule fires nothing right now (its slots are ``skipped``) and since when (None:
    not known), or (None, None)."""
    if not job.enabled:
        return "job disabled", job.updated_at
    if module is None or module.status != ModuleStatus.ENABLED.value:
        return f"module {job.module_name} {module.status if module else 'missing'}", None
    if job.schedule_paused:
        return "paused" + (f": {job.schedule_pause_note}" if job.schedule_pause_note else ""), job.schedule_paused_at
    return None, None


async def _runs(session: AsyncSession, job_id: str, start: datetime, end: datetime) -> dict[datetime, Any]:
    rows = await session.execute(
        select(Execution.id, Execution.nominal_at, Execution.status, Execution.trigger, Execution.status_reason).where(
            Execution.job_id == job_id, Execution.nominal_at >= start, Execution.nominal_at < end
        )
    )
    return {r.nominal_at: r for r in rows}


async def _busy_at(session: AsyncSession, job_id: str, at: datetime) -> bool:
    """Whether another run of the job was running at ``at`` (a slot an overlap policy skipped)."""
    found = await session.scalar(
        select(Execution.id)
        .where(
            Execution.job_id == job_id,
            Execution.started_at.is_not(None),
            Execution.started_at <= at,
            (Execution.finished_at.is_(None)) | (Execution.finished_at > at),
        )
        .limit(1)
    )
    return found is not None


def settle_horizon(job: Job, now: datetime | None = None) -> datetime:
    """Slots before this instant can be settled (their catch-up window is over)."""
    return (now or datetime.now(UTC)) - timedelta(seconds=job.catchup_window_seconds) - SETTLE_GRACE


async def settle(
    *, session: AsyncSession, job: Job, module: Module | None, until: datetime | None = None, reason: str | None = None
) -> int:
    """Store the outcome of every slot of ``job`` between its watermark and ``until`` (default: the
    settle horizon), once; records ``schedule.missed`` / ``schedule.skipped`` events. ``reason``:
    the state the schedule was in over that time (a caller about to change it passes the old one);
    by default the job's current state. Returns the number of slots stored."""
    now = datetime.now(UTC)
    # One settle per job at a time (concurrent reads of the ledger): the job row is the lock, and
    # its watermark is read fresh under it.
    await session.refresh(job, ["slots_settled_until"], with_for_update=True)
    until = min(until or settle_horizon(job, now), now)
    if not job.schedule:
        job.slots_settled_until = until
        return 0
    start = job.slots_settled_until or job.created_at
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if until <= start:
        return 0
    try:
        slots = slots_between(job.schedule, job.timezone, start, until, job_dst(job), limit=SETTLE_MAX)
    except (ValueError, KeyError):
        job.slots_settled_until = until
        return 0
    if len(slots) >= SETTLE_MAX:
        until = slots[-1].at
        slots = [s for s in slots if s.at < until]
    held, since = (reason, None) if reason is not None else _state_reason(job, module)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    runs = await _runs(session, job.id, start, until)
    stored = list(await session.scalars(
        select(ScheduleSlot.nominal_at).where(ScheduleSlot.job_id == job.id, ScheduleSlot.nominal_at >= start,
                                              ScheduleSlot.nominal_at < until)
    ))  # fmt: skip
    have = set(stored)
    notable: dict[tuple[str, str], list[datetime]] = {}
    settled: dict[str, int] = {}
    for slot in slots:
        if slot.at in have:
            continue
        run = runs.get(slot.at)
        if run is not None and run.status == ExecutionStatus.SKIPPED.value:
            outcome, why = "skipped", run.status_reason
        elif run is not None:
            outcome, why = "ran", None
        elif held is not None and (since is None or slot.at >= since - timedelta(seconds=1)):
            outcome, why = "skipped", held
        elif job.overlap == "skip" and await _busy_at(session, job.id, slot.at):
            outcome, why = "skipped", "overlap: the previous run was still running"
        else:
            outcome, why = "missed", "no run within the catch-up window (Temporal or the workers unavailable)"
        session.add(
            ScheduleSlot(
                job_id=job.id,
                nominal_at=slot.at,
                outcome=outcome,
                reason=why,
                execution_id=run.id if run is not None else None,
                dst=slot.dst,
                recorded_at=now,
            )
        )
        settled[outcome] = settled.get(outcome, 0) + 1
        if outcome != "ran":
            notable.setdefault((outcome, why or ""), []).append(slot.at)
    job.slots_settled_until = until
    metrics.count_slots(session, job.module_name, settled)
    for (outcome, why), ats in notable.items():
        events.record(
            session=session,
            name=f"schedule.{outcome}",
            payload={
                "job_id": job.id,
                "job_name": job.name,
                "module": job.module_name,
                "job_type": job.job_type,
                "reason": why,
                "count": len(ats),
                "first": ats[0].isoformat(),
                "last": ats[-1].isoformat(),
                "slots": [a.isoformat() for a in ats[:EVENT_SLOTS]],
            },
            source="platform",
            module_name=job.module_name,
        )
    await session.flush()
    return len(slots) - len(have & {s.at for s in slots})


async def record_slot(
    *, session: AsyncSession, job_id: str, nominal_at: datetime, outcome: str, reason: str | None = None,
    execution_id: str | None = None, dst: str | None = None,
) -> None:  # fmt: skip
    """Store (or overwrite) one slot's outcome: a run that started, a DST drop, a backfilled slot."""
    row = await session.get(ScheduleSlot, (job_id, nominal_at))
    if row is None:
        session.add(ScheduleSlot(job_id=job_id, nominal_at=nominal_at, outcome=outcome, reason=reason,
                                 execution_id=execution_id, dst=dst, recorded_at=datetime.now(UTC)))  # fmt: skip
    else:
        row.outcome, row.reason, row.execution_id = outcome, reason, execution_id
        row.dst = dst or row.dst


#: Slots answered by one ledger read.
MAX_LEDGER = 5000


async def ledger(*, session: AsyncSession, job: Job, start: datetime, end: datetime) -> list[SlotView]:
    """Every slot of ``job`` in [start, end): stored ones as stored, later ones computed now
    (``ran`` when a run exists, else ``pending``). At most :data:`MAX_LEDGER`, the earliest."""
    computed = (
        slots_between(job.schedule, job.timezone, start, end, job_dst(job), limit=MAX_LEDGER) if job.schedule else []
    )
    if len(computed) >= MAX_LEDGER:
        end = computed[-1].at + timedelta(microseconds=1)  # the rest is for the next page of time
    stored = {
        row.nominal_at: row
        for row in await session.scalars(
            select(ScheduleSlot)
            .where(ScheduleSlot.job_id == job.id, ScheduleSlot.nominal_at >= start, ScheduleSlot.nominal_at < end)
            .order_by(ScheduleSlot.nominal_at)
            .limit(MAX_LEDGER)
        )
    }
    runs = await _runs(session, job.id, start, end)
    zone = ZoneInfo(job.timezone or "UTC")
    settled = job.slots_settled_until
    out: dict[datetime, SlotView] = {}
    for at, row in stored.items():
        run = runs.get(at)
        out[at] = SlotView(at, row.outcome, row.reason, row.execution_id, run.status if run else None,
                           run.trigger if run else None, row.dst)  # fmt: skip
    for slot in computed:
        if slot.at in out or (settled is not None and slot.at < settled):
            continue
        run = runs.get(slot.at)
        if run is not None:
            outcome = "skipped" if run.status == ExecutionStatus.SKIPPED.value else "ran"
            out[slot.at] = SlotView(slot.at, outcome, run.status_reason if outcome == "skipped" else None, run.id,
                                    run.status, run.trigger, slot.dst)  # fmt: skip
        else:
            out[slot.at] = SlotView(slot.at, "pending", None, None, None, None, slot.dst)
    # Runs of a slot outside today's cron (the cron changed since, or a backfill of another policy).
    for at, run in runs.items():
        if at not in out:
            out[at] = SlotView(at, "ran", None, run.id, run.status, run.trigger, None)
    views = sorted(out.values(), key=lambda v: v.at)[:MAX_LEDGER]
    for view in views:
        view.wall_time = view.at.astimezone(zone).isoformat()
    return views


def dst_plan(cron: str, tz: str, start: datetime, end: datetime, dst: dict[str, str]) -> dict[str, list[datetime]]:
    """What the schedule manager gives Temporal to run exactly the policy's slots in [start, end):

    * ``add``: wall times (naive, in ``tz``) of shifted nonexistent times: calendars of the schedule
      (after the gap, each names one instant; Temporal's cron skips the nonexistent time itself);
    * ``skip``: repeated wall times the cron matches: skip calendars (they exclude every occurrence,
      where Temporal's own choice of occurrences differs between zones);
    * ``exact``: the UTC instants of the repeated wall times the policy runs (``first``: the first
      occurrence, ``both``: each), for the companion schedule in UTC.
    """
    plan: dict[str, list[datetime]] = {"add": [], "skip": [], "exact": []}
    zone = ZoneInfo(tz)
    if tz == "UTC" or not _transitions(tz, start, end):
        return plan
    for slot in _transition_slots(cron, tz, start, end, {"nonexistent": dst["nonexistent"], "ambiguous": "both"}):
        if slot.dst is None:
            continue
        if slot.dst.startswith("nonexistent"):
            if "same as a regular slot" not in slot.dst:
                plan["add"].append(slot.at.astimezone(zone).replace(tzinfo=None))
            continue
        plan["skip"].append(slot.wall)
    wanted = _transition_slots(cron, tz, start, end, dst)
    plan["exact"] = [s.at for s in wanted if s.dst and s.dst.startswith("repeated")]
    return {key: sorted(set(values)) for key, values in plan.items()}  # type: ignore[type-var]


#: The prefix of a slot run's workflow id; Temporal's schedule appends ``-<nominal time>``.
RUN_PREFIX = "sched-"


def run_workflow_id(job_id: str, nominal: datetime) -> str:
    """The workflow id of the run of ``job_id``'s slot ``nominal``, as Temporal's schedule names it."""
    return f"{RUN_PREFIX}{job_id}-{nominal.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def nominal_of(workflow_id: str, job_id: str | None) -> datetime | None:
    """The nominal time of a slot run's workflow id (``sched-<job id>-<time>``), else None."""
    if not job_id or not workflow_id.startswith(f"{RUN_PREFIX}{job_id}-"):
        return None
    stamp = workflow_id[len(RUN_PREFIX) + len(job_id) + 1 :]
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
