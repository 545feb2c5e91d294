"""Reading one endpoint: fetch (``ctx.http`` or ``ctx.browser``), then extract numbers.

Every failure becomes a :class:`ScrapeError` with a readable message (never a traceback, never a
credential: messages are passed through :func:`masked`), and says whether another attempt could
help (a timeout, a 5xx) or not (a selector that matches nothing, HTML where JSON was configured).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
from typing import Any

import httpx

from autoplat.http import HostNotAllowed, ResponseTooLarge, shown_url

_NUMBER = re.compile(r"[-+]?\d[\d.,'\u00a0\u202f]*")
_PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_PROM_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_PATH_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]|\[['\"]([^'\"]+)['\"]\]")


class ScrapeError(Exception):
    """A failed reading: ``message`` is what the endpoint's health and the logs show."""

    def __init__(self, message: str, *, retryable: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.timed_out = timed_out


def masked(text: str, credentials: dict[str, str]) -> str:
    """``text`` with every credential value (and its base64 basic-auth form) replaced by ``***``."""
    secrets = [v for v in credentials.values() if v]
    if credentials.get("username") and credentials.get("password"):
        pair = f"{credentials['username']}:{credentials['password']}".encode()
        secrets.append(base64.b64encode(pair).decode())
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# --- numbers ----------------------------------------------------------------------------------


def parse_decimal(text: str, decimal: str = "auto") -> float:
    """The first number in ``text``: ``1.234,56`` (comma decimals), ``1,234.56``, ``230,4``, ``-0.5``."""
    found = _NUMBER.search(text)
    if found is None:
        raise ScrapeError(f"no number in {_quote(text)}")
    token = found.group(0).rstrip(".,")
    for sep in ("'", "\u00a0", "\u202f"):
        token = token.replace(sep, "")
    if decimal == "dot":
        token = token.replace(",", "")
    elif decimal == "comma":
        token = token.replace(".", "").replace(",", ".")
    elif "," in token and "." in token:
        if token.rfind(",") > token.rfind("."):
            token = token.replace(".", "").replace(",", ".")
        else:
            token = token.replace(",", "")
    elif token.count(",") == 1:
        token = token.replace(",", ".")
    elif token.count(",") > 1:
        token = token.replace(",", "")
    elif token.count(".") > 1:
        token = token.replace(".", "")
    try:
        return float(token)
    except ValueError:
        raise ScrapeError(f"no number in {_quote(text)}") from None


def to_number(raw: Any, spec: dict[str, Any], what: str) -> float:
    """Apply the field's ``regex`` (its first group), ``decimal`` and ``scale`` to a raw value."""
    if isinstance(raw, bool) or raw is None or isinstance(raw, dict | list):
        raise ScrapeError(f"{what}: expected a number, found {json.dumps(raw)[:80]}")
    regex = spec.get("regex")
    if isinstance(raw, int | float) and not regex:
        value = float(raw)
    else:
        text = str(raw)
        if regex:
            found = re.search(regex, text)
            if found is None or found.group(1) is None:
                raise ScrapeError(f"{what}: regex {regex!r} matched nothing in {_quote(text)}")
            text = found.group(1)
        try:
            value = parse_decimal(text, spec.get("decimal", "auto"))
        except ScrapeError as exc:
            raise ScrapeError(f"{what}: {exc.message}") from None
    value *= float(spec.get("scale", 1))
    if not math.isfinite(value):
        raise ScrapeError(f"{what}: {value} is not a finite number")
    return value


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= 80 else text[:77] + "...")


# --- JSON and Prometheus ----------------------------------------------------------------------


