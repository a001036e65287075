"""PCD-01 over MLLP end to end against real third-party receivers, through the outbox and the worker:
python-hl7's asyncio server (plain and TLS, mutual TLS), hl7apy's validating MLLPServer (strict v2.6,
closes after each message) and @medplum/hl7 on Node. Every reading gets AA, is marked delivered, and
reaches the receiver exactly once.

Also home of the helpers other HL7 test modules import: `make_pki` (a test CA, a 127.0.0.1 server
certificate and a client certificate), `python_hl7_server`, `readings_of_every_type`, `deliver`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import socketserver
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import hl7
import hl7.mllp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hl7_destinations import mllp_destination
from phg.delivery.worker import DeliveryWorker, Summary
from phg.demo.peers import Hl7Receiver
from phg.errors import TransientDeliveryError
from phg.hl7v2.checker import check
from phg.model import Gateway, Reading, parse_reading
from phg.outbox import Outbox

GATEWAY = Gateway(system_id="ECDE3D4E58532D31", serial="0001", firmware="1.2.3")
PATIENT = {"system": "urn:oid:2.999.1.2.3.4.5.6.7.8.10", "value": "sisansarahId"}
T = "2026-11-28T09:00:00+01:00"


def readings_of_every_type() -> list[Reading]:
    """One reading per device type the FHIR mapping supports (same documents as test_fhir_mapping)."""
    docs = [
        {"device": {"system_id": "00601900010E9234", "specializations": [{"code": 528401}]}, "patient": PATIENT,
         "metrics": [{"type": "glucose", "value": "5.20", "unit": "mmol/L", "time": T},
                     {"type": "glucose_plasma", "value": "99", "unit": "mg/dL", "time": "2026-11-28T10:00:00+01:00"}]},
        {"device": {"bt_address": "B0:49:5F:00:10:71", "manufacturer": "A&D", "model": "UA-651BLE"}, "patient": PATIENT,
         "metrics": [{"type": "blood_pressure", "unit": "mm[Hg]", "time": T,
                      "components": [{"type": "systolic", "value": 116}, {"type": "diastolic", "value": 71},
                                     {"type": "mean_arterial_pressure", "value": 86}]},
                     {"type": "pulse_rate", "value": 62, "time": T}]},
        {"device": {"system_id": "0011223344556677", "specializations": [{"code": 528399, "version": 2}]},
         "patient": PATIENT,
         "metrics": [{"type": "body_weight", "value": "72.40", "unit": "kg", "time": T},
                     {"type": "body_height", "value": "181.0", "unit": "cm", "time": T},
                     {"type": "bmi", "value": "22.1", "time": T}]},
        {"device": {"system_id": "8899AABBCCDDEEFF"}, "patient": PATIENT,
         "metrics": [{"type": "body_temperature", "value": "36.50", "unit": "Cel", "time": "2026-11-28T09:00:00.25+01:00"}]},
        {"device": {"system_id": "74E8FFFEFF051C00", "specializations": [{"code": 528388, "version": 1}]},
         "patient": {"system": "http://hospital.example/mrn", "value": "A|B^C&D"},
         "metrics": [{"type": "spo2", "value": 98, "time": "2026-11-28T09:00:00.936-04:00"},
                     {"type": "pulse_rate_oximeter", "value": 47, "time": "2026-11-28T09:00:00.936-04:00"}]},
        {"device": {"bt_address": "11:22:33:44:55:66"}, "patient": PATIENT,
         "metrics": [{"type": "heart_rate", "value": 64, "time": "2026-11-28T08:00:00Z", "status": ["invalid"]},
                     {"type": "body_temperature", "value": "98.6", "unit": "[degF]", "time": T,
                      "status": ["validated-data"]}]},
    ]
    return [parse_reading(json.loads(json.dumps(d), parse_float=Decimal)) for d in docs]


# ---------------------------------------------------------------------------------------------- PKI


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, require_client: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_pki(directory: Path) -> Pki:
    """A throw-away CA with a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phg test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(name: str, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    files = {}
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, server in (("server", True), ("client", False)):
        cert, key = leaf(f"phg test {role}", server)
        (directory / f"{role}.pem").write_bytes(cert)
        key_path = directory / f"{role}.key"
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        files[role] = (directory / f"{role}.pem", key_path)
    return Pki(directory / "ca.pem", *files["server"], *files["client"])


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ---------------------------------------------------------------------------------------------- receivers


@dataclass
class Receiver:
    port: int
    received: list[str]  # MSH-10 of every message received, in order


@contextlib.asynccontextmanager
async def python_hl7_server(ssl_context: ssl.SSLContext | None = None, ack_code: str = "AA") -> AsyncIterator[Receiver]:
    """python-hl7's asyncio MLLP server (hl7.mllp.start_hl7_server), answering create_ack(ack_code)
    and keeping each connection open for further messages."""
    receiver = Receiver(0, [])

    async def handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while True:
                message = await reader.readmessage()
                receiver.received.append(str(message.segment("MSH")[10]))
                writer.writemessage(message.create_ack(ack_code))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, hl7.mllp.InvalidBlockError):
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(handle, "127.0.0.1", 0, ssl=ssl_context, encoding="utf-8")
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


