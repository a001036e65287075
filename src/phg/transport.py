"""HTTP rules shared by every client phg runs (auth and delivery): where it may connect in the
clear, which answers mean "try again later", how long the server asked us to wait, which
connection failures mean the server was never reached, URLs without their credentials, and one exchange
bounded in time and size (`exchange`)."""

from __future__ import annotations

import asyncio
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


# The most phg reads of one answer, decoded (a transaction-response to 50 readings with every resource returned is
# well under 1 MiB); more is refused as a read error. phg asks for answers without content coding (Accept-Encoding:
# identity, RFC 9110 section 12.5.3); from a server that compresses anyway, httpx decodes a received chunk (64 KiB)
# at a time: that chunk's expansion is the most held beyond the limit.
ANSWER_LIMIT = 16 * 2**20


async def exchange(client: httpx.AsyncClient, method: str, url: str, **kwargs: object) -> httpx.Response:
    """client.request(method, url, **kwargs), the whole answer read within the client's read timeout counted from
    the start (httpx bounds each read, so a server sending a byte a second held a destination, and `phg run`'s
    stop, for ever: review A finding 3) and at most ANSWER_LIMIT bytes decoded (an endless body or a gzip bomb
    grew phg past 900 MB: finding 4). Either raises an httpx.TransportError, as a timeout or a broken connection
    would, so every caller's handling of those applies (reached: the server answered)."""
    deadline = client.timeout.read or 30.0
    kwargs["headers"] = {"Accept-Encoding": "identity", **(kwargs.get("headers") or {})}  # type: ignore[dict-item]
    try:
        async with asyncio.timeout(deadline), client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
            body = bytearray()
            async for chunk in response.aiter_bytes():
                if len(body) + len(chunk) > ANSWER_LIMIT:
                    raise httpx.ReadError(f"the answer is larger than {ANSWER_LIMIT} bytes: not read further")
                body += chunk
            response._content = bytes(body)  # what Response.aread() sets: the answer is read
    except TimeoutError:
        raise httpx.ReadTimeout(f"no whole answer within {deadline:g} s") from None
    return response


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


def invalid_url(what: str, url: str, exc: httpx.InvalidURL) -> ConfigError:
    """The refusal of a URL httpx cannot parse. With an @ in it neither the URL nor httpx's reason is
    quoted: the authority ends at the first / ? or #, so a password holding one is no userinfo that
    redact_url could hide, and httpx reads its first part as the port ("https://user:pa/ss@host":
    "Invalid port: 'pa'")."""
    if "@" in url:
        return ConfigError(f"{what} is not a valid URL (not shown, nor httpx's reason: either may quote a password)")
    return ConfigError(f"{what} {url!r} is not a valid URL: {exc}")


def credentials_refused(what: str, url: httpx.URL) -> ConfigError:
    """The refusal of a URL carrying user:password@ (RFC 3986 userinfo), without them."""
    return ConfigError(f"{what} {redact_url(url)} carries credentials (user:password@ in the URL), which httpx would "
                       "send as HTTP Basic credentials to whoever answers: phg uses no such URL (a secret goes in the "
                       "auth settings, as [auth] client_secret or PHG_CLIENT_SECRET)")


def require_secure_url(url: str, what: str, *, allow_insecure_http: bool = False,
                       insecure_setting: str | None = None) -> None:
    """Refuse anything but https, except plain http to a loopback host (127.0.0.0/8, ::1,
    localhost) or when the configuration explicitly allows insecure http. ``insecure_setting``: the
    table whose allow_insecure_http the refusal names ("" when no setting allows it); None: the one
    ``what`` names (:func:`_insecure_way`). Refuse a URL carrying user:password@ (RFC 3986 userinfo): httpx would
    log it with every request and send it as HTTP Basic credentials to whoever answers, and a server may announce
    one (a discovered token endpoint)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise invalid_url(what, url, exc) from None
    if parsed.userinfo:
        raise credentials_refused(what, parsed)
    if parsed.scheme == "https" and parsed.host:
        return
    shown = redact_url(parsed)
    if re.match(r"[A-Za-z0-9.-]+(:\d+)?(/|\Z)", url):  # "ehr.example.org/fhir": a host without its scheme
        raise ConfigError(f"{what} {shown!r} is not an absolute https URL: write it with its scheme, 'https://{shown}'")
    if parsed.scheme != "http" or not parsed.host:
        raise ConfigError(f"{what} {shown!r} is not an absolute https URL")
    if not (allow_insecure_http or is_loopback(parsed.host)):
        raise ConfigError(f"{what} {shown!r} uses plain http to a non-loopback host; use https"
                          f"{_insecure_way(what, insecure_setting)}")


_TABLE = re.compile(r"\[(destinations\.[^\]]+?|fhir|auth|smart)(?:\.auth)?\]")


def _insecure_way(what: str, table: str | None) -> str:
    """How to allow plain http for the URL: ``table``'s setting, else that of the table ``what`` names:
    a destination's own (a [destinations.NAME] or its auth table), [fhir]'s for [fhir] and [auth] (which
    shares it), none for the SMART app ([smart]: a browser carries its tokens). A ``what`` naming no table
    (a URL the server announced: "token endpoint") is of [fhir] or of a destination: both are named."""
    if table is None:
        found = _TABLE.search(what)
        if found is None:
            return (" (or set allow_insecure_http = true in the server's table, [fhir] or [destinations.NAME], "
                    "on a network you trust)")
        table = "" if found[1] == "smart" else f"[{'fhir' if found[1] == 'auth' else found[1]}]"
    return table and f" (or set {table} allow_insecure_http = true on a network you trust)"


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
    """Seconds from a Retry-After header (RFC 9110 section 10.2.3: delay-seconds, 1*DIGIT, ASCII digits only, or
    HTTP-date); None for anything else ("²" is a digit to str.isdigit, and float() refused it: a ValueError that
    dead-lettered a whole batch on a 503, review A finding 2)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    if re.fullmatch(r"[0-9]+", value.strip()):
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
