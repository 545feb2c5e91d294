"""Handlers of the data-sync job types, written only against the autoplat SDK (and the stdlib).

- ``hourly_sync`` pulls the new records from an HTTP JSON source (paged by ``batch_size``) with
  ``ctx.http``, stores them in ``ctx.storage``, keeps its cursor in ``ctx.state`` and emits
  ``data.synced`` with what it got.
- ``sync_failed`` runs on the platform's ``job.failed`` event of an ``hourly-sync`` run (once, after
  its last attempt) and emits ``data.sync.failed``.
- ``daily_report`` summarises a sync (the ``data.synced`` event that triggered it, or the last
  result it is given), sends it through the configured channel (``ctx.notify``: webhook, email or
  Slack) and emits ``report.generated``.
- ``health_check`` probes the source's status endpoint, emits ``health.checked`` every run and
  ``health.alert`` when unhealthy; with ``status_page_url`` set it also keeps a screenshot of that
  page (``ctx.browser``).
- ``notify`` turns a ``health.alert`` into an email to on-call (``ctx.notify``).

The defaults point at the dev stack's demo source (``autoplat dev``, 127.0.0.1:8099).
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
    """Summarise a sync and send it through ``channel``; emits ``report.generated``.

    ``webhook`` (the default) posts the report as JSON to ``webhook_url`` (signed with the module's
    ``webhook_secret`` when set), ``slack`` posts its text there, ``email`` mails ``recipients``
    (default: the module's ``notify_email``). A channel that is not configured here (no SMTP server,
    no URL) is said in the log and in the result (``sent: false``); the run still completes.
    """
    source = (ctx.event or {}).get("payload") or ctx.previous or {}
    records = int(source.get("records", 0))
    channel = ctx.config["channel"]
    recipients = [r for r in (ctx.config.get("recipients") or [ctx.module_config.get("notify_email")]) if r]
    subject = f"data-sync report: {records} record(s)"
    text = f"{records} record(s) synced (trigger: {ctx.trigger}, execution {ctx.execution_id})."
    report: dict[str, Any] = {
        "subject": subject,
        "records": records,
        "channel": channel,
        "trigger": ctx.trigger,
        "sent": False,
        "delivery": None,
    }
    url = ctx.config.get("webhook_url")
    if not ctx.notify:
        ctx.logger.warning("report not sent: no notify service here; %s", subject)
    elif channel == "email":
        report["recipients"] = recipients
        if not recipients:
            ctx.logger.warning("report not sent: no recipients (config recipients or module notify_email)")
        elif not ctx.notify.available("email"):
            ctx.logger.warning("report not sent: no SMTP server configured (AUTOPLAT_SMTP_HOST); %s", subject)
        else:
            report["delivery"] = ctx.notify.email(recipients, subject, text=text)
            report["sent"] = True
    elif not url:
        ctx.logger.warning("report not sent: channel %s needs webhook_url", channel)
    elif channel == "slack":
        report["delivery"] = ctx.notify.slack(url, f"*{subject}*\n{text}")
        report["sent"] = True
    else:
        payload = {"subject": subject, "text": text, "records": records, "module": ctx.module}
        report["delivery"] = ctx.notify.webhook(url, payload, secret=ctx.secrets.get("webhook_secret"))
        report["sent"] = True
    if report["sent"]:
        ctx.logger.info("report sent by %s: %s", channel, subject)
    ctx.emit_sync(
        "report.generated", {"subject": subject, "records": records, "channel": channel, "sent": report["sent"]}
    )
    return report


def sync_failed(ctx: JobContext) -> dict[str, Any]:
    """Turn the platform's ``job.failed`` of an ``hourly-sync`` run into ``data.sync.failed``."""
    failed = (ctx.event or {}).get("payload") or {}
    if not failed.get("execution_id"):
        ctx.logger.info("no job.failed event to announce (started by hand?): nothing emitted")
        return {"announced": False}
    payload = {
        "execution_id": failed.get("execution_id"),
        "job_id": failed.get("job_id"),
        "error": failed.get("error"),
        "reason": failed.get("reason"),
    }
    ctx.logger.warning("sync %s failed: %s", payload["execution_id"], payload["reason"] or payload["error"])
    ctx.emit_sync("data.sync.failed", payload)
    return {"announced": True, **payload}


def health_check(ctx: JobContext) -> dict[str, Any]:
    """Probe ``status_url``; emits ``health.checked`` every run, ``health.alert`` when unhealthy."""
    url = ctx.config["status_url"]
    started = time.monotonic()
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
    latency_ms = int((time.monotonic() - started) * 1000)
    result: dict[str, Any] = {"healthy": healthy, "status_url": url, "latency_ms": latency_ms, "detail": detail}
    page = ctx.config.get("status_page_url")
    if page and ctx.browser:
        # The rendered status page, kept on the execution as artifact status.png.
        ctx.browser.navigate(page)
        result["screenshot"] = ctx.browser.screenshot("status.png")
    elif page:
        ctx.logger.warning("no browser on this worker: status page not captured")
    ctx.emit_sync("health.checked", {"healthy": healthy, "status_url": url, "latency_ms": latency_ms})
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
