"""Handlers of the data-sync job types, written only against the autoplat SDK (and the stdlib).

- ``hourly_sync`` pulls the new records from an HTTP JSON source (paged by ``batch_size``) with
  ``ctx.http``, stores them in ``ctx.storage``, keeps its cursor in ``ctx.state`` and emits
  ``data.synced`` with what it got.
- ``daily_report`` summarises a sync (the ``data.synced`` event that triggered it, or the last
  result it is given) for the configured recipients.
- ``health_check`` probes the source's status endpoint and emits ``health.alert`` when unhealthy;
  with ``status_page_url`` set it also keeps a screenshot of that page (``ctx.browser``).
- ``notify`` turns a ``health.alert`` into an email to on-call (``ctx.notify``).

``hourly_sync`` uses the platform's services; the other handlers still call HTTP with the standard
library.
"""

from __future__ import annotations

import json
import time
from html import escape as html_escape
from typing import Any

from autoplat import JobContext, JobError, RetryableError
from autoplat.http import HostNotAllowed, HttpStatusError


def hourly_sync(ctx: JobContext) -> dict[str, Any]:
    """Fetch the records added to ``source_url`` since the last run and store them.

    ``ctx.state`` keeps the cursor (the offset of the next record), advanced after every page so
    a failed run resumes where it stopped; ``ctx.storage`` keeps the records, one document each.
    ``ctx.http`` retries 5xx / 429 with backoff and only reaches the manifest's allowed hosts.
    """
    started = time.monotonic()
    url = ctx.config["source_url"]
    size = int(ctx.config["batch_size"])
    token = ctx.secrets.get("api_token")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    cursor = int(ctx.state.value_sync().get("cursor", 0))
    synced = 0
    page = 0
    while True:
        ctx.check_cancelled()
        try:
            batch = ctx.http.get_json_sync(url, params={"offset": cursor, "limit": size}, headers=headers)
        except HttpStatusError as exc:
            if exc.status >= 500 or exc.status == 429:
                raise RetryableError(f"{url} answered {exc.status}") from exc
            raise JobError(f"{url} answered {exc.status}") from exc
        items = batch.get("items", batch) if isinstance(batch, dict) else batch
        if not isinstance(items, list):
            raise JobError("the source must answer a JSON list (or an object with 'items')")
        if items:
            ctx.storage.put_many_sync({f"record:{_record_id(item, cursor + i)}": item for i, item in enumerate(items)})
            cursor += len(items)
            ctx.state.update_sync(_advance(cursor))
        synced += len(items)
        ctx.heartbeat(synced)
        ctx.logger.info("page %d: %d record(s)", page, len(items), extra={"cursor": cursor})
        if len(items) < size:
            break
        page += 1
    summary = {
        "records": synced,
        "pages": page + 1,
        "cursor": cursor,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }
    ctx.emit_sync("data.synced", summary)
    ctx.logger.info("synced %d record(s)", synced, extra=summary)
    return summary


def _record_id(item: Any, fallback: int) -> Any:
    return item.get("id", fallback) if isinstance(item, dict) else fallback


def _advance(cursor: int) -> Any:
    def advance(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "cursor": max(cursor, int(state.get("cursor", 0)))}

    return advance


def daily_report(ctx: JobContext) -> dict[str, Any]:
    """Summarise a sync for the recipients (defaulting to the module's ``notify_email``)."""
    source = (ctx.event or {}).get("payload") or ctx.previous or {}
    recipients = ctx.config.get("recipients") or [ctx.module_config.get("notify_email")]
    report = {
        "channel": ctx.config["channel"],
        "recipients": [r for r in recipients if r],
        "records": int(source.get("records", 0)),
        "trigger": ctx.trigger,
        "subject": f"data-sync report: {int(source.get('records', 0))} record(s)",
    }
    ctx.logger.info("report for %s: %s", ", ".join(report["recipients"]) or "nobody", report["subject"])
    return report


def health_check(ctx: JobContext) -> dict[str, Any]:
    """Probe ``status_url``; an unhealthy source emits ``health.alert``."""
    url = ctx.config["status_url"]
    try:
        # Through ctx.http, like every request of the module: the manifest's hosts and the
        # platform's address policy apply. One attempt: an unhealthy source is the answer.
        status = ctx.http.get_json_sync(url, timeout=float(ctx.config["timeout_seconds"]), retries=0)
        healthy = isinstance(status, dict) and str(status.get("status", "")).lower() in ("ok", "healthy", "up")
        detail = status if isinstance(status, dict) else {"body": status}
    except HostNotAllowed:
        raise  # a configuration error (a refused destination), not an unhealthy source
    except Exception as exc:  # noqa: BLE001 - unreachable, failing or not JSON: that is the health
        healthy, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
    result: dict[str, Any] = {"healthy": healthy, "status_url": url, "detail": detail}
    page = ctx.config.get("status_page_url")
    if page and ctx.browser:
        # The rendered status page, kept on the execution as artifact status.png.
        ctx.browser.navigate(page)
        result["screenshot"] = ctx.browser.screenshot("status.png")
    elif page:
        ctx.logger.warning("no browser on this worker: status page not captured")
    if not healthy:
        ctx.logger.warning("source unhealthy: %s", detail)
        ctx.emit_sync("health.alert", {"status": "unhealthy", "status_url": url, "detail": detail})
    else:
        ctx.logger.info("source healthy")
    return result


def notify(ctx: JobContext) -> dict[str, Any]:
    """Email on-call about a ``health.alert`` event (text and HTML)."""
    payload = (ctx.event or {}).get("payload") or {}
    to = ctx.module_config.get("notify_email")
    status = str(payload.get("status", "unknown"))
    subject = f"{ctx.config['subject']}: {status}"
    detail = payload.get("detail")
    ctx.logger.warning("alert to %s: %s", to, subject, extra={"detail": detail})
    result: dict[str, Any] = {"to": to, "subject": subject, "detail": detail, "message_id": None}
    if ctx.notify and ctx.notify.available("email"):
        source = payload.get("status_url") or "the source"
        text = f"{source} is {status}.\n\nDetail: {json.dumps(detail, default=str)}\nExecution: {ctx.execution_id}"
        html = (
            f"<p><b>{html_escape(str(source))}</b> is <b>{html_escape(status)}</b>.</p>"
            f"<pre>{html_escape(json.dumps(detail, default=str, indent=2))}</pre>"
        )
        sent = ctx.notify.email(to, subject, text=text, html=html)
        result["message_id"] = sent["message_id"]
    else:
        ctx.logger.warning("email is not available here (no notify service or no SMTP server): alert only logged")
    return result
