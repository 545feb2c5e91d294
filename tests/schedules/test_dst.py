"""The daylight-saving policy across real transitions: the pure slot function against zoneinfo, and
the schedule Temporal is given, through Temporal's own computed action times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.api.workflowservice.v1 import ListScheduleMatchingTimesRequest

from registry.errors import InvalidInput
from registry.models import ModuleStatus
from registry.services.slots import check_dst, dst_plan, is_policy_slot, next_slots, slots_between
from workflows.schedules import ScheduleManager, dst_schedule_id, schedule_id


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def walls(slots: list[Any], tz: str) -> list[str]:
    from zoneinfo import ZoneInfo

    return [s.at.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M%z") for s in slots]


SHIFT_FIRST = {"nonexistent": "shift", "ambiguous": "first"}
SKIP_SKIP = {"nonexistent": "skip", "ambiguous": "skip"}
SHIFT_BOTH = {"nonexistent": "shift", "ambiguous": "both"}


def test_bucharest_spring_and_autumn() -> None:
    tz = "Europe/Bucharest"  # 29 Mar 2026 03:00 EET -> 04:00 EEST; 25 Oct 2026 04:00 EEST -> 03:00 EET
    spring = slots_between("30 3 * * *", tz, utc(2026, 3, 28), utc(2026, 3, 31), SHIFT_FIRST)
    assert walls(spring, tz) == ["03-28 03:30+0200", "03-29 04:00+0300", "03-30 03:30+0300"]
    assert spring[1].dst == "nonexistent 03:30 shifted to 04:00"
    assert walls(slots_between("30 3 * * *", tz, utc(2026, 3, 28), utc(2026, 3, 31), SKIP_SKIP), tz) == [
        "03-28 03:30+0200",
        "03-30 03:30+0300",
    ]
    autumn = slots_between("30 3 * * *", tz, utc(2026, 10, 24), utc(2026, 10, 27), SHIFT_FIRST)
    assert walls(autumn, tz) == ["10-24 03:30+0300", "10-25 03:30+0300", "10-26 03:30+0200"]
    assert autumn[1].at == utc(2026, 10, 25, 0, 30) and "first occurrence" in (autumn[1].dst or "")
    both = slots_between("30 3 * * *", tz, utc(2026, 10, 24), utc(2026, 10, 27), SHIFT_BOTH)
    assert walls(both, tz) == ["10-24 03:30+0300", "10-25 03:30+0300", "10-25 03:30+0200", "10-26 03:30+0200"]
    skipped = slots_between("30 3 * * *", tz, utc(2026, 10, 24), utc(2026, 10, 27), SKIP_SKIP)
    assert walls(skipped, tz) == ["10-24 03:30+0300", "10-26 03:30+0200"]


def test_new_york_half_hourly_through_both_transitions() -> None:
    tz = "America/New_York"  # 8 Mar 2026 02:00 -> 03:00; 1 Nov 2026 02:00 -> 01:00
    spring = slots_between("*/30 2 * * *", tz, utc(2026, 3, 8), utc(2026, 3, 9), SHIFT_FIRST)
    # 02:00 and 02:30 do not exist: both shift to 03:00, which runs once.
    assert walls(spring, tz) == ["03-08 03:00-0400"]
    assert spring[0].dst == "nonexistent 02:00 shifted to 03:00"
    autumn = slots_between("*/30 1 * * *", tz, utc(2026, 11, 1), utc(2026, 11, 2), SHIFT_BOTH)
    assert walls(autumn, tz) == ["11-01 01:00-0400", "11-01 01:30-0400", "11-01 01:00-0500", "11-01 01:30-0500"]
    assert len(slots_between("*/30 1 * * *", tz, utc(2026, 11, 1), utc(2026, 11, 2), SHIFT_FIRST)) == 2
    # A regular slot that a shift lands on runs once.
    merged = slots_between("0,30 2-3 * * *", tz, utc(2026, 3, 8), utc(2026, 3, 9), SHIFT_FIRST)
    assert walls(merged, tz) == ["03-08 03:00-0400", "03-08 03:30-0400"]


def test_lord_howe_half_hour_shift() -> None:
    tz = "Australia/Lord_Howe"  # 4 Oct 2026 02:00 -> 02:30 (+10:30 -> +11); 5 Apr 2026 02:00 -> 01:30
    spring = slots_between("15,45 2 * * *", tz, utc(2026, 10, 3), utc(2026, 10, 4, 12), SHIFT_FIRST)
    assert walls(spring, tz) == ["10-04 02:30+1100", "10-04 02:45+1100"]
    autumn = slots_between("15,45 1 * * *", tz, utc(2026, 4, 4), utc(2026, 4, 5), SHIFT_BOTH)
    # Only 01:30-02:00 repeats: 01:15 happens once, 01:45 twice.
    assert walls(autumn, tz) == ["04-05 01:15+1100", "04-05 01:45+1100", "04-05 01:45+1030"]


def test_preview_over_a_transition_and_policy_validation() -> None:
    runs = next_slots("30 3 * * *", "Europe/Bucharest", 3, after=utc(2026, 3, 27, 12), dst=SHIFT_FIRST)
    assert [s.at for s in runs] == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]
    assert check_dst(None) == SHIFT_FIRST and check_dst({"ambiguous": "both"}) == SHIFT_BOTH
    for bad, field in (({"nonexistent": "later"}, "nonexistent"), ({"ambiguous": "last"}, "ambiguous")):
        with pytest.raises(InvalidInput) as caught:
            check_dst(bad)
        assert caught.value.details[0]["loc"] == ["body", "dst", field]
        assert field in caught.value.message


def _job(cron: str, tz: str, dst: dict[str, str]) -> Any:
    return SimpleNamespace(
        id=f"dst-{abs(hash((cron, tz, str(dst))))}",
        module_name="m",
        job_type="t",
        name="n",
        schedule=cron,
        timezone=tz,
        enabled=True,
        dst_nonexistent=dst["nonexistent"],
        dst_ambiguous=dst["ambiguous"],
        jitter_seconds=0,
        schedule_paused=False,
        schedule_paused_by=None,
        schedule_pause_note=None,
        revision=1,
        overlap="skip",
        catchup_window_seconds=60,
        timeout_seconds=60,
        retries=0,
        retry_backoff={},
    )


async def _matching(client: Any, sid: str, start: datetime, end: datetime) -> list[datetime]:
    s, e = Timestamp(), Timestamp()
    s.FromDatetime(start)
    e.FromDatetime(end)
    try:
        answer = await client.workflow_service.list_schedule_matching_times(
            ListScheduleMatchingTimesRequest(namespace=client.namespace, schedule_id=sid, start_time=s, end_time=e)
        )
    except Exception:  # noqa: BLE001 - no companion schedule
        return []
    return [t.ToDatetime(tzinfo=UTC) for t in answer.start_time]


@pytest.mark.parametrize(
    ("tz", "cron", "dst", "start", "end"),
    [
        ("Europe/Bucharest", "30 3 * * *", SHIFT_FIRST, utc(2027, 3, 26), utc(2027, 3, 30)),
        ("Europe/Bucharest", "*/30 3 * * *", SHIFT_BOTH, utc(2027, 10, 29), utc(2027, 11, 2)),
        ("America/New_York", "*/30 1-2 * * *", SHIFT_FIRST, utc(2027, 11, 6), utc(2027, 11, 9)),
        ("America/New_York", "*/30 1-2 * * *", SKIP_SKIP, utc(2027, 3, 13), utc(2027, 3, 16)),
        ("Australia/Lord_Howe", "15,45 1-2 * * *", SHIFT_FIRST, utc(2027, 4, 2), utc(2027, 4, 5)),
        ("Australia/Lord_Howe", "15,45 1-2 * * *", SHIFT_BOTH, utc(2027, 10, 1), utc(2027, 10, 4)),
    ],
)
async def test_temporal_fires_exactly_the_policy_slots(temporal_env, tz, cron, dst, start, end) -> None:
    """The schedule (and its companion) the manager builds make Temporal's own action times equal to
    the policy's slots, where Temporal's plain cron does not (Bucharest: only the later 03:30)."""
    client = temporal_env.client
    job = _job(cron, tz, dst)
    module = SimpleNamespace(name="m", status=ModuleStatus.ENABLED.value, version="1")
    manager = ScheduleManager(client, "dst-test")
    plan = dst_plan(cron, tz, start, end, dst)
    schedules = {schedule_id(job.id): manager.build(job, module, plan=plan)}  # type: ignore[arg-type]
    companion = manager.build_dst(job, module, plan=plan)  # type: ignore[arg-type]
    if companion is not None:
        schedules[dst_schedule_id(job.id)] = companion
    for sid, schedule in schedules.items():
        schedule.state.paused = True
        await client.create_schedule(sid, schedule)
    try:
        fired = sorted(
            set(await _matching(client, schedule_id(job.id), start, end))
            | set(await _matching(client, dst_schedule_id(job.id), start, end))
        )
        # (Temporal answers times strictly after start.)
        wanted = [s.at for s in slots_between(cron, tz, start + timedelta(seconds=1), end, dst)]
        assert len(wanted) >= 4 and set(wanted) <= set(fired)
        # What Temporal fires beyond them (a quirk of its fall-back handling) the platform drops at start.
        assert [t for t in fired if is_policy_slot(cron, tz, t, dst)] == wanted
    finally:
        for sid in schedules:
            await client.get_schedule_handle(sid).delete()


def test_manifest_schedules_accept_a_dst_policy_and_name_a_bad_one() -> None:
    from autoplat.manifest import Schedule
    from registry.manifest import validate_manifest

    def manifest(schedule: dict[str, Any]) -> dict[str, Any]:
        job = {"name": "nightly", "description": "d", "handler": "main:run", "schedule": schedule,
               "createJob": {"schedule": schedule}}  # fmt: skip
        return {
            "name": "dstmod",
            "displayName": "DST",
            "author": "t",
            "version": "1.0.0",
            "description": "d",
            "jobs": [job],
        }

    good = {"cron": "30 2 * * *", "timezone": "America/New_York", "dst": {"ambiguous": "both"}, "jitterSeconds": 30}
    assert validate_manifest(manifest(good), check_handlers=False).valid
    parsed = Schedule.model_validate(good)
    assert parsed.dst is not None and (parsed.dst.nonexistent, parsed.dst.ambiguous) == ("shift", "both")
    assert parsed.jitter_seconds == 30
    report = validate_manifest(manifest({**good, "dst": {"nonexistent": "later"}}), check_handlers=False)
    assert not report.valid
    assert {e.path for e in report.errors} >= {"/jobs/0/schedule/dst/nonexistent"}
