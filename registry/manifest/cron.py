"""Cron expressions as the platform accepts them, and a preview of their next runs.

Schedules run on Temporal, so the accepted syntax is what Temporal Schedules and croniter
both understand, with Temporal's semantics:

* 5 fields: ``minute hour day-of-month month day-of-week``;
* 6 fields: ``second minute hour day-of-month month day-of-week`` (seconds FIRST, as in
  Quartz or Spring). Temporal reads a 6-field string as ``... day-of-week year`` and croniter
  wants seconds LAST, so this form is converted for both: see :func:`to_temporal_cron`;
* the aliases ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
  (``@midnight``) and ``@hourly``.

Each field is a comma-separated list of ``*``, ``n``, ``a-b`` (``a <= b``), each optionally
followed by ``/step``; ``n/step`` means ``n-max/step``. Months and days of week also accept
three-letter English names (``jan``, ``mon``), and day-of-week ``7`` is Sunday like ``0``.
Extensions that Temporal rejects (``?``, ``L``, ``W``, ``#``, ``H``) are rejected here.
When both day-of-month and day-of-week are restricted, a day must match BOTH (Temporal's
rule; classic cron would run on either).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter

__all__ = [
    "CRON_ALIASES",
    "CronSpec",
    "min_interval_seconds",
    "next_runs",
    "parse_cron",
    "to_temporal_cron",
    "validate_cron",
    "validate_timezone",
]

CRON_ALIASES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names) per field, in 6-field order.
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_MAX_EXPRESSION_LENGTH = 256
_MAX_RUNS = 1000


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron expression: the set of values each field matches.

    Attributes:
        expression: The expression as written (stripped).
        has_seconds: Whether the expression has a seconds field (6-field form).
        seconds: Matching seconds (``{0}`` for 5-field expressions).
        minutes: Matching minutes.
        hours: Matching hours.
        days: Matching days of month.
        months: Matching months (1-12).
        weekdays: Matching days of week (0 = Sunday ... 6 = Saturday).
    """

    expression: str
    has_seconds: bool
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def matches(self, moment: datetime) -> bool:
        """Return whether the wall-clock time ``moment`` matches every field."""
        return (
            moment.second in self.seconds
            and moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.day in self.days
            and moment.month in self.months
            and moment.isoweekday() % 7 in self.weekdays
        )

    @property
    def runs_per_minute(self) -> int:
        """How many times the expression can fire within one minute (1 unless seconds vary)."""
        return len(self.seconds)

    def to_croniter(self) -> str:
        """Return an equivalent croniter expression (seconds as a 6th, LAST field)."""
        fields = [
            _canonical(self.minutes, 0, 59),
            _canonical(self.hours, 0, 23),
            _canonical(self.days, 1, 31),
            _canonical(self.months, 1, 12),
            _canonical(self.weekdays, 0, 6),
        ]
        if self.has_seconds:
            fields.append(_canonical(self.seconds, 0, 59))
        return " ".join(fields)


def _canonical(values: frozenset[int], low: int, high: int) -> str:
    if values >= set(range(low, high + 1)):
        return "*"
    return ",".join(str(v) for v in sorted(values))


def _value(text: str, low: int, high: int, names: tuple[str, ...], field: str) -> int:
    lowered = text.lower()
    if names and lowered in names:
        return names.index(lowered) + (1 if names is _MONTHS else 0)
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{field}: {text[:20]!r} is not a number" + (" or a name" if names else ""))
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"{field}: {number} is out of range {low}-{high}")
    return number


