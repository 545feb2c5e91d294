"""The OpenAPI document matches the server: a bounded, deterministic schemathesis run over every
operation of ``/openapi.json`` (as an admin), with its conformance checks: documented status codes,
content types, headers and response schemas, no server errors, data valid by the schema accepted,
405 answers with a complete ``Allow``."""

from __future__ import annotations

import re
import time
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app

#: Examples generated per operation (bounded run; the seed is fixed by ``derandomize``).
EXAMPLES = 3
#: Operations left out, and why.
SKIPPED = {
    ("GET", "/api/v1/events/stream"): "a live stream never ends; tests/events/test_stream.py covers it",
    ("GET", "/api/v1/executions/{execution_id}/logs/stream"): "a live stream",
    ("POST", "/api/v1/auth/logout"): "would end the admin session the run uses",
    ("PUT", "/api/v1/auth/me/password"): "would end the admin session the run uses",
}
#: The conformance checks, on every operation.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    allow_header_conformance,
]
#: Reads have no semantic validation beyond their parameters' schemas: a query valid by the schema
#: must be accepted (this is what finds a parameter typed otherwise than the server parses it).
READ_CHECKS = [*CHECKS, positive_data_acceptance]
#: Reads whose parameters the server also checks semantically (not expressible in the schema).
SEMANTIC_READS = {("GET", "/api/v1/schedule-preview"): "the cron expression's syntax"}


async def test_the_server_conforms_to_its_openapi_document(temporal_settings, migrated, admin_headers):
    app = create_app(temporal_settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) > 40
    started = time.monotonic()
    failures: dict[str, str] = {}
    ran = 0
    for operation in operations:
        key = (operation.method.upper(), operation.path)
        if key in SKIPPED or operation.path.startswith("/api/v1/m/"):
            continue
        ran += 1
        try:
            _run(operation, admin_headers, READ_CHECKS if key[0] == "GET" and key not in SEMANTIC_READS else CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report every operation's failure
            failures[f"{key[0]} {key[1]}"] = str(exc)[:2000]
    assert ran >= 40
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert time.monotonic() - started < 60


def _run(operation: Any, headers: dict[str, str], checks: list[Any]) -> None:
    @given(case=operation.as_strategy())
    @hypothesis_settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=checks)

    check()


async def test_every_405_names_every_method_of_the_path(client, admin_headers):
    paths = client.app.openapi()["paths"]
    methods = {"GET", "POST", "PUT", "PATCH", "DELETE"}
    checked = 0
    templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), item) for p, item in paths.items()]
    for path in paths:
        url = path.replace("{", "x").replace("}", "")  # any value: 405 comes before the handler
        # Every documented operation whose path matches the URL (/modules/manifest-schema is also a
        # /modules/{name}).
        documented = {m.upper() for regex, item in templates if regex.match(url) for m in item} & methods
        for method in sorted(methods - documented):
            r = await client.request(method, url, headers=admin_headers)
            if r.status_code == 404:  # e.g. the console answers no path under /api with GET
                continue
            assert r.status_code == 405, (method, path, r.text)
            assert set(r.headers["allow"].split(", ")) == documented, (method, path, r.headers["allow"])
            assert r.json()["error"]["code"] == "method_not_allowed"
            checked += 1
    assert checked > 50


async def test_the_documented_page_limit_is_the_enforced_one(client, admin_headers):
    parameters = client.app.openapi()["paths"]["/api/v1/modules"]["get"]["parameters"]
    (limit,) = [p for p in parameters if p["name"] == "limit"]
    maximum = limit["schema"]["maximum"]
    assert maximum == 200
    assert (await client.get("/api/v1/modules", params={"limit": maximum}, headers=admin_headers)).status_code == 200
    r = await client.get("/api/v1/modules", params={"limit": maximum + 1}, headers=admin_headers)
    assert r.status_code == 422
