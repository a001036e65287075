"""Issue #6 end to end against real peers: oidc-provider (registration, client secrets, tokens) and
sekmet-fhir behind the SMART gate, with phg's own config file, outbox, worker and auth.

Two small servers of our own stand in where no standard server exists (stated where used):
- ``TlsFront``: a TLS-terminating front (Python ssl + asyncio) that requires a client certificate
  from the test CA and pipes the bytes to the gate (mutual TLS);
- ``DecryptingReceiver``: a receiver that opens the JWE envelope with the server's private key,
  records the clear Bundle and forwards it to the FHIR server (payload encryption, C3-PRO style).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

import phg.auth.assertion
from phg.auth.envelope import Envelope, open_envelope, seal
from phg.auth.registration import delete_registration
from phg.auth.token import TokenAuth
from phg.cli.auth import register as register_command
from phg.cli.common import Context
from phg.config import DEFAULT_SCOPE, load_config
from phg.daemon import deliver
from phg.delivery.fhir import FhirDestination
from phg.demo.peers import Gate, OAuthServer
from phg.demo.sim import simulated_readings
from phg.doctor import run_checks
from phg.errors import AuthError
from phg.model import Gateway, PatientRef
from phg.outbox import Outbox
from phg.transport import origin

pytestmark = pytest.mark.peers

GATEWAY_ID = "02AB7FFFFE00C1C2"
START = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def patient() -> PatientRef:
    return PatientRef("urn:oid:1.2.3.4.5", f"pt-{uuid.uuid4().hex[:12]}")


def write_config(tmp_path: Path, base: str, **auth: str | list[str]) -> Path:
    """A config file, mode 0600 (phg refuses a group/world-readable one that holds a secret)."""
    lines = [
        "# test gateway",
        "[gateway]", f'system_id = "{GATEWAY_ID}"', "",
        "[fhir]", f'base_url = "{base}"', "",
        "[auth]", "# written by the test; phg register adds its keys below", f'scope = "{DEFAULT_SCOPE}"',
        *(f"{k} = {json.dumps(v)}" for k, v in auth.items()), "",
        "[outbox]", f'path = "{tmp_path / "outbox.sqlite"}"', "",
    ]
    path = tmp_path / "phg.toml"
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


def run_register(path: Path, *args: str) -> str:
    result = CliRunner().invoke(register_command, list(args), obj=Context(path, {}), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def deliver_some(path: Path, count_per_device: int = 1) -> tuple[int, int]:
    config = load_config(path, env={})
    readings = simulated_readings(patient(), START, per_device=count_per_device)
    with Outbox(config.outbox_path) as outbox:
        outbox.enqueue("fhir", [(r.key, r.to_json()) for r in readings])
        summary = asyncio.run(deliver(config, outbox, until_idle=True))
    return summary.delivered, summary.dead


def refused_and_kept(path: Path, match: str) -> str:
    """Delivery stops with an AuthError matching ``match``; every reading stays queued, untried."""
    config = load_config(path, env={})
    with Outbox(config.outbox_path) as outbox:
        readings = simulated_readings(patient(), START)
        outbox.enqueue("fhir", [(r.key, r.to_json()) for r in readings])
        with pytest.raises(AuthError, match=match) as info:
            asyncio.run(deliver(config, outbox, until_idle=True))
        counts = outbox.counts("fhir")
        assert (counts["queued"], counts["inflight"], counts["dead"]) == (len(readings), 0, 0)
        assert all(i.attempts == 0 for i in outbox.items(state="queued"))
    return str(info.value)


# ---------------------------------------------------------------------------------------------- registration


def test_register_then_deliver_with_the_fresh_client(gate: Gate, tmp_path):
    path = write_config(tmp_path, gate.base_url, key_file=str(tmp_path / "gw.pem"))
    output = run_register(path)  # the registration endpoint is discovered through the gate's SMART document
    assert "registered client_id" in output
    stored = load_config(path, env={})
    assert stored.auth.method == "smart-backend" and stored.auth.client_id
    assert stored.auth.registration_client_uri.startswith("http://127.0.0.1")
    text = path.read_text()
    assert "# written by the test; phg register adds its keys below" in text and "# test gateway" in text
    assert os.stat(path).st_mode & 0o777 == 0o600  # it holds the registration access token now
    assert deliver_some(path) == (5, 0)
    # a second register refuses to silently replace the client
    again = CliRunner().invoke(register_command, [], obj=Context(path, {}))
    assert again.exit_code != 0 and "already registered" in str(again.exception)


# The gate's SMART configuration names the token endpoint of the OAuth peer, another origin (port)
# than the FHIR base, as real EHRs often do: a client secret goes there only when the config says so.
TRUSTED = ["127.0.0.1"]


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_secret_basic_and_post(gate: Gate, oauth: OAuthServer, tmp_path, method):
    path = write_config(tmp_path, gate.base_url, trusted_token_hosts=TRUSTED)
    run_register(path, "--method", method, "--endpoint", oauth.registration_endpoint)
    config = load_config(path, env={})
    assert config.auth.method == method.replace("_", "-") and config.auth.client_secret
    assert deliver_some(path) == (5, 0)


def test_a_client_secret_goes_only_where_the_config_says(gate: Gate, oauth: OAuthServer, tmp_path):
    """Issue 10 finding 6: the secret is refused to the discovered token endpoint on another origin,
    with the two fixes named; each fix then delivers."""
    assert origin(httpx.URL(oauth.token_endpoint)) != origin(httpx.URL(gate.base_url))
    client = oauth.register_client(client_secret_basic=True, scope=DEFAULT_SCOPE)
    auth = dict(method="client-secret-basic", client_id=client["client_id"], client_secret=client["client_secret"])
    message = refused_and_kept(write_config(tmp_path, gate.base_url, **auth), "on another origin")
    assert f'[auth] token_url = "{oauth.token_endpoint}"' in message
    assert '[auth] trusted_token_hosts = ["127.0.0.1"]' in message and client["client_secret"] not in message
    for name, fix in (("hosts", {"trusted_token_hosts": TRUSTED}), ("url", {"token_url": oauth.token_endpoint})):
        (tmp_path / name).mkdir()
        assert deliver_some(write_config(tmp_path / name, gate.base_url, **auth, **fix)) == (5, 0)


def test_a_smart_assertion_follows_discovery_to_another_origin(gate: Gate, oauth: OAuthServer, tmp_path):
    """A signed assertion is bound to the discovered endpoint by its aud: no trust setting needed."""
    path = write_config(tmp_path, gate.base_url, key_file=str(tmp_path / "gw.pem"))
    run_register(path, "--endpoint", oauth.registration_endpoint)
    auth = load_config(path, env={}).auth
    assert auth.token_url is None and auth.trusted_token_hosts == ()
    assert deliver_some(path) == (5, 0)


def test_invalid_client_stops_delivery_and_keeps_the_queue(gate: Gate, oauth: OAuthServer, tmp_path):
    client = oauth.register_client(client_secret_basic=True, scope=DEFAULT_SCOPE)
    path = write_config(tmp_path, gate.base_url, method="client-secret-basic", client_id=client["client_id"],
                        client_secret="not-the-secret", token_url=oauth.token_endpoint)
    message = refused_and_kept(path, "invalid_client")
    assert client["client_id"] in message and "not-the-secret" not in message


def test_invalid_scope_stops_delivery_and_keeps_the_queue(gate: Gate, oauth: OAuthServer, tmp_path):
    client = oauth.register_client(client_secret_basic=True, scope="system/Patient.cu")
    path = write_config(tmp_path, gate.base_url, method="client-secret-basic", client_id=client["client_id"],
                        client_secret=client["client_secret"], trusted_token_hosts=TRUSTED)
    message = refused_and_kept(path, "invalid_scope")
    assert "system/Observation.c" in message  # names the scope asked for


def test_revoked_registration_stops_delivery_and_keeps_the_queue(gate: Gate, tmp_path):
    path = write_config(tmp_path, gate.base_url, key_file=str(tmp_path / "gw.pem"))
    run_register(path)
    config = load_config(path, env={})
    assert deliver_some(path) == (5, 0)

    async def revoke() -> None:
        async with httpx.AsyncClient() as client:
            await delete_registration(client, config.auth.registration_client_uri,
                                      config.auth.registration_access_token)

    asyncio.run(revoke())  # the OAuth peer enables RFC 7592 (peers/oauth-server.mjs registrationManagement)
    message = refused_and_kept(path, "invalid_client")
    assert config.auth.client_id in message


@pytest.mark.parametrize("skew", [-4.0, 4.0])
def test_clock_skew_of_a_few_seconds_is_tolerated(gate: Gate, oauth: OAuthServer, tmp_path, monkeypatch, skew):
    path = write_config(tmp_path, gate.base_url, key_file=str(tmp_path / "gw.pem"))
    run_register(path, "--endpoint", oauth.registration_endpoint)
    real = time.time
    monkeypatch.setattr(phg.auth.assertion, "time", SimpleNamespace(time=lambda: real() + skew))
    assert deliver_some(path) == (5, 0)


def test_rotation_while_delivering_no_request_fails(gate: Gate, tmp_path):
    """``phg keys rotate`` runs while the daemon delivers; the inline JWKS is updated at the server
    through RFC 7592, so the new key signs at once (publish delay 0) and nothing fails."""
    path = write_config(tmp_path, gate.base_url, key_file=str(tmp_path / "gw.pem"))
    run_register(path)
    config = load_config(path, env={})
    from phg.auth.keyring import KeyRing
    from phg.auth.smart import PrivateKeyJwt

    ring = KeyRing(config.auth.key_file)
    first = ring.signing_key().kid
    kids: list[str] = []
    sign = PrivateKeyJwt._sign

    def spy(self, url):
        kids.append(self.keys.signing_key().kid)
        return sign(self, url)

    accept = TokenAuth._accept

    def stale(self, url, body, started):  # every request re-authenticates: token requests cross the rotation
        token = accept(self, url, body, started)
        return type(token)(value=token.value, expires_in=token.expires_in, scope=token.scope, refresh_at=0.0)

    async def scenario(outbox: Outbox) -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(deliver(config, outbox, until_idle=False, stop=stop))
        try:
            for n in range(6):
                readings = simulated_readings(patient(), START, per_device=1, seed=n)
                await asyncio.to_thread(outbox.enqueue, "fhir", [(r.key, r.to_json()) for r in readings])
                if n == 2:
                    result = await asyncio.to_thread(
                        CliRunner().invoke, _keys_group(), ["rotate", "--publish-delay", "0", "--grace", "60"],
                        obj=Context(path, {}))
                    assert result.exit_code == 0, result.output
                await asyncio.sleep(0.4)
            deadline = time.monotonic() + 20
            while outbox.counts("fhir")["delivered"] < 30 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await worker

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PrivateKeyJwt, "_sign", spy)
        mp.setattr(TokenAuth, "_accept", stale)
        with Outbox(config.outbox_path) as outbox:
            asyncio.run(scenario(outbox))
            counts = outbox.counts("fhir")
    assert (counts["delivered"], counts["dead"], counts["queued"]) == (30, 0, 0)
    assert all(i.attempts <= 1 for i in Outbox(config.outbox_path).items(limit=100))  # nothing was retried
    assert kids[0] == first and kids[-1] != first


def _keys_group():
    from phg.cli.auth import keys

    return keys


# ---------------------------------------------------------------------------------------------- mutual TLS


class CertAuthority:
    """A test CA, a server certificate for 127.0.0.1 and client certificates (cryptography). The key usage and
    key identifiers are those RFC 5280 4.2.1.1-4.2.1.3 require, which Python 3.13's default TLS context checks
    (ssl.VERIFY_X509_STRICT)."""

    def __init__(self, directory: Path, name: str = "phg test CA") -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                  key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                  decipher_only=False), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = self._write(f"{name.replace(' ', '-')}.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return path

    def issue(self, name: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        if server:
            import ipaddress

            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False).add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        key_file = self._write(f"{name}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_file, key_file


@contextmanager
def threaded_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                    context: ssl.SSLContext | None = None) -> Iterator[int]:
    """An asyncio stream server on 127.0.0.1 running ``handle`` on an event loop of its own in a thread (the
    tests call phg synchronously); its errors are not logged. Yields its port; closed at the end."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict = {}

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        holder["server"] = server
        ready.set()
        async with server:
            try:
                await server.serve_forever()
            except asyncio.CancelledError:
                pass

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    loop.set_exception_handler(lambda loop, context: None)
    thread.start()
    ready.wait(10)
    try:
        yield holder["server"].sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        thread.join(5)


