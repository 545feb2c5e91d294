"""Outbound HTTP for handlers (``ctx.http``): allowlisted hosts, SSRF guard, retries, request log.

* **Allowlist**: only the hosts of the module manifest's ``permissions.hosts`` are reachable
  (``*.example.com`` matches any subdomain of example.com, not example.com itself); every
  redirect hop is checked again.
* **SSRF guard**: the host name is resolved, every resolved address is checked, and the
  connection goes to an address that passed the check, so a DNS answer cannot change between
  the check and the connect (no rebinding). Loopback and private addresses are refused unless
  ``AUTOPLAT_HTTP_ALLOW_PRIVATE`` says ``loopback`` / ``private``; link-local (which includes
  the cloud metadata endpoint 169.254.169.254), the IPv6 metadata address ``fd00:ec2::254``,
  unspecified, multicast and reserved addresses are refused whatever it says.
* **Retries**: connection errors, 429 and 5xx are retried with exponential backoff and jitter;
  ``Retry-After`` (seconds or an HTTP date) is honoured. Non-idempotent methods (POST, PATCH)
  are retried only when the request cannot have been processed: connection failures, 429, 503.
* **Log**: each request is logged to the execution log with method, URL (no credentials, secret
  query values masked), status and duration.

Async methods (``await ctx.http.get(url)``) for async handlers; ``*_sync`` twins
(``ctx.http.get_sync(url)``) for sync handlers.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpcore
import httpx

from autoplat._sync import Runner
from autoplat.errors import JobError

__all__ = [
    "AddressPolicy",
    "HostNotAllowed",
    "HttpClient",
    "HttpStatusError",
    "ResponseTooLarge",
    "host_allowed",
    "redact_url",
]

_log = logging.getLogger("autoplat.http")

AllowPrivate = Literal["off", "loopback", "private"]

#: Refused whatever ``AUTOPLAT_HTTP_ALLOW_PRIVATE`` says (besides all link-local addresses).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Query parameters whose values never reach the log.
SECRET_PARAMS = ("token", "key", "secret", "password", "passwd", "pwd", "auth", "signature", "sig", "code", "session")

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_SECONDS = 0.5
DEFAULT_MAX_BACKOFF_SECONDS = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024
#: Redirect hops followed, and the most of a redirect's body read (then dropped).
MAX_REDIRECTS = 10
REDIRECT_BODY_CAP = 64 * 1024


class HostNotAllowed(JobError):
    """The URL's host is not in the manifest's ``permissions.hosts``, or resolves to a refused address."""


class ResponseTooLarge(JobError):
    """A response body exceeded its size cap (``max_bytes``)."""


class HttpStatusError(Exception):
    """A non-2xx answer to :meth:`HttpClient.get_json` / ``post_json`` (after retries).

    Attributes:
        status: The HTTP status code.
        response: The :class:`httpx.Response`.
    """

    def __init__(self, message: str, *, status: int, response: httpx.Response) -> None:
        super().__init__(message)
        self.status = status
        self.response = response


# --- address policy -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AddressPolicy:
    """Which resolved addresses may be connected to.

    Args:
        allow_private: ``"off"`` (public addresses only), ``"loopback"`` (also 127.0.0.0/8 and ::1)
            or ``"private"`` (also RFC 1918, unique-local, carrier-grade NAT and loopback).
    """

    allow_private: AllowPrivate = "off"

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be connected to, or ``None`` when it may."""
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address):
            # IPv6 forms that carry an IPv4 address are judged by that address.
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            elif ip.sixtofour is not None:
                ip = ip.sixtofour
            elif ip.teredo is not None:
                ip = ip.teredo[1]
        if ip in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if ip.is_link_local:
            return "a link-local address"
        if ip.is_loopback:  # before "reserved": ::1 lies in the reserved ::/8
            if self.allow_private in ("loopback", "private"):
                return None
            return "a loopback address (AUTOPLAT_HTTP_ALLOW_PRIVATE=loopback allows it)"
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            return "an unspecified, multicast or reserved address"
        if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
            return "the broadcast address"
        if not ip.is_global:
            if self.allow_private == "private":
                return None
            return "a private address (AUTOPLAT_HTTP_ALLOW_PRIVATE=private allows it)"
        return None

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and keep the permitted addresses; refuse when none is."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        permitted: list[str] = []
        reasons: list[str] = []
        for *_, sockaddr in infos:
            address = str(sockaddr[0])
            reason = self.refusal(address)
            if reason is None:
                if address not in permitted:
                    permitted.append(address)
            else:
                reasons.append(f"{address} is {reason}")
        if not permitted:
            raise HostNotAllowed(f"refusing to connect to {host}: " + "; ".join(reasons or ["no address"]))
        return permitted


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks, and connects to the checked address itself (TLS still verifies the name)."""

    def __init__(self, policy: AddressPolicy) -> None:
        from httpcore._backends.auto import AutoBackend

        self._policy = policy
        self._inner = AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last: Exception | None = None
        for address in await self._policy.resolve(host, port):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise HostNotAllowed("unix sockets are not reachable through ctx.http")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose every TCP connection passes the :class:`AddressPolicy`."""

    def __init__(self, policy: AddressPolicy, *, max_connections: int = 100) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(policy),
        )


