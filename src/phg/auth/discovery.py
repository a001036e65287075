"""Where to get a token: SMART discovery.

SMART App Launch 2.2.0 "Conformance" / backend-services: the server publishes
``{fhirBase}/.well-known/smart-configuration`` (JSON, absolute URLs). Older servers only declare
the token URL in the CapabilityStatement (``rest[].security.extension`` oauth-uris, deprecated
since SMART 2.0); we fall back to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from phg.errors import DiscoveryError, TransientDeliveryError
from phg.transport import TRANSIENT_STATUSES, connection_error, exchange, redact_url, require_secure_url, transient_error

log = logging.getLogger(__name__)

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@dataclass(frozen=True)
class SmartConfiguration:
    """The parts of a SMART configuration a backend-services client uses.

    ``source`` says where it came from: "smart-configuration" or "capability-statement" (the
    latter only ever knows the token endpoint).
    """

    token_endpoint: str
    source: str
    grant_types_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_signing_alg_values_supported: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    registration_endpoint: str | None = None

    def undeclared(self, name: str, wanted: str) -> list[str]:
        """A problem when the server declares list ``name`` and ``wanted`` is not in it (an absent
        optional list is no problem: SMART App Launch 2.2.0, "Conformance", marks them optional)."""
        declared = getattr(self, name)
        return [f"{name} {list(declared)} does not include {wanted}"] if declared and wanted not in declared else []


async def discover(
    client: httpx.AsyncClient, fhir_base: str, *, allow_insecure_http: bool = False
) -> SmartConfiguration:
    """Find the token endpoint of the FHIR server at ``fhir_base``.

    Tries ``.well-known/smart-configuration`` first, then the CapabilityStatement at
    ``/metadata``. Raises TransientDeliveryError when the server could not be reached (``reached``
    False when the connection itself failed) or answered 408/429/5xx (try again later),
    DiscoveryError when it answered but declares no token endpoint.
    Requests are sent with ``auth=None`` so a client that carries a TokenAuth can be reused.
    """
    base = fhir_base.rstrip("/")
    require_secure_url(base, "FHIR base", allow_insecure_http=allow_insecure_http)
    tried: list[str] = []
    transient: TransientDeliveryError | None = None
    for path, parse in (
        ("/.well-known/smart-configuration", _from_smart_configuration),
        ("/metadata", _from_capability_statement),
    ):
        url = base + path
        try:
            response = await exchange(client, "GET", url, headers={"Accept": "application/json"}, auth=None)
        except httpx.TransportError as exc:
            raise connection_error(exc, f"discovery: cannot reach {redact_url(url)}") from exc
        if response.status_code in TRANSIENT_STATUSES:
            transient = transient_error(response, "discovery:")
            tried.append(f"{redact_url(url)}: HTTP {response.status_code}")
            continue
        found, why = _parse(response, parse)
        if found is not None:
            require_secure_url(found.token_endpoint, "token endpoint", allow_insecure_http=allow_insecure_http)
            log.info("discovered token endpoint %s via %s", redact_url(found.token_endpoint), found.source)
            return found
        tried.append(f"{redact_url(url)}: {why}")
    if transient is not None:
        raise transient
    raise DiscoveryError(
        f"no SMART token endpoint found for FHIR base {redact_url(base)} ({'; '.join(tried)}); "
        "check the FHIR base URL or configure token_url explicitly"
    )


def _parse(
    response: httpx.Response, parse: Callable[[dict[str, Any]], SmartConfiguration | None]
) -> tuple[SmartConfiguration | None, str]:
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}"
    try:
        document = response.json()
    except ValueError:
        return None, "response is not JSON"
    if not isinstance(document, dict):
        return None, "response is not a JSON object"
    found = parse(document)
    return (found, "") if found else (None, "no token endpoint declared")


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _absolute(value: Any) -> str | None:
    if isinstance(value, str) and httpx.URL(value).is_absolute_url:
        return value
    return None


def _from_smart_configuration(document: dict[str, Any]) -> SmartConfiguration | None:
    token_endpoint = _absolute(document.get("token_endpoint"))
    if token_endpoint is None:
        return None
    return SmartConfiguration(
        token_endpoint=token_endpoint,
        source="smart-configuration",
        grant_types_supported=_strings(document.get("grant_types_supported")),
        token_endpoint_auth_methods_supported=_strings(document.get("token_endpoint_auth_methods_supported")),
        token_endpoint_auth_signing_alg_values_supported=_strings(
            document.get("token_endpoint_auth_signing_alg_values_supported")
        ),
        scopes_supported=_strings(document.get("scopes_supported")),
        capabilities=_strings(document.get("capabilities")),
        registration_endpoint=_absolute(document.get("registration_endpoint")),
    )


def _from_capability_statement(document: dict[str, Any]) -> SmartConfiguration | None:
    """CapabilityStatement.rest[].security.extension[url=oauth-uris].extension[url=token].valueUri."""
    if document.get("resourceType") != "CapabilityStatement":
        return None
    for rest in document.get("rest") or []:
        security = rest.get("security") if isinstance(rest, dict) else None
        if not isinstance(security, dict):
            continue
        for extension in security.get("extension") or []:
            if not isinstance(extension, dict) or extension.get("url") != OAUTH_URIS:
                continue
            uris = {
                sub.get("url"): sub.get("valueUri")
                for sub in extension.get("extension") or []
                if isinstance(sub, dict)
            }
            token_endpoint = _absolute(uris.get("token"))
            if token_endpoint is not None:
                return SmartConfiguration(
                    token_endpoint=token_endpoint,
                    source="capability-statement",
                    registration_endpoint=_absolute(uris.get("register")),
                )
    return None
