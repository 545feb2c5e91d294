"""The ``collect`` job: one activity per due endpoint, and what each one said kept on its health.

Runs every minute (``createJob``) in three steps:

* ``due``: which endpoints are due (an endpoint is due when its own ``poll_interval_seconds`` has
  passed since its last attempt); returns their ids and names, nothing more: the items of a
  ``forEach`` step are kept in Temporal's history.
* ``read`` (``forEach``, ``continueOnItemError``): one endpoint per activity, at most 8 at once,
  each with its own timeout: a slow or broken meter neither fails nor delays the others. A
  transient failure (timeout, refused connection, 5xx) is raised while the module's ``retries``
  allow, so the platform retries that endpoint's activity (with backoff); any other failure is
  answered as the endpoint's error. A good reading is written to the series ``power`` (labels
  ``endpoint``, ``client``) by the item itself.
* ``record``: the health of every endpoint tried, incidents (``ctx.alerts``: after
  ``failure_threshold`` failures in a row, resolved by the next good reading; power over an
  endpoint's threshold; a client over its monthly budget) and the run's summary.

**No endpoint can fail the run.**
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
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
    ctx: JobContext,
    endpoint: dict[str, Any],
    settings: Settings,
    *,
    browser_lock: asyncio.Lock | None = None,
    retries: int | None = None,
) -> dict[str, float]:
    """One reading with the endpoint's credentials (decrypted here, never logged or returned)."""
    try:
        credentials = await model.load_credentials(ctx, endpoint["id"])
    except Exception as exc:  # no key any more, or a key that no longer decrypts them
        raise scrape.ScrapeError(str(exc)) from None
    return await scrape.read(
        ctx,
        endpoint,
        credentials,
        timeout=float(endpoint.get("timeout_seconds") or settings.timeout_seconds),
        max_bytes=settings.max_response_bytes,
        retries=settings.retries if retries is None else retries,
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


#: The storage document where ``due`` leaves the run's due endpoints for ``record`` (runs of the
#: job never overlap: ``"overlap": "skip"``).
DUE_KEY = "collect:due"


class TransientReadError(Exception):
    """A reading that may work if tried again (timeout, refused connection, 5xx): raised so that the
    platform retries this endpoint's activity."""


async def due(ctx: JobContext) -> list[dict[str, str]]:
    """Step 1: the endpoints due now, as ``{"id", "name"}`` items (no URL, no credentials)."""
    at = model.now()
    endpoints = await model.load_endpoints(ctx.storage)
    healths = await model.load_health(ctx.storage)
    # read_all (a run started by hand): every enabled endpoint, due or not.
    read_all = bool((ctx.config or {}).get("read_all"))
    items = [
        {"id": e["id"], "name": e["name"]}
        for e in endpoints
        if (e.get("enabled", True) if read_all else is_due(e, healths.get(e["id"]), at))
    ]
    await ctx.storage.put(
        DUE_KEY, {"at": model.iso(at), "endpoints": len(endpoints), "due": items, "started": time.time()}
    )
    return items


async def read(ctx: JobContext, item: dict[str, str]) -> dict[str, Any]:
    """Step 2, once per due endpoint (``ctx.item``): one reading, written to the series.

    Answers ``{"id", "at", "values", "reset"}``, or ``{"id", "at", "error"}`` for a reading that
    failed for good; ``backwards_total`` carries the counter check's memory to ``record``. Raises
    :class:`TransientReadError` while the module's ``retries`` allow another attempt."""
    settings = Settings.of(ctx.module_config)
    endpoint = await ctx.storage.get(f"endpoint:{item['id']}")
    if endpoint is None:
        return {"id": item["id"], "gone": True}  # deleted since the run began
    health = dict(await ctx.storage.get(f"health:{item['id']}") or {})
    when = model.now()
    answer: dict[str, Any] = {"id": item["id"], "at": model.iso(when)}
    try:
        # One attempt per activity: the platform's retries (with backoff) are the endpoint's.
        values = await read_endpoint(ctx, endpoint, settings, browser_lock=_browser_lock(ctx), retries=0)
        reset = _check_counter(values, health)
        await ctx.series.write(SERIES, labels_of(endpoint), values, at=when)
    except scrape.ScrapeError as exc:
        if exc.retryable and ctx.attempt <= settings.retries:
            raise TransientReadError(exc.message) from None
        attempts = f" (after {ctx.attempt} attempts)" if ctx.attempt > 1 else ""
        return {**answer, "error": exc.message + attempts, "backwards_total": health.get("backwards_total")}
    except Exception as exc:  # a refused series write, a service error: this endpoint's only
        return {**answer, "error": f"{type(exc).__name__}: {exc}", "backwards_total": health.get("backwards_total")}
    ctx.logger.info(
        "%s: %s%s",
        endpoint["name"],
        _shown(values),
        " (meter reset)" if reset else "",
        extra={"endpoint": endpoint["id"]},
    )
    return {**answer, "values": values, "reset": reset, "backwards_total": None}


#: Endpoints read with one browser context take turns on it (on the platform each endpoint's
#: activity has a context of its own; the local harness may hand one to every item).
_BROWSER_LOCKS: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _browser_lock(ctx: JobContext) -> asyncio.Lock | None:
    try:
        return _BROWSER_LOCKS.setdefault(ctx.browser, asyncio.Lock())
    except TypeError:  # a browser that cannot be weakly referenced: nobody shares it
        return None


async def record(ctx: JobContext, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Step 3: the health of every endpoint tried, incidents and budgets; returns counts and each
    failed endpoint's error."""
    settings = Settings.of(ctx.module_config)
    run = dict(await ctx.storage.get(DUE_KEY, {}) or {})
    items = list(run.get("due") or [])
    if len(items) != len(outcomes):  # no note of this run's due endpoints: the answers name them
        items = [{"id": (o.get("value") or {}).get("id")} for o in outcomes]
    at = datetime.fromisoformat(run["at"]) if run.get("at") else model.now()
    endpoints = {e["id"]: e for e in await model.load_endpoints(ctx.storage)}
    healths = await model.load_health(ctx.storage)
    tried: list[tuple[dict[str, Any], dict[str, Any], str | None]] = []
    for item, outcome in zip(items, outcomes, strict=True):
        endpoint = endpoints.get(str(item.get("id")))
        answer = (outcome.get("value") or {}) if outcome.get("ok") else {}
        if endpoint is None or answer.get("gone"):
            continue  # deleted meanwhile
        health = dict(healths.get(endpoint["id"]) or {})
        when = datetime.fromisoformat(answer["at"]) if answer.get("at") else model.now()
        health["last_attempt_at"] = model.iso(when)
        if answer.get("backwards_total") is None:
            health.pop("backwards_total", None)
        else:
            health["backwards_total"] = answer["backwards_total"]
        error = answer.get("error") if outcome.get("ok") else _item_error(outcome.get("error") or {})
        if error is None:
            health.update(
                last_reading_at=model.iso(when),
                last_values=answer["values"],
                consecutive_failures=0,
                last_reset=model.iso(when) if answer.get("reset") else health.get("last_reset"),
            )
        else:
            _failed(health, error, when)
            ctx.logger.warning("%s: %s", endpoint["name"], error, extra={"endpoint": endpoint["id"]})
        await _alert(ctx, endpoint, health, error, settings)
        tried.append((endpoint, health, error))
    if tried:
        await ctx.storage.put_many({f"health:{e['id']}": h for e, h, _ in tried})
    budgets = await _budgets(ctx, settings, at) if settings.client_budgets_kwh else {}
    failed = {e["id"]: err for e, _, err in tried if err is not None}
    started = run.get("started")
    return {
        "endpoints": int(run.get("endpoints", len(endpoints))),
        "due": len(items),
        "read": len(tried) - len(failed),
        "failed": len(failed),
        "errors": failed,
        "budgets": budgets,
        "duration_ms": int((time.time() - float(started)) * 1000) if started else 0,
    }


def _item_error(error: dict[str, Any]) -> str:
    """The message of a reading whose activity failed for good (its attempts used up, its timeout
    passed): the platform prefixes an exception's message with its type."""
    message = str(error.get("message") or "the reading failed")
    kind = error.get("type")
    return message.removeprefix(f"{kind}: ") if kind else message


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
