"""Launch the real third-party peers phg's demo and integration tests run against.

- :class:`SekmetServer`: sekmet-fhir (Python, FastAPI + SQLite), a FHIR R4 server with real transactions.
- :class:`MedplumServer`: Medplum's in-memory FHIR router behind a small Node wrapper (peers/medplum-fhir.mjs).
- :class:`OAuthServer`: panva's oidc-provider set up for SMART Backend Services (peers/oauth-server.mjs).
- :class:`Gate`: the SMART gate (peers/gate.mjs) in front of a FHIR server: discovery document, bearer
  token check by introspection, scope check, forwarding.
- :func:`smart_stack`: FHIR server + OAuth server + gate, the shape of a real EHR endpoint.

Every peer is a subprocess bound to 127.0.0.1 on a free port, waited for (bounded), and stopped
(terminate, then kill) when its context exits. Output goes to a log file whose tail is part of the
error when a peer fails to start. The Node peers' scripts ship with the package; :func:`install_node_peers`
runs ``npm ci`` for them (in a checkout, ``make setup`` does).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import platformdirs

__all__ = [
    "DEFAULT_SCOPES",
    "Gate",
    "MedplumServer",
    "OAuthClient",
    "OAuthServer",
    "PeerError",
    "SekmetServer",
    "SmartStack",
    "install_node_peers",
    "peers_dir",
    "smart_stack",
]

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

# Scopes the OAuth server knows (it silently drops unknown scopes from a token request).
# The SMART v1 and v2 system scopes phg uses, and the broad ones.
DEFAULT_SCOPES: tuple[str, ...] = tuple(
    f"system/{t}.{p}"
    for t in ("Patient", "Device", "Observation", "DeviceMetric", "Bundle", "Provenance", "*")
    for p in ("read", "write", "*", "c", "cu", "cru", "cruds", "rs", "r", "s", "u", "d", "cud")
)


class PeerError(RuntimeError):
    """A peer could not be set up, started or reached."""


# ---------------------------------------------------------------------------------------------- helpers


SHIPPED = Path(__file__).parent / "node"
"""The Node peers' scripts with their package.json and package-lock.json, shipped as package data. In a
checkout this is a link to <repo>/peers, where ``make setup`` runs ``npm ci``."""
NODE_MISSING = "Node.js 20+ with npm is not on PATH (it runs the OAuth server, the SMART gate and Medplum): see https://nodejs.org"


def peers_dir() -> Path:
    """Where the Node peers run: $PHG_PEERS_DIR; else the shipped scripts when their npm packages sit
    next to them (a checkout after ``make setup``); else a copy in the user cache directory, made by
    :func:`install_node_peers`."""
    env = os.environ.get("PHG_PEERS_DIR")
    if env:
        return Path(env)
    if (SHIPPED / "node_modules").is_dir():
        return SHIPPED
    digest = hashlib.sha256()
    for path in _shipped_files():  # other peers (a new phg) get a fresh copy
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return platformdirs.user_cache_path("phg") / f"peers-{digest.hexdigest()[:16]}"


def _shipped_files() -> list[Path]:
    return sorted(p for p in SHIPPED.iterdir() if p.suffix == ".mjs" or p.name in ("package.json", "package-lock.json"))


def node_peers_installed() -> bool:
    return (peers_dir() / "node_modules").is_dir()


def install_node_peers() -> Path:
    """Make the Node peers runnable and return their directory: unless :func:`peers_dir` already holds
    them with their npm packages, copy the shipped files into the cache directory and ``npm ci`` there
    (the exact versions of package-lock.json). The copy is renamed into place only once complete.
    Raises :class:`PeerError` (one line) without Node.js or npm, or when npm fails."""
    directory = peers_dir()
    if os.environ.get("PHG_PEERS_DIR") or (directory / "node_modules").is_dir():
        return directory
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise PeerError(NODE_MISSING)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peers-", dir=directory.parent, ignore_cleanup_errors=True) as tmp:
        for path in _shipped_files():
            shutil.copyfile(path, Path(tmp) / path.name)
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=tmp,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise PeerError(f"npm ci for the Node peers failed (exit {done.returncode}): {last}")
        try:
            Path(tmp).rename(directory)
        except OSError:
            if not (directory / "node_modules").is_dir():  # else another process finished first: use its copy
                raise
    return directory


def _node_peer(script: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise PeerError(NODE_MISSING)
    directory = install_node_peers()
    path = directory / script
    if not path.is_file():
        raise PeerError(f"{path} not found (PHG_PEERS_DIR names a directory without phg's Node peers)")
    if not (directory / "node_modules").is_dir():
        raise PeerError(
            f"{directory}/node_modules is missing: install the Node peers first "
            f"(`make setup`, or `npm ci --prefix {directory}`)"
        )
    return [node, str(path)]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for peers that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


_RUNNING: weakref.WeakSet[_Peer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # last resort when a caller forgot to stop a peer
    for peer in list(_RUNNING):
        peer.stop()


class _Peer:
    """A subprocess with a log file, a bounded start-up wait and a clean stop."""

    name = "peer"

    def __init__(self, workdir: Path | str | None = None, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log_file: Any = None

    # subclasses: build the command, then say when the peer is ready (return True) ------------------
    def _command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files in self.workdir before the process starts."""

    # ----------------------------------------------------------------------------------------------
    def start(self) -> _Peer:
        """Start the process and wait until the peer answers (bounded by ``startup_timeout``)."""
        self.spawn()
        self.wait_ready()
        return self

    def spawn(self) -> None:
        """Start the process without waiting; call :meth:`wait_ready` next."""
        if self.process is not None:
            raise PeerError(f"{self.name} already started")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"phg-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        cmd, extra_env = self._command()
        self.log_path = self.workdir / f"{self.name}.log"
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **extra_env}
        try:
            self.process = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
        except OSError as e:
            self._log_file.close()
            self._log_file = None
            raise PeerError(f"cannot start {self.name} ({cmd[0]}): {e}") from e
        _RUNNING.add(self)

    def wait_ready(self) -> None:
        """Wait until the peer answers; on failure stop it and raise :class:`PeerError` with its log tail."""
        try:
            self._wait_ready()
        except BaseException:
            self.stop(keep_workdir=True)  # the error names the log file: keep it
            self._own_workdir = False  # ... also through later stop() calls
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None and self.log_path is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise PeerError(
                    f"{self.name} exited with code {code} during start-up; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                if self._ready():
                    return
            except (httpx.HTTPError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise PeerError(
                    f"{self.name} not ready after {self.startup_timeout:.0f} s; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, *, keep_workdir: bool = False) -> None:
        """Terminate (then kill after a timeout) the process; idempotent.

        A temporary work directory made by :meth:`start` is removed unless ``keep_workdir`` or
        $PHG_KEEP_PEER_LOGS is set."""
        _RUNNING.discard(self)
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if keep_workdir or os.environ.get("PHG_KEEP_PEER_LOGS"):
            return
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines) if self.log_path else ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _NodePeer(_Peer):
    script = ""

    def _ready_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / f"{self.name}.ready.json"

    def _prepare(self) -> None:
        self._ready_file().unlink(missing_ok=True)
        self.ready_info: dict[str, Any] = {}

    def _node_command(self, *args: str) -> list[str]:
        return [*_node_peer(self.script), "--ready-file", str(self._ready_file()), *args]

    def _ready(self) -> bool:
        path = self._ready_file()
        if not path.exists():
            return False
        self.ready_info = json.loads(path.read_text())
        return True

    @property
    def port(self) -> int:
        return int(self.ready_info["port"])


# ---------------------------------------------------------------------------------------------- FHIR servers


class SekmetServer(_Peer):
    """sekmet-fhir 0.1.1 (``sekmet serve``) with a fresh SQLite database, simulator off.

    ``base_url`` is ``http://127.0.0.1:PORT/fhir``.
    """

    name = "sekmet"

    def __init__(self, workdir: Path | str | None = None, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        super().__init__(workdir, startup_timeout)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/fhir"

    @staticmethod
    def executable() -> str:
        exe = Path(sys.executable).parent / "sekmet"
        if exe.exists():
            return str(exe)
        found = shutil.which("sekmet")
        if found is None:
            raise PeerError("the `sekmet` command (sekmet-fhir) is missing: pip install 'phg[demo]'")
        return found

    def _prepare(self) -> None:
        assert self.workdir is not None
        self.port = free_port()
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        db = data / f"sekmet-{self.port}.db"
        db.unlink(missing_ok=True)
        self._db = db
        settings = {
            "base_url": self.base_url,
            "host": HOST,
            "port": self.port,
            "data_dir": str(data),
            "simulator": {"enabled": False},
            "log_inbound": False,
            "own_private_key_path": str(self.workdir / "keys" / "sekmet_private.pem"),
        }
        # JSON is YAML: no YAML writer needed.
        (self.workdir / "settings.yaml").write_text(json.dumps(settings, indent=2))

    def _command(self) -> tuple[list[str], dict[str, str]]:
        assert self.workdir is not None
        env = {"SEKMET_DB": str(self._db)}
        for var in ("SEKMET_CONFIG", "SEKMET_BASE_URL", "SEKMET_PUBLIC_URL", "SEKMET_PORT"):
            env[var] = ""  # an inherited override would break the settings written above
        env["SEKMET_CONFIG"] = str(self.workdir / "settings.yaml")
        return [self.executable(), "serve", "-c", str(self.workdir / "settings.yaml")], env

    def _ready(self) -> bool:
        return httpx.get(f"{self.base_url}/metadata", timeout=2).status_code == 200

    def wait_ready(self) -> None:
        # The port is picked before the server binds it: start again if another process took it meanwhile.
        for attempt in range(3):
            try:
                super().wait_ready()
                return
            except PeerError as e:
                if attempt == 2 or "address already in use" not in str(e).lower():
                    raise
            self.spawn()


class MedplumServer(_NodePeer):
    """Medplum's in-memory FHIR router (@medplum/fhir-router 4.5.2) behind peers/medplum-fhir.mjs.

    ``base_url`` is ``http://127.0.0.1:PORT/fhir``. No /metadata, no validation, no rollback.
    """

    name = "medplum"
    script = "medplum-fhir.mjs"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/fhir"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        return self._node_command("--port", "0"), {}


# ---------------------------------------------------------------------------------------------- OAuth server


@dataclass
class OAuthClient:
    """A client known to the OAuth server from its start (client_credentials only).

    Give ``jwks`` (public keys) for private_key_jwt, or ``client_secret`` for client_secret_basic.
    ``scope``, when set, limits the scopes the client may get (space-separated).
    """

    client_id: str
    jwks: Mapping[str, Any] | None = None
    client_secret: str | None = None
    scope: str | None = None
    token_endpoint_auth_method: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        if (self.jwks is None) == (self.client_secret is None):
            raise ValueError(f"client {self.client_id}: give exactly one of jwks or client_secret")
        md: dict[str, Any] = {
            "client_id": self.client_id,
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
        }
        if self.jwks is not None:
            md["token_endpoint_auth_method"] = self.token_endpoint_auth_method or "private_key_jwt"
            md["jwks"] = dict(self.jwks)
        else:
            md["token_endpoint_auth_method"] = self.token_endpoint_auth_method or "client_secret_basic"
            md["client_secret"] = self.client_secret
        if self.scope:
            md["scope"] = self.scope
        md.update(self.extra)
        return md


class OAuthServer(_NodePeer):
    """panva's oidc-provider 9.x for SMART Backend Services (peers/oauth-server.mjs).

    ``base_url``/``issuer`` is ``http://127.0.0.1:PORT``; the endpoints are read from its discovery
    document once started. ``ttl`` is the access-token lifetime in seconds. A client for the gate's
    introspection calls (``gate_client_id``/``gate_client_secret``) is always configured.
    """

    name = "oauth"
    script = "oauth-server.mjs"

    def __init__(
        self,
        clients: Iterable[OAuthClient | Mapping[str, Any]] = (),
        *,
        ttl: int = 300,
        scopes: Iterable[str] | None = None,
        workdir: Path | str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        super().__init__(workdir, startup_timeout)
        self.clients = [c.metadata() if isinstance(c, OAuthClient) else dict(c) for c in clients]
        self.ttl = int(ttl)
        self.scopes = tuple(scopes) if scopes is not None else DEFAULT_SCOPES
        self.gate_client_id = "phg-test-gate"
        self.gate_client_secret = secrets.token_urlsafe(32)
        self.discovery: dict[str, Any] = {}

    @property
    def issuer(self) -> str:
        return f"http://{HOST}:{self.port}"

    base_url = issuer

    @property
    def token_endpoint(self) -> str:
        return self.discovery["token_endpoint"]

    @property
    def introspection_endpoint(self) -> str:
        return self.discovery["introspection_endpoint"]

    @property
    def registration_endpoint(self) -> str:
        return self.discovery["registration_endpoint"]

    def _command(self) -> tuple[list[str], dict[str, str]]:
        assert self.workdir is not None
        gate = OAuthClient(self.gate_client_id, client_secret=self.gate_client_secret).metadata()
        clients_file = self.workdir / "oauth-clients.json"
        clients_file.write_text(json.dumps([gate, *self.clients], indent=2))
        clients_file.chmod(0o600)
        cmd = self._node_command("--port", "0", "--clients", str(clients_file), "--ttl", str(self.ttl))
        return cmd, {"OAUTH_SCOPES": " ".join(self.scopes)}

    def _ready(self) -> bool:
        if not super()._ready():
            return False
        r = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2)
        if r.status_code != 200:
            return False
        self.discovery = r.json()
        return True

    def register_client(
        self,
        jwks: Mapping[str, Any] | None = None,
        *,
        client_secret_basic: bool = False,
        scope: str | None = None,
        **metadata: Any,
    ) -> dict[str, Any]:
        """Register a client_credentials client at run time (RFC 7591) and return the server's answer.

        With ``jwks`` the client authenticates with private_key_jwt; with ``client_secret_basic=True``
        the server makes up a secret (``answer["client_secret"]``). ``answer["client_id"]`` is the id.
        """
        if (jwks is None) == (not client_secret_basic):
            raise ValueError("give either jwks or client_secret_basic=True")
        body: dict[str, Any] = {"grant_types": ["client_credentials"], "response_types": [], "redirect_uris": []}
        if jwks is not None:
            body.update(token_endpoint_auth_method="private_key_jwt", jwks=dict(jwks))
        else:
            body["token_endpoint_auth_method"] = "client_secret_basic"
        if scope:
            body["scope"] = scope
        body.update(metadata)
        r = httpx.post(self.registration_endpoint, json=body, timeout=10)
        if r.status_code != 201:
            raise PeerError(f"client registration failed: HTTP {r.status_code} {r.text}")
        return r.json()


# ---------------------------------------------------------------------------------------------- the gate


class Gate(_NodePeer):
    """The SMART gate (peers/gate.mjs) in front of the FHIR server at ``upstream``.

    ``base_url`` is the gate's FHIR base ``http://127.0.0.1:PORT/fhir``; its discovery document is at
    ``{base_url}/.well-known/smart-configuration``. ``discovery``: "both" (well-known document and
    CapabilityStatement security extension), "well-known", "capability" (the deprecated way only)
    or "none". ``scope_check=False`` lets any active token through. ``port`` 0 picks a free one;
    a fixed port lets a test start the gate where a client already (unsuccessfully) connects.
    """

    name = "gate"
    script = "gate.mjs"

    def __init__(
        self,
        upstream: str,
        oauth: OAuthServer,
        *,
        discovery: Literal["both", "well-known", "capability", "none"] = "both",
        scope_check: bool = True,
        port: int = 0,
        workdir: Path | str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        super().__init__(workdir, startup_timeout)
        self.wanted_port = port
        self.upstream = upstream
        self.oauth = oauth
        self.discovery = discovery
        self.scope_check = scope_check

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/fhir"

    @property
    def smart_configuration_url(self) -> str:
        return f"{self.base_url}/.well-known/smart-configuration"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if not self.oauth.running:
            raise PeerError("start the OAuth server before the gate")
        args = [
            "--port",
            str(self.wanted_port),
            "--upstream",
            self.upstream,
            "--issuer",
            self.oauth.issuer,
            "--client-id",
            self.oauth.gate_client_id,
            "--discovery",
            self.discovery,
        ]
        if not self.scope_check:
            args.append("--no-scope-check")
        return self._node_command(*args), {"GATE_CLIENT_SECRET": self.oauth.gate_client_secret}


# ---------------------------------------------------------------------------------------------- the stack


@dataclass
class SmartStack:
    """A FHIR server behind the gate, with its OAuth server: what phg is configured against."""

    fhir: SekmetServer | MedplumServer
    oauth: OAuthServer
    gate: Gate

    @property
    def base_url(self) -> str:
        """The FHIR base phg talks to (the gate's)."""
        return self.gate.base_url

    @property
    def token_endpoint(self) -> str:
        return self.oauth.token_endpoint

    @property
    def upstream_base_url(self) -> str:
        """The FHIR server's own base, behind the gate (no auth: for checking what arrived)."""
        return self.fhir.base_url

    def register_client(self, jwks: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.oauth.register_client(jwks, **kwargs)


@contextlib.contextmanager
def smart_stack(
    fhir: Literal["sekmet", "medplum"] = "sekmet",
    *,
    clients: Iterable[OAuthClient | Mapping[str, Any]] = (),
    ttl: int = 300,
    scopes: Iterable[str] | None = None,
    discovery: Literal["both", "well-known", "capability", "none"] = "both",
    scope_check: bool = True,
    workdir: Path | str | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Iterator[SmartStack]:
    """Start FHIR server + OAuth server + gate; yield a :class:`SmartStack`; stop them all on exit."""
    sub = (lambda name: Path(workdir) / name) if workdir is not None else (lambda name: None)
    server_cls = {"sekmet": SekmetServer, "medplum": MedplumServer}.get(fhir)
    if server_cls is None:
        raise ValueError(f"unknown FHIR server {fhir!r} (sekmet or medplum)")
    with contextlib.ExitStack() as stack:
        server = server_cls(workdir=sub(fhir), startup_timeout=startup_timeout)
        stack.callback(server.stop)
        server.spawn()  # the FHIR server starts while the OAuth server does
        oauth = stack.enter_context(
            OAuthServer(clients, ttl=ttl, scopes=scopes, workdir=sub("oauth"), startup_timeout=startup_timeout)
        )
        server.wait_ready()
        gate = stack.enter_context(
            Gate(
                server.base_url,
                oauth,
                discovery=discovery,
                scope_check=scope_check,
                workdir=sub("gate"),
                startup_timeout=startup_timeout,
            )
        )
        yield SmartStack(server, oauth, gate)


# ---------------------------------------------------------------------------------------------- HL7 v2 receiver


class Hl7Receiver(_NodePeer):
    """An MLLP receiver on @medplum/hl7 4.5.2 (peers/hl7-receiver.mjs) bound to 127.0.0.1: answers every
    message with Medplum's buildAck (``ack_code``, AA by default). ``received()`` lists the MSH-10 of
    every message it got, in order."""

    name = "hl7-receiver"
    script = "hl7-receiver.mjs"

    def __init__(self, ack_code: str = "AA", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ack_code = ack_code

    def _received_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "received.txt"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        return self._node_command("--port", "0", "--received", str(self._received_file()),
                                  "--ack-code", self.ack_code), {}

    def received(self) -> list[str]:
        path = self._received_file()
        return path.read_text().split() if path.exists() else []
