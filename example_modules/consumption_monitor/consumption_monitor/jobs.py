"""The ``collect`` job: read every due endpoint, concurrently, and keep what each one said.

Runs every minute (``createJob``); an endpoint is due when its own ``poll_interval_seconds`` has
passed since its last attempt. Endpoints are read concurrently (at most ``concurrency`` at once;
HTML endpoints take turns on the step's one browser context), each with its own timeout and
retries, and **no endpoint can fail the run**: a failure is recorded on that endpoint's health and,
after ``failure_threshold`` failures in a row, opens an incident (``ctx.alerts``), resolved by the
next good reading. Readings go to the series ``power`` (labels ``endpoint``, ``client``).

Today all endpoints are read inside this one step (one Temporal activity): a slow meter costs a
concurrency slot for its timeout, never the others' readings. One activity per endpoint needs a
platform fan-out (``ctx.map``), planned; see docs/consumption-monitor.md.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from autoplat import JobContext
from autoplat.series import floor_time
from consumption_monitor import model, scrape

SERIES = "power"
NO_CLIENT = "unassigned"
#: A total below this share of the previous one is a meter reset (replaced, rolled over); a smaller
#: drop is a glitch, refused once (a second reading confirming the lower level is a reset too).
RESET_SHARE = 0.1
#: Schedules fire on the minute give or take: an endpoint is due a little before its interval ends.
DUE_SLACK_SECONDS = 10


@dataclass(frozen=True)
class Settings:
    concurrency: int = 8
    timeout_seconds: float = 20.0
    retries: int = 1
    max_response_bytes: int = 5 * 1024 * 1024
    failure_threshold: int = 3
    alert_channels: tuple[str, ...] = ()
    client_budgets_kwh: tuple[tuple[str, float], ...] = ()
    timezone: str = "UTC"

    @classmethod
    def of(cls, config: dict[str, Any]) -> Settings:
        budgets = config.get("client_budgets_kwh") or {}
        return cls(
            concurrency=int(config.get("concurrency", 8)),
            timeout_seconds=float(config.get("timeout_seconds", 20)),
            retries=int(config.get("retries", 1)),
            max_response_bytes=int(config.get("max_response_bytes", 5 * 1024 * 1024)),
            failure_threshold=int(config.get("failure_threshold", 3)),
            alert_channels=tuple(config.get("alert_channels") or ()),
            client_budgets_kwh=tuple((str(k), float(v)) for k, v in budgets.items()),
            timezone=str(config.get("timezone") or "UTC"),
        )


def labels_of(endpoint: dict[str, Any]) -> dict[str, str]:
    return {"endpoint": endpoint["id"], "client": endpoint.get("client") or NO_CLIENT}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:100] or "x"


def is_due(endpoint: dict[str, Any], health: dict[str, Any] | None, at: datetime) -> bool:
    if not endpoint.get("enabled", True):
        return False
    last = (health or {}).get("last_attempt_at")
    if not last:
        return True
    waited = (at - datetime.fromisoformat(last)).total_seconds()
    return waited >= int(endpoint["poll_interval_seconds"]) - DUE_SLACK_SECONDS


async def read_endpoint(
    ctx: JobContext, endpoint: dict[str, Any], settings: Settings, *, browser_lock: asyncio.Lock | None = None
) -> dict[str, float]:
    """One reading with the endpoint's credentials (decrypted here, never logged or returned)."""
    try:
        credentials = await model.load_credentials(ctx.storage, ctx.module_config, endpoint["id"])
    except Exception as exc:  # no key any more, or a key that no longer decrypts them
        raise scrape.ScrapeError(str(exc)) from None
    return await scrape.read(
        ctx,
        endpoint,
        credentials,
        timeout=float(endpoint.get("timeout_seconds") or settings.timeout_seconds),
        max_bytes=settings.max_response_bytes,
        retries=settings.retries,
        browser_lock=browser_lock,
    )


def _check_counter(values: dict[str, float], health: dict[str, Any]) -> bool:
    """Refuse a total that went backwards (a glitch); accept a reset. Returns True on a reset."""
    total = values.get("total_kwh")
    previous = (health.get("last_values") or {}).get("total_kwh")
    if total is None or previous is None or total >= previous:
        health.pop("backwards_total", None)
        return False
    confirmed = health.get("backwards_total")
    if total <= previous * RESET_SHARE or (confirmed is not None and confirmed <= total):
        health.pop("backwards_total", None)
        return True
    health["backwards_total"] = total
    raise scrape.ScrapeError(
        f"total_kwh went backwards from {previous:g} to {total:g}: reading refused "
        f"(a reset reads below {RESET_SHARE:.0%} of the last total, or is confirmed by the next reading)"
    )


