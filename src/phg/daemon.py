"""Wiring for a running gateway: config -> auth -> destinations -> one delivery worker each.

Kept apart from cli.py so that the demo, the tests and `phg run` assemble the same pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import import_module
from typing import Any

import httpx

from phg.config import DESTINATION_TYPES, FHIR_DESTINATION, Config, DestinationConfig
from phg.delivery import DeliveryWorker, Destination, Summary
from phg.delivery.fhir import FhirDestination
from phg.errors import AuthError, ConfigError, PhgError
from phg.outbox import Outbox
from phg.transport import require_secure_url

log = logging.getLogger(__name__)


def make_auth(config: Config, client: httpx.AsyncClient | None = None) -> httpx.Auth | None:
    """The auth flow chosen by ``[auth] method`` (phg.auth.settings); None for "none" (open test
    servers). ``client`` carries the token requests (pass the destination's own client so its TLS,
    client certificate and proxy settings apply to the token endpoint too)."""
    from phg.auth.settings import auth_settings

    return build_auth(auth_settings(config), client)


def build_auth(settings, client: httpx.AsyncClient | None = None) -> httpx.Auth | None:
    """make_auth's work, from parsed AuthSettings (phg doctor reuses it)."""
    if settings.method == "none":
        return None
    assert settings.fhir_base is not None
    common = dict(fhir_base=settings.fhir_base, token_url=settings.token_url, client=client,
                  allow_insecure_http=settings.allow_insecure_http, trusted_token_hosts=settings.trusted_token_hosts)
    if settings.method == "smart-backend":
        if not settings.client_id:
            raise ConfigError(f"{settings.source}: [auth] client_id is required for SMART Backend Services "
                              "(phg register obtains one)")
        if settings.key_file is None:
            raise ConfigError(f"{settings.source}: [auth] key_file is required with client_id (phg keys generate)")
        from phg.auth import SmartBackendAuth
        from phg.auth.keyring import KeyRing

        ring = KeyRing(settings.key_file)
        ring.signing_key()  # a missing or unreadable key stops start-up here, naming the file
        return SmartBackendAuth(client_id=settings.client_id, key=ring, scope=settings.scope, jku=settings.jku,
                                **common)
    from phg.auth.secret import ClientSecretAuth, PasswordAuth, StaticBearerAuth

    if settings.method in ("client-secret-basic", "client-secret-post"):
        return ClientSecretAuth(client_id=settings.client_id or "", client_secret=settings.client_secret or "",
                                scope=settings.scope, style=settings.method.rsplit("-", 1)[1], **common)
    if settings.method == "password":
        return PasswordAuth(username=settings.username or "", password=settings.password or "", scope=settings.scope,
                            client_id=settings.client_id, client_secret=settings.client_secret, **common)
    return StaticBearerAuth(token=settings.token or "", **common)


@asynccontextmanager
async def fhir_destination(config: Config) -> AsyncIterator[FhirDestination]:
    """One pooled HTTP client (keep-alive, HTTP/2 where the server offers it) for the destination,
    with the [auth] TLS / client certificate / proxy settings, shared by the auth's token requests;
    Bundles go in an encrypted envelope when [auth] encrypt_to is set."""
    if not config.fhir_base:
        raise ConfigError(f"{config.source}: [fhir] base_url is not set (or pass --fhir-base / PHG_FHIR_BASE_URL)")
    require_secure_url(config.fhir_base, "[fhir] base_url", allow_insecure_http=config.allow_insecure_http)
    from phg.auth.envelope import load_envelope
    from phg.auth.settings import auth_settings
    from phg.auth.tls import client_kwargs

    settings = auth_settings(config)
    timeout = httpx.Timeout(config.timeout, connect=min(10.0, config.timeout))
    async with httpx.AsyncClient(http2=True, timeout=timeout, **client_kwargs(settings)) as client:
        auth = build_auth(settings, client)
        client.auth = auth
        try:
            envelope = await load_envelope(settings.encrypt_to, client, settings.encrypt_kid)
            yield FhirDestination(client, config.fhir_base, config.gateway, config.ig_version, envelope)
        finally:
            if auth is not None:
                await auth.aclose()  # type: ignore[attr-defined]


def other_destination(config: Config, table: DestinationConfig) -> Destination:
    """A [destinations.NAME] table's destination, built from its keys."""
    module, cls = DESTINATION_TYPES[table.type].split(":")
    try:
        return getattr(import_module(module), cls)(name=table.name, gateway=config.gateway, **table.settings)
    except TypeError as exc:
        raise ConfigError(f"{table.source}: [destinations.{table.name}] (type {table.type}): {exc}") from None


@asynccontextmanager
async def open_destinations(config: Config) -> AsyncIterator[list[Destination]]:
    async with AsyncExitStack() as stack:
        destinations: list[Destination] = []
        for name in config.destination_names:
            if name == FHIR_DESTINATION:
                destinations.append(await stack.enter_async_context(fhir_destination(config)))
                continue
            destination = other_destination(config, next(d for d in config.destinations if d.name == name))
            if hasattr(destination, "aclose"):
                stack.push_async_callback(destination.aclose)
            destinations.append(destination)
        yield destinations


async def deliver(config: Config, outbox: Outbox, *, until_idle: bool, stop: asyncio.Event | None = None) -> Summary:
    """Deliver what the outbox holds, one worker per destination, side by side. A destination whose
    credentials or URL are refused (AuthError, ConfigError) stops alone, its queue intact, while the
    others go on; the first such error is raised once the others are idle (until_idle) or when no
    destination is left running."""
    stopped: list[PhgError] = []

    async def run(worker: DeliveryWorker) -> Summary:
        try:
            return await worker.run(stop, until_idle=until_idle)
        except (AuthError, ConfigError) as exc:
            log.error("%s: delivery stopped, its queue is intact: %s", worker.destination.name, exc)
            stopped.append(exc)
            return worker.summary

    async with open_destinations(config) as destinations:
        workers = [DeliveryWorker(outbox, d, batch_size=config.batch_size, max_backoff=config.max_retry_delay,
                                  lease_seconds=config.lease_seconds) for d in destinations]
        summaries = await asyncio.gather(*(run(w) for w in workers))
    if stopped:
        raise stopped[0]
    total = Summary()
    for s in summaries:
        total.delivered += s.delivered
        total.dead += s.dead
        total.retried += s.retried
    return total


async def run_gateway(config: Config, outbox: Outbox, stop: asyncio.Event, *, ble_backend: Any = None) -> Summary:
    """`phg run`: delivery to every destination and, when configured, the Bluetooth source, side by
    side until `stop` is set. `ble_backend`: bleak backend classes (None: the platform's; the
    emulated radio's in tests and demos)."""
    tasks = []
    if config.ble_enabled:
        from phg.sources.ble.session import BleSettings, run_source

        assert config.patient is not None  # load_config insists on a [patient] with [ble]
        settings = BleSettings(allow=config.ble_allow, pair_new=config.ble_pair_new, patient=config.patient,
                               scan_seconds=config.ble_scan_seconds)
        tasks.append(run_source(settings, outbox=outbox, destinations=config.destination_names, stop=stop,
                                backend=ble_backend))
    results = await asyncio.gather(deliver(config, outbox, until_idle=False, stop=stop), *tasks)
    return results[0]