@contextlib.contextmanager
def hl7apy_server() -> Iterator[Receiver]:
    """hl7apy's MLLPServer with a handler that parses with VALIDATION_LEVEL.STRICT and validates
    (v2.6): AA when valid, AE with an ERR segment otherwise. It closes the connection after each message."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message
    from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPServer
    from hl7apy.parser import parse_message

    receiver = Receiver(0, [])

    def ack(code: str, control: str, text: str = "") -> str:
        reply = Message("ACK", version="2.6", validation_level=VALIDATION_LEVEL.TOLERANT)
        reply.msh.msh_3 = "hl7apy"
        reply.msh.msh_9 = "ACK^R01^ACK"
        reply.msh.msh_10 = "A" + control[:19]
        reply.msa.msa_1 = code
        reply.msa.msa_2 = control
        if text:
            reply.add_segment("ERR")
            reply.err.err_3 = "207^Application internal error^HL70357"
            reply.err.err_4 = "E"
            reply.err.err_8 = text.replace("|", " ").replace("^", " ").replace("&", " ").replace("~", " ")[:200]
        return "\x0b" + reply.to_er7() + "\r\x1c\r"

    class Oru(AbstractHandler):
        def reply(self) -> str:
            control = self.incoming_message.split("\r")[0].split("|")[9]
            receiver.received.append(control)
            try:
                parse_message(self.incoming_message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
            except Exception as exc:
                return ack("AE", control, f"{exc.__class__.__name__}: {exc}")
            return ack("AA", control)

    class Error(AbstractErrorHandler):
        def reply(self) -> str:
            control = self.incoming_message.split("\r")[0].split("|")[9] if "|" in self.incoming_message else ""
            return ack("AR", control, str(self.exc))

    server = MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (Oru,), "ERR": (Error,)}, timeout=5)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


socketserver.ThreadingTCPServer.daemon_threads = True


# ---------------------------------------------------------------------------------------------- flow


async def deliver(tmp_path: Path, destination, readings: list[Reading], *, runs: int = 1,
                  batch_size: int = 50) -> tuple[Outbox, Summary]:
    """Queue the readings for the destination and run the worker until idle (`runs` times)."""
    box = Outbox(tmp_path / f"outbox-{destination.name}.sqlite")
    box.enqueue(destination.name, [(r.key, r.to_json()) for r in readings])
    worker = DeliveryWorker(box, destination, batch_size=batch_size)
    summary = Summary()
    for _ in range(runs):
        summary = await worker.run(until_idle=True)
    return box, summary


def assert_all_delivered_once(box: Outbox, destination_name: str, readings: list[Reading], received: list[str]) -> None:
    items = box.items(destination_name, limit=1000)
    assert {i.state for i in items} == {"delivered"}, [(i.state, i.last_error) for i in items]
    assert len(items) == len(readings)
    assert len(received) == len(readings) == len(set(received))
    assert all(i.result and i.result.startswith("AA ") for i in items)
    assert sorted(i.result.split()[1] for i in items) == sorted(received)


@pytest.mark.peers
async def test_python_hl7_server_keeps_connection(tmp_path):
    readings = readings_of_every_type()
    async with python_hl7_server() as receiver:
        dest = mllp_destination(host="127.0.0.1", port=receiver.port, gateway=GATEWAY, ack_timeout=5)
        box, summary = await deliver(tmp_path, dest, readings)
        await dest.aclose()
    assert summary.delivered == len(readings)
    assert_all_delivered_once(box, "mllp", readings, receiver.received)
    assert dest.exchange.connections == 1


@pytest.mark.peers
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_python_hl7_server_over_tls(tmp_path, pki, mutual):
    readings = readings_of_every_type()
    async with python_hl7_server(pki.server_context(require_client=mutual)) as receiver:
        client = {"client_cert": pki.client_cert, "client_key": pki.client_key} if mutual else {}
        dest = mllp_destination(host="127.0.0.1", port=receiver.port, gateway=GATEWAY, tls=True, ca_file=pki.ca,
                               ack_timeout=5, **client)
        box, summary = await deliver(tmp_path, dest, readings)
        await dest.aclose()
    assert_all_delivered_once(box, "mllp", readings, receiver.received)


@pytest.mark.peers
async def test_tls_refuses_an_unknown_server_certificate(tmp_path, pki):
    """Verification is on: a server whose CA is not trusted is not delivered to (and nothing is sent)."""
    other = make_pki(tmp_path / "other")
    async with python_hl7_server(other.server_context()) as receiver:
        dest = mllp_destination(host="127.0.0.1", port=receiver.port, gateway=GATEWAY, tls=True, ca_file=pki.ca,
                               connect_timeout=3, ack_timeout=3)
        box, summary = await deliver(tmp_path, dest, readings_of_every_type()[:1])
        with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED") as info:
            await dest.send(readings_of_every_type()[:1])
        await dest.aclose()
    assert receiver.received == [] and summary.delivered == summary.dead == 0
    assert info.value.reached is False  # no connection was made: the batch waits whole (the worker's circuit)
    (item,) = box.items("mllp")
    assert item.state in ("queued", "inflight")


@pytest.mark.peers
async def test_hl7apy_validating_server_closes_after_each_ack(tmp_path):
    readings = readings_of_every_type()
    with hl7apy_server() as receiver:
        dest = mllp_destination(host="127.0.0.1", port=receiver.port, gateway=GATEWAY, ack_timeout=5)
        box, summary = await deliver(tmp_path, dest, readings)
        await dest.aclose()
    assert_all_delivered_once(box, "mllp", readings, receiver.received)
    assert dest.exchange.connections == len(readings)  # one connection per message: the server closes each


@pytest.mark.peers
async def test_medplum_hl7_receiver(tmp_path):
    readings = readings_of_every_type()
    with Hl7Receiver(workdir=tmp_path / "medplum-hl7") as receiver:
        dest = mllp_destination(host="127.0.0.1", port=receiver.port, gateway=GATEWAY, ack_timeout=5)
        box, summary = await deliver(tmp_path, dest, readings)
        await dest.aclose()
        received = receiver.received()
    assert_all_delivered_once(box, "mllp", readings, received)
    assert dest.exchange.connections == 1


def test_every_reading_type_renders_clean():
    """The readings used above are the issue's reading types, and they are clean PCD-01."""
    from phg.hl7v2 import render_messages

    for message in render_messages(readings_of_every_type(), GATEWAY):
        assert check(message) == []
