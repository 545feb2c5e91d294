"""Module configuration: validated against the manifest's schema with defaults, secrets write-only,
encrypted at rest, masked in every response, never in clear in the database."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from registry.crypto import decrypt_json, encrypt_json
from registry.models import AuditLog, Module
from registry.services.modules import resolved_config

MODULES = "/api/v1/modules"
MASK = "********"
SECRET = "s3cret-value-never-shown"
SMTP_SECRET = "smtp-pass-never-shown"


async def put(api: Any, config: dict[str, Any], name: str = "demo-mod") -> Any:
    return await api.client.put(f"{MODULES}/{name}/config", json={"config": config}, headers=api.headers)


async def raw(sessions: Any, name: str = "demo-mod") -> Module:
    async with sessions() as s:
        return await s.scalar(select(Module).where(Module.name == name))  # type: ignore[return-value]


async def test_defaults_schema_and_secret_fields(api):
    await api.register(api.folder())
    r = await api.client.get(f"{MODULES}/demo-mod/config", headers=api.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["config"] == {"region": "eu", "smtp": {"host": "localhost"}}
    assert body["secret_fields"] == ["api_key"]
    assert body["config_schema"]["properties"]["api_key"]["secret"] is True


async def test_secrets_are_write_only_encrypted_and_masked(api, client, viewer_headers, sessions, settings):
    await api.register(api.folder())
    r = await put(api, {"region": "us", "api_key": SECRET, "smtp": {"host": "mail", "password": SMTP_SECRET}})
    assert r.status_code == 200, r.text
    masked = {"region": "us", "api_key": MASK, "smtp": {"host": "mail", "password": MASK}}
    assert r.json()["config"] == masked

    # Every read masks them, for every role.
    for headers in (api.headers, viewer_headers):
        assert (await client.get(f"{MODULES}/demo-mod/config", headers=headers)).json()["config"] == masked
        assert (await client.get(f"{MODULES}/demo-mod", headers=headers)).json()["config"] == masked
        listed = (await client.get(MODULES, headers=headers)).text
        assert SECRET not in listed and SMTP_SECRET not in listed

    # Not in clear in the database: the clear column holds the mask, the other one a Fernet token.
    module = await raw(sessions)
    assert SECRET not in json.dumps(module.config) and SMTP_SECRET not in json.dumps(module.config)
    assert module.config == masked
    assert module.secrets and SECRET not in module.secrets and SMTP_SECRET not in module.secrets
    key = settings.encryption_key()
    assert decrypt_json(key, module.secrets) == {"api_key": SECRET, "smtp": {"password": SMTP_SECRET}}
    # What a job receives: everything in clear, defaults applied.
    assert resolved_config(module=module, secret_key=key) == {
        "region": "us", "api_key": SECRET, "smtp": {"host": "mail", "password": SMTP_SECRET},
    }  # fmt: skip
    # Nor in the audit log or the events.
    async with sessions() as s:
        audit = (await s.execute(select(AuditLog.details))).scalars().all()
    assert SECRET not in json.dumps(audit)

    # Omitted, or sent back masked: kept. Non-secret keys follow PUT semantics (replaced).
    r = await put(api, {"smtp": {"host": "mail2", "password": MASK}})
    assert r.json()["config"] == {"region": "eu", "api_key": MASK, "smtp": {"host": "mail2", "password": MASK}}
    module = await raw(sessions)
    assert decrypt_json(key, module.secrets) == {"api_key": SECRET, "smtp": {"password": SMTP_SECRET}}

    # Null removes a secret.
    r = await put(api, {"api_key": None, "smtp": {"password": None}})
    assert r.json()["config"] == {"region": "eu", "smtp": {"host": "localhost"}}
    module = await raw(sessions)
    assert module.secrets is None and module.config == {"smtp": {}}


async def test_invalid_configs_are_refused_without_echoing_secrets(api, sessions):
    await api.register(api.folder())
    before = await raw(sessions)
    r = await put(api, {"region": "mars"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_input"
    assert [(e["path"], e["code"]) for e in error["details"]["errors"]] == [("/region", "config.invalid")]
    r = await put(api, {"api_key": ["not", SECRET]})
    assert r.status_code == 422
    assert SECRET not in r.text and error["details"]["errors"][0]["path"] == "/region"
    r = await api.client.put(f"{MODULES}/demo-mod/config", json={"region": "eu"}, headers=api.headers)
    assert r.status_code == 422  # the body is {"config": {...}}
    after = await raw(sessions)
    assert (after.config, after.secrets, after.revision) == (before.config, before.secrets, before.revision)


async def test_an_upgrade_moves_a_newly_secret_field_out_of_the_clear_column(api, sessions, settings):
    await api.register(api.folder())
    assert (await put(api, {"region": "us", "api_key": SECRET})).status_code == 200
    data = json.loads((api.folder(version="1.0.1") / "manifest.json").read_text())
    data["version"] = "1.1.0"
    data["config"]["properties"]["region"]["secret"] = True  # region becomes secret
    data["config"]["properties"]["api_key"].pop("secret")  # api_key no longer is
    r = await api.client.post(
        f"{MODULES}/demo-mod/upgrade",
        json={"path": str(api.folder(data, root=api.root / "v11"))},
        headers=api.headers,
    )
    assert r.status_code == 200, r.text
    module = await raw(sessions)
    assert "us" not in json.dumps(module.config) and SECRET not in json.dumps(module.config)
    assert decrypt_json(settings.encryption_key(), module.secrets) == {"region": "us", "api_key": SECRET}
    assert r.json()["config"]["region"] == MASK and r.json()["config"]["api_key"] == MASK


def test_crypto_round_trip_and_wrong_key():
    import pytest

    from registry.crypto import DecryptionFailed

    token = encrypt_json("k" * 40, {"a": 1, "b": [SECRET]})
    assert SECRET not in token
    assert decrypt_json("k" * 40, token) == {"a": 1, "b": [SECRET]}
    with pytest.raises(DecryptionFailed):
        decrypt_json("other-key" * 5, token)
    with pytest.raises(DecryptionFailed):
        decrypt_json("k" * 40, "garbage")


async def test_secrets_under_a_changed_key_can_be_set_again(api, sessions, settings):
    await api.register(api.folder())
    assert (await put(api, {"api_key": SECRET, "smtp": {"password": SMTP_SECRET}})).status_code == 200
    async with sessions() as s, s.begin():  # as if AUTOPLAT_SECRET_KEY had changed since
        module = await s.scalar(select(Module).where(Module.name == "demo-mod"))
        module.secrets = encrypt_json("another-key-" * 4, {"api_key": SECRET})
    r = await api.client.get(f"{MODULES}/demo-mod/config", headers=api.headers)
    assert r.json()["config"]["api_key"] == MASK  # reads don't need the key
    # Upgrading would have to carry secrets it cannot read: refused until they are set again.
    r = await api.client.post(
        f"{MODULES}/demo-mod/upgrade", json={"path": str(api.folder(version="1.0.1"))}, headers=api.headers
    )
    assert r.status_code == 409 and "set them again" in r.json()["error"]["message"]
    r = await put(api, {"api_key": "fresh", "smtp": {"password": MASK}})
    assert r.status_code == 200, r.text
    assert r.json()["config"] == {"region": "eu", "api_key": MASK, "smtp": {"host": "localhost"}}
    assert decrypt_json(settings.encryption_key(), (await raw(sessions)).secrets) == {"api_key": "fresh"}
