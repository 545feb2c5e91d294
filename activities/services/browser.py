"""The browser service: Playwright driving the system Chromium.

One browser per worker, launched on first use and reused; each step that uses ``ctx.browser``
gets its own context (cookies, storage and cache isolated), opened lazily and closed when the
step ends, fails or is cancelled (the ``release`` hook). At most
``AUTOPLAT_BROWSER_MAX_CONTEXTS`` contexts are open at once; further steps wait for a slot. A
browser that crashed or was closed is relaunched on the next use. See docs/browser.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.services.notify import ManifestPermissions, NotifyError, check_url
from activities.types import StepInput
from autoplat.context import JobContext
from autoplat.errors import JobError
from autoplat.http import host_allowed, masked_values, shown_url
from registry.db import unit_of_work
from registry.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

BROWSER_SCREENSHOT = "autoplat.browser_screenshot"
#: Launch flags verified on the target machines (shared/RECIPES.md): without the
#: background-networking ones Chromium floods a closed network with requests.
LAUNCH_ARGS = [
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


class BrowserUnavailable(RuntimeError):
    """No Chromium executable was found, or it failed to start."""


def find_browser(configured: str | None) -> str:
    """The Chromium executable: ``AUTOPLAT_BROWSER_PATH`` if set, else the system Chromium.

    Raises:
        BrowserUnavailable: nothing executable was found (with what was tried).
    """
    if configured:
        path = shutil.which(configured) or (configured if os.access(configured, os.X_OK) else None)
        if path is None:
            raise BrowserUnavailable(
                f"AUTOPLAT_BROWSER_PATH={configured} is not an executable; install Chromium "
                "(apt-get install chromium) or point the setting at it"
            )
        return path
    for candidate in _CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise BrowserUnavailable(
        "no Chromium found (tried /usr/bin/chromium, chromium, chromium-browser, google-chrome on PATH); "
        "install it (apt-get install chromium) or set AUTOPLAT_BROWSER_PATH"
    )


class BrowserPool:
    """The worker's browser: launched lazily, reused, relaunched after a crash."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots = asyncio.Semaphore(settings.browser_max_contexts)
        #: Contexts currently holding a slot.
        self.in_use = 0
        self.launches = 0
        self._lock = asyncio.Lock()
        self._playwright: Any = None
        self._browser: Any = None

    async def acquire(self) -> None:
        await self.slots.acquire()
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        self.slots.release()

    async def browser(self) -> Any:
        async with self._lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            executable = find_browser(self.settings.browser_path)
            if self._playwright is None:
                from playwright.async_api import async_playwright

                self._playwright = await async_playwright().start()
            if self._browser is not None:
                log.warning("browser disconnected (crashed or closed); relaunching")
            try:
                self._browser = await self._playwright.chromium.launch(
                    executable_path=executable, headless=True, args=LAUNCH_ARGS
                )
            except Exception as exc:
                self._browser = None
                raise BrowserUnavailable(f"could not launch {executable}: {exc}") from exc
            self.launches += 1
            log.info("browser launched: %s (launch %d)", executable, self.launches)
            return self._browser

    async def new_context(self) -> Any:
        browser = await self.browser()
        try:
            return await browser.new_context(accept_downloads=False)
        except Exception:
            if browser.is_connected():
                raise
            # It died between the check and the call: relaunch once.
            return await (await self.browser()).new_context(accept_downloads=False)

    async def close(self) -> None:
        async with self._lock:
            if self._browser is not None:
                try:
                    await self._browser.close()
                except Exception:  # noqa: BLE001 - a dead browser is already closed
                    log.debug("closing the browser failed", exc_info=True)
                self._browser = None
            if self._playwright is not None:
                await self._playwright.stop()
                self._playwright = None


ArtifactSaver = Callable[[str, str, bytes], Awaitable[dict[str, Any]]]
#: Returns the hosts the module may reach (its manifest's ``permissions.hosts``), or ``None``
#: for no host restriction (the SDK test harness).
HostsLoader = Callable[[], Awaitable[list[str] | None]]


