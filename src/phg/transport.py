"""HTTP rules shared by every client phg runs (auth and delivery): where it may connect in the
clear, which answers mean "try again later", how long the server asked us to wait, which
connection failures mean the server was never reached, and URLs without their credentials."""

from __future__ import annotations

import email.utils
import ipaddress
import re
import time

import httpx

from phg.errors import ConfigError, TransientDeliveryError

# Connection-level trouble is transient too (httpx.TransportError); of the answers: request
# timeout, too many requests and every server error (RFC 9110 sections 15.5.9
# and 15.6, RFC 6585 section 4).
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

# httpx errors raised before a request could reach the server: no connection (refused, no route,
# DNS), no TLS session (httpcore raises ConnectError for a failed handshake or certificate), the
# connect timeout, a proxy that could not open the tunnel, no free connection in the pool. Anything
# later (ReadTimeout, WriteError, RemoteProtocolError: the request may have gone out) counts as
# reached, since the server may have seen the request.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.PoolTimeout)


def connection_error(exc: httpx.TransportError, what: str) -> TransientDeliveryError:
    """A TransientDeliveryError for a request that got no answer; ``reached`` is False when the
    request never left (see NEVER_SENT), so an outage is never blamed on the content."""
    return TransientDeliveryError(f"{what}: {type(exc).__name__}: {exc}", reached=not isinstance(exc, NEVER_SENT))


# scheme://userinfo@ (the authority ends at the first / ? #; userinfo at its last @), also without the
# scheme ("//u:p@host", "u:p@host/fhir": a URL written without it, which a message then quotes). A regular
# expression, not a parser, so that invalid URLs are redacted too.
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/?#]*@")


def redact_url(url: str | httpx.URL) -> str:
    """``url`` for a message or a log line: any user:password@ replaced by ***@ (RFC 3986 section
    3.2.1 userinfo). Every message built from a URL goes through here."""
    return _USERINFO.sub(r"\1***@", str(url))


def refuse_credentials(url: str, what: str) -> None:
    """Refuse a URL carrying user:password@: httpx would log it with every request and send it as
    HTTP Basic credentials to whoever answers."""
    if httpx.URL(url).userinfo:
        raise ConfigError(f"{what} {redact_url(url)} carries credentials (user:password@ in the URL); remove them "
                          "from the URL: a client secret goes in [auth] client_secret (or PHG_CLIENT_SECRET)")


def require_secure_url(url: str, what: str, *, allow_insecure_http: bool = False) -> None:
    """Refuse anything but https, except plain http to a loopback host (127.0.0.0/8, ::1,
    localhost) or when the configuration explicitly allows insecure http."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{what} {redact_url(url)!r} is not a valid URL: {exc}") from None
    if parsed.scheme == "https" and parsed.host:
        return
    shown = redact_url(parsed)
    if re.match(r"[A-Za-z0-9.-]+(:\d+)?(/|\Z)", url):  # "ehr.example.org/fhir": a host without its scheme
        raise ConfigError(f"{what} {shown!r} is not an absolute https URL: write it with its scheme, 'https://{shown}'")
    if parsed.scheme != "http" or not parsed.host:
        raise ConfigError(f"{what} {shown!r} is not an absolute https URL")
    if not (allow_insecure_http or is_loopback(parsed.host)):
        raise ConfigError(f"{what} {shown!r} uses plain http to a non-loopback host; use https{_insecure_way(what)}")


_DESTINATION = re.compile(r"\[(destinations\.[^\]]+?)(?:\.auth)?\]")


def _insecure_way(what: str) -> str:
    """The setting that allows plain http for the URL ``what`` names: its destination's table's (a
    [destinations.NAME] or its auth table), none for the SMART app ([smart]: a browser carries its
    tokens), else [fhir]'s, which [auth] shares."""
    if "[smart]" in what:
        return ""
    found = _DESTINATION.search(what)
    where = f"[{found.group(1)}]" if found else "[fhir]"
    return f" (or set {where} allow_insecure_http = true on a network you trust)"


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """The origin of ``url`` (RFC 6454 section 4). httpx normalises the default port to None and
    the host to lower case, so https://H and https://h:443 compare equal."""
    return url.scheme, url.host, url.port


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
        f"{what} {redact_url(response.request.url)} answered HTTP {response.status_code}; will retry",
        retry_after=retry_after(response),
    )
