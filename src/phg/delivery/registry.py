"""Destinations, one registry: a type name maps to a factory that opens a destination of that type
from its settings class (phg.config) as an async context manager. `phg send`, `phg run`,
`phg doctor` and `phg demo` all go through `open_destinations(config)`.

Adding a destination type is one settings class in phg.config and one line here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from phg.config import Config, DestinationSettings
from phg.delivery.c3pro import open_c3pro
from phg.delivery.fhir import open_fhir
from phg.delivery.hl7 import Exchange, Hl7Destination
from phg.delivery.hl7http import Er7Binding, HttpExchange
from phg.delivery.mllp import MllpExchange
from phg.delivery.outcome import Destination
from phg.delivery.soap import SoapBinding
from phg.model import Gateway

Opener = Callable[[Any, Gateway], AbstractAsyncContextManager[Destination]]


def _hl7(exchange: Callable[[Any], Exchange]) -> Opener:
    """An HL7 v2 type: the PCD-01 destination over this type's exchange."""
    def open_hl7(settings: Any, gateway: Gateway) -> Hl7Destination:
        return Hl7Destination(settings, gateway, exchange(settings))
    return open_hl7


REGISTRY: dict[str, Opener] = {
    "fhir": open_fhir,
    "mllp": _hl7(MllpExchange),
    "hl7-http": _hl7(lambda settings: HttpExchange(settings, Er7Binding())),
    "soap": _hl7(lambda settings: HttpExchange(settings, SoapBinding(settings))),
    "c3pro": open_c3pro,
}


def open_destination(settings: DestinationSettings, gateway: Gateway) -> AbstractAsyncContextManager[Destination]:
    """The destination `settings` describe, to open with ``async with``."""
    return REGISTRY[settings.type](settings, gateway)


@asynccontextmanager
async def open_destinations(config: Config) -> AsyncIterator[list[Destination]]:
    """Every configured destination, opened, in the configured order; all closed on exit."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_destination(settings, config.gateway))
               for settings in config.destinations]
