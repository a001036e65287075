"""One TLS policy for every client phg opens: MLLP, HL7 over HTTP, SOAP, FHIR and the token endpoint.

- TLS 1.2 or later (SMART App Launch / Backend Services and IHE ATNA ask for it; RFC 8996 retires
  1.0 and 1.1); certificates and host names are always verified.
- Trust: the system's trust store, or a configured ``ca_file`` (a PEM bundle that *replaces* it:
  trusting only a private CA is stricter than adding it to every public root).
- ``client_cert`` + ``client_key``: mutual TLS (RFC 8705 client authentication, IHE ATNA node
  authentication). The key file must be mode 0600, like signing keys.
Plain connections are refused except to loopback (phg.transport), unless a setting says otherwise.
"""

from __future__ import annotations

import ssl
from typing import Any

from phg.config import TlsSettings
from phg.errors import ConfigError
from phg.secretfile import require_private


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """A verifying client context for `settings`; ConfigError naming the setting when a file is unusable."""
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{settings.source} ca_file {settings.ca_file}: not a PEM CA bundle ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.client_cert is not None:
        key = settings.client_key or settings.client_cert
        require_private(key, f"{settings.source} client_key")
        try:
            context.load_cert_chain(str(settings.client_cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{settings.source} client_cert {settings.client_cert} / client_key {key}: cannot load "
                              f"the certificate and key ({exc})") from None
    return context


def httpx_options(settings: TlsSettings, proxy: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``httpx.AsyncClient``: ``verify`` (this policy) and ``proxy`` when set
    (without it httpx still honours HTTPS_PROXY / NO_PROXY)."""
    options: dict[str, Any] = {"verify": client_context(settings)}
    if proxy:
        options["proxy"] = proxy
    return options
