"""Settings: environment names, secure start-up outside dev mode, dev-mode secrets and the first admin."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sysconfig
from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry.db import unit_of_work
from registry.models import Role, User
from registry.security import decode_token, encode_token, verify_password
from registry.services import users
from registry.settings import InsecureSettings, Settings

AUTOPLAT = Path(sysconfig.get_path("scripts")) / "autoplat"
STRONG = secrets.token_urlsafe(48)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the variables they set."""
    for name in list(os.environ):
        if name.startswith(("AUTOPLAT_", "TEMPORAL_")):
            monkeypatch.delenv(name)


def production(**kw) -> Settings:
    return Settings(dev_mode=False, **kw)


# --- secure start-up -----------------------------------------------------------------------------------------


def test_missing_secret_is_refused_outside_dev_mode():
    with pytest.raises(InsecureSettings, match="AUTOPLAT_JWT_SECRET is not set"):
        production().check_secure()


@pytest.mark.parametrize("weak", ["short", "changeme", "CHANGEME", "secret", "x" * 31])
def test_weak_secret_is_refused_outside_dev_mode(weak):
    with pytest.raises(InsecureSettings, match="AUTOPLAT_JWT_SECRET is too weak"):
        production(jwt_secret=weak).check_secure()


def test_create_app_refuses_insecure_settings():
    from api.app import create_app

    with pytest.raises(InsecureSettings, match="AUTOPLAT_JWT_SECRET"):
        create_app(production())
    with pytest.raises(InsecureSettings, match="AUTOPLAT_JWT_SECRET"):
        create_app(production(jwt_secret="changeme"))


def test_other_weak_secrets_are_named():
    with pytest.raises(InsecureSettings, match="AUTOPLAT_SECRET_KEY") as exc:
        production(jwt_secret=STRONG, secret_key="short").check_secure()
    assert "AUTOPLAT_JWT_SECRET" not in str(exc.value)
    with pytest.raises(InsecureSettings, match="AUTOPLAT_ADMIN_PASSWORD"):
        production(jwt_secret=STRONG, admin_email="a@example.com", admin_password="short").check_secure()


def test_strong_secret_is_accepted():
    settings = production(jwt_secret=STRONG)
    settings.check_secure()
    assert settings.jwt_key() == STRONG