async def collect(ctx: JobContext) -> dict[str, Any]:
    """Read the due endpoints; returns counts and each failed endpoint's error."""
    started = time.monotonic()
    settings = Settings.of(ctx.module_config)
    at = model.now()
    endpoints = await model.load_endpoints(ctx.storage)
    healths = await model.load_health(ctx.storage)
    due = [e for e in endpoints if is_due(e, healths.get(e["id"]), at)]
    slots = asyncio.Semaphore(max(1, settings.concurrency))
    browser_lock = asyncio.Lock()

    async def one(endpoint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        health = dict(healths.get(endpoint["id"]) or {})
        async with slots:
            when = model.now()
            health["last_attempt_at"] = model.iso(when)
            try:
                values = await read_endpoint(ctx, endpoint, settings, browser_lock=browser_lock)
                reset = _check_counter(values, health)
                await ctx.series.write(SERIES, labels_of(endpoint), values, at=when)
            except scrape.ScrapeError as exc:
                return endpoint, _failed(health, exc.message, when), exc.message
            except Exception as exc:  # a refused series write, a service error: this endpoint's only
                message = f"{type(exc).__name__}: {exc}"
                return endpoint, _failed(health, message, when), message
        health.update(
            last_reading_at=model.iso(when),
            last_values=values,
            consecutive_failures=0,
            last_reset=model.iso(when) if reset else health.get("last_reset"),
        )
        ctx.logger.info(
            "%s: %s%s",
            endpoint["name"],
            _shown(values),
            " (meter reset)" if reset else "",
            extra={"endpoint": endpoint["id"]},
        )
        return endpoint, health, None

    outcomes = await asyncio.gather(*(one(e) for e in due))
    for endpoint, health, error in outcomes:
        if error is not None:
            ctx.logger.warning("%s: %s", endpoint["name"], error, extra={"endpoint": endpoint["id"]})
        await _alert(ctx, endpoint, health, error, settings)
    if outcomes:
        await ctx.storage.put_many({f"health:{e['id']}": h for e, h, _ in outcomes})
    budgets = await _budgets(ctx, settings, at) if settings.client_budgets_kwh else {}
    failed = {e["id"]: err for e, _, err in outcomes if err is not None}
    return {
        "endpoints": len(endpoints),
        "due": len(due),
        "read": len(due) - len(failed),
        "failed": len(failed),
        "errors": failed,
        "budgets": budgets,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


def _shown(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(values.items()))


def _failed(health: dict[str, Any], message: str, when: datetime) -> dict[str, Any]:
    health.update(
        last_error=message,
        last_error_at=model.iso(when),
        consecutive_failures=int(health.get("consecutive_failures", 0)) + 1,
    )
    return health


async def _alert(
    ctx: JobContext, endpoint: dict[str, Any], health: dict[str, Any], error: str | None, settings: Settings
) -> None:
    """Failing endpoints and power over the endpoint's threshold, as incidents of the module."""
    labels = labels_of(endpoint)
    key = f"endpoint-failing:{endpoint['id']}"
    channels = list(settings.alert_channels)
    if error is not None and health["consecutive_failures"] >= settings.failure_threshold:
        await ctx.alerts.raise_(
            key,
            f"Meter {endpoint['name']} cannot be read",
            message=f"{health['consecutive_failures']} failed readings in a row; last: {error}"[:4000],
            severity="warning",
            labels=labels,
            channels=channels,
        )
        health["failing_incident"] = True
    elif error is None and health.pop("failing_incident", False):
        await ctx.alerts.resolve(key, note="the endpoint answers again")
    threshold = endpoint.get("power_threshold_w")
    power = (health.get("last_values") or {}).get("power_w") if error is None else None
    if threshold and power is not None:
        key = f"power-over:{endpoint['id']}"
        if power > threshold:
            await ctx.alerts.raise_(
                key,
                f"Meter {endpoint['name']} draws {power:g} W (limit {threshold:g} W)",
                message=f"{endpoint['name']} ({labels['client']}) draws {power:g} W, over its {threshold:g} W limit",
                severity="critical",
                labels=labels,
                channels=channels,
            )
            health["power_incident"] = True
        elif power <= 0.95 * threshold and health.pop("power_incident", False):
            await ctx.alerts.resolve(key, note=f"down to {power:g} W")


async def _budgets(ctx: JobContext, settings: Settings, at: datetime) -> dict[str, Any]:
    """Month-to-date energy per client against its budget; over budget opens an incident."""
    from zoneinfo import ZoneInfo

    start = floor_time(at, "1mo", ZoneInfo(settings.timezone))
    buckets = await ctx.series.rollup(
        SERIES,
        start,
        at + timedelta(seconds=1),
        step="1mo",
        tz=settings.timezone,
        agg={"total_kwh": ["increase"]},
        fields=["total_kwh"],
    )
    used: dict[str, float] = {}
    for bucket in buckets:
        kwh = (bucket.values.get("total_kwh") or {}).get("increase") or 0.0
        used[bucket.labels["client"]] = used.get(bucket.labels["client"], 0.0) + kwh
    month = start.strftime("%Y-%m")
    state = dict(await ctx.storage.get("budget-incidents", {}) or {})
    report: dict[str, Any] = {}
    for client, budget in settings.client_budgets_kwh:
        kwh = round(used.get(client, 0.0), 3)
        key = f"budget:{slug(client)}:{month}"
        report[client] = {"kwh": kwh, "budget_kwh": budget, "over": kwh > budget}
        if kwh > budget:
            await ctx.alerts.raise_(
                key,
                f"Client {client} is over its monthly budget",
                message=f"{client} used {kwh:g} kWh in {month}, over its budget of {budget:g} kWh",
                severity="warning",
                labels={"client": client},
                channels=list(settings.alert_channels),
            )
            state[key] = True
    for key in [k for k in state if not k.endswith(f":{month}")]:  # a new month starts under budget
        await ctx.alerts.resolve(key, note="a new month began")
        state.pop(key)
    await ctx.storage.put("budget-incidents", state)
    return report
