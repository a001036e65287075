"""HTTP rules shared by every client phg runs (auth and delivery): where it may connect in the
clear, which answers mean "try again later", and how long the server asked us to wait."""

from __future__ import annotations

import email.utils
import ipaddress
import time

import httpx

from phg.errors import ConfigError, TransientDeliveryError

# Connection-level trouble is transient too (httpx.TransportError); of the answers: request
# timeout, too many requests and every server error (issue #2; RFC 9110 section 15.5.9, 15.6).
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


def require_secure_url(url: str, what: str, *, allow_insecure_http: bool = False) -> None:
    """Refuse anything but https, except plain http to a loopback host (127.0.0.0/8, ::1,
    localhost) or when the configuration explicitly allows insecure http."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{what} {url!r} is not a valid URL: {exc}") from None
    if parsed.scheme == "https" and parsed.host:
        return
    if parsed.scheme != "http" or not parsed.host:
        raise ConfigError(f"{what} {url!r} is not an absolute https URL")
    if not (allow_insecure_http or is_loopback(parsed.host)):
        raise ConfigError(
            f"{what} {url!r} uses plain http to a non-loopback host; use https "
            "(or set [fhir] allow_insecure_http = true on a network you trust)"
        )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (RFC 9110 section 10.2.3: delay-seconds or HTTP-date)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def transient_error(response: httpx.Response, what: str) -> TransientDeliveryError:
    return TransientDeliveryError(
        f"{what} {response.request.url} answered HTTP {response.status_code}; will retry",
        retry_after=retry_after(response),
    )