def test_jwt_key_refuses_to_invent_a_secret_outside_dev_mode(tmp_path):
    with pytest.raises(InsecureSettings, match="AUTOPLAT_JWT_SECRET"):
        production(state_dir=tmp_path).jwt_key()
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("secret", ["short", None], ids=["weak", "missing"])
def test_cli_api_fails_fast_naming_the_setting(tmp_path, secret):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOPLAT_", "TEMPORAL_"))}
    env.update(AUTOPLAT_DEV_MODE="false", AUTOPLAT_STATE_DIR=str(tmp_path / "state"))
    if secret is not None:
        env["AUTOPLAT_JWT_SECRET"] = secret
    port = _free_port()
    proc = subprocess.run(
        [str(AUTOPLAT), "api", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "AUTOPLAT_JWT_SECRET" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Refused before touching anything: no database created, nothing bound.
    assert "Uvicorn running" not in proc.stdout + proc.stderr
    assert not (tmp_path / "state" / "autoplat.db").exists()


# --- dev mode ----------------------------------------------------------------------------------------------


def test_dev_mode_accepts_no_secret_and_persists_a_generated_one(tmp_path):
    from api.app import create_app

    settings = Settings(dev_mode=True, state_dir=tmp_path / "state")
    settings.check_secure()
    create_app(settings)
    key = settings.jwt_key()
    assert len(key) >= 32
    path = tmp_path / "state" / "jwt-secret"
    assert path.read_text().strip() == key
    assert path.stat().st_mode & 0o777 == 0o600
    # A restart reads the same secret: tokens survive it.
    token, _ = encode_token(settings, subject="u1", token_type="access")
    restarted = Settings(dev_mode=True, state_dir=tmp_path / "state")
    assert restarted.jwt_key() == key
    assert decode_token(restarted, token, expected_type="access").subject == "u1"
    # Another state folder, another secret.
    assert Settings(dev_mode=True, state_dir=tmp_path / "other").jwt_key() != key


def test_dev_mode_still_uses_an_explicit_secret(tmp_path):
    settings = Settings(dev_mode=True, state_dir=tmp_path, jwt_secret="short-is-fine-in-dev")
    settings.check_secure()
    assert settings.jwt_key() == "short-is-fine-in-dev"
    assert not (tmp_path / "jwt-secret").exists()


# --- environment names -------------------------------------------------------------------------------------


def test_environment_variable_names(monkeypatch):
    monkeypatch.setenv("AUTOPLAT_DATABASE_URL", "postgresql://app:pw@db.internal:5432/autoplat")
    monkeypatch.setenv("AUTOPLAT_REDIS_URL", "redis://cache.internal:6379/3")
    monkeypatch.setenv("AUTOPLAT_TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("AUTOPLAT_TEMPORAL_NAMESPACE", "prod")
    monkeypatch.setenv("AUTOPLAT_TASK_QUEUE", "autoplat-prod")
    monkeypatch.setenv("AUTOPLAT_JWT_SECRET", STRONG)
    monkeypatch.setenv("AUTOPLAT_DEV_MODE", "false")
    monkeypatch.setenv("AUTOPLAT_ALLOW_REGISTRATION", "true")
    monkeypatch.setenv("AUTOPLAT_ACCESS_TOKEN_TTL_SECONDS", "600")
    monkeypatch.setenv("AUTOPLAT_ADMIN_EMAIL", "root@example.com")
    monkeypatch.setenv("AUTOPLAT_ADMIN_PASSWORD", "a-long-admin-password")
    settings = Settings()
    assert settings.database_url == "postgresql://app:pw@db.internal:5432/autoplat"
    assert settings.effective_database_url == "postgresql+psycopg://app:pw@db.internal:5432/autoplat"
    assert settings.redis_url == "redis://cache.internal:6379/3"
    assert settings.temporal_address == "temporal.internal:7233"
    assert settings.temporal_namespace == "prod"
    assert settings.task_queue == "autoplat-prod"
    assert settings.jwt_key() == STRONG
    assert settings.dev_mode is False
    assert settings.allow_registration is True
    assert settings.access_token_ttl_seconds == 600
    assert settings.admin_email == "root@example.com"
    assert settings.admin_password is not None
    assert settings.admin_password.get_secret_value() == "a-long-admin-password"
    # Secrets never show in a repr (logs, tracebacks).
    assert STRONG not in repr(settings) and "a-long-admin-password" not in repr(settings)
    settings.check_secure()


def test_defaults_without_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.dev_mode is False
    assert settings.allow_registration is False
    assert settings.temporal_address == "127.0.0.1:7233"
    assert settings.temporal_namespace == "default"
    assert settings.task_queue == "autoplat"
    assert (settings.access_token_ttl_seconds, settings.refresh_token_ttl_seconds) == (900, 7 * 24 * 3600)
    assert settings.jwt_algorithm == "HS256"
    assert settings.cors_origins == []
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / '.state' / 'autoplat.db'}"


def test_temporal_address_falls_back_to_the_temporal_variables(monkeypatch):
    monkeypatch.setenv("TEMPORAL_ADDRESS", "fallback.internal:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "fallback-ns")
    settings = Settings()
    assert settings.temporal_address == "fallback.internal:7233"
    assert settings.temporal_namespace == "fallback-ns"
    monkeypatch.setenv("AUTOPLAT_TEMPORAL_ADDRESS", "preferred.internal:7233")
    assert Settings().temporal_address == "preferred.internal:7233"


def test_state_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOPLAT_STATE_DIR", str(tmp_path / "s"))
    assert Settings().effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 's' / 'autoplat.db'}"


def test_unsupported_jwt_algorithm_is_rejected(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("AUTOPLAT_JWT_ALGORITHM", "none")
    with pytest.raises(ValidationError, match="jwt_algorithm"):
        Settings()


# --- the first admin ---------------------------------------------------------------------------------------


async def _admins(sessions) -> list[User]:
    async with sessions() as s:
        return list(await s.scalars(select(User).where(User.role == Role.admin.value)))


async def _ensure(sessions, settings: Settings):
    async with unit_of_work(sessions) as s:
        return await users.ensure_admin(
            session=s,
            email=settings.admin_email,
            password=settings.admin_password.get_secret_value() if settings.admin_password else None,
            generate=settings.dev_mode,
        )


async def test_dev_mode_creates_one_admin_with_a_random_password_once(sessions, tmp_path):
    settings = Settings(dev_mode=True, state_dir=tmp_path)
    created = await _ensure(sessions, settings)
    assert created is not None
    user, password = created
    assert password is not None and len(password) >= 16
    assert user.role == "admin" and user.is_active
    assert verify_password(user.password_hash, password)
    assert password not in user.password_hash

    assert await _ensure(sessions, settings) is None
    admins = await _admins(sessions)
    assert [a.id for a in admins] == [user.id]
    assert verify_password(admins[0].password_hash, password)  # not reset by the second start


async def test_dev_mode_passwords_are_random(sessions, tmp_path):
    settings = Settings(dev_mode=True, state_dir=tmp_path)
    _, first = await _ensure(sessions, settings)
    async with unit_of_work(sessions) as s:
        await s.execute(User.__table__.delete())
    _, second = await _ensure(sessions, settings)
    assert first != second


async def test_no_admin_is_invented_outside_dev_mode(sessions):
    assert await _ensure(sessions, production(jwt_secret=STRONG)) is None
    async with sessions() as s:
        assert await s.scalar(select(func.count()).select_from(User)) == 0


async def test_admin_from_settings_outside_dev_mode(sessions):
    settings = production(jwt_secret=STRONG, admin_email="Root@Example.com", admin_password="a-long-admin-password")
    created = await _ensure(sessions, settings)
    assert created is not None
    user, generated = created
    assert generated is None
    assert user.email == "root@example.com"
    assert verify_password(user.password_hash, "a-long-admin-password")
    assert await _ensure(sessions, settings) is None
    assert len(await _admins(sessions)) == 1


async def test_an_existing_admin_stops_the_bootstrap(sessions, make_user, tmp_path):
    existing = await make_user("admin")
    assert await _ensure(sessions, Settings(dev_mode=True, state_dir=tmp_path)) is None
    assert [a.id for a in await _admins(sessions)] == [existing.id]
