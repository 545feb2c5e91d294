"""Email over STARTTLS and implicit TLS with SMTP AUTH, against aiosmtpd with a test certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities.services.notify import Notifier, NotifyError, Sender
from autoplat.errors import JobError
from registry.settings import Settings
from tests.services.helpers import SmtpServer, _Collect, free_port

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


class _Auth:
    def __init__(self) -> None:
        self.logins: list[str] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"pa55word")
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)


@contextmanager
def tls_smtp(cert: tuple[Path, Path], *, implicit: bool) -> Iterator[tuple[SmtpServer, _Auth]]:
    from aiosmtpd.controller import Controller

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    handler, auth = _Collect(), _Auth()
    port = free_port()
    kwargs: dict[str, Any] = {"authenticator": auth, "auth_required": True}
    if implicit:
        # aiosmtpd only counts STARTTLS as TLS for AUTH; the implicit-TLS socket is encrypted anyway.
        kwargs["auth_require_tls"] = False
        controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=context, **kwargs)
    else:
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True, **kwargs
        )
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler), auth
    finally:
        controller.stop()


def smtp_settings(server: SmtpServer, cert: tuple[Path, Path], tls: str, **kw: Any) -> Settings:
    return Settings(
        dev_mode=True,
        smtp_host=server.host,
        smtp_port=server.port,
        smtp_tls=tls,
        smtp_username="mailer",
        smtp_password="pa55word",
        smtp_ca_file=cert[0],
        **kw,
    )


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_email_over_tls_with_auth(cert, tls):
    with tls_smtp(cert, implicit=tls == "implicit") as (server, auth):
        async with httpx.AsyncClient() as client:
            notifier = Notifier(Sender(smtp_settings(server, cert, tls), client))
            await notifier.email("ops@example.com", f"over {tls}", text="secure", html="<i>secure</i>")
        assert auth.logins == ["mailer"]
        [mail] = server.mails
        assert mail.recipients == ["ops@example.com"] and mail.message["Subject"] == f"over {tls}"


async def test_wrong_password_is_permanent(cert):
    with tls_smtp(cert, implicit=False) as (server, auth):
        settings = smtp_settings(server, cert, "starttls").model_copy(update={"smtp_password": None})
        async with httpx.AsyncClient() as client:
            notifier = Notifier(Sender(settings, client), module_channels={"m": {"type": "email", "password": "bad"}})
            with pytest.raises(JobError, match="authentication failed"):
                await notifier.email("ops@example.com", "s", text="t", channel="m")
        assert server.mails == [] and auth.logins == []


async def test_untrusted_certificate_is_refused(cert):
    with tls_smtp(cert, implicit=True) as (server, _):
        settings = smtp_settings(server, cert, "implicit").model_copy(update={"smtp_ca_file": None})
        async with httpx.AsyncClient() as client:
            with pytest.raises(NotifyError):
                await Notifier(Sender(settings, client)).email("ops@example.com", "s", text="t")
        assert server.mails == []
