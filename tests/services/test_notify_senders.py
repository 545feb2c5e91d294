"""Email, webhook and Slack sends against real local servers (aiosmtpd, http.server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from activities.services.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Notifier,
    NotifyError,
    Sender,
    check_url,
    resolve_channel,
    verify,
)
from autoplat.errors import JobError
from registry.settings import Settings
from tests.services.helpers import http_receiver, smtp_server


def make_settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"dev_mode": True, "http_allow_private": "loopback", "smtp_tls": "none"}
    return Settings(**{**base, **kw})


@pytest.fixture
async def http_client() -> Any:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


async def test_email_reaches_every_recipient_with_text_and_html(http_client):
    with smtp_server() as smtp:
        settings = make_settings(smtp_host=smtp.host, smtp_port=smtp.port, smtp_from="bot@autoplat.test")
        notifier = Notifier(Sender(settings, http_client))
        sent = await notifier.email(
            ["a@example.com", "b@example.com"],
            "Disk full",
            text="90% used",
            html="<p><b>90%</b> used</p>",
            cc="c@example.com",
        )
        assert sent["recipients"] == ["a@example.com", "b@example.com", "c@example.com"]
        assert len(smtp.mails) == 1
        mail = smtp.mails[0]
        assert mail.sender == "bot@autoplat.test"
        assert sorted(mail.recipients) == ["a@example.com", "b@example.com", "c@example.com"]
        msg = mail.message
        assert msg["Subject"] == "Disk full" and msg["To"] == "a@example.com, b@example.com"
        assert msg["Message-ID"] == sent["message_id"]
        assert msg.get_body(("plain",)).get_content().strip() == "90% used"
        assert msg.get_body(("html",)).get_content().strip() == "<p><b>90%</b> used</p>"


async def test_email_without_smtp_host_is_a_permanent_job_error(http_client):
    notifier = Notifier(Sender(make_settings(), http_client))
    assert not notifier.available("email")
    with pytest.raises(JobError, match="AUTOPLAT_SMTP_HOST"):
        await notifier.email("a@example.com", "s", text="t")


async def test_available_tells_configured_channels(http_client):
    settings = make_settings(smtp_host="127.0.0.1", notify_channels={"h": {"type": "webhook", "url": "http://x/"}})
    notifier = Notifier(Sender(settings, http_client))
    assert notifier.available("email") and notifier.available("h")
    assert not notifier.available("nope")


async def test_email_to_an_unreachable_server_is_retryable(http_client):
    from tests.services.helpers import free_port

    notifier = Notifier(Sender(make_settings(smtp_host="127.0.0.1", smtp_port=free_port()), http_client))
    with pytest.raises(NotifyError) as err:
        await notifier.email("a@example.com", "s", text="t")
    assert not err.value.permanent


async def test_webhook_signature_is_verifiable_by_the_receiver(http_client):
    with http_receiver() as hook:
        notifier = Notifier(Sender(make_settings(), http_client))
        sent = await notifier.webhook(
            f"{hook.url}/hook", {"event": "done", "n": 3}, method="PUT", headers={"X-Team": "ops"}, secret="s3cr3t"
        )
        assert sent["status"] == 200
        [req] = hook.requests
        assert req.method == "PUT" and req.headers["X-Team"] == "ops"
        assert json.loads(req.body) == {"event": "done", "n": 3}
        ts, sig = req.headers[TIMESTAMP_HEADER], req.headers[SIGNATURE_HEADER]
        assert verify("s3cr3t", ts, req.body, sig)
        assert not verify("wrong", ts, req.body, sig)
        assert not verify("s3cr3t", ts, req.body + b" ", sig)
        assert not verify("s3cr3t", str(int(ts) - 3600), req.body, sig)  # replayed later: refused


async def test_unsigned_webhook_has_no_signature(http_client):
    with http_receiver() as hook:
        await Notifier(Sender(make_settings(), http_client)).webhook(hook.url, {"a": 1})
        assert SIGNATURE_HEADER not in hook.requests[0].headers


async def test_webhook_4xx_is_permanent_5xx_is_retryable(http_client):
    with http_receiver() as hook:
        notifier = Notifier(Sender(make_settings(), http_client))
        hook.statuses = [404]
        with pytest.raises(JobError, match="answered 404"):
            await notifier.webhook(hook.url, {})
        hook.statuses = [503]
        with pytest.raises(NotifyError, match="answered 503") as err:
            await notifier.webhook(hook.url, {})
        assert not err.value.permanent


async def test_slack_channel_posts_slack_payload(http_client):
    with http_receiver() as hook:
        settings = make_settings(notify_channels={"team": {"type": "slack", "url": f"{hook.url}/services/T/B/x"}})
        notifier = Notifier(Sender(settings, http_client))
        sent = await notifier.channel("team", "Deploy", "v1.2 is out")
        assert sent["type"] == "slack" and "x" not in sent["url"].rsplit("/", 1)[-1]  # token path not echoed
        body = json.loads(hook.requests[0].body)
        assert body == {"text": "*Deploy*\nv1.2 is out"}
        await notifier.slack(f"{hook.url}/direct", "plain", blocks=[{"type": "divider"}])
        assert json.loads(hook.requests[1].body) == {"text": "plain", "blocks": [{"type": "divider"}]}


async def test_module_channels_take_precedence_and_sign(http_client):
    with http_receiver() as hook:
        settings = make_settings(notify_channels={"ops": {"type": "webhook", "url": f"{hook.url}/platform"}})
        module_channels = {"ops": {"type": "webhook", "url": f"{hook.url}/module", "secret": "k"}}
        notifier = Notifier(Sender(settings, http_client), module_channels=module_channels)
        await notifier.channel("ops", "subj", "text", data={"x": 1})
        [req] = hook.requests
        assert req.path == "/module"
        body = json.loads(req.body)
        assert body["subject"] == "subj" and body["text"] == "text" and body["data"] == {"x": 1}
        assert verify("k", req.headers[TIMESTAMP_HEADER], req.body, req.headers[SIGNATURE_HEADER])


def test_unknown_or_malformed_channels_are_refused():
    settings = make_settings(notify_channels={"bad": {"type": "pager"}, "nourl": {"type": "webhook"}})
    for name, match in (("missing", "unknown notification channel"), ("bad", "type 'pager'"), ("nourl", "needs a url")):
        with pytest.raises(NotifyError, match=match) as err:
            resolve_channel(name, settings)
        assert err.value.permanent
    assert resolve_channel("email", settings) == {"type": "email"}


@pytest.mark.parametrize(
    ("url", "mode", "allowed"),
    [
        ("http://127.0.0.1:9/x", "off", False),
        ("http://localhost:9/x", "off", False),
        ("http://[::1]:9/x", "off", False),
        ("http://127.0.0.1:9/x", "loopback", True),
        ("http://10.1.2.3/x", "loopback", False),
        ("http://10.1.2.3/x", "private", True),
        ("http://169.254.169.254/latest/meta-data", "private", False),
        ("http://[fe80::1]/x", "private", False),
        ("http://[::ffff:169.254.169.254]/x", "private", False),
        ("http://0.0.0.0/x", "private", False),
        ("ftp://example.com/x", "private", False),
        ("http://93.184.215.14/x", "off", True),
        ("http://100.100.100.200/latest/meta-data", "off", False),  # shared address space (Alibaba metadata)
        ("http://[2002:7f00:1::]/x", "off", False),  # 6to4 wrapping 127.0.0.1
        ("http://example.com:99999/x", "private", False),  # an invalid port is a permanent refusal
    ],
)
async def test_outbound_address_check(url, mode, allowed):
    if allowed:
        await check_url(url, mode)
    else:
        with pytest.raises(NotifyError) as err:
            await check_url(url, mode)
        assert err.value.permanent


async def test_loopback_webhook_refused_when_private_addresses_are_off(http_client):
    with http_receiver() as hook:
        notifier = Notifier(Sender(make_settings(http_allow_private="off"), http_client))
        with pytest.raises(JobError, match="AUTOPLAT_HTTP_ALLOW_PRIVATE"):
            await notifier.webhook(hook.url, {})
        assert hook.requests == []


async def test_sync_handlers_call_the_notifier_without_await(http_client):
    """Plain ``def`` handlers run in a thread: the same methods block and return the result."""
    with http_receiver() as hook:
        notifier = Notifier(Sender(make_settings(), http_client))
        result = await asyncio.to_thread(notifier.webhook, hook.url, {"from": "thread"})
        assert result["status"] == 200
        assert json.loads(hook.requests[0].body) == {"from": "thread"}


async def test_webhook_by_name_connects_to_the_checked_address(http_client):
    """A host name is resolved and checked once; the request goes to that address with the
    original Host header (no second lookup a rebinding DNS server could answer differently)."""
    with http_receiver() as hook:
        port = hook.url.rsplit(":", 1)[1]
        sent = await Notifier(Sender(make_settings(), http_client)).webhook(f"http://localhost:{port}/h", {"a": 1})
        assert sent["status"] == 200 and sent["url"] == f"http://localhost:{port}/…"
        assert hook.requests[0].headers["Host"] == f"localhost:{port}"


def test_pin_keeps_host_credentials_and_tls_name():
    import ipaddress

    from activities.services.notify import pin

    url, headers, ext = pin("https://u:p@hooks.example.com:8443/x?y=1", ipaddress.ip_address("93.184.215.14"))
    assert url == "https://u:p@93.184.215.14:8443/x?y=1"
    assert headers == {"Host": "hooks.example.com:8443"} and ext == {"sni_hostname": "hooks.example.com"}
    url, headers, _ = pin("http://h.example.com/x", ipaddress.ip_address("2001:db8::1"))
    assert url == "http://[2001:db8::1]/x" and headers == {"Host": "h.example.com"}
    assert pin("http://127.0.0.1:9/x", ipaddress.ip_address("127.0.0.1")) == ("http://127.0.0.1:9/x", {}, {})


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUTOPLAT_NOTIFY_CHANNELS", '{"team": {"type": "slack", "url": "https://hooks.example.com/x"}}')
    monkeypatch.setenv("AUTOPLAT_NOTIFY_EMAIL_TO", "a@example.com, b@example.com")
    monkeypatch.setenv("AUTOPLAT_SMTP_TLS", "implicit")
    monkeypatch.setenv("AUTOPLAT_SMTP_PASSWORD", "hunter2-hunter2")
    settings = Settings(dev_mode=True)
    assert settings.notify_channels == {"team": {"type": "slack", "url": "https://hooks.example.com/x"}}
    assert settings.notify_email_to == ["a@example.com", "b@example.com"]
    assert "hunter2" not in repr(settings) and "hooks.example.com" not in repr(settings)
    monkeypatch.setenv("AUTOPLAT_SMTP_HOST", "mail.example.com")
    from activities.services.notify import SmtpConfig

    assert SmtpConfig.from_settings(Settings(dev_mode=True)).port == 465
    monkeypatch.setenv("AUTOPLAT_SMTP_TLS", "sometimes")
    with pytest.raises(ValueError, match="smtp_tls"):
        Settings(dev_mode=True)
