"""Notifications: email over SMTP, generic signed webhooks and Slack-compatible incoming webhooks.

Two ways in, one implementation:

* ``ctx.notify`` in handlers (:class:`Notifier`): ``email``, ``webhook``, ``slack`` and
  ``channel(name, ...)``; awaitable in async handlers, blocking in sync ones.
* the ``autoplat.notify`` activity (:class:`NotifyActivities`), which the job workflow calls
  once after a run's final attempt for the channels its ``notifications`` name.

Channels are resolved by name: the module's config ``notification_channels`` (that module only),
then ``AUTOPLAT_NOTIFY_CHANNELS``, then the built-in ``email`` channel (``AUTOPLAT_SMTP_*``,
recipients ``AUTOPLAT_NOTIFY_EMAIL_TO``). See docs/notifications.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.types import NOTIFY, NotifyInput, StepInput
from autoplat.context import JobContext
from autoplat.errors import JobError
from autoplat.http import AddressPolicy
from registry import metrics
from registry.errors import DomainError
from registry.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Module config key holding a module's own channels (declare it ``"secret": true``).
MODULE_CHANNELS_KEY = "notification_channels"
SIGNATURE_HEADER = "X-Autoplat-Signature"
TIMESTAMP_HEADER = "X-Autoplat-Timestamp"
DELIVERY_HEADER = "X-Autoplat-Delivery"
CHANNEL_TYPES = ("email", "webhook", "slack")


class NotifyError(Exception):
    """A send failed. ``permanent`` failures (bad address, refused URL, 4xx) are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