@contextmanager
def tls_front(ca: CertAuthority, upstream_port: int) -> Iterator[int]:
    """A TLS-terminating front (our own; stdlib ssl + asyncio) requiring a client certificate
    issued by ``ca``; it pipes the decrypted bytes to 127.0.0.1:upstream_port. Yields its port."""
    cert, key = ca.issue("server", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.ca_file))
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    with threaded_server(handle, context) as port:  # refused handshakes are the point: not logged
        yield port


def test_mutual_tls_wrong_or_missing_certificate_refused_right_one_delivers(gate: Gate, oauth: OAuthServer, tmp_path):
    ca = CertAuthority(tmp_path)
    other = CertAuthority(tmp_path, "another CA")
    right_cert, right_key = ca.issue("gateway", server=False)
    wrong_cert, wrong_key = other.issue("intruder", server=False)
    client = oauth.register_client(client_secret_basic=True, scope=DEFAULT_SCOPE)
    with tls_front(ca, gate.port) as port:
        base = f"https://127.0.0.1:{port}/fhir"
        auth = dict(method="client-secret-basic", client_id=client["client_id"], client_secret=client["client_secret"],
                    ca_file=str(ca.ca_file), trusted_token_hosts=TRUSTED)

        def doctor(path: Path) -> str:
            lines: list[str] = []
            asyncio.run(run_checks(load_config(path, env={}), lines.append))
            return "\n".join(lines)

        missing = write_config(tmp_path, base, **auth)
        report = doctor(missing)
        assert "FAIL  [tls]" in report and "client_cert" in report and "first failing step: tls" in report
        (tmp_path / "wrong").mkdir()
        wrong = write_config(tmp_path / "wrong", base, **auth, client_cert=str(wrong_cert), client_key=str(wrong_key))
        assert "FAIL  [tls]" in doctor(wrong)
        (tmp_path / "untrusted").mkdir()
        untrusted = write_config(tmp_path / "untrusted", base, **{**auth, "ca_file": str(other.ca_file)},
                                 client_cert=str(right_cert), client_key=str(right_key))
        assert "ca_file" in doctor(untrusted)
        (tmp_path / "right").mkdir()
        right = write_config(tmp_path / "right", base, **auth, client_cert=str(right_cert), client_key=str(right_key))
        report = doctor(right)
        assert "FAIL" not in report, report
        assert deliver_some(right) == (5, 0)


