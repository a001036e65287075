"""TLS and proxy settings for every HTTP client that talks to the server (FHIR and token endpoint).

- ``ca_file``: a PEM bundle that *replaces* the default trust store (a private CA: trusting only it
  is stricter than adding it to every public root).
- ``client_cert`` + ``client_key``: mutual TLS (RFC 8705 style client authentication, or a server
  that simply requires client certificates). The key file must be mode 0600, like signing keys.
- ``proxy``: an http(s) proxy URL. Without it httpx still honours HTTPS_PROXY / NO_PROXY.
Verification is never switched off; plain http is refused except to loopback (phg.transport).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import certifi

from phg.auth.settings import AuthSettings
from phg.errors import ConfigError
from phg.secretfile import require_private


def ssl_context(settings: AuthSettings) -> ssl.SSLContext | None:
    """An SSLContext for the configured CA bundle / client certificate, or None for httpx's default."""
    if settings.ca_file is None and settings.client_cert is None:
        return None
    cafile = settings.ca_file or Path(certifi.where())
    try:
        context = ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{settings.source}: [auth] ca_file {cafile}: not a PEM CA bundle ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # SMART: TLS 1.2 or later
    if settings.client_cert is not None:
        assert settings.client_key is not None
        require_private(settings.client_key, f"{settings.source}: [auth] client_key")
        try:
            context.load_cert_chain(str(settings.client_cert), str(settings.client_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{settings.source}: [auth] client_cert {settings.client_cert} / client_key "
                              f"{settings.client_key}: cannot load the certificate and key ({exc})") from None
    return context


def client_kwargs(settings: AuthSettings) -> dict[str, Any]:
    """Keyword arguments for ``httpx.AsyncClient``: ``verify`` and ``proxy`` when configured."""
    kwargs: dict[str, Any] = {}
    context = ssl_context(settings)
    if context is not None:
        kwargs["verify"] = context
    if settings.proxy:
        kwargs["proxy"] = settings.proxy
    return kwargs



