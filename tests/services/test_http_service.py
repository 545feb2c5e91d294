"""ctx.http against a real local HTTP server: retries, Retry-After, SSRF guard, allowlist, caps, log."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.services.http import HttpCall, HttpService
from autoplat.http import AddressPolicy, GuardedTransport, HostNotAllowed, HttpClient, ResponseTooLarge, host_allowed
from autoplat.testing import arun_step
from tests.jobs.helpers import put_module, write_module


class Recorder:
    """What the server saw: arrival times per path key, headers of the last request."""

    def __init__(self) -> None:
        self.hits: dict[str, list[float]] = defaultdict(list)
        self.headers: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    recorder: Recorder
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, chunked=False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 100):
                part = body[i : i + 100]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        key = f"{self.command} {url.path} {query.get('id', '')}"
        with self.recorder.lock:
            self.recorder.hits[key].append(time.monotonic())
            self.recorder.headers[url.path] = {k.lower(): v for k, v in self.headers.items()}
            count = len(self.recorder.hits[key])
        if url.path == "/json":
            self._send(200, json.dumps({"ok": True, "query": query}).encode(), {"Content-Type": "application/json"})
        elif url.path == "/flaky":  # fails `n` times with `status`, then answers
            if count <= int(query.get("n", "1")):
                headers = {"Retry-After": query["after"]} if "after" in query else {}
                self._send(int(query.get("status", "503")), b"busy", headers)
            else:
                self._send(200, b'{"ok": true}', {"Content-Type": "application/json"})
        elif url.path == "/redirect":
            self._send(302, b"", {"Location": query["to"]})
        elif url.path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif url.path == "/fat-redirect":  # a redirect with a large chunked body
            self.send_response(302)
            self.send_header("Location", query["to"])
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"r" * 65536
            try:
                for _ in range(int(query["n"]) // len(chunk)):
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                with self.recorder.lock:
                    self.recorder.hits["aborted"].append(time.monotonic())
                self.close_connection = True
        elif url.path == "/big":
            self._send(200, b"x" * int(query["n"]), chunked=query.get("chunked") == "1")
        else:
            self._send(404, b"no")

    def do_HEAD(self) -> None:  # noqa: N802 - http.server API
        self.send_response(200)
        self.send_header("Content-Length", "50000000")
        self.send_header("Content-Type", "application/zip")
        self.end_headers()

    do_GET = do_POST = do_PUT = _handle  # noqa: N815 - http.server API

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def source() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    handler = type("BoundHandler", (Handler,), {"recorder": recorder})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    server.shutdown()
    server.server_close()


class ListLogger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        self.lines.append((level, msg % args, dict(extra or {})))

    def info(self, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        self._add("INFO", msg, *args, extra=extra)

    def warning(self, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        self._add("WARNING", msg, *args, extra=extra)


def client(
    hosts: list[str] | None = ("127.0.0.1",), allow_private: Any = "loopback", **kwargs: Any
) -> tuple[HttpClient, ListLogger]:
    logger = ListLogger()
    kwargs.setdefault("backoff", 0.01)
    return HttpClient(
        hosts=list(hosts) if hosts is not None else None, allow_private=allow_private, logger=logger, **kwargs
    ), logger


async def test_get_json_and_each_request_logged_without_secrets(source):
    base, recorder = source
    http, logger = client()
    url = base.replace("http://", "http://user:hunter2@") + "/json?page=2&api_token=abc123"
    body = await http.get_json(url)
    await http.aclose()
    assert body == {"ok": True, "query": {"page": "2", "api_token": "abc123"}}
    assert recorder.headers["/json"]["authorization"].startswith("Basic ")  # credentials were sent ...
    (line,) = logger.lines
    assert line[0] == "INFO" and "hunter2" not in line[1] and "abc123" not in line[1] and "user" not in line[1]
    assert f"GET {base}/json?page=2&api_token=*** -> 200" in line[1]  # ... but never logged
    fields = line[2]["http"]
    assert fields["status"] == 200 and fields["method"] == "GET" and fields["duration_ms"] >= 0


async def test_5xx_retried_with_backoff_then_succeeds(source):
    base, recorder = source
    http, logger = client(retries=3)
    response = await http.get(f"{base}/flaky?id=a&n=2&status=502")
    await http.aclose()
    assert response.status_code == 200
    assert len(recorder.hits["GET /flaky a"]) == 3
    assert [f["http"]["status"] for *_, f in logger.lines] == [502, 502, 200]
    assert [f["http"]["attempt"] for *_, f in logger.lines] == [1, 2, 3]


async def test_retries_give_up_and_return_the_last_answer(source):
    base, recorder = source
    http, _ = client(retries=2)
    response = await http.get(f"{base}/flaky?id=b&n=10&status=500")
    assert response.status_code == 500
    assert len(recorder.hits["GET /flaky b"]) == 3
    with pytest.raises(Exception) as info:
        await http.get_json(f"{base}/flaky?id=b&n=10&status=500", retries=0)
    assert getattr(info.value, "status", None) == 500
    await http.aclose()


async def test_429_honours_retry_after(source):
    base, recorder = source
    http, _ = client(retries=3, backoff=0.001)
    response = await http.get(f"{base}/flaky?id=c&n=1&status=429&after=1")
    await http.aclose()
    assert response.status_code == 200
    first, second = recorder.hits["GET /flaky c"]
    assert second - first >= 0.95  # the server's Retry-After, not the 1 ms backoff


async def test_retry_after_longer_than_allowed_returns_the_429(source):
    base, recorder = source
    http, _ = client(retries=3, max_backoff=2)
    started = time.monotonic()
    response = await http.get(f"{base}/flaky?id=d&n=1&status=429&after=3600")
    await http.aclose()
    assert response.status_code == 429 and time.monotonic() - started < 2
    assert len(recorder.hits["GET /flaky d"]) == 1


async def test_post_is_not_retried_on_500_but_is_on_503(source):
    base, recorder = source
    http, _ = client(retries=2)
    assert (await http.post(f"{base}/flaky?id=e&n=5&status=500", json={"a": 1})).status_code == 500
    assert len(recorder.hits["POST /flaky e"]) == 1
    assert (await http.post(f"{base}/flaky?id=f&n=1&status=503", json={"a": 1})).status_code == 200
    assert len(recorder.hits["POST /flaky f"]) == 2
    await http.aclose()


async def test_connection_errors_are_retried_then_raised():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        http, logger = client(retries=2)
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/json")
    await http.aclose()
    assert [f["http"]["status"] for *_, f in logger.lines] == ["ConnectError"] * 3


@pytest.mark.parametrize(
    ("address", "mode", "refused"),
    [
        ("127.0.0.1", "off", True),
        ("127.0.0.1", "loopback", False),
        ("::1", "loopback", False),
        ("10.1.2.3", "loopback", True),
        ("192.168.1.1", "private", False),
        ("100.64.0.1", "private", False),
        ("8.8.8.8", "off", False),
        ("169.254.169.254", "private", True),
        ("169.254.10.10", "private", True),
        ("fd00:ec2::254", "private", True),
        ("fe80::1", "private", True),
        ("::ffff:127.0.0.1", "off", True),
        ("::ffff:169.254.169.254", "private", True),
        ("0.0.0.0", "private", True),
        ("224.0.0.1", "private", True),
        ("2002:7f00:1::", "off", True),  # 6to4 carrying 127.0.0.1
        ("2002:a9fe:a9fe::", "private", True),  # 6to4 carrying the metadata address
        ("2002:808:808::", "off", False),  # 6to4 carrying 8.8.8.8
    ],
)
def test_address_policy(address, mode, refused):
    assert (AddressPolicy(mode).refusal(address) is not None) is refused


async def test_loopback_refused_unless_allowed_even_by_name(source):
    base, recorder = source
    port = base.rsplit(":", 1)[1]
    http, _ = client(hosts=["127.0.0.1", "localhost"], allow_private="off")
    for url in (f"{base}/json", f"http://localhost:{port}/json"):  # an IP, and a name resolving to it
        with pytest.raises(HostNotAllowed, match="loopback"):
            await http.get(url)
    await http.aclose()
    assert recorder.hits == {}


async def test_metadata_address_refused_whatever_the_setting():
    http, _ = client(hosts=None, allow_private="private")
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
        with pytest.raises(HostNotAllowed, match="metadata"):
            await http.get(url, retries=0)
    await http.aclose()


async def test_connects_to_the_checked_address_not_a_second_lookup(source):
    """The guard resolves once and connects to that address: a second DNS answer cannot sneak in."""
    base, recorder = source
    port = int(base.rsplit(":", 1)[1])

    class Pinned(AddressPolicy):
        async def resolve(self, host: str, port: int) -> list[str]:
            assert host == "service.invalid"  # a name no resolver knows
            return ["127.0.0.1"]

    http = HttpClient(hosts=["service.invalid"], transport=GuardedTransport(Pinned("loopback")), retries=0)
    response = await http.get(f"http://service.invalid:{port}/json")
    await http._transport.aclose()
    assert response.status_code == 200
    assert recorder.headers["/json"]["host"] == f"service.invalid:{port}"  # the URL's name, as sent


async def test_allowlist_blocks_before_any_request_and_on_redirects(source):
    base, recorder = source
    port = base.rsplit(":", 1)[1]
    http, _ = client(hosts=["localhost"])
    http._logger = logger = ListLogger()
    with pytest.raises(HostNotAllowed, match="not allowed") as info:
        await http.get(f"{base}/json?token=s3cret")
    assert info.value.details == {"host": "127.0.0.1", "allowed": ["localhost"]}
    assert recorder.hits == {}
    assert logger.lines[0][1].startswith(f"HTTP GET {base}/json?token=*** -> refused")
    # An allowed host redirecting to one that is not: the hop is refused.
    with pytest.raises(HostNotAllowed):
        await http.get(f"http://localhost:{port}/redirect?to={base}/json")
    assert "GET /json " not in recorder.hits
    # Redirects between allowed hosts are followed, and logged.
    both, logger = client(hosts=["localhost", "127.0.0.1"])
    response = await both.get(f"http://localhost:{port}/redirect?to={base}/json")
    assert response.status_code == 200 and response.json()["ok"] is True
    assert [f["http"]["status"] for *_, f in logger.lines] == [302, 200]
    await http.aclose()
    await both.aclose()


async def test_redirect_to_metadata_refused_even_without_allowlist(source):
    base, _ = source
    http, _ = client(hosts=None, allow_private="private")
    with pytest.raises(HostNotAllowed, match="metadata"):
        await http.get(f"{base}/redirect?to=http://169.254.169.254/latest/", retries=0)
    await http.aclose()


def test_host_patterns():
    assert host_allowed("api.example.com", ["*.example.com"])
    assert host_allowed("a.b.example.com", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("badexample.com", ["*.example.com"])
    assert host_allowed("API.Example.com.", ["api.example.com"])
    assert not host_allowed("api.example.com.evil.org", ["api.example.com"])
    assert not host_allowed("anything", [])


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_download_cap(source, tmp_path, chunked):
    base, _ = source
    http, _ = client()
    flag = "&chunked=1" if chunked else ""
    assert await http.download(f"{base}/big?n=1000{flag}", max_bytes=1000) == b"x" * 1000
    target = tmp_path / "file.bin"
    http._logger = logger = ListLogger()
    with pytest.raises(ResponseTooLarge):
        await http.download(f"{base}/big?n=5000{flag}", target, max_bytes=1000)
    assert logger.lines[-1][0] == "WARNING" and "-> too large" in logger.lines[-1][1]
    assert not target.exists()
    assert await http.download(f"{base}/big?n=300{flag}", target) == target and target.read_bytes() == b"x" * 300
    await http.aclose()


async def test_sync_handler_uses_the_sync_twins_through_the_harness(source):
    base, _ = source

    def handler(ctx):
        data = ctx.http.get_json_sync(f"{base}/json?x=1")
        return {"ok": data["ok"], "status": ctx.http.get_sync(f"{base}/missing").status_code}

    result = await arun_step(handler, hosts=["127.0.0.1"], allow_private="loopback")
    assert result.result == {"ok": True, "status": 404}
    assert [e["level"] for e in result.logs] == ["INFO", "WARNING"]
    assert result.logs[0]["extra"]["http"]["url"] == f"{base}/json?x=1"

    async def async_handler(ctx):
        ctx.http.get_sync(f"{base}/json")  # the sync twin inside an async handler would deadlock

    with pytest.raises(RuntimeError, match="in async handlers use `await`"):
        await arun_step(async_handler, hosts=["127.0.0.1"], allow_private="loopback")


async def test_http_activity(source, settings, sessions, tmp_path):
    base, _ = source
    for name, services in (("web-a", ["http"]), ("web-b", ["storage"])):
        permissions = {"hosts": ["localhost"], "services": services}
        folder = write_module(
            tmp_path, name=name, code="def run(ctx): ...\n", jobs=[], extra={"permissions": permissions}
        )
        await put_module(sessions, settings.state_dir, folder)
    service = HttpService(SimpleNamespace(settings=settings, sessions=sessions))
    env = ActivityEnvironment()
    try:
        result = await env.run(service.http, HttpCall(method="GET", url=f"{base}/json", params={"q": "1"}))
        assert result.status == 200 and result.json == {"ok": True, "query": {"q": "1"}}
        # Scoped to a module: only its permissions.hosts.
        with pytest.raises(ApplicationError) as info:
            await env.run(service.http, HttpCall(method="GET", url=f"{base}/json", module="web-a"))
        assert info.value.type == "HostNotAllowed" and info.value.non_retryable
        assert "host 127.0.0.1 is not allowed" in info.value.message
        # A module that does not declare the http service reaches nothing.
        with pytest.raises(ApplicationError, match="does not declare the http service"):
            await env.run(service.http, HttpCall(method="GET", url=f"{base}/json", module="web-b"))
        with pytest.raises(ApplicationError) as info:
            await env.run(
                service.http,
                HttpCall(method="GET", url=f"{base}/flaky?id=g&n=9&status=404", raise_for_status=True, retries=0),
            )
        assert info.value.type == "HttpStatusError" and info.value.non_retryable
    finally:
        await service.close()


@pytest.mark.parametrize(("raw", "parsed"), [("off", "off"), ("", "off"), ("false", "off"), ("Loopback", "loopback")])
def test_allow_private_setting(monkeypatch, raw, parsed):
    from registry.settings import Settings

    monkeypatch.setenv("AUTOPLAT_HTTP_ALLOW_PRIVATE", raw)
    assert Settings().http_allow_private == parsed


def test_allow_private_setting_refuses_unknown_values(monkeypatch):
    from pydantic import ValidationError

    from registry.settings import Settings

    monkeypatch.setenv("AUTOPLAT_HTTP_ALLOW_PRIVATE", "all")
    with pytest.raises(ValidationError):
        Settings()


async def test_head_reports_the_size_without_hitting_the_cap(source):
    base, _ = source
    http, _ = client(max_response_bytes=1024)
    response = await http.head(f"{base}/file.zip")
    await http.aclose()
    assert response.status_code == 200 and response.headers["Content-Length"] == "50000000"


async def test_redirect_bodies_are_read_capped_and_dropped(source):
    base, recorder = source
    http, logger = client(max_response_bytes=1024)
    response = await http.get(f"{base}/fat-redirect?n=200000000&to={base}/json")
    await http.aclose()
    assert response.status_code == 200 and response.json()["ok"] is True
    # The client stopped reading the 200 MB redirect body after a few kB: the server's write failed.
    from tests.conftest import eventually

    async def aborted() -> bool:
        return bool(recorder.hits["aborted"])

    await eventually(aborted, timeout=10, what="the server's write of the redirect body to fail")
    assert [h.status_code for h in response.history] == [302]
    assert any("/fat-redirect" in line[1] and "302" in line[1] for line in logger.lines)


async def test_too_many_redirects(source):
    base, _ = source
    http, _ = client()
    with pytest.raises(httpx.TooManyRedirects):
        await http.get(f"{base}/loop")
    await http.aclose()


async def test_secret_values_in_url_paths_are_masked_in_the_log(source):
    base, _ = source
    http, logger = client(secrets=["tok-12345-secret"])
    await http.get(f"{base}/bot/tok-12345-secret/sendMessage")
    await http.aclose()
    (line,) = logger.lines
    assert "tok-12345-secret" not in line[1] and "/bot/***/sendMessage" in line[1]