# ---------------------------------------------------------------------------------------------- envelope


@contextmanager
def decrypting_receiver(private_key, upstream: str) -> Iterator[SimpleNamespace]:
    """Our own receiver for encrypted envelopes (no standard server exists): opens each JWE with the
    server's private key, records the clear Bundle and forwards it to the FHIR server ``upstream``."""
    state = SimpleNamespace(received=[], url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
            headers = {k.lower(): v for k, v in headers.items()}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status, answer = 415, b'{"resourceType":"OperationOutcome"}'
            if headers.get("content-type") == "application/jose":
                clear, header = open_envelope(body, private_key)
                state.received.append((clear, header))
                async with httpx.AsyncClient() as client:
                    up = await client.post(upstream, content=clear, headers={"Content-Type": header["cty"],
                                                                             "Accept": "application/fhir+json"})
                status, answer = up.status_code, up.content
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/fhir+json\r\nContent-Length: "
                         f"{len(answer)}\r\nConnection: close\r\n\r\n".encode() + answer)
            await writer.drain()
        finally:
            writer.close()

    with threaded_server(handle) as port:
        state.url = f"http://127.0.0.1:{port}/fhir"
        yield state


def _server_key(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "server-enc.pem"
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_envelope_decrypts_to_exactly_the_clear_bundle(sekmet, tmp_path):
    from joserfc.jwk import RSAKey

    from phg.auth.envelope import envelope_from_file

    private, public = _server_key(tmp_path)
    envelope = envelope_from_file(public)
    readings = simulated_readings(patient(), START)
    destination = FhirDestination(httpx.AsyncClient(), sekmet.base_url, Gateway(system_id=GATEWAY_ID))
    _, clear = destination.render(readings)
    with decrypting_receiver(RSAKey.import_key(private), sekmet.base_url) as receiver:
        body, content_type = seal(clear, envelope)
        assert content_type == "application/jose" and clear not in body
        response = httpx.post(receiver.url, content=body, headers={"Content-Type": content_type}, timeout=30)
        assert response.status_code == 200, response.text
    [(opened, header)] = receiver.received
    assert opened == clear
    assert header == {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": envelope.kid, "cty": "application/fhir+json"}


def test_daemon_sends_envelopes_when_configured(sekmet, tmp_path):
    from joserfc.jwk import RSAKey

    private, public = _server_key(tmp_path)
    with decrypting_receiver(RSAKey.import_key(private), sekmet.base_url) as receiver:
        path = write_config(tmp_path, receiver.url, encrypt_to=str(public))
        assert deliver_some(path) == (5, 0)
    assert receiver.received and all(h["alg"] == "RSA-OAEP-256" for _, h in receiver.received)
    assert isinstance(Envelope, type)


# ---------------------------------------------------------------------------------------------- no secret in logs


def test_no_secret_in_any_log_output(gate: Gate, oauth: OAuthServer, tmp_path, caplog, capsys, monkeypatch):
    """Registration, delivery with client_secret_post and with SMART assertions, doctor, and a refusal,
    all at DEBUG: neither the client secret, the registration access token, a token, an assertion nor
    private key material appears in the log records or on stdout/stderr."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    accept = TokenAuth._accept

    def spy_accept(self, url, body, started):
        token = accept(self, url, body, started)
        seen.append(token.value)
        return token

    monkeypatch.setattr(TokenAuth, "_accept", spy_accept)
    from phg.auth import assertion

    sign = assertion.client_assertion

    def spy_assertion(*args, **kwargs):
        value = sign(*args, **kwargs)
        seen.append(value)
        return value

    monkeypatch.setattr("phg.auth.smart.client_assertion", spy_assertion)

    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    path = write_config(secret_dir, gate.base_url, trusted_token_hosts=TRUSTED)
    output = run_register(path, "--method", "client_secret_post", "--endpoint", oauth.registration_endpoint)
    assert deliver_some(path) == (5, 0)
    lines: list[str] = []
    assert asyncio.run(run_checks(load_config(path, env={}), lines.append)), lines
    smart_dir = tmp_path / "smart"
    smart_dir.mkdir()
    smart = write_config(smart_dir, gate.base_url, key_file=str(smart_dir / "gw.pem"))
    output += run_register(smart)
    assert deliver_some(smart) == (5, 0)
    bad = write_config(tmp_path, gate.base_url, method="client-secret-basic", trusted_token_hosts=TRUSTED,
                       client_id=load_config(path, env={}).auth.client_id, client_secret="wrong-" + uuid.uuid4().hex)
    refused_and_kept(bad, "invalid_client")

    config = load_config(path, env={})
    smart_config = load_config(smart, env={})
    secrets = [config.auth.client_secret, config.auth.registration_access_token,
               smart_config.auth.registration_access_token, load_config(bad, env={}).auth.client_secret, *seen]
    pem = (smart_dir / "gw.pem").read_text()
    secrets += [line for line in pem.splitlines() if line and not line.startswith("-----")]
    from phg.auth.keys import load_key

    secrets.append(load_key(smart_dir / "gw.pem")._key.as_dict(private=True)["d"])
    assert len(seen) >= 4 and all(len(s) >= 16 for s in secrets)
    captured = capsys.readouterr()
    logged = caplog.text + output + "\n".join(lines) + captured.out + captured.err
    assert len(caplog.records) > 10
    leaked = [s[:8] + "..." for s in secrets if s in logged]
    assert leaked == []