# --- outbound address check --------------------------------------------------------------------
async def check_url(url: str, allow_private: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Refuse webhook targets that are not http(s) or resolve to a refused address.

    Every resolved address must be allowed (checked after DNS resolution); returns them so the
    caller connects to a checked address. Unify with the HTTP service's SSRF guard
    (activities/services/http.py) when both are merged.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise NotifyError(f"invalid webhook URL: {exc}", permanent=True) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyError(f"webhook URL must be http(s) with a host, got {parts.scheme or 'no'} scheme", permanent=True)
    policy = AddressPolicy(allow_private)  # type: ignore[arg-type] # validated by the settings
    host = parts.hostname
    try:
        literal = ipaddress.ip_address(host)
        addresses = [literal]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NotifyError(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        refusal = policy.refusal(str(address))
        if refusal is not None:
            raise NotifyError(f"refused to send to {host} ({address}): {refusal}", permanent=True)
    return addresses


def pin(url: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``url`` rewritten to connect to ``address`` (the one checked), with the Host header and TLS
    server name of the original host: a second DNS answer (rebinding) cannot redirect the request."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == str(address):
        return url, {}, {}
    literal = f"[{address}]" if address.version == 6 else str(address)
    port = f":{parts.port}" if parts.port else ""
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{literal}{port}" if userinfo else f"{literal}{port}"
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), {"Host": f"{host}{port}"}, extensions


# --- manifest permissions ------------------------------------------------------------------------
class ManifestPermissions:
    """``permissions`` of each (module, version) manifest, cached: a version's manifest never changes."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession] | None) -> None:
        self.sessions = sessions
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}

    async def get(self, module: str, version: str) -> dict[str, Any] | None:
        """The permissions object, or ``None`` when the registry cannot say (no DB, unknown version)."""
        key = (module, version)
        if key not in self._cache:
            if self.sessions is None:
                return None
            from registry.models import Module, ModuleVersion

            async with self.sessions() as session:
                manifest = await session.scalar(
                    select(ModuleVersion.manifest)
                    .join(Module, Module.id == ModuleVersion.module_id)
                    .where(Module.name == module, ModuleVersion.version == version)
                )
            if manifest is None:
                return None
            self._cache[key] = dict(manifest.get("permissions") or {})
        return self._cache[key]

    async def require(self, module: str, version: str, service: str) -> dict[str, Any] | None:
        """The permissions, after checking that ``service`` is declared.

        Raises:
            JobError: the manifest does not list ``service`` in ``permissions.services``.
        """
        permissions = await self.get(module, version)
        if permissions is not None and service not in (permissions.get("services") or []):
            raise JobError(f"ctx.{service} needs {service!r} in the manifest's permissions.services")
        return permissions


# --- senders -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    tls: str = "starttls"
    username: str | None = None
    password: str | None = None
    sender: str = "autoplat@localhost"
    timeout: float = 30.0
    ca_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, overrides: Mapping[str, Any] | None = None) -> SmtpConfig:
        o = dict(overrides or {})
        host = o.get("host") or settings.smtp_host
        if not host:
            raise NotifyError("email is not configured: set AUTOPLAT_SMTP_HOST", permanent=True)
        tls = str(o.get("tls") or settings.smtp_tls)
        if tls not in ("none", "starttls", "implicit"):
            raise NotifyError(f"invalid SMTP tls mode {tls!r}: use none, starttls or implicit", permanent=True)
        port = o.get("port") or settings.smtp_port or {"none": 25, "starttls": 587, "implicit": 465}[tls]
        password = o.get("password")
        if password is None and settings.smtp_password is not None:
            password = settings.smtp_password.get_secret_value()
        return cls(
            host=str(host),
            port=int(port),
            tls=tls,
            username=o.get("username") or settings.smtp_username,
            password=password,
            sender=str(o.get("from") or settings.smtp_from),
            timeout=float(o.get("timeout") or settings.smtp_timeout_seconds),
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
        )


def build_email(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    text: str | None,
    html: str | None,
    cc: Sequence[str] = (),
    message_id: str | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = sender.rpartition("@")[2] or "autoplat"
    message["Message-ID"] = f"<{message_id or uuid.uuid4().hex}@{domain}>"
    message.set_content(text if text is not None else _strip_html(html or ""))
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def _strip_html(html: str) -> str:
    import re

    return re.sub(r"<[^>]+>", "", html)


async def send_email(
    smtp: SmtpConfig,
    *,
    to: Sequence[str],
    subject: str,
    text: str | None = None,
    html: str | None = None,
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    message_id: str | None = None,
) -> dict[str, Any]:
    import aiosmtplib

    recipients = [r for r in [*to, *cc, *bcc] if r]
    if not recipients:
        raise NotifyError("email needs at least one recipient", permanent=True)
    if text is None and html is None:
        raise NotifyError("email needs a text or an html body", permanent=True)
    message = build_email(
        sender=smtp.sender, to=to, subject=subject, text=text, html=html, cc=cc, message_id=message_id
    )
    try:
        errors, _ = await aiosmtplib.send(
            message,
            sender=smtp.sender,
            recipients=recipients,
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username,
            password=smtp.password,
            use_tls=smtp.tls == "implicit",
            start_tls=smtp.tls == "starttls",
            cert_bundle=smtp.ca_file,
            timeout=smtp.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        raise NotifyError(f"every recipient was refused: {exc}", permanent=True) from exc
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise NotifyError(f"SMTP authentication failed: {exc.message}", permanent=True) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise NotifyError(f"SMTP server answered {exc.code}: {exc.message}", permanent=exc.code >= 500) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise NotifyError(f"SMTP delivery to {smtp.host}:{smtp.port} failed: {exc}") from exc
    refused = sorted(errors)
    return {
        "type": "email",
        "message_id": str(message["Message-ID"]),
        "recipients": [r for r in recipients if r not in errors],
        "refused": refused,
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300.0) -> bool:
    """What a receiver runs: the signature matches and the timestamp is recent (replay window)."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


async def send_webhook(
    client: httpx.AsyncClient,
    url: str,
    payload: Any,
    *,
    allow_private: str,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    secret: str | None = None,
    delivery_id: str | None = None,
    kind: str = "webhook",
) -> dict[str, Any]:
    method = method.upper()
    if method not in ("POST", "PUT", "PATCH"):
        raise NotifyError(f"webhook method must be POST, PUT or PATCH, not {method}", permanent=True)
    addresses = await check_url(url, allow_private)
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    delivery = delivery_id or uuid.uuid4().hex
    sent_headers = {**dict(headers or {}), "Content-Type": "application/json", DELIVERY_HEADER: delivery}
    if secret:
        timestamp = str(int(time.time()))
        sent_headers[TIMESTAMP_HEADER] = timestamp
        sent_headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    started = time.monotonic()
    response: httpx.Response | None = None
    for index, address in enumerate(addresses):
        target, pinned_headers, extensions = pin(url, address)
        try:
            response = await client.request(
                method,
                target,
                content=body,
                headers={**sent_headers, **pinned_headers},
                follow_redirects=False,
                extensions=extensions,
            )
            break
        except httpx.ConnectError as exc:
            if index + 1 < len(addresses):
                continue  # the next checked address of the host (e.g. IPv4 after IPv6)
            raise NotifyError(f"{kind} to {_safe_url(url)} failed: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise NotifyError(f"{kind} to {_safe_url(url)} failed: {type(exc).__name__}: {exc}") from exc
    assert response is not None
    status = response.status_code
    if status >= 300:
        # 4xx other than 408/429 will not get better by retrying.
        permanent = 300 <= status < 500 and status not in (408, 429)
        raise NotifyError(f"{kind} to {_safe_url(url)} answered {status}", permanent=permanent)
    return {
        "type": kind,
        "url": _safe_url(url),
        "status": status,
        "delivery": delivery,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


def _safe_url(url: str) -> str:
    """The URL without credentials, query or path secrets (Slack URLs carry the token in the path)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…" if parts.path not in ("", "/") else f"{parts.scheme}://{host}{port}/"


def slack_payload(text: str, *, subject: str | None = None, blocks: list[Any] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"text": f"*{subject}*\n{text}" if subject else text}
    if blocks:
        payload["blocks"] = blocks
    return payload


# --- channels ------------------------------------------------------------------------------------
def resolve_channel(name: str, settings: Settings, module_channels: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The channel spec for ``name``: the module's own, then the platform's, then built-in ``email``."""
    spec = (module_channels or {}).get(name)
    if spec is None:
        spec = settings.notify_channels.get(name)
    if spec is None and name == "email":
        spec = {"type": "email"}
    if not isinstance(spec, Mapping):
        raise NotifyError(
            f"unknown notification channel {name!r} (configure it in AUTOPLAT_NOTIFY_CHANNELS or the module's "
            f"{MODULE_CHANNELS_KEY})",
            permanent=True,
        )
    kind = spec.get("type")
    if kind not in CHANNEL_TYPES:
        raise NotifyError(f"channel {name!r} has type {kind!r}; use one of {', '.join(CHANNEL_TYPES)}", permanent=True)
    if kind in ("webhook", "slack") and not spec.get("url"):
        raise NotifyError(f"channel {name!r} ({kind}) needs a url", permanent=True)
    return dict(spec)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


class Sender:
    """Delivers to channel specs; shared by :class:`Notifier` and the activity."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client

    @property
    def allow_private(self) -> str:
        return self.settings.http_allow_private

    async def deliver(self, spec: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Deliver to one channel spec (below), counted by channel type and outcome."""
        kind = str(spec.get("type") or "webhook")
        try:
            answer = await self._deliver(spec, **kwargs)
        except BaseException:
            metrics.NOTIFICATIONS.labels(kind if kind in CHANNEL_TYPES else "other", "failed").inc()
            raise
        metrics.NOTIFICATIONS.labels(kind if kind in CHANNEL_TYPES else "other", "sent").inc()
        return answer

    async def _deliver(
        self,
        spec: Mapping[str, Any],
        *,
        subject: str,
        text: str,
        html: str | None = None,
        data: Mapping[str, Any] | None = None,
        to: Sequence[str] | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        kind = spec["type"]
        if kind == "email":
            recipients = list(to or []) or _as_list(spec.get("to")) or list(self.settings.notify_email_to)
            smtp = SmtpConfig.from_settings(self.settings, spec)
            return await send_email(
                smtp, to=recipients, cc=_as_list(spec.get("cc")), subject=subject, text=text, html=html, message_id=key
            )
        if kind == "slack":
            return await send_webhook(
                self.client,
                str(spec["url"]),
                slack_payload(text, subject=subject),
                allow_private=self.allow_private,
                delivery_id=key,
                kind="slack",
            )
        payload = {"subject": subject, "text": text, "data": dict(data or {}), "sent_at": int(time.time())}
        return await send_webhook(
            self.client,
            str(spec["url"]),
            payload,
            allow_private=self.allow_private,
            method=str(spec.get("method") or "POST"),
            headers=spec.get("headers") or {},
            secret=spec.get("secret"),
            delivery_id=key,
        )


class Notifier:
    """``ctx.notify``: send email, webhooks and Slack messages from a handler.

    In an ``async def`` handler, ``await`` each method; in a plain ``def`` handler call it
    directly (it blocks until sent). A failed send raises :class:`~autoplat.JobError` when
    retrying cannot help (unknown channel, refused address, 4xx answer, rejected recipients) and
    ``NotifyError`` otherwise (the step is retried under the job's policy).
    """

    def __init__(
        self,
        sender: Sender,
        *,
        module_channels: Mapping[str, Any] | None = None,
        logger: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
        permitted: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self._sender = sender
        self._channels = dict(module_channels or {})
        self._logger = logger
        self._loop = loop or asyncio.get_running_loop()
        #: Checks the manifest declares ``notify`` (once, on first use).
        self._permitted = permitted

    def __bool__(self) -> bool:
        return True

    def _run(self, factory: Callable[[], Awaitable[T]], kind: str | None = None) -> Any:
        """``kind``: the channel type to count (registry/metrics.py); named channels are counted by
        :meth:`Sender.deliver`."""

        async def guarded() -> T:
            if self._permitted is not None:
                await self._permitted()
                self._permitted = None
            try:
                result = await factory()
            except NotifyError as exc:
                if kind is not None:
                    metrics.NOTIFICATIONS.labels(kind, "failed").inc()
                if self._logger is not None:
                    self._logger.warning("notification failed: %s", exc.message)
                if exc.permanent:
                    raise JobError(exc.message) from exc
                raise
            if kind is not None:
                metrics.NOTIFICATIONS.labels(kind, "sent").inc()
            if self._logger is not None:
                self._logger.info("notification sent", extra=result)
            return result

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None:
            # A sync handler, in its own thread: run on the worker's loop and wait.
            return asyncio.run_coroutine_threadsafe(guarded(), self._loop).result()
        return guarded()

    def available(self, channel: str = "email") -> bool:
        """True when ``channel`` is configured well enough to try a send (no network involved).

        For email channels this means an SMTP host is set; lets a handler fall back (log only)
        on installations without SMTP instead of failing.
        """
        try:
            spec = resolve_channel(channel, self._sender.settings, self._channels)
            if spec["type"] == "email":
                SmtpConfig.from_settings(self._sender.settings, spec)
        except NotifyError:
            return False
        return True

    def email(
        self,
        to: str | Sequence[str],
        subject: str,
        text: str | None = None,
        html: str | None = None,
        *,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        channel: str = "email",
    ) -> Any:
        """Send an email (text, HTML or both) through the SMTP server of ``channel``.

        Returns ``{"type": "email", "message_id", "recipients", "refused"}``.
        """

        async def send() -> dict[str, Any]:
            spec = resolve_channel(channel, self._sender.settings, self._channels)
            if spec["type"] != "email":
                raise NotifyError(f"channel {channel!r} is not an email channel", permanent=True)
            return await send_email(
                SmtpConfig.from_settings(self._sender.settings, spec),
                to=_as_list(to),
                cc=_as_list(cc),
                bcc=_as_list(bcc),
                subject=subject,
                text=text,
                html=html,
            )

        return self._run(send, kind="email")

    def webhook(
        self,
        url: str,
        payload: Any,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
    ) -> Any:
        """Send ``payload`` as JSON; with ``secret`` it is signed (``X-Autoplat-Signature``).

        Returns ``{"type": "webhook", "url", "status", "delivery", "duration_ms"}``.
        """
        return self._run(
            lambda: send_webhook(
                self._sender.client,
                url,
                payload,
                allow_private=self._sender.allow_private,
                method=method,
                headers=headers,
                secret=secret,
            ),
            kind="webhook",
        )

    def slack(self, url: str, text: str, *, blocks: list[Any] | None = None) -> Any:
        """Post ``text`` (and optional Block Kit ``blocks``) to a Slack-compatible incoming webhook."""
        return self._run(
            lambda: send_webhook(
                self._sender.client,
                url,
                slack_payload(text, blocks=blocks),
                allow_private=self._sender.allow_private,
                kind="slack",
            ),
            kind="slack",
        )

    def channel(
        self,
        name: str,
        subject: str,
        text: str,
        *,
        html: str | None = None,
        data: Mapping[str, Any] | None = None,
        to: str | Sequence[str] | None = None,
    ) -> Any:
        """Send through a named channel (module config ``notification_channels`` or the platform's)."""

        async def send() -> dict[str, Any]:
            spec = resolve_channel(name, self._sender.settings, self._channels)
            return await self._sender.deliver(
                spec, subject=subject, text=text, html=html, data=data, to=_as_list(to) or None
            )

        return self._run(send)


# --- the provider: activity + ctx.notify -----------------------------------------------------------
class NotifyActivities:
    """Provider of ``ctx.notify`` and of the ``autoplat.notify`` activity (one per worker)."""

    #: Deliveries remembered per worker, so a retried activity whose send had succeeded does not
    #: send again (see docs/notifications.md, "Delivery guarantees").
    REMEMBER = 1024

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession] | None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0), trust_env=False)
        self.sender = Sender(settings, self.client)
        self.permissions = ManifestPermissions(sessions)
        self._delivered: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def activities(self) -> list[Callable[..., Any]]:
        return [self.notify]

    async def contribute(self, inp: StepInput, ctx: JobContext) -> dict[str, Any]:
        channels = ctx.module_config.get(MODULE_CHANNELS_KEY)

        async def permitted() -> None:
            await self.permissions.require(inp.module, inp.module_version, "notify")

        return {
            "notify": Notifier(
                self.sender,
                module_channels=channels if isinstance(channels, Mapping) else None,
                logger=ctx.logger,
                permitted=permitted,
            )
        }

    async def close(self) -> None:
        await self.client.aclose()

    async def _module_channels(self, module: str | None) -> dict[str, Any]:
        if not module or self.sessions is None:
            return {}
        from registry.models import Module
        from registry.services.modules import resolved_config

        async with self.sessions() as session:
            row = await session.scalar(select(Module).where(Module.name == module))
            if row is None:
                return {}
            try:
                config = resolved_config(module=row, secret_key=self.settings.encryption_key())
            except DomainError as exc:  # secrets under another key: fall back to platform channels
                activity.logger.warning("module %s config unreadable for notifications: %s", module, exc.message)
                return {}
        channels = config.get(MODULE_CHANNELS_KEY)
        return dict(channels) if isinstance(channels, Mapping) else {}

    @activity.defn(name=NOTIFY)
    async def notify(self, inp: NotifyInput) -> dict[str, Any]:
        """Send one notification to a named channel; retried by the caller's retry policy."""
        info = activity.info()
        # Stable across retries of this activity: receivers can deduplicate on it (Message-ID,
        # X-Autoplat-Delivery), and this worker skips a send it already made.
        key = hashlib.sha256(f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}".encode()).hexdigest()[:32]
        if key in self._delivered:
            activity.logger.info("notification %s to %s already sent; not sending again", key, inp.channel)
            return self._delivered[key]
        try:
            spec = resolve_channel(inp.channel, self.settings, await self._module_channels(inp.module))
            result = await self.sender.deliver(spec, subject=inp.subject, text=inp.body, data=inp.data, key=key)
        except NotifyError as exc:
            raise ApplicationError(exc.message, type="NotifyError", non_retryable=exc.permanent) from None
        result = {**result, "channel": inp.channel}
        self._delivered[key] = result
        while len(self._delivered) > self.REMEMBER:
            self._delivered.popitem(last=False)
        activity.logger.info("notification sent to %s", inp.channel, extra={"delivery": key})
        return result


def provider(deps: Any) -> NotifyActivities:
    return NotifyActivities(deps.settings, getattr(deps, "sessions", None))