def json_path(document: Any, path: str) -> Any:
    """``$.meter.energy.total``, ``meter.channels[2].power``, ``$['odd key'].value``."""
    rest = path.strip()
    rest = rest[1:] if rest.startswith("$") else rest
    node = document
    walked = "$"
    while rest:
        found = _PATH_TOKEN.match(rest)
        if found is None or found.end() == 0:
            raise ScrapeError(f"JSON path {path!r} does not parse at {rest!r}")
        key, index, quoted = found.groups()
        rest = rest[found.end() :]
        if index is not None:
            if not isinstance(node, list) or int(index) >= len(node):
                raise ScrapeError(f"JSON path {path!r}: {walked} has no item [{index}]")
            node, walked = node[int(index)], f"{walked}[{index}]"
            continue
        name = quoted if quoted is not None else key
        if isinstance(node, list) and name.isdigit() and int(name) < len(node):
            node, walked = node[int(name)], f"{walked}[{name}]"
        elif isinstance(node, dict) and name in node:
            node, walked = node[name], f"{walked}.{name}"
        else:
            raise ScrapeError(f"JSON path {path!r}: {walked} has no {name!r}")
    return node


def prometheus_value(text: str, metric: str, labels: dict[str, str]) -> float:
    """The one sample of ``metric`` whose labels include ``labels`` in a text exposition."""
    matches: list[float] = []
    seen = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parsed = _PROM_LINE.match(line)
        if parsed is None or parsed.group(1) != metric:
            continue
        seen = True
        found = dict(_PROM_LABEL.findall(parsed.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            try:
                matches.append(float(parsed.group(4)))
            except ValueError:
                raise ScrapeError(f"metric {metric}: sample value {parsed.group(4)!r} is not a number") from None
    wanted = metric + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    if not matches:
        raise ScrapeError(f"no sample {wanted} in the exposition" + ("" if seen else f" (no metric {metric} at all)"))
    if len(matches) > 1:
        raise ScrapeError(f"{len(matches)} samples match {wanted}: add label matchers to pick one")
    return matches[0]


# --- fetching ---------------------------------------------------------------------------------


def _headers(endpoint: dict[str, Any], credentials: dict[str, str]) -> dict[str, str]:
    auth = endpoint["auth"]
    kind = auth["type"]
    if kind == "basic":
        pair = f"{credentials.get('username', '')}:{credentials.get('password', '')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    if kind == "bearer":
        return {"Authorization": f"Bearer {credentials.get('token', '')}"}
    if kind == "header":
        return {auth["header"]: credentials.get("token", "")}
    return {}


async def _fetch(ctx: Any, endpoint: dict[str, Any], credentials: dict[str, str], *, max_bytes: int) -> str:
    url = endpoint["url"]
    accept = "application/json" if endpoint["protocol"] == "json" else "text/plain; version=0.0.4"
    try:
        response = await ctx.http.get(
            url, headers={"Accept": accept, **_headers(endpoint, credentials)}, retries=0, max_bytes=max_bytes
        )
    except ResponseTooLarge:
        raise ScrapeError(f"the answer is larger than {max_bytes} bytes: refused") from None
    except HostNotAllowed as exc:
        raise ScrapeError(str(exc)) from None
    except httpx.TimeoutException:
        raise ScrapeError("no answer in time", retryable=True) from None
    except httpx.TransportError as exc:
        raise ScrapeError(f"cannot reach {shown_url(url)}: {type(exc).__name__}", retryable=True) from None
    status = response.status_code
    if status in (401, 403):
        raise ScrapeError(f"{shown_url(url)} refused the credentials ({status})")
    if status >= 400:
        raise ScrapeError(f"{shown_url(url)} answered {status}", retryable=status >= 500 or status in (408, 429))
    return str(response.text)


def _looks_html(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith("<!doctype html") or head.startswith("<html") or "<body" in head


async def read_http(
    ctx: Any, endpoint: dict[str, Any], credentials: dict[str, str], *, max_bytes: int
) -> dict[str, float]:
    text = await _fetch(ctx, endpoint, credentials, max_bytes=max_bytes)
    values: dict[str, float] = {}
    if endpoint["protocol"] == "json":
        try:
            document = json.loads(text)
        except ValueError:
            kind = "HTML" if _looks_html(text) else "text that is not JSON"
            raise ScrapeError(f"expected JSON, got {kind}: {_quote(text)}") from None
        for name, spec in endpoint["fields"].items():
            values[name] = to_number(json_path(document, spec["path"]), spec, name)
    else:
        if _looks_html(text):
            raise ScrapeError(f"expected a Prometheus text exposition, got HTML: {_quote(text)}")
        for name, spec in endpoint["fields"].items():
            raw = prometheus_value(text, spec["metric"], spec.get("labels") or {})
            values[name] = to_number(raw, spec, name)
    return values


def _fill_value(value: str, credentials: dict[str, str]) -> str:
    return value.replace("{{username}}", credentials.get("username", "")).replace(
        "{{password}}", credentials.get("password", "")
    )


async def _extract(browser: Any, selector: str, spec: dict[str, Any], what: str) -> float:
    texts = await browser.texts(selector)
    if not texts:
        raise ScrapeError(f"{what}: selector {selector!r} matched nothing on the page")
    return to_number(texts[0], spec, what)


async def run_steps(
    browser: Any, steps: list[dict[str, Any]], credentials: dict[str, str], values: dict[str, float]
) -> None:
    """The one step vocabulary, for the login form and the scraper alike."""
    for i, step in enumerate(steps):
        action = step["action"]
        try:
            if action == "goto":
                status = await browser.navigate(step["url"])
                if status is not None and status >= 400:
                    raise ScrapeError(f"step {i + 1} (goto): {shown_url(step['url'])} answered {status}")
            elif action == "click":
                await browser.click(step["selector"])
            elif action == "fill":
                await browser.fill(step["selector"], _fill_value(step["value"], credentials))
            elif action == "wait":
                await asyncio.sleep(float(step["seconds"]))
            elif action == "wait_for_selector":
                await browser.wait_for(step["selector"], timeout=float(step.get("timeout_seconds", 10)))
            elif action == "extract":
                values[step["field"]] = await _extract(browser, step["selector"], step, step["field"])
        except ScrapeError:
            raise
        except Exception as exc:  # Playwright's errors: keep their first line, readable
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ScrapeError(
                f"step {i + 1} ({action} {step.get('selector') or ''}): {first}".replace(" )", ")")
            ) from None


async def read_html(browser: Any, endpoint: dict[str, Any], credentials: dict[str, str]) -> dict[str, float]:
    values: dict[str, float] = {}
    auth = endpoint["auth"]
    if auth["type"] == "form":
        await run_steps(browser, auth["steps"], credentials, values)
    steps = endpoint.get("steps") or []
    if not steps or steps[0]["action"] != "goto":
        await run_steps(browser, [{"action": "goto", "url": endpoint["url"]}], credentials, values)
    await run_steps(browser, steps, credentials, values)
    for name, spec in endpoint["fields"].items():
        values[name] = await _extract(browser, spec["selector"], spec, name)
    return values


async def read(
    ctx: Any,
    endpoint: dict[str, Any],
    credentials: dict[str, str],
    *,
    timeout: float,
    max_bytes: int,
    retries: int,
    browser_lock: asyncio.Lock | None = None,
) -> dict[str, float]:
    """One reading of ``endpoint``: ``timeout`` per attempt, ``retries`` more attempts for
    transient failures (short backoff). Raises :class:`ScrapeError`, masked of the credentials."""
    attempt = 0
    while True:
        attempt += 1
        html = endpoint["protocol"] == "html"
        try:
            # One browser context per step: HTML endpoints take turns, and the wait for the turn
            # does not count against an endpoint's own timeout.
            async with browser_lock if html and browser_lock is not None else contextlib.nullcontext():
                async with asyncio.timeout(timeout):
                    if html:
                        return await read_html(ctx.browser, endpoint, credentials)
                    return await read_http(ctx, endpoint, credentials, max_bytes=max_bytes)
        except TimeoutError:
            error = ScrapeError(f"no complete reading within {timeout:g} s", retryable=True, timed_out=True)
        except ScrapeError as exc:
            error = exc
        except Exception as exc:  # anything else the services raise (a refused URL, a closed browser)
            error = ScrapeError(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        error.message = masked(error.message, credentials)
        if not error.retryable or attempt > retries:
            if attempt > 1:
                error.message += f" (after {attempt} attempts)"
            raise error
        await asyncio.sleep(0.2 * attempt)  # a short backoff: a flapping meter, not an outage
