"""Connecting to Temporal: one place for address, namespace, TLS, API key and the data converter."""

from __future__ import annotations

import logging

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig

from registry import tracing
from registry.settings import Settings

log = logging.getLogger(__name__)

#: Search attributes the platform sets on every run (registered idempotently at start-up).
SEARCH_ATTRIBUTES = {
    "AutoplatModule": "Keyword",
    "AutoplatJobId": "Keyword",
    "AutoplatTrigger": "Keyword",
    "AutoplatExecutionId": "Keyword",
}

#: The one data converter used by the API, the worker and the tests (JSON, pydantic-aware).
DATA_CONVERTER = DataConverter.default


def tls_config(settings: Settings) -> TLSConfig | bool:
    if not settings.temporal_tls and not settings.temporal_tls_cert:
        return False
    return TLSConfig(
        server_root_ca_cert=settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None,
        client_cert=settings.temporal_tls_cert.read_bytes() if settings.temporal_tls_cert else None,
        client_private_key=settings.temporal_tls_key.read_bytes() if settings.temporal_tls_key else None,
        domain=settings.temporal_tls_server_name,
    )


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=tls_config(settings),
        api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
        data_converter=DATA_CONVERTER,
        interceptors=tracing.client_interceptors(),  # none unless AUTOPLAT_TRACING=on
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register the platform's search attributes; already-present ones are left alone."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest

    existing = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    missing = {
        name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
        for name, kind in SEARCH_ATTRIBUTES.items()
        if name not in existing.custom_attributes
    }
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except Exception as exc:  # noqa: BLE001 - a concurrent registration or a cloud namespace without the right
        log.warning("could not register search attributes %s: %s", sorted(missing), exc)
