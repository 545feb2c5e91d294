"""Verified access tokens are remembered, never past their expiry and never across keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from registry import security
from registry.errors import AuthenticationFailed
from registry.settings import Settings


def _settings(secret: str) -> Settings:
    return Settings(dev_mode=False, jwt_secret=secret, database_url="sqlite+aiosqlite:///:memory:")


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings("s" * 48)
    token, claims = security.encode_token(settings, subject="u1", token_type="access", family_id="f1")
    first = security.decode_token(settings, token, expected_type="access")
    assert (first.subject, first.jti, first.family_id) == ("u1", claims.jti, "f1")
    assert security.decode_token(settings, token, expected_type="access") is first  # remembered

    real = datetime

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
            return real.now(tz) + timedelta(seconds=settings.access_token_ttl_seconds + 1)

    monkeypatch.setattr(security, "datetime", Later)
    with pytest.raises(AuthenticationFailed, match="expired"):
        security.decode_token(settings, token, expected_type="access")
    assert first.expires_at < Later.now(UTC)


def test_a_remembered_token_is_not_accepted_under_another_key_or_type() -> None:
    signer = _settings("a" * 48)
    token, _ = security.encode_token(signer, subject="u1", token_type="access", family_id="f1")
    security.decode_token(signer, token, expected_type="access")
    with pytest.raises(AuthenticationFailed, match="invalid token"):
        security.decode_token(_settings("b" * 48), token, expected_type="access")
    with pytest.raises(AuthenticationFailed, match="expected a"):
        security.decode_token(signer, token, expected_type="refresh")
