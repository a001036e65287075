"""Wiring for a running gateway: config -> auth -> FHIR destination -> delivery worker.

Kept apart from cli.py so that the demo, the tests and `phg run` assemble the same pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from phg.config import Config
from phg.delivery import DeliveryWorker, Summary
from phg.delivery.fhir import FhirDestination
from phg.errors import ConfigError
from phg.outbox import Outbox
from phg.transport import require_secure_url

TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def make_auth(config: Config) -> httpx.Auth | None:
    """SMART Backend Services when a client_id is configured; no auth otherwise (open test servers)."""
    if not config.client_id:
        return None
    if config.key_file is None:
        raise ConfigError(f"{config.source}: [auth] key_file is required with client_id (phg keys generate)")
    from phg.auth import SmartBackendAuth, load_key

    assert config.fhir_base is not None
    return SmartBackendAuth(fhir_base=config.fhir_base, client_id=config.client_id, key=load_key(config.key_file),
                            scope=config.scope, token_url=config.token_url,
                            allow_insecure_http=config.allow_insecure_http)


@asynccontextmanager
async def fhir_destination(config: Config) -> AsyncIterator[FhirDestination]:
    """One pooled HTTP client (keep-alive, HTTP/2 where the server offers it) for the destination."""
    if not config.fhir_base:
        raise ConfigError(f"{config.source}: [fhir] base_url is not set (or pass --fhir-base / PHG_FHIR_BASE_URL)")
    require_secure_url(config.fhir_base, "[fhir] base_url", allow_insecure_http=config.allow_insecure_http)
    auth = make_auth(config)
    try:
        async with httpx.AsyncClient(auth=auth, http2=True, timeout=TIMEOUT) as client:
            yield FhirDestination(client, config.fhir_base, config.gateway, config.ig_version)
    finally:
        if auth is not None:
            await auth.aclose()


async def deliver(config: Config, outbox: Outbox, *, until_idle: bool, stop: asyncio.Event | None = None) -> Summary:
    """Deliver what the outbox holds for the FHIR destination."""
    async with fhir_destination(config) as destination:
        worker = DeliveryWorker(outbox, destination, batch_size=config.batch_size,
                                max_backoff=config.max_retry_delay)
        return await worker.run(stop, until_idle=until_idle)