# --- allowlist and log hygiene --------------------------------------------------------------------
def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` matches one of ``patterns`` (exact names; ``*.`` matches any subdomain)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def redact_url(url: str | httpx.URL) -> str:
    """The URL without user info and with secret-looking query values masked (for logs)."""
    parts = urlsplit(str(url))
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    query = urlencode(
        [
            (k, "***" if any(s in k.lower() for s in SECRET_PARAMS) else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- the client -----------------------------------------------------------------------------------
def masked_values(secrets: Iterable[Any]) -> list[str]:
    """The values worth masking in logged text: strings of 4+ characters, also inside nested secrets
    (``{"db": {"password": ...}}``, lists), longest first."""
    found: set[str] = set()
    pending = list(secrets)
    while pending:
        value = pending.pop()
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a numeric secret (a PIN) appears in URLs as text
        if isinstance(value, str) and len(value) >= 4:
            found.add(value)
        elif isinstance(value, Mapping):
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
    return sorted(found, key=len, reverse=True)


def shown_url(url: Any, secrets: Sequence[str] = ()) -> str:
    """``url`` as logged: no user info, secret-looking query values masked, and each of ``secrets``
    (see :func:`masked_values`) masked wherever it appears, URL-encoded or not."""
    text = redact_url(url)
    for secret in secrets:
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


class HttpClient:
    """``ctx.http``: outbound HTTP for one step (or for the ``autoplat.http`` activity).

    Args:
        hosts: Allowed host patterns (the manifest's ``permissions.hosts``); ``None`` allows any
            host (platform calls), the SSRF guard still applies.
        transport: A :class:`GuardedTransport` shared by the worker; when omitted, the client
            builds its own from ``allow_private`` and closes it in :meth:`aclose`.
        allow_private: See :class:`AddressPolicy` (only used without ``transport``).
        logger: Where each request is logged (the step's ``ctx.logger``); else Python logging.
        runner: Runs coroutines for the ``*_sync`` twins (set by the platform / the harness).
    """

    def __init__(
        self,
        *,
        hosts: Sequence[str] | Callable[[], Any] | None,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_private: AllowPrivate = "off",
        logger: Any = None,
        runner: Runner | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_SECONDS,
        max_backoff: float = DEFAULT_MAX_BACKOFF_SECONDS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        secrets: Sequence[str] = (),
    ) -> None:
        self._hosts_source = hosts
        # Secret values (the step's ctx.secrets) masked wherever they appear in a logged URL,
        # e.g. tokens in paths such as /bot<token>/sendMessage.
        self._secrets = masked_values(secrets)
        self._hosts: list[str] | None = None if callable(hosts) or hosts is None else list(hosts)
        self._hosts_loaded = not callable(hosts)
        self._own_transport = transport is None
        self._transport = transport or GuardedTransport(AddressPolicy(allow_private))
        self._logger = logger
        self._runner = runner
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_response_bytes = max_response_bytes
        self.max_download_bytes = max_download_bytes
        self._client: httpx.AsyncClient | None = None

    @property
    def masked_values(self) -> list[str]:
        """The values masked in logged URLs (the step's secrets)."""
        return list(self._secrets)

    async def allowed_hosts(self) -> list[str] | None:
        """The allowed host patterns (``None``: any host).

        Raises:
            HostNotAllowed: No host may be called (the module does not declare ``http``).
        """
        return await self._allowed_hosts()

    async def _allowed_hosts(self) -> list[str] | None:
        if not self._hosts_loaded:
            loader = self._hosts_source
            assert callable(loader)
            result = loader()
            if asyncio.iscoroutine(result):
                result = await result
            self._hosts = list(result or [])
            self._hosts_loaded = True
        return self._hosts

    async def _check(self, request: httpx.Request) -> None:
        """Request hook: runs for the first request and for every redirect hop."""
        url = request.url
        if url.scheme not in ("http", "https"):
            raise HostNotAllowed(f"only http and https URLs are allowed, not {url.scheme}:")
        hosts = await self._allowed_hosts()
        if hosts is not None and not host_allowed(url.host, hosts):
            raise HostNotAllowed(
                f"host {url.host} is not allowed: add it to the manifest's permissions.hosts "
                f"(allowed: {', '.join(hosts) or 'none'})",
                details={"host": url.host, "allowed": hosts},
            )

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                trust_env=False,  # an environment proxy would bypass the address guard
                follow_redirects=False,  # followed in _send, hop by hop
                timeout=self.timeout,
                event_hooks={"request": [self._check]},
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connections (only those this client owns)."""
        if self._own_transport:
            await self._transport.aclose()

    def _log(self, method: str, url: Any, status: int | str, started: float, attempt: int, **extra: Any) -> None:
        duration_ms = int((time.monotonic() - started) * 1000)
        shown = self.shown(url)
        fields = {"method": method, "url": shown, "status": status, "duration_ms": duration_ms, "attempt": attempt}
        fields.update(extra)
        message = "HTTP %s %s -> %s (%d ms)"
        if self._logger is not None:
            ok = isinstance(status, int) and status < 400
            (self._logger.info if ok else self._logger.warning)(
                message, method, shown, status, duration_ms, extra={"http": fields}
            )
        else:
            _log.info(message, method, shown, status, duration_ms, extra={"http": fields})

    def shown(self, url: Any) -> str:
        """``url`` as logged: no user info, secret-looking query values and secret values masked."""
        return shown_url(url, self._secrets)

    async def _send(self, request: httpx.Request, follow_redirects: bool) -> httpx.Response:
        """Send, following redirects ourselves: each hop passes the request hook (allowlist) and
        the guarded transport (addresses), and at most REDIRECT_BODY_CAP of a hop's body is read."""
        hops: list[httpx.Response] = []
        current = request
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.client.send(current, stream=True, follow_redirects=False)
            if not follow_redirects or response.next_request is None:
                response.history = hops
                return response
            try:
                await _read_capped(response, REDIRECT_BODY_CAP)
            except ResponseTooLarge:
                pass  # a redirect's body is never used: stop reading it (the stream is closed)
            hops.append(response)
            current = response.next_request
        raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects", request=request)

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        base = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not cryptography

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        max_bytes: int | None = None,
        follow_redirects: bool = True,
    ) -> httpx.Response:
        """Send a request (with retries) and read its body (at most ``max_bytes``).

        Returns:
            The :class:`httpx.Response`, whatever its status (see :meth:`get_json` to raise on errors).

        Raises:
            HostNotAllowed: The host (or a redirect's) is not allowed or resolves to a refused address.
            ResponseTooLarge: The body exceeded ``max_bytes``.
            httpx.TransportError: The connection kept failing after the retries.
        """
        method = method.upper()
        budget = self.retries if retries is None else max(0, retries)
        cap = self.max_response_bytes if max_bytes is None else max_bytes
        request = self.client.build_request(
            method,
            url,
            params=params,
            headers=headers,
            json=json,
            data=data,
            content=content,
            timeout=self.timeout if timeout is None else timeout,
        )
        idempotent = method in IDEMPOTENT_METHODS
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                response = await self._send(request, follow_redirects)
            except HostNotAllowed:
                self._log(method, request.url, "refused", started, attempt)
                raise
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                self._log(method, request.url, type(exc).__name__, started, attempt)
                if attempt > budget:
                    raise
                await asyncio.sleep(self._delay(attempt))
                continue
            except httpx.TransportError as exc:
                self._log(method, request.url, type(exc).__name__, started, attempt)
                if attempt > budget or not idempotent:
                    raise
                await asyncio.sleep(self._delay(attempt))
                continue
            try:
                body = await _read_capped(response, cap)
            except ResponseTooLarge:
                self._log(method, response.request.url, "too large", started, attempt)
                raise
            except httpx.TransportError as exc:
                self._log(method, request.url, type(exc).__name__, started, attempt)
                if attempt > budget or not idempotent:
                    raise
                await asyncio.sleep(self._delay(attempt))
                continue
            result = _buffered(response, body)
            for hop in response.history:
                self._log(hop.request.method, hop.request.url, hop.status_code, started, attempt, redirect=True)
            self._log(method, response.request.url, response.status_code, started, attempt)
            status = response.status_code
            retryable = status in (429, 503) or (status >= 500 and idempotent)
            if not retryable or attempt > budget:
                return result
            delay = self._delay(attempt)
            wait = _retry_after(response)
            if wait is not None:
                if wait > self.max_backoff:
                    # The server asks for longer than we may wait: hand its answer back.
                    return result
                delay = max(delay, wait)
            await asyncio.sleep(delay)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """``GET`` (see :meth:`request` for the keyword arguments)."""
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", url, **kwargs)

    async def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("HEAD", url, **kwargs)

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        """``GET`` and decode JSON; a non-2xx answer (after retries) raises :class:`HttpStatusError`."""
        return _json_of(await self.request("GET", url, **kwargs))

    async def post_json(self, url: str, json: Any = None, **kwargs: Any) -> Any:
        """``POST`` a JSON body and decode the JSON answer (raises :class:`HttpStatusError` on non-2xx)."""
        return _json_of(await self.request("POST", url, json=json, **kwargs))

    async def download(
        self, url: str, path: str | Path | None = None, *, max_bytes: int | None = None, **kwargs: Any
    ) -> bytes | Path:
        """Download ``url`` (at most ``max_bytes``, default the download cap) to ``path`` or memory.

        Raises:
            ResponseTooLarge: The body exceeded the cap (nothing is left at ``path``).
            HttpStatusError: The server answered non-2xx.
        """
        cap = self.max_download_bytes if max_bytes is None else max_bytes
        response = await self.request("GET", url, max_bytes=cap, **kwargs)
        if not response.is_success:
            raise HttpStatusError(
                f"GET {redact_url(url)} answered {response.status_code}", status=response.status_code, response=response
            )
        if path is None:
            return response.content
        target = Path(path)
        await asyncio.to_thread(target.write_bytes, response.content)
        return target

    # --- sync twins (for sync handlers, which run in a thread) ------------------------------------
    def _sync(self, aw: Any) -> Any:
        if self._runner is None:
            aw.close()
            raise RuntimeError("the *_sync methods need a runner (they are for sync handlers)")
        return self._runner(aw)

    def request_sync(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """:meth:`request` for sync handlers."""
        return self._sync(self.request(method, url, **kwargs))  # type: ignore[no-any-return]

    def get_sync(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._sync(self.get(url, **kwargs))  # type: ignore[no-any-return]

    def post_sync(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._sync(self.post(url, **kwargs))  # type: ignore[no-any-return]

    def put_sync(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._sync(self.put(url, **kwargs))  # type: ignore[no-any-return]

    def patch_sync(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._sync(self.patch(url, **kwargs))  # type: ignore[no-any-return]

    def delete_sync(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._sync(self.delete(url, **kwargs))  # type: ignore[no-any-return]

    def head_sync(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._sync(self.head(url, **kwargs))  # type: ignore[no-any-return]

    def get_json_sync(self, url: str, **kwargs: Any) -> Any:
        return self._sync(self.get_json(url, **kwargs))

    def post_json_sync(self, url: str, json: Any = None, **kwargs: Any) -> Any:
        return self._sync(self.post_json(url, json, **kwargs))

    def download_sync(
        self, url: str, path: str | Path | None = None, *, max_bytes: int | None = None, **kwargs: Any
    ) -> bytes | Path:
        return self._sync(self.download(url, path, max_bytes=max_bytes, **kwargs))  # type: ignore[no-any-return]


def _bodiless(response: httpx.Response) -> bool:
    """A HEAD answer, 1xx, 204 or 304: Content-Length describes a body that is not sent."""
    return response.request.method == "HEAD" or response.status_code < 200 or response.status_code in (204, 304)


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    try:
        declared = int(response.headers.get("Content-Length", "-1") or -1)
        if declared > cap and not _bodiless(response):
            raise ResponseTooLarge(
                f"response of {redact_url(response.request.url)} is {declared} bytes (cap {cap})",
                details={"cap": cap, "size": declared},
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise ResponseTooLarge(
                    f"response of {redact_url(response.request.url)} exceeds {cap} bytes", details={"cap": cap}
                )
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        await response.aclose()


def _buffered(response: httpx.Response, body: bytes) -> httpx.Response:
    """A fully read copy of a streamed response (its body is already decoded)."""
    dropped = ("content-encoding",) if _bodiless(response) else ("content-encoding", "content-length")
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped]
    result = httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions={k: v for k, v in response.extensions.items() if k == "http_version"},
    )
    result.history = list(response.history)
    return result


def _json_of(response: httpx.Response) -> Any:
    if not response.is_success:
        raise HttpStatusError(
            f"{response.request.method} {redact_url(response.request.url)} answered {response.status_code}",
            status=response.status_code,
            response=response,
        )
    try:
        return response.json()
    except ValueError as exc:
        raise JobError(f"{redact_url(response.request.url)} did not answer JSON") from exc