class BrowserSession:
    """``ctx.browser``: one isolated browser context for the running step.

    Methods are awaitable in ``async def`` handlers and blocking in plain ``def`` handlers. The
    context opens on first use; ``page`` is the Playwright ``Page`` for anything else (async
    handlers only).
    """

    def __init__(
        self,
        pool: BrowserPool,
        *,
        save: ArtifactSaver | None = None,
        logger: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
        hosts: HostsLoader | None = None,
        secrets: Iterable[Any] = (),
    ) -> None:
        self._pool = pool
        #: Values masked in the URLs this session logs (the step's secrets), as ctx.http does.
        self._secrets = masked_values(secrets)
        self._save = save
        self._hosts_loader = hosts
        self._hosts: list[str] | None = None
        #: URLs of requests the host allowlist refused (redirects, sub-resources).
        self.blocked: list[str] = []
        self._logger = logger
        self._loop = loop or asyncio.get_running_loop()
        self._context: Any = None
        self._page: Any = None
        self._holding = False
        self._closed = False
        self._open_lock = asyncio.Lock()

    def __bool__(self) -> bool:
        return True

    @property
    def opened(self) -> bool:
        return self._context is not None

    @property
    def page(self) -> Any:
        if self._page is None:
            raise RuntimeError("no page yet: call `await ctx.browser.navigate(url)` first")
        return self._page

    async def _ensure(self) -> Any:
        async with self._open_lock:
            if self._closed:
                raise RuntimeError("this step's browser context is closed")
            if self._page is not None:
                return self._page
            if self._hosts_loader is not None and self._hosts is None:
                self._hosts = await self._hosts_loader()
            await self._pool.acquire()
            self._holding = True
            try:
                self._context = await self._pool.new_context()
                if self._hosts is not None:
                    await self._context.route("**/*", self._guard)
                timeout_ms = self._pool.settings.browser_timeout_seconds * 1000
                self._context.set_default_timeout(timeout_ms)
                self._context.set_default_navigation_timeout(timeout_ms)
                self._page = await self._context.new_page()
                if self._closed:
                    raise RuntimeError("this step's browser context is closed")
            except BrowserUnavailable as exc:
                await self._release()
                raise JobError(str(exc)) from exc
            except BaseException:
                await self._release()
                raise
            return self._page

    async def _guard(self, route: Any) -> None:
        """Every request of the context (redirects, frames, images, XHR) stays on allowed hosts."""
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ws", "wss") or host_allowed(parts.hostname or "", self._hosts or []):
            await route.continue_()
            return
        self.blocked.append(url)
        if self._logger is not None:
            self._logger.warning("browser: blocked request to %s (not in permissions.hosts)", parts.hostname)
        await route.abort("blockedbyclient")

    async def _check_target(self, url: str) -> None:
        if self._hosts_loader is not None and self._hosts is None:
            self._hosts = await self._hosts_loader()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise JobError(f"the browser only opens http(s) URLs, not {parts.scheme or 'no scheme'}")
        if self._hosts is not None and not host_allowed(parts.hostname or "", self._hosts):
            raise JobError(f"host {parts.hostname} is not in the module's permissions.hosts")
        try:
            await check_url(url, self._pool.settings.http_allow_private)
        except NotifyError as exc:
            raise JobError(exc.message.replace("send to", "open")) from exc

    async def _check_landed(self, page: Any, url: str) -> None:
        """Refuse a page that ended up (by a redirect or a script) on a host or address the module
        may not reach: its content is dropped (about:blank) before anything can be read from it."""
        if url in ("about:blank", "") or url.startswith("data:"):
            return
        try:
            await self._check_target(url)
        except JobError as exc:
            self.blocked.append(url)
            await page.goto("about:blank")
            raise JobError(f"the page went to a refused destination ({exc.message})") from None

    async def _current(self) -> Any:
        """The page, after checking where it is now (links and scripts can navigate it)."""
        page = await self._ensure()
        await self._check_landed(page, page.url)
        return page

    def _run(self, factory: Callable[[], Awaitable[T]]) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None:
            return asyncio.run_coroutine_threadsafe(_call(factory), self._loop).result()
        return factory()

    # helpers ----------------------------------------------------------------------------------
    def navigate(self, url: str, *, wait_until: str = "load") -> Any:
        """Open ``url``; returns the response status (``None`` for non-HTTP URLs)."""

        async def go() -> int | None:
            await self._check_target(url)
            page = await self._ensure()
            response = await page.goto(url, wait_until=wait_until)
            # The context's route guard does not see redirect hops: check every hop and the final URL.
            hop = response.request if response is not None else None
            while hop is not None:
                await self._check_landed(page, hop.url)
                hop = hop.redirected_from
            await self._check_landed(page, page.url)
            if self._logger is not None:
                self._logger.info("browser: %s %s", shown_url(url, self._secrets), response.status if response else "-")
            return response.status if response is not None else None

        return self._run(go)

    goto = navigate

    def fill(self, selector: str, value: str) -> Any:
        return self._run(lambda: self._page_call("fill", selector, value))

    def click(self, selector: str) -> Any:
        return self._run(lambda: self._page_call("click", selector))

    def wait_for(self, selector: str, *, state: str = "visible", timeout: float | None = None) -> Any:
        """Wait until ``selector`` reaches ``state`` (visible, attached, hidden, detached)."""
        ms = timeout * 1000 if timeout is not None else None
        return self._run(lambda: self._page_call("wait_for_selector", selector, state=state, timeout=ms))

    def text(self, selector: str = "body") -> Any:
        """The rendered text of the first element matching ``selector``."""
        return self._run(lambda: self._page_call("inner_text", selector))

    def texts(self, selector: str) -> Any:
        """The rendered text of every element matching ``selector``."""

        async def go() -> list[str]:
            page = await self._current()
            return list(await page.locator(selector).all_inner_texts())

        return self._run(go)

    def table(self, selector: str = "table") -> Any:
        """Rows of an HTML table as dicts keyed by its header cells (lists when it has none)."""

        async def go() -> list[Any]:
            page = await self._current()
            rows: list[list[str]] = await page.eval_on_selector(
                selector,
                """t => Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim()))""",
            )
            has_header = await page.eval_on_selector(selector, "t => !!t.querySelector('th')")
            if not rows or not has_header:
                return rows
            header, *body = rows
            return [dict(zip(header, row, strict=False)) for row in body]

        return self._run(go)

    def screenshot(self, name: str = "screenshot.png", *, full_page: bool = True, selector: str | None = None) -> Any:
        """Save a PNG of the page (or of ``selector``) as an execution artifact; returns its info."""

        async def go() -> dict[str, Any]:
            page = await self._current()
            if selector:
                data = await page.locator(selector).first.screenshot(type="png")
            else:
                data = await page.screenshot(type="png", full_page=full_page)
            return await self._store(name, "image/png", data)

        return self._run(go)

    def pdf(self, name: str = "page.pdf", *, format: str = "A4") -> Any:  # noqa: A002 - Playwright's name
        """Save the page as PDF (headless Chromium) as an execution artifact; returns its info."""

        async def go() -> dict[str, Any]:
            page = await self._current()
            data = await page.pdf(format=format, print_background=True)
            return await self._store(name, "application/pdf", data)

        return self._run(go)

    async def _page_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        page = await self._current()
        return await getattr(page, method)(*args, **kwargs)

    async def _store(self, name: str, content_type: str, data: bytes) -> dict[str, Any]:
        if self._save is None:
            return {"name": name, "content_type": content_type, "size": len(data), "data": data}
        info = await self._save(name, content_type, data)
        if self._logger is not None:
            self._logger.info("artifact %s saved (%d bytes)", name, len(data))
        return info

    # lifecycle ---------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the context (idempotent); the platform calls it when the step ends.

        Deliberately not under the open lock: a step cancelled while waiting for a slot must not
        wait for one to close.
        """
        self._closed = True
        await self._release()

    async def _release(self) -> None:
        context, self._context, self._page = self._context, None, None
        try:
            if context is not None:
                await context.close()
        except Exception:  # noqa: BLE001 - a crashed browser took the context with it
            log.debug("closing a browser context failed", exc_info=True)
        finally:
            if self._holding:
                self._holding = False
                self._pool.release()


async def _call(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


@dataclass
class ScreenshotInput:
    """Input of the ``autoplat.browser_screenshot`` activity."""

    execution_id: str
    url: str
    name: str = "screenshot.png"
    full_page: bool = True


class BrowserActivities:
    """Provider of ``ctx.browser`` and of the ``autoplat.browser_screenshot`` activity."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession] | None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.pool = BrowserPool(settings)
        self.permissions = ManifestPermissions(sessions)
        #: Open sessions by the id of their step's JobContext (the same object reaches ``release``).
        self._sessions_by_step: dict[int, BrowserSession] = {}

    def activities(self) -> list[Callable[..., Any]]:
        return [self.browser_screenshot]

    def saver(self, execution_id: str, step: str | None) -> ArtifactSaver:
        async def save(name: str, content_type: str, data: bytes) -> dict[str, Any]:
            if self.sessions is None:
                raise RuntimeError("artifacts need the registry database")
            from registry.errors import DomainError
            from registry.services import artifacts

            try:
                async with unit_of_work(self.sessions) as session:
                    row = await artifacts.save_artifact(
                        session=session,
                        execution_id=execution_id,
                        name=name,
                        content_type=content_type,
                        data=data,
                        step=step,
                        artifacts_dir=self.settings.artifacts_dir,
                        max_bytes=self.settings.artifact_max_bytes,
                    )
                    info = {"name": row.name, "content_type": row.content_type, "size": row.size, "sha256": row.sha256}
            except DomainError as exc:
                raise JobError(exc.message) from exc
            info["url"] = f"/api/v1/executions/{execution_id}/artifacts/{name}"
            return info

        return save

    def hosts_of(self, module: str, version: str) -> HostsLoader:
        """The module's ``permissions.hosts``, after checking it declares the ``browser`` service."""

        async def load() -> list[str] | None:
            permissions = await self.permissions.require(module, version, "browser")
            return None if permissions is None else [str(h) for h in permissions.get("hosts") or []]

        return load

    async def contribute(self, inp: StepInput, ctx: JobContext) -> dict[str, Any]:
        session = BrowserSession(
            self.pool,
            save=self.saver(inp.execution_id, inp.step),
            logger=ctx.logger,
            hosts=self.hosts_of(inp.module, inp.module_version),
            secrets=ctx.secrets.values(),
        )
        self._sessions_by_step[id(ctx)] = session
        return {"browser": session}

    async def release(self, inp: StepInput, ctx: JobContext) -> None:
        session = self._sessions_by_step.pop(id(ctx), None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        for session in list(self._sessions_by_step.values()):
            await session.close()
        self._sessions_by_step.clear()
        await self.pool.close()

    @activity.defn(name=BROWSER_SCREENSHOT)
    async def browser_screenshot(self, inp: ScreenshotInput) -> dict[str, Any]:
        """Screenshot ``url`` into an artifact of ``execution_id`` (for the platform's workflows)."""
        session = BrowserSession(self.pool, save=self.saver(inp.execution_id, None))
        try:
            await session.navigate(inp.url)
            return await session.screenshot(inp.name, full_page=inp.full_page)  # type: ignore[no-any-return]
        except JobError as exc:
            raise ApplicationError(exc.message, type="BrowserError", non_retryable=True) from None
        finally:
            await session.close()


def provider(deps: Any) -> BrowserActivities:
    return BrowserActivities(deps.settings, getattr(deps, "sessions", None))


__all__ = [
    "BROWSER_SCREENSHOT",
    "BrowserActivities",
    "BrowserPool",
    "BrowserSession",
    "BrowserUnavailable",
    "ScreenshotInput",
    "find_browser",
]