def _parse_field(text: str, low: int, high: int, names: tuple[str, ...], field: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isascii() or not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{field}: step {step_text[:20]!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _value(first, low, high, names, field)
            end = _value(last, low, high, names, field)
            if end < start:
                raise ValueError(f"{field}: range {base[:20]!r} ends before it starts")
        elif base:
            start = _value(base, low, high, names, field)
            end = high if slash else start
        else:
            raise ValueError(f"{field}: empty value in {text[:40]!r}")
        values.update(range(start, end + 1, step))
    if names is _DAYS and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


def parse_cron(expression: str) -> CronSpec:
    """Parse a cron expression (5 or 6 fields, or an alias).

    Args:
        expression: The expression, e.g. ``"*/5 * * * *"`` or ``"30 0 * * * *"``.

    Returns:
        The matching values of each field.

    Raises:
        ValueError: If the expression is not valid; the message says why.
    """
    if not isinstance(expression, str):
        raise ValueError(f"cron expression must be a string, got {type(expression).__name__}")
    if len(expression) > _MAX_EXPRESSION_LENGTH:
        raise ValueError(f"cron expression is longer than {_MAX_EXPRESSION_LENGTH} characters")
    text = expression.strip()
    if text.startswith("@"):
        if text not in CRON_ALIASES:
            raise ValueError(f"unknown alias {text[:20]!r}; use one of {', '.join(CRON_ALIASES)}")
        text = CRON_ALIASES[text]
    parts = text.split()
    if len(parts) == 5:
        parts = ["0", *parts]
        has_seconds = False
    elif len(parts) == 6:
        has_seconds = True
    else:
        raise ValueError(f"expected 5 fields (or 6 with leading seconds), got {len(parts)}")
    sets = [
        _parse_field(part, low, high, names, field)
        for part, (field, low, high, names) in zip(parts, _FIELDS, strict=True)
    ]
    return CronSpec(expression.strip(), has_seconds, *sets)


def validate_cron(expression: object) -> str | None:
    """Check a cron expression.

    Besides syntax, this rejects expressions that never fire (``0 0 30 2 *``).

    Args:
        expression: The expression to check.

    Returns:
        None if the expression is valid, else a human-readable error message.
    """
    if not isinstance(expression, str):
        return f"cron expression must be a string, got {type(expression).__name__}"
    try:
        spec = parse_cron(expression)
        if not _upcoming(spec, ZoneInfo("UTC"), datetime(2000, 1, 1, tzinfo=UTC), 1):
            return "expression never fires"
    except ValueError as exc:
        return str(exc)
    return None


#: Zone files that are not timezones: the host's own setting (``localtime``, differs per machine),
#: the template of POSIX rules (``posixrules``) and the "unknown" placeholder (``Factory``).
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def validate_timezone(name: object) -> bool:
    """Return whether ``name`` is an IANA timezone known to this system (e.g. ``Europe/Paris``).

    Only names of the IANA database count: not ``""``, not the host-specific ``localtime``, not
    ``posixrules`` or ``Factory``, and not the ``posix/`` / ``right/`` copies of the database.
    """
    if not isinstance(name, str) or not name or len(name) > 100 or name in _NOT_ZONES:
        return False
    if name not in _known_zones() and name != "UTC":
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def min_interval_seconds(expression: str) -> int:
    """The shortest gap between two firings of a valid cron expression, in seconds.

    Computed over the times of day it fires at (hour x minute x second), including the gap over
    midnight, so ``*/10 * * * * *`` gives 10, ``* * * * *`` 60 and ``0 0 * * *`` 86400 (or more
    when days are restricted: a daily bound is enough for any minimum the platform enforces).

    Raises:
        ValueError: If the expression is not valid.
    """
    spec = parse_cron(expression)
    times = sorted(h * 3600 + m * 60 + sec for h in spec.hours for m in spec.minutes for sec in spec.seconds)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    gaps.append(86400 - times[-1] + times[0])
    return min(gaps)


def to_temporal_cron(expression: str) -> str:
    """Translate an expression to the string Temporal's ``ScheduleSpec.cron_expressions`` expects.

    Temporal reads 6 fields as ``minute ... day-of-week year`` and 7 fields as ``second ...
    day-of-week year``, so our seconds-first 6-field form becomes a 7-field string with a
    ``*`` year. 5-field expressions and aliases pass through unchanged (whitespace normalised).

    Args:
        expression: A valid expression (see :func:`validate_cron`).

    Returns:
        The expression for Temporal.

    Raises:
        ValueError: If the expression is not valid.
    """
    spec = parse_cron(expression)
    text = spec.expression
    if text.startswith("@"):
        return text
    parts = text.split()
    return " ".join([*parts, "*"] if spec.has_seconds else parts)


def _upcoming(spec: CronSpec, zone: ZoneInfo, after: datetime, n: int) -> list[datetime]:
    try:
        it = croniter(spec.to_croniter(), after.astimezone(zone), ret_type=datetime, day_or=False)
    except CroniterError as exc:
        raise ValueError(f"unsupported expression: {exc}") from exc
    runs: list[datetime] = []
    # croniter moves a time that falls in a DST gap to the next valid hour; Temporal skips it.
    # Such shifted times no longer match the fields, so they are dropped.
    for _ in range(n * 4 + 10):
        try:
            moment = it.get_next(datetime)
        except CroniterBadDateError:
            break
        if spec.matches(moment):
            runs.append(moment)
            if len(runs) >= n:
                break
    return runs


def next_runs(cron: str, tz: str = "UTC", n: int = 5, after: datetime | None = None) -> list[datetime]:
    """Preview the next times a schedule fires.

    Args:
        cron: A cron expression (5 or 6 fields, seconds first; or an alias).
        tz: The IANA timezone the expression is evaluated in.
        n: How many runs to return (1-1000).
        after: Start strictly after this time; naive values are read in ``tz``. Defaults to now.

    Returns:
        Up to ``n`` timezone-aware datetimes in ``tz``, ascending; fewer if the expression stops
        firing (it cannot fire after year 2100 or so). The raw calendar: times skipped by a DST
        gap are left out and times in a repeated hour appear twice. What actually runs follows
        the job's DST policy (``registry/services/schedule_preview.py``, docs/schedules.md), not
        this list nor Temporal's own choice for repeated hours.

    Raises:
        ValueError: If the expression, timezone or ``n`` is invalid.
    """
    if not validate_timezone(tz):
        raise ValueError(f"unknown timezone: {str(tz)[:100]!r}")
    if not 1 <= n <= _MAX_RUNS:
        raise ValueError(f"n must be between 1 and {_MAX_RUNS}")
    zone = ZoneInfo(tz)
    start = datetime.now(zone) if after is None else after
    if start.tzinfo is None:
        start = start.replace(tzinfo=zone)
    return _upcoming(parse_cron(cron), zone, start, n)
