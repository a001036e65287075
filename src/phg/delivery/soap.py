"""PCD-01 over the Continua WAN / IHE DEC web-service binding (SOAP 1.2, document/literal).

WSDL: oehf/ipf commons/ihe/hl7v2ws/src/main/resources/wsdl/pcd01/pcd01.wsdl (+ DeviceObservationConsumer.xsd):
namespace urn:ihe:pcd:dec:2010, operation CommunicatePCDData, WS-Addressing Action
urn:ihe:pcd:2010:CommunicatePCDData; request body <CommunicatePCDData> = the ER7 message as a string,
response <CommunicatePCDDataResponse> = the ACK as a string. ER7 segment separators are CRs, which XML
would normalise to LF unless written as &#13; (lxml does), and the ACK parser accepts either.

`SoapBinding` is the body and answer of phg.delivery.hl7http.HttpExchange for this binding (the
exchange, TLS and status handling are the HL7-over-HTTP ones).

Security: TLS (mutual TLS optional, as for MLLP), and an optional WS-Security 1.0 header (OASIS WSS
SOAP Message Security) with a wsu:Timestamp and either a configured SAML assertion (Continua: SAML token
profile; the assertion is issued elsewhere and given as XML) or a UsernameToken (PasswordText; TLS
protects it). Answers: the ACK is classified like MLLP; a SOAP Fault from the Sender side is a rejection
of this message (dead), except a WS-Security failure (wsse:FailedAuthentication, InvalidSecurity,
InvalidSecurityToken, FailedCheck, SecurityTokenUnavailable, or HTTP 401/403), which is an AuthError;
a Receiver fault, 5xx without a Fault or a connection error is transient (retried).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from lxml import etree

from phg.config import SoapSettings
from phg.delivery.hl7http import NoAck
from phg.delivery.outcome import Deferred, Outcome, Rejected
from phg.errors import AuthError, ConfigError
from phg.hl7v2.ack import Ack, AckError, parse_ack

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_TEXT = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
                 "#PasswordText")
PCD_NS = "urn:ihe:pcd:dec:2010"
ACTION = "urn:ihe:pcd:2010:CommunicatePCDData"
RESPONSE_ACTION = "urn:ihe:pcd:2010:CommunicatePCDDataResponse"
ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
# Faults about who we are (WS-Security 1.1, incl. a Timestamp refused for clock skew) or where we sent
# (WS-Addressing 1.0 SOAP binding): never the reading's fault, so they stop delivery and keep the queue.
# Not wsa:EndpointUnavailable: the binding's "the endpoint is unable to process the message at this time"
# (section 6.4.1.7, a Receiver fault, perhaps with a RetryAfter) is a server that is busy, not a wrong address:
# the message is tried again later (Deferred), as for any Receiver fault.
WSSE_FAULTS = frozenset({"FailedAuthentication", "InvalidSecurity", "InvalidSecurityToken", "FailedCheck",
                         "SecurityTokenUnavailable", "UnsupportedSecurityToken", "MessageExpired"})
WSA_FAULTS = frozenset({"ActionNotSupported", "DestinationUnreachable", "InvalidAddressingHeader",
                        "MessageAddressingHeaderRequired"})

# No DTDs, no entities, no network: the answer comes from outside.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                          remove_blank_text=True)


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def envelope(message: str, *, to: str, message_id: str, security: etree._Element | None = None) -> bytes:
    """The SOAP 1.2 request: WS-Addressing headers, optional wsse:Security, the ER7 in the body."""
    env = etree.Element(_q(SOAP12, "Envelope"), nsmap={"env": SOAP12, "wsa": WSA})
    header = etree.SubElement(env, _q(SOAP12, "Header"))
    etree.SubElement(header, _q(WSA, "Action")).text = ACTION
    etree.SubElement(header, _q(WSA, "MessageID")).text = message_id
    reply_to = etree.SubElement(header, _q(WSA, "ReplyTo"))
    etree.SubElement(reply_to, _q(WSA, "Address")).text = ANONYMOUS
    etree.SubElement(header, _q(WSA, "To")).text = to
    if security is not None:
        header.append(security)
    body = etree.SubElement(env, _q(SOAP12, "Body"))
    etree.SubElement(body, _q(PCD_NS, "CommunicatePCDData"), nsmap={"pcd": PCD_NS}).text = message
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def security_header(*, saml_assertion: str | None = None, username: str | None = None, password: str | None = None,
                    now: datetime | None = None, ttl: float = 300.0) -> etree._Element:
    """wsse:Security (mustUnderstand) with a wsu:Timestamp and a SAML assertion or a UsernameToken."""
    now = now or datetime.now(UTC)
    security = etree.Element(_q(WSSE, "Security"), nsmap={"wsse": WSSE, "wsu": WSU})
    security.set(_q(SOAP12, "mustUnderstand"), "true")
    stamp = etree.SubElement(security, _q(WSU, "Timestamp"))
    stamp.set(_q(WSU, "Id"), f"TS-{uuid.uuid4().hex}")
    etree.SubElement(stamp, _q(WSU, "Created")).text = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    etree.SubElement(stamp, _q(WSU, "Expires")).text = (now + timedelta(seconds=ttl)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if saml_assertion is not None:
        try:
            security.append(etree.fromstring(saml_assertion.encode("utf-8"), _PARSER))
        except etree.XMLSyntaxError as exc:
            raise ConfigError(f"the configured SAML assertion is not XML: {exc}") from None
    elif username is not None:
        token = etree.SubElement(security, _q(WSSE, "UsernameToken"))
        token.set(_q(WSU, "Id"), f"UT-{uuid.uuid4().hex}")
        etree.SubElement(token, _q(WSSE, "Username")).text = username
        pw = etree.SubElement(token, _q(WSSE, "Password"))
        pw.set("Type", PASSWORD_TEXT)
        pw.text = password or ""
    return security


class SoapFault(Exception):
    def __init__(self, code: str, subcodes: list[str], reason: str):
        super().__init__(f"SOAP fault {code}{'/' + '/'.join(subcodes) if subcodes else ''}: {reason}")
        self.code = code
        self.subcodes = subcodes
        self.reason = reason


def read_response(content: bytes) -> str:
    """The ACK string of a CommunicatePCDDataResponse; SoapFault for a Fault; ValueError otherwise."""
    try:
        root = etree.fromstring(content, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if root.tag != _q(SOAP12, "Envelope"):
        raise ValueError(f"not a SOAP 1.2 envelope ({root.tag!s:.80})")
    body = root.find(_q(SOAP12, "Body"))
    if body is None or len(body) == 0:
        raise ValueError("SOAP envelope without a body element")
    payload = body[0]
    if payload.tag == _q(SOAP12, "Fault"):
        def local(text: str | None) -> str:
            return (text or "").strip().rpartition(":")[2]

        code = local(payload.findtext(f"{_q(SOAP12, 'Code')}/{_q(SOAP12, 'Value')}"))
        subcodes = [local(v.text) for v in payload.iter(_q(SOAP12, "Value"))][1:]
        reason = " ".join(t.strip() for t in payload.xpath(".//*[local-name()='Text']/text()"))
        raise SoapFault(code, subcodes, reason[:500])
    if etree.QName(payload).localname != "CommunicatePCDDataResponse":
        raise ValueError(f"unexpected body element {payload.tag!s:.80}")
    return payload.text or ""


class SoapBinding:
    """CommunicatePCDData requests (with the settings' WS-Security header) and their answers."""

    headers = {"Content-Type": f'application/soap+xml; charset=utf-8; action="{ACTION}"',
               "Accept": "application/soap+xml, text/xml"}
    what = "CommunicatePCDData"

    def __init__(self, settings: SoapSettings):
        self.settings = settings

    def body(self, message: str, url: str) -> bytes:
        security = None
        if self.settings.saml_assertion is not None or self.settings.username is not None:
            security = security_header(saml_assertion=self.settings.saml_assertion, username=self.settings.username,
                                       password=self.settings.password)
        return envelope(message, to=url, message_id=f"urn:uuid:{uuid.uuid4()}", security=security)

    def read(self, content: bytes, url: str, control_id: str) -> Ack | Outcome:
        try:
            ack_text = read_response(content)
        except SoapFault as fault:
            if WSSE_FAULTS & set(fault.subcodes):
                raise AuthError(f"{url}: WS-Security refused: {fault}") from None
            if WSA_FAULTS & set(fault.subcodes):
                raise ConfigError(f"{url}: WS-Addressing refused ({', '.join(fault.subcodes)}): check the "
                                  "destination's url") from None
            if fault.code == "Sender":
                return Rejected(f"{fault} (for {control_id})")
            return Deferred(f"{url}: {fault} (for {control_id})")
        except ValueError as exc:
            raise NoAck(f"without a SOAP response for {control_id}: {exc}") from None
        try:
            return parse_ack(ack_text)
        except AckError as exc:
            return Deferred(f"garbled ACK for {control_id} in the SOAP response: {exc}")
