"""PCD-01 over the IHE DEC / Continua WAN SOAP 1.2 binding, end to end against a receiver built here with
spyne from the PCD-01 WSDL (oehf/ipf commons/ihe/hl7v2ws/src/main/resources/wsdl/pcd01/pcd01.wsdl:
targetNamespace urn:ihe:pcd:dec:2010, document/literal SOAP 1.2 binding, operation CommunicatePCDData,
input element CommunicatePCDData and output element CommunicatePCDDataResponse, both xs:string;
WS-Addressing Action urn:ihe:pcd:2010:CommunicatePCDData). The receiver parses the ER7 with python-hl7,
checks the WS-Addressing Action and (when configured) the WS-Security header, and answers the ACK."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hl7
import httpx
import pytest
import six
from lxml import etree

from hl7_destinations import soap_destination
from phg.delivery import worker as worker_module
from phg.delivery.soap import ACTION, PCD_NS, SOAP12, WSA, WSSE, envelope, read_response
from phg.delivery.worker import DeliveryWorker
from phg.errors import AuthError, TransientDeliveryError
from phg.hl7v2 import check, render_messages
from phg.outbox import Outbox
from test_hl7v2_http import wsgi_server
from test_mllp_peers import GATEWAY, deliver, pki, readings_of_every_type  # noqa: F401


def teach_spyne_pep451() -> None:
    """spyne 2.14.0 (its latest release) vendors six 1.14, whose `six.moves` importer has only find_module,
    which Python 3.12 no longer calls (PEP 451: meta path finders need find_spec), so `import spyne` fails
    on 3.12+. Load the vendored six first and give its importer the three methods six 1.16 added for that."""
    path = Path(importlib.util.find_spec("spyne").origin).parent / "util" / "six.py"
    spec = importlib.util.spec_from_file_location("spyne.util.six", path)
    vendored = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = vendored
    spec.loader.exec_module(vendored)
    for method in ("find_spec", "create_module", "exec_module"):
        setattr(vendored._SixMetaPathImporter, method, getattr(six._SixMetaPathImporter, method))


teach_spyne_pep451()
from spyne import Application, Fault, ServiceBase, Unicode, rpc  # noqa: E402 - after teach_spyne_pep451()
from spyne.protocol.soap import Soap12  # noqa: E402
from spyne.server.wsgi import WsgiApplication  # noqa: E402

SAML = ('<saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion" ID="_a1" Version="2.0" '
        'IssueInstant="2026-11-28T09:00:00Z"><saml2:Issuer>https://idp.example</saml2:Issuer>'
        '<saml2:Subject><saml2:NameID>gateway-ECDE3D4E58532D31</saml2:NameID></saml2:Subject></saml2:Assertion>')


@dataclass
class Dec:
    """What the receiver saw and how it answers (ACK codes in turn, then AA)."""

    script: list[str] = field(default_factory=list)
    require: str | None = None  # "saml" | "username"
    received: list[str] = field(default_factory=list)
    clean: list[bool] = field(default_factory=list)  # PCD-01 checker verdict per received message


def dec_app(dec: Dec) -> WsgiApplication:
    class DeviceObservationConsumer(ServiceBase):
        @rpc(Unicode, _returns=Unicode, _body_style="bare", _operation_name="CommunicatePCDData",
             _in_message_name="CommunicatePCDData", _out_message_name="CommunicatePCDDataResponse")
        def CommunicatePCDData(ctx, message):  # noqa: N802, N805 - the WSDL's operation name; spyne passes ctx
            headers = {etree.QName(h).localname: h for h in ctx.in_header_doc or []}
            if headers.get("Action") is None or headers["Action"].text != ACTION:
                raise Fault("Client.ActionNotSupported", "wsa:Action must be " + ACTION)
            security = headers.get("Security")
            if dec.require == "saml":
                names = security.xpath(".//*[local-name()='NameID']/text()") if security is not None else []
                if names != ["gateway-ECDE3D4E58532D31"]:
                    raise Fault("Client.FailedAuthentication", "SAML assertion missing or not trusted")
            elif dec.require == "username":
                user = security.findtext(f".//{{{WSSE}}}Username") if security is not None else None
                password = security.findtext(f".//{{{WSSE}}}Password") if security is not None else None
                if (user, password) != ("gw1", "s3cret"):
                    raise Fault("Client.FailedAuthentication", "bad username token")
            parsed = hl7.parse(message.replace("\n", "\r"))
            dec.received.append(str(parsed.segment("MSH")[10]))
            dec.clean.append(check(message) == [] and "\r" in message)
            return str(parsed.create_ack(dec.script.pop(0) if dec.script else "AA"))

    app = Application([DeviceObservationConsumer], tns=PCD_NS, name="DeviceObservationConsumer",
                      in_protocol=Soap12(validator="lxml"), out_protocol=Soap12())
    return WsgiApplication(app)


@contextlib.contextmanager
def dec_server(dec: Dec, ssl_context=None) -> Iterator[str]:
    with wsgi_server(dec_app(dec), ssl_context) as url:
        yield url


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(worker_module, "backoff", lambda attempts, base=1.0, cap=300.0: 0.0)


def test_receiver_wsdl_matches_the_pcd01_wsdl():
    dec = Dec()
    with dec_server(dec) as url:
        wsdl = etree.fromstring(httpx.get(url + "?wsdl").content)
    ns = {"w": "http://schemas.xmlsoap.org/wsdl/", "s12": "http://schemas.xmlsoap.org/wsdl/soap12/",
          "xs": "http://www.w3.org/2001/XMLSchema"}
    assert wsdl.get("targetNamespace") == "urn:ihe:pcd:dec:2010"
    assert wsdl.xpath("//w:portType/w:operation/@name", namespaces=ns) == ["CommunicatePCDData"]
    assert wsdl.xpath("//w:binding/s12:binding/@style", namespaces=ns) == ["document"]
    assert sorted(wsdl.xpath("//xs:element/@name", namespaces=ns)) == ["CommunicatePCDData", "CommunicatePCDDataResponse"]
    assert set(wsdl.xpath("//xs:element/@type", namespaces=ns)) == {"xs:string"}


def test_envelope_shape_keeps_carriage_returns():
    (message,) = render_messages(readings_of_every_type()[:1], GATEWAY)
    body = envelope(message, to="https://ehr.example/pcd01", message_id="urn:uuid:1")
    root = etree.fromstring(body)
    assert root.tag == f"{{{SOAP12}}}Envelope"
    assert root.findtext(f".//{{{WSA}}}Action") == ACTION
    payload = root.find(f"{{{SOAP12}}}Body/{{{PCD_NS}}}CommunicatePCDData")
    assert payload.text == message and b"&#13;" in body


@pytest.mark.peers
async def test_soap_end_to_end_every_reading_type(tmp_path):
    readings = readings_of_every_type()
    dec = Dec()
    with dec_server(dec) as url:
        dest = soap_destination(url=url, gateway=GATEWAY, timeout=5)
        box, _ = await deliver(tmp_path, dest, readings)
        await dest.aclose()
    assert [i.state for i in box.items("soap")] == ["delivered"] * len(readings)
    assert len(dec.received) == len(set(dec.received)) == len(readings) and all(dec.clean)


@pytest.mark.peers
@pytest.mark.parametrize("security", ["saml", "username"])
async def test_soap_over_mutual_tls_with_ws_security(tmp_path, pki, security):  # noqa: F811
    dec = Dec(require=security)
    token = {"saml_assertion": SAML} if security == "saml" else {"username": "gw1", "password": "s3cret"}
    with dec_server(dec, pki.server_context(require_client=True)) as url:
        dest = soap_destination(url=url, gateway=GATEWAY, ca_file=pki.ca, client_cert=pki.client_cert,
                               client_key=pki.client_key, timeout=5, **token)
        box, _ = await deliver(tmp_path, dest, readings_of_every_type()[:2])
        await dest.aclose()
    assert [i.state for i in box.items("soap")] == ["delivered", "delivered"]


async def test_ws_security_refused_is_an_auth_error(tmp_path):
    dec = Dec(require="username")
    with dec_server(dec) as url:
        dest = soap_destination(url=url, gateway=GATEWAY, timeout=5, username="gw1", password="wrong")
        with pytest.raises(AuthError, match="FailedAuthentication"):
            await dest.send(readings_of_every_type()[:1])
        await dest.aclose()
    assert dec.received == []


async def test_soap_ack_codes_and_faults(tmp_path):
    readings = readings_of_every_type()[:3]
    dec = Dec(["AE", "AR"])
    with dec_server(dec) as url:
        dest = soap_destination(url=url, gateway=GATEWAY, timeout=5, ae_retries=2)
        box = Outbox(tmp_path / "o.sqlite")
        box.enqueue("soap", [(r.key, r.to_json()) for r in readings])
        await DeliveryWorker(box, dest).run_once()
        assert [i.state for i in box.items("soap")] == ["queued", "dead", "delivered"]
        await DeliveryWorker(box, dest).run_once()
        await dest.aclose()
    assert [i.state for i in box.items("soap")] == ["delivered", "dead", "delivered"]


async def test_soap_transport_trouble_is_transient(unused_tcp_port):
    dest = soap_destination(url=f"http://127.0.0.1:{unused_tcp_port}/pcd01", gateway=GATEWAY, timeout=2)
    with pytest.raises(TransientDeliveryError):
        await dest.send(readings_of_every_type()[:1])
    await dest.aclose()


@pytest.mark.parametrize("content", [b"", b"<html/>", b"not xml",
                                     b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e 'x'>]><x>&e;</x>",
                                     f"<e:Envelope xmlns:e='{SOAP12}'><e:Body/></e:Envelope>".encode()])
def test_unusable_responses_are_value_errors(content):
    with pytest.raises(ValueError):
        read_response(content)


@pytest.mark.parametrize(("subcode", "outcome"), [("EndpointUnavailable", "Deferred"),
                                                   ("DestinationUnreachable", "ConfigError")])
def test_a_busy_endpoint_is_tried_again_and_a_wrong_address_stops(subcode, outcome):
    """WS-Addressing 1.0 SOAP binding 6.4.1.7: wsa:EndpointUnavailable (Receiver) says the endpoint cannot process
    the message at this time: the message is tried again (Deferred), not the destination stopped as for a wrong
    address (wsa:DestinationUnreachable, 6.4.1.5)."""
    from phg.delivery.outcome import Deferred
    from phg.delivery.soap import SoapBinding
    from phg.errors import ConfigError

    fault = (f"<e:Envelope xmlns:e='{SOAP12}' xmlns:wsa='{WSA}'><e:Body><e:Fault><e:Code><e:Value>e:Receiver</e:Value>"
             f"<e:Subcode><e:Value>wsa:{subcode}</e:Value></e:Subcode></e:Code><e:Reason><e:Text xml:lang='en'>"
             "not now</e:Text></e:Reason></e:Fault></e:Body></e:Envelope>").encode()
    binding = SoapBinding(soap_destination(url="http://127.0.0.1:1/pcd01", gateway=GATEWAY).settings)
    if outcome == "Deferred":
        assert isinstance(binding.read(fault, "http://127.0.0.1:1/pcd01", "MSG1"), Deferred)
    else:
        with pytest.raises(ConfigError, match="WS-Addressing refused"):
            binding.read(fault, "http://127.0.0.1:1/pcd01", "MSG1")
