"""A job's own secret config values (``secret: true`` in its job type's config schema) are masked in every
``/jobs`` answer (create, list, detail, update) and stored encrypted; the module's config secrets are
tested in tests/modules."""

from __future__ import annotations

from typing import Any

import pytest

from registry.manifest.validate import MASK
from tests.jobs.helpers import put_module, write_module

CLEAR = "job-own-s3cret-value"
JOBS = [
    {
        "name": "secretive",
        "description": "holds a secret of its own",
        "handler": "run",
        "config": {
            "type": "object",
            "properties": {"token": {"type": "string", "secret": True}, "who": {"type": "string", "default": "x"}},
        },
    }
]


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Any) -> Any:
    folder = write_module(tmp_path, name="vault", code="def run(ctx):\n    return 1\n", jobs=JOBS)
    return await put_module(sessions, settings.state_dir, folder)


async def test_a_jobs_own_secret_is_masked_in_every_jobs_answer(
    temporal_settings, client, module, operator_headers, viewer_headers
):
    r = await client.post(
        "/api/v1/jobs",
        json={
            "module": "vault",
            "job_type": "secretive",
            "name": "keeps-a-secret",
            "schedule": None,
            "config": {"token": CLEAR, "who": "ops"},
        },
        headers=operator_headers,
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["config"] == {"token": MASK, "who": "ops"}
    assert CLEAR not in r.text

    for headers in (operator_headers, viewer_headers):
        listed = await client.get("/api/v1/jobs", headers=headers)
        assert listed.status_code == 200, listed.text
        [item] = [j for j in listed.json()["items"] if j["id"] == job["id"]]
        assert item["config"]["token"] == MASK
        assert CLEAR not in listed.text

        detail = await client.get(f"/api/v1/jobs/{job['id']}", headers=headers)
        assert detail.status_code == 200, detail.text
        assert detail.json()["config"]["token"] == MASK
        assert CLEAR not in detail.text

    # Sending the mask back (as a form that shows the masked value does) keeps the secret.
    patched = await client.patch(
        f"/api/v1/jobs/{job['id']}", json={"config": {"token": MASK, "who": "night"}}, headers=operator_headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["config"] == {"token": MASK, "who": "night"}
    assert CLEAR not in patched.text


async def test_a_jobs_own_secret_is_stored_encrypted(temporal_settings, client, module, operator_headers, pg_database):
    import psycopg

    r = await client.post(
        "/api/v1/jobs",
        json={"module": "vault", "job_type": "secretive", "name": "at-rest", "config": {"token": CLEAR}},
        headers=operator_headers,
    )
    assert r.status_code == 201, r.text
    with psycopg.connect(pg_database.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        row = conn.execute("SELECT config::text, secrets FROM jobs WHERE id = %s", (r.json()["id"],)).fetchone()
    assert row is not None
    config, secrets = row
    assert secrets  # the secret is kept, apart from the plain config...
    assert CLEAR not in config and CLEAR not in secrets  # ...and encrypted
