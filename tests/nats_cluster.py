"""A three-node NATS JetStream cluster on loopback, started by the tests (issue 15: hub mode).

`nats_cluster` (pytest fixture, module scope): three `nats-server` processes, each with JetStream, its
own store directory under the test's temp dir and free 127.0.0.1 client, cluster (route) and monitoring
ports, routed to each other; the fixture returns once JetStream has elected a meta leader. Never the
system server on 4222: every port is a free one. Helpers: `kill(i)` (SIGKILL), `stop(i)` (SIGTERM),
`start(i)` (the same ports and store: a restarted node), `stream_leader(stream)` (the index of the node
leading a stream, from the monitoring endpoint /jsz), `wait_ready()`. Authentication (single server tests):
user/password, mutual TLS, an nkey (`nkey_pair()`), or JWTs (`Operator`: operator mode and .creds files,
built here with nkeys since `nsc` is not installed).

Use it in a test module with `from nats_cluster import nats_cluster  # noqa: F401` (a fixture), or start a
`NatsCluster(workdir)` yourself. Skipped when nats-server is missing, unless PHG_REQUIRE_NATS=1 (CI, which
installs it with `make nats`): then the test fails. Debian's nats-server is 2.9.10 (see issue 15 for what
that version does wrong; phg.outbox.jetstream copes with it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

NATS_SERVER = shutil.which("nats-server") or next(
    (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).is_file()), None)
CLUSTER_NAME = "phgtest"
READY_TIMEOUT = 30.0  # seconds for three nodes to elect a JetStream meta leader


def require_nats_server() -> str:
    """The nats-server binary; skip the test without one, or fail under PHG_REQUIRE_NATS=1."""
    if NATS_SERVER is None:
        if os.environ.get("PHG_REQUIRE_NATS") == "1":
            pytest.fail("PHG_REQUIRE_NATS=1 but nats-server is missing (make nats)")
        pytest.skip("nats-server is not installed (make nats)")
    return NATS_SERVER


def nkey_pair(role: str = "user") -> tuple[str, str, Any]:
    """A fresh nkey pair: (seed, public key, nkeys.KeyPair) for role user/account/operator, as `nk -gen`
    writes them (nkeys.encode_seed: "S" + role letter, base32 of the ed25519 seed and its CRC-16)."""
    import nkeys

    prefix = {"user": nkeys.PREFIX_BYTE_USER, "account": nkeys.PREFIX_BYTE_ACCOUNT,
              "operator": nkeys.PREFIX_BYTE_OPERATOR}[role]
    seed = nkeys.encode_seed(os.urandom(32), prefix).decode("ascii")
    pair = nkeys.from_seed(bytearray(seed.encode("ascii")))
    return seed, pair.public_key.decode("ascii"), pair


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt(claims: dict[str, Any], issuer: Any) -> str:
    """A NATS JWT (nats-io/jwt v2, what `nsc` writes): header {"typ": "JWT", "alg": "ed25519-nkey"}, the
    claims with iat, iss (the issuer's public nkey) and jti (base32 SHA-512/256 of the claims), signed by the
    issuer's nkey over "header.claims", each part base64url without padding (RFC 7519)."""
    body = dict(claims, iat=int(time.time()), iss=issuer.public_key.decode("ascii"), jti="")
    body["jti"] = base64.b32encode(hashlib.new("sha512_256", json.dumps(body).encode()).digest()).decode().rstrip("=")
    signed = _b64url(b'{"typ":"JWT","alg":"ed25519-nkey"}') + "." + _b64url(json.dumps(body).encode())
    return signed + "." + _b64url(issuer.sign(signed.encode("ascii")))


class Operator:
    """Decentralized JWT authentication without `nsc`: an operator, its system account and one account
    with JetStream (no limits), for a server in operator mode with the in-memory account resolver
    (`operator`, `system_account`, `resolver: MEMORY`, `resolver_preload`: the server config reference).
    `creds(path, name)` writes a user's .creds file, mode 0600."""

    def __init__(self, workdir: Path):
        _, _, self._operator = nkey_pair("operator")
        _, self.account, self._account = nkey_pair("account")
        _, self.system, _ = nkey_pair("account")
        self.jwt_file = workdir / "operator.jwt"
        workdir.mkdir(parents=True, exist_ok=True)
        self.jwt_file.write_text(_jwt({"sub": self._operator.public_key.decode(), "name": "phgtest",
                                       "nats": {"type": "operator", "version": 2}}, self._operator))
        unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
                     "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
        self._accounts = {
            self.account: _jwt({"sub": self.account, "name": "PHG", "nats": {"limits": unlimited, "type": "account",
                                                                             "version": 2}}, self._operator),
            self.system: _jwt({"sub": self.system, "name": "SYS", "nats": {"type": "account", "version": 2}},
                              self._operator)}

    def server_config(self) -> str:
        preload = ", ".join(f'{key}: "{jwt}"' for key, jwt in self._accounts.items())
        return (f'operator: "{self.jwt_file}"\nsystem_account: {self.system}\nresolver: MEMORY\n'
                f'resolver_preload: {{ {preload} }}\n')

    def creds(self, path: Path, name: str = "phg") -> str:
        """Write a user of the account to `path` as nats-io/jwt's FormatUserConfig does; its public key."""
        seed, public, _ = nkey_pair("user")
        user = _jwt({"sub": public, "name": name, "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                                                          "type": "user", "version": 2}}, self._account)
        path.write_text(f"-----BEGIN NATS USER JWT-----\n{user}\n------END NATS USER JWT------\n\n"
                        "************************* IMPORTANT *************************\n"
                        "NKEY Seed printed below can be used to sign and prove identity.\n"
                        "NKEYs are sensitive and should be treated as secrets.\n\n"
                        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n"
                        "*************************************************************\n")
        os.chmod(path, 0o600)
        return public


def _reserved_ports(n: int) -> list[socket.socket]:
    """n sockets bound to distinct free ports on 127.0.0.1, not listening (a client is refused there as by a
    server that is down). Kept bound until the servers start: no other process (another xdist worker's
    peers) is given those ports meanwhile, however long a test waits before starting its cluster."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(socket.socket())
            socks[-1].bind(("127.0.0.1", 0))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    http_port: int
    store: Path
    config: Path
    log: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def jsz(self, query: str = "") -> dict:
        """The node's /jsz monitoring document (JetStream state), e.g. query "streams=true"."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/jsz?{query}", timeout=2) as answer:
            return json.load(answer)


class NatsCluster:
    """Three routed nats-server processes with JetStream (module docstring)."""

    def __init__(self, workdir: Path, size: int = 3, user: str | None = None, password: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None, nkey: str | None = None,
                 operator: Operator | None = None):
        """`size` nodes (1: a single server, no cluster); `user` and `password`: clients must give them;
        `tls` (certificate, key, CA): clients must speak TLS and show a certificate the CA signed; `nkey`
        (a user's public key, "U..."): clients must sign the server's nonce with its seed; `operator`:
        JWT authentication (users with an Operator's .creds files)."""
        self.binary = require_nats_server()
        self._reserved = _reserved_ports(3 * size)
        ports = [sock.getsockname()[1] for sock in self._reserved]
        self.nodes: list[NatsNode] = []
        for i in range(size):
            base = workdir / f"n{i}"
            (base / "store").mkdir(parents=True, exist_ok=True)
            self.nodes.append(NatsNode(f"n{i}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], base / "store",
                                       base / "nats.conf", base / "nats.log"))
        for node in self.nodes:
            routes = ", ".join(f'"nats-route://127.0.0.1:{other.cluster_port}"'
                               for other in self.nodes if other is not node)
            cluster = (f'cluster {{ name: "{CLUSTER_NAME}", listen: "127.0.0.1:{node.cluster_port}", '
                       f'routes: [{routes}] }}\n') if size > 1 else ""
            auth = f'authorization {{ user: "{user}", password: "{password}" }}\n' if user is not None else ""
            if nkey is not None:
                auth += f'authorization {{ users = [ {{ nkey: "{nkey}" }} ] }}\n'
            if operator is not None:
                auth += operator.server_config()
            if tls is not None:
                auth += (f'tls {{ cert_file: "{tls[0]}", key_file: "{tls[1]}", ca_file: "{tls[2]}", verify: true, '
                         'timeout: 5 }\n')
            node.config.write_text(
                f'server_name: "{node.name}"\n'
                f'listen: "127.0.0.1:{node.port}"\n'
                f'http: "127.0.0.1:{node.http_port}"\n'
                f'jetstream {{ store_dir: "{node.store}", max_memory_store: 64MB, max_file_store: 2GB }}\n'
                + cluster + auth, encoding="utf-8")

    @property
    def urls(self) -> list[str]:
        """The client URLs of every node (running or not): what phg's [queue] servers lists."""
        return [node.url for node in self.nodes]

    @property
    def tls_urls(self) -> list[str]:
        return [node.url.replace("nats://", "tls://") for node in self.nodes]

    def start(self, i: int | None = None) -> None:
        """Start node i (all nodes when None) with its own ports and store: a restart keeps its data."""
        while self._reserved:  # the ports are the servers' from now on
            self._reserved.pop().close()
        for node in self.nodes if i is None else [self.nodes[i]]:
            if node.running:
                continue
            with node.log.open("ab") as log:
                node.process = subprocess.Popen([self.binary, "-c", str(node.config)], stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self, i: int) -> None:
        """SIGKILL node i (a crash) and reap it."""
        self._signal(i, signal.SIGKILL)

    def stop(self, i: int) -> None:
        """SIGTERM node i (a clean shutdown) and reap it."""
        self._signal(i, signal.SIGTERM)

    def _signal(self, i: int, sig: int) -> None:
        node = self.nodes[i]
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            node.process.send_signal(sig)
        try:
            node.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(timeout=10)
        node.process = None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running node answers and sees the same JetStream meta leader, a running node."""
        deadline = time.monotonic() + timeout
        running = {node.name for node in self.nodes if node.running}
        last = "no answer"
        while time.monotonic() < deadline:
            for node in self.nodes:  # before its monitoring port is asked: another process may answer there
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited ({node.process.returncode}): "
                                       f"{node.log.read_text(errors='replace')[-2000:]}")
            try:
                leaders = {node.jsz().get("meta_cluster", {}).get("leader") for node in self.nodes if node.running}
            except OSError as exc:
                last = str(exc)
            else:
                if len(leaders) == 1 and (leaders <= running or len(self.nodes) == 1):  # one server: no meta group
                    return
                last = f"meta leaders seen: {leaders}"
            time.sleep(0.2)
        raise TimeoutError(f"the NATS cluster has no JetStream meta leader after {timeout:g} s ({last})")

    def stream_leader(self, stream: str, account: str = "$G", timeout: float = 15.0) -> int:
        """The index of the node leading `stream` (waits, bounded, while none is elected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.running:
                    continue
                with contextlib.suppress(OSError):
                    for acc in node.jsz(f"accounts=true&streams=true&acc={account}").get("account_details", []):
                        for detail in acc.get("stream_detail", []):
                            if detail.get("name") == stream:
                                leader = (detail.get("cluster") or {}).get("leader")
                                names = [n.name for n in self.nodes]
                                if leader in names and self.nodes[names.index(leader)].running:
                                    return names.index(leader)
            time.sleep(0.2)
        raise TimeoutError(f"stream {stream} has no leader after {timeout:g} s")

    def close(self) -> None:
        while self._reserved:  # never started
            self._reserved.pop().close()
        for i in range(len(self.nodes)):
            self.stop(i)

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A running three-node JetStream cluster for the module; a test that kills a node restarts it (and
    calls wait_ready) before it ends. Tests share it: give each its own stream prefix."""
    with NatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster
