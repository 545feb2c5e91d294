"""The HTTP service: ``ctx.http`` for handlers and the ``autoplat.http`` activity for workflows.

One guarded transport (connection pool + SSRF guard) per worker; each step gets an
:class:`autoplat.http.HttpClient` limited to its module's ``permissions.hosts`` and logging to
its execution log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.types import StepInput
from autoplat._sync import loop_runner
from autoplat.context import JobContext
from autoplat.http import (
    AddressPolicy,
    GuardedTransport,
    HostNotAllowed,
    HttpClient,
    HttpStatusError,
    ResponseTooLarge,
    masked_values,
)
from registry import metrics, tracing

HTTP = "autoplat.http"


@dataclass
class HttpCall:
    """Input of the ``autoplat.http`` activity.

    ``module`` limits the call to that module's ``permissions.hosts``; without it any host may be
    called (a platform call), the address guard still applies.
    """

    method: str
    url: str
    headers: dict[str, str] | None = None
    params: dict[str, Any] | None = None
    json: Any = None
    timeout_seconds: float | None = None
    retries: int | None = None
    module: str | None = None
    raise_for_status: bool = False


@dataclass
class HttpCallResult:
    status: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    json: Any = None
    elapsed_ms: int = 0


class HttpService:
    def __init__(self, deps: Any) -> None:
        self.deps = deps
        settings = deps.settings
        self.transport = GuardedTransport(AddressPolicy(settings.http_allow_private))
        # The platform's own calls (the autoplat.http activity) are counted by host and status here;
        # a step's ctx.http calls are counted from their log entries (jobs.py), in whichever process
        # the handler runs.
        self.counted = metrics.counting_transport(self.transport)
        #: A registered version's hosts, or why it may call none (its manifest never changes).
        self._hosts: dict[tuple[str, str | None], list[str] | str] = {}

    def activities(self) -> list[Callable[..., Any]]:
        return [self.http]

    def client(
        self, *, hosts: Any, logger: Any = None, runner: Any = None, secrets: Any = (), transport: Any = None
    ) -> HttpClient:
        settings = self.deps.settings
        return HttpClient(
            hosts=hosts,
            secrets=secrets,
            transport=transport or self.transport,
            logger=logger,
            runner=runner,
            timeout=settings.http_timeout_seconds,
            retries=settings.http_retries,
            max_backoff=settings.http_max_backoff_seconds,
            max_response_bytes=settings.http_max_response_bytes,
            max_download_bytes=settings.http_max_download_bytes,
        )

    async def module_hosts(self, module: str, version: str | None) -> list[str]:
        """``permissions.hosts`` of a module version (of the current version when ``version`` is None).

        Raises:
            HostNotAllowed: The module is unknown or does not declare the ``http`` service.
        """
        from registry.models import Module, ModuleVersion

        key = (module, version)
        if version is not None and key in self._hosts:
            cached = self._hosts[key]
            if isinstance(cached, str):
                raise HostNotAllowed(cached)
            return cached
        async with self.deps.sessions() as session:
            if version is None:
                manifest = await session.scalar(select(Module.manifest).where(Module.name == module))
            else:
                manifest = await session.scalar(
                    select(ModuleVersion.manifest)
                    .join(Module, Module.id == ModuleVersion.module_id)
                    .where(Module.name == module, ModuleVersion.version == version)
                )
        if manifest is None:
            raise HostNotAllowed(f"module {module} is not registered: no hosts are allowed")
        permissions = manifest.get("permissions") or {}
        if "http" not in (permissions.get("services") or []):
            refused = f"module {module} does not declare the http service in its permissions.services"
            if version is not None:
                self._hosts[key] = refused
            raise HostNotAllowed(refused)
        hosts = [str(h) for h in (permissions.get("hosts") or [])]
        if version is not None:
            # A registered version's manifest never changes: cache it for the worker's lifetime.
            self._hosts[key] = hosts
        return hosts

    async def contribute(self, inp: StepInput, ctx: JobContext) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        client = self.client(
            hosts=lambda: self.module_hosts(inp.module, inp.module_version),
            logger=ctx.logger,
            runner=loop_runner(loop),
            secrets=masked_values(ctx.secrets.values()),
            # Each request a span of the step's trace, traceparent sent (AUTOPLAT_TRACING=on only).
            transport=tracing.step_transport(self.transport),
        )
        return {"http": client}

    @activity.defn(name=HTTP)
    async def http(self, call: HttpCall) -> HttpCallResult:
        """One HTTP request with the platform's retries and guard (for the platform's workflows)."""
        started = time.monotonic()
        try:
            hosts = await self.module_hosts(call.module, None) if call.module else None
            client = self.client(hosts=hosts, transport=self.counted)
            response = await client.request(
                call.method,
                call.url,
                headers=call.headers,
                params=call.params,
                json=call.json,
                timeout=call.timeout_seconds,
                retries=call.retries,
            )
        except (HostNotAllowed, ResponseTooLarge) as exc:
            raise ApplicationError(exc.message, exc.details, type=type(exc).__name__, non_retryable=True) from None
        if call.raise_for_status and not response.is_success:
            status = response.status_code
            raise ApplicationError(
                str(HttpStatusError(f"{call.method} answered {status}", status=status, response=response)),
                {"status": status},
                type="HttpStatusError",
                non_retryable=400 <= status < 500 and status not in (408, 429),
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        return HttpCallResult(
            status=response.status_code,
            url=str(response.url),
            headers=dict(response.headers),
            text=response.text,
            json=body,
            elapsed_ms=int((time.monotonic() - started) * 1000),
        )

    async def close(self) -> None:
        await self.transport.aclose()


def provider(deps: Any) -> HttpService:
    return HttpService(deps)
