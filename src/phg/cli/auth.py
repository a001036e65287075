"""`phg keys`, `phg register`, `phg serve-jwks`: the gateway's keys, its registration with the
authorization server, and the JWKS URL.

Loaded lazily by phg.cli (keys -> ``keys``, register -> ``register``, serve-jwks -> ``serve_jwks``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from pathlib import Path

import click

from phg.auth import generate_key, jwks, load_key


def _key_path(obj, given: Path | None) -> Path:
    from phg.config import user_data_dir

    return given or obj.config().auth.key_file or user_data_dir() / "phg-key.pem"


def _config_file(obj, config) -> Path:
    """The config file phg reads (and register/rotate write to)."""
    from phg.config import user_config_path
    from phg.errors import ConfigError

    if config.source != "(defaults)":
        return Path(config.source)
    if obj.config_path is not None:
        return obj.config_path
    if os.environ.get("PHG_CONFIG"):
        return Path(os.environ["PHG_CONFIG"])
    path = user_config_path()
    if not path.exists():
        raise ConfigError(f"no config file to store the registration in ({path}); run phg init first")
    return path


@click.group()
def keys() -> None:
    """Create, rotate and show the gateway's signing keys (public JWKS)."""


@keys.command("generate")
@click.option("--alg", type=click.Choice(["ES384", "RS384"]), default="ES384", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Where to write the private key (PEM, mode 0600).")
@click.pass_obj
def keys_generate(obj, alg: str, out: Path | None) -> None:
    """Write a new private key and print the public JWKS to register with the EHR."""
    path = _key_path(obj, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate_key(path, alg)
    click.echo(f"wrote {path} (mode 0600); register this JWKS with the EHR:", err=True)
    click.echo(json.dumps(jwks([load_key(path)]), indent=2))
    if out is not None:
        _record_key_file(obj, path)


def _record_key_file(obj, path: Path) -> None:
    """`keys generate --out PATH`: the config file names the new key ([auth] key_file), so that
    `phg keys jwks`, `phg register` and delivery use it."""
    from phg.auth.registration import store_in_config
    from phg.errors import ConfigError

    try:
        config_file = _config_file(obj, obj.config())
    except ConfigError:
        click.echo(f"no config file yet: run `phg init`, then set [auth] key_file = \"{path}\" "
                   "(or pass --key to each command)", err=True)
        return
    store_in_config(config_file, {"key_file": str(path.resolve())}, secret=False)
    click.echo(f"recorded [auth] key_file = \"{path.resolve()}\" in {config_file}", err=True)


@keys.command("jwks")
@click.option("--key", "key_file", type=click.Path(path_type=Path), help="Private key file.")
@click.pass_obj
def keys_jwks(obj, key_file: Path | None) -> None:
    """Print the public JWKS of the configured keys (every published key of the ring)."""
    from phg.auth.keyring import KeyRing

    click.echo(json.dumps(KeyRing(_key_path(obj, key_file)).jwks(), indent=2))


@keys.command("rotate")
@click.option("--alg", type=click.Choice(["ES384", "RS384"]), help="Algorithm of the new key (default: the current one's).")
@click.option("--publish-delay", type=float, help="Seconds the new key is published before it signs "
              "(default [auth] key_publish_delay, 600; 0 when the server learns it at once, e.g. via RFC 7592).")
@click.option("--grace", type=float, help="Seconds the old key stays published afterwards "
              "(default [auth] key_rotation_grace, 86400).")
@click.pass_obj
def keys_rotate(obj, alg: str | None, publish_delay: float | None, grace: float | None) -> None:
    """Add a new signing key: published now, used after the publish delay; the old one retires
    after the grace period. With an inline JWKS registered via phg register, the registration is
    updated (RFC 7592) so the server knows the new key at once."""
    from phg.auth.keyring import KeyRing

    config = obj.config()
    settings = config.auth
    ring = KeyRing(_key_path(obj, None))
    delay = settings.key_publish_delay if publish_delay is None else publish_delay
    registered = not settings.jwks_uri and settings.registration_client_uri and settings.registration_access_token
    # With a registration to update, the server learns the new JWKS before the ring changes (KeyRing.rotate):
    # a running `phg run` may sign with the new key the moment the ring says so.
    publish = (lambda jwks: asyncio.run(_update_registered_jwks(obj, config, settings, jwks))) if registered else None
    key = ring.rotate(alg, publish_delay=delay, grace=settings.key_rotation_grace if grace is None else grace,
                      publish=publish)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + delay))
    click.echo(f"added key {key.kid} ({key.alg}); it signs from {when}")
    if settings.jwks_uri:
        click.echo(f"published at {settings.jwks_uri} (phg serve-jwks serves the ring)")
    elif not registered:
        click.echo("register this JWKS with the server before then:", err=True)
        click.echo(json.dumps(ring.jwks(), indent=2))


async def _update_registered_jwks(obj, config, settings, jwks: dict) -> None:
    import httpx

    from phg.auth.registration import client_metadata, store_in_config, update_registration
    from phg.delivery.tls import httpx_options

    metadata = client_metadata(scope=settings.scope, jwks=jwks, signing_alg=None,
                               client_name=f"phg gateway {config.gateway.system_id}")
    metadata["client_id"] = settings.client_id
    async with httpx.AsyncClient(timeout=30.0, **httpx_options(settings.tls, settings.proxy)) as client:
        updated = await update_registration(client, settings.registration_client_uri,
                                            settings.registration_access_token, metadata)
    if updated.registration_access_token and updated.registration_access_token != settings.registration_access_token:
        store_in_config(_config_file(obj, config),
                        {"registration_access_token": updated.registration_access_token}, secret=True)
        click.echo("the server rotated the registration access token; stored the new one")
    click.echo(f"registration of {settings.client_id} updated with the new JWKS (RFC 7592)")


# ---------------------------------------------------------------------------------------------- register


@click.command("register")
@click.option("--endpoint", help="Registration endpoint (default: [auth] registration_endpoint, else discovered).")
@click.option("--method", "auth_method", type=click.Choice(["private_key_jwt", "client_secret_basic",
                                                            "client_secret_post"]),
              default="private_key_jwt", show_default=True, help="token_endpoint_auth_method to register.")
@click.option("--jwks-uri", help="Register this JWKS URL instead of the inline JWKS ([auth] jwks_uri).")
@click.option("--alg", type=click.Choice(["ES384", "RS384"]), default="ES384", show_default=True,
              help="Algorithm of the key made when none exists yet.")
@click.option("--initial-access-token", envvar="PHG_INITIAL_ACCESS_TOKEN", show_envvar=True,
              help="RFC 7591 initial access token, if the server requires one.")
@click.option("--software-statement", help="RFC 7591 software statement: a JWT or a file holding one.")
@click.option("--client-name", help="Human-readable client name (default: phg gateway <system id>).")
@click.option("--force", is_flag=True, help="Register a new client even if one is configured.")
@click.option("--destination", metavar="NAME",
              help="Register with the C3-PRO server of [destinations.NAME] (type c3pro) instead.")
@click.option("--antispam", envvar="PHG_C3PRO_ANTISPAM", show_envvar=True,
              help="C3-PRO Antispam token (default: the destination's antispam or antispam_file).")
@click.option("--antispam-file", type=click.Path(path_type=Path), help="A file (mode 0600) holding the Antispam token.")
@click.pass_obj
def register(obj, endpoint, auth_method, jwks_uri, alg, initial_access_token, software_statement, client_name,
             force, destination, antispam, antispam_file) -> None:
    """Register this gateway with the server (RFC 7591) and store the issued client_id in the config;
    with --destination, with a C3-PRO server (its Antispam header) into that destination's table."""
    if destination:
        asyncio.run(_register_c3pro(obj, destination, antispam, antispam_file, client_name, force))
        return
    asyncio.run(_register(obj, endpoint, auth_method, jwks_uri, alg, initial_access_token, software_statement,
                          client_name, force))


async def _register_c3pro(obj, name, antispam, antispam_file, client_name, force) -> None:
    """POST <root>/register (C3-PRO): client_id and client_secret go into [destinations.NAME]."""
    import httpx

    from phg.auth.registration import register_c3pro, store_in_config
    from phg.config import C3proSettings, TlsSettings
    from phg.delivery.tls import httpx_options
    from phg.errors import ConfigError
    from phg.secretfile import require_private

    config = obj.config()
    path = _config_file(obj, config)
    found = [d for d in config.destinations if d.name == name]
    if not found or not isinstance(found[0], C3proSettings):
        raise ConfigError(f"{path}: no [destinations.{name}] of type c3pro")
    settings = found[0]
    if settings.client_id and not force:
        raise ConfigError(f"{path}: [destinations.{name}] is already registered as client_id {settings.client_id!r}; "
                          "use --force to register a new client")
    if antispam_file is not None:
        require_private(antispam_file, "--antispam-file")
        antispam = antispam_file.read_text(encoding="utf-8").strip()
    antispam = antispam or settings.antispam_token()
    if not antispam:
        raise ConfigError(f"{path}: [destinations.{name}] needs an Antispam token to register: antispam_file, "
                          "antispam, PHG_C3PRO_ANTISPAM or --antispam-file")
    async with httpx.AsyncClient(timeout=settings.timeout, **httpx_options(TlsSettings())) as client:
        registration = await register_c3pro(client, settings.base_url, antispam, settings.receipt_data,
                                            client_name or f"phg gateway {config.gateway.system_id}")
    stored = {"client_id": registration.client_id, "client_secret": registration.client_secret or ""}
    await asyncio.to_thread(store_in_config, path, stored, secret=True, table=f"destinations.{name}")
    click.echo(f"registered client_id {registration.client_id} at {settings.base_url}/register; stored client_id, "
               f"client_secret in [destinations.{name}] of {path} (mode 0600)")


# A JWT in compact form: a JWS's three base64url parts (RFC 7515 section 7.1) or a JWE's five (RFC 7516 section 7.1);
# an unsecured JWT's signature is empty (RFC 7519 section 6.1), as may be a JWE's encrypted key (direct encryption).
_JWT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*){2}|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*){4}")


def _is_jwt(text: str) -> bool:
    """A JWT's compact form whose first part is a JSON object (the JOSE header, RFC 7515 section 7.1), so that a
    file name of three dotted words ("statement.jwt.old") is not taken for one."""
    if not _JWT.fullmatch(text):
        return False
    header = text.partition(".")[0]
    try:
        return base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)).lstrip().startswith(b"{")
    except ValueError:  # binascii.Error: a length no base64 has
        return False


def _software_statement(value: str | None, where: str) -> str | None:
    """The RFC 7591 software statement (section 2.3: a JWT): the JWT as given, or read from the file it names
    (`~` and `~user` expanded as for every file setting, phg.config.path). Either way it must have a JWT's compact
    form, so that a file name mistyped, a directory or an empty file is named here, not sent (the server would
    only answer invalid_software_statement). os.path.isfile, not Path.is_file: a JWT is often longer than a file
    name may be, which Path.is_file raises for (ENAMETOOLONG)."""
    from phg.config import path
    from phg.errors import ConfigError

    if not value:
        return None
    found = path(value, where)
    if not os.path.isfile(found):  # False for a NUL in the value too
        if not _is_jwt(value):
            raise ConfigError(f"{where}: {value!r:.80} is neither a readable file nor a JWT")
        return value
    try:
        statement = found.read_text(encoding="utf-8-sig").strip()  # -sig: a byte order mark is no part of it
    except OSError as exc:
        raise ConfigError(f"{where} {found}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} {found}: not a JWT (the file is not UTF-8 text)") from None
    if not _is_jwt(statement):
        raise ConfigError(f"{where} {found}: " + ("the file is empty" if not statement else "does not hold a JWT"))
    return statement


async def _register(obj, endpoint, auth_method, jwks_uri, alg, initial_access_token, software_statement,
                    client_name, force) -> None:
    import httpx

    from phg.auth.discovery import discover
    from phg.auth.keyring import KeyRing
    from phg.auth.registration import client_metadata, register, store_in_config
    from phg.config import user_data_dir
    from phg.delivery.tls import httpx_options
    from phg.errors import ConfigError

    config = obj.config()
    settings = config.auth
    path = _config_file(obj, config)
    if (settings.registration_client_uri or (config.auth.client_id and settings.method != "none")) and not force:
        raise ConfigError(f"{path}: already registered as client_id {config.auth.client_id!r}; "
                          "use --force to register a new client")
    statement = _software_statement(software_statement, "--software-statement") if software_statement \
        else _software_statement(settings.software_statement, "[auth] software_statement")
    stored: dict[str, str] = {}
    jwks_uri = jwks_uri or settings.jwks_uri
    document = signing_alg = None
    if auth_method == "private_key_jwt":
        key_file = config.auth.key_file or user_data_dir() / "phg-key.pem"
        if not key_file.exists() and not Path(str(key_file) + ".keyring.json").exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            generate_key(key_file, alg)
            click.echo(f"wrote a new {alg} key {key_file} (mode 0600)", err=True)
        if config.auth.key_file is None:
            stored["key_file"] = str(key_file)
        ring = KeyRing(key_file)
        signing_alg = ring.signing_key().alg
        if jwks_uri is None:
            document = ring.jwks()
        elif jwks_uri != settings.jwks_uri:
            stored["jwks_uri"] = jwks_uri
    metadata = client_metadata(auth_method=auth_method, scope=config.auth.scope, jwks=document, jwks_uri=jwks_uri,
                               signing_alg=signing_alg, software_statement=statement,
                               client_name=client_name or f"phg gateway {config.gateway.system_id}")
    async with httpx.AsyncClient(timeout=30.0, **httpx_options(settings.tls, settings.proxy)) as client:
        endpoint = endpoint or settings.registration_endpoint
        if endpoint is None:
            if not config.fhir_base:
                raise ConfigError(f"{path}: set [fhir] base_url (to discover the registration endpoint) "
                                  "or pass --endpoint")
            smart = await discover(client, config.fhir_base, allow_insecure_http=config.auth.allow_insecure_http)
            endpoint = smart.registration_endpoint
            if endpoint is None:
                raise ConfigError(f"{config.fhir_base} declares no registration_endpoint; ask the server operator "
                                  "for one (--endpoint) or register the client by hand")
        from phg.transport import require_secure_url

        require_secure_url(endpoint, "registration endpoint", allow_insecure_http=config.auth.allow_insecure_http)
        registration = await register(client, endpoint, metadata,
                                      initial_access_token=initial_access_token or settings.initial_access_token)
    stored.update(registration.config_values())
    secret = bool(registration.client_secret or registration.registration_access_token)
    await asyncio.to_thread(store_in_config, path, stored, secret=secret)
    click.echo(f"registered client_id {registration.client_id} ({registration.token_endpoint_auth_method}) "
               f"at {endpoint}")
    if registration.scope and set(registration.scope.split()) != set(config.auth.scope.split()):
        click.echo(f"note: the server registered scope {registration.scope!r} (asked {config.auth.scope!r})", err=True)
    click.echo(f"stored {', '.join(sorted(stored))} in {path}" + (" (mode 0600)" if secret else "")
               + "; phg run will use it")


# ---------------------------------------------------------------------------------------------- serve-jwks


@click.command("serve-jwks")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--path", "url_path", default="/.well-known/jwks.json", show_default=True)
@click.option("--tls-cert", type=click.Path(exists=True, path_type=Path), help="PEM certificate chain (https).")
@click.option("--tls-key", type=click.Path(exists=True, path_type=Path), help="PEM key of --tls-cert.")
@click.pass_obj
def serve_jwks(obj, host: str, port: int, url_path: str, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Publish the gateway's public JWKS at a URL (for jwks_uri / jku registrations)."""
    import ssl

    from phg.auth.jwks_server import JwksServer
    from phg.auth.keyring import KeyRing
    from phg.transport import is_loopback

    context = None
    if tls_cert:
        from phg.secretfile import require_private

        require_private(tls_key or tls_cert, "--tls-key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
    elif not is_loopback(host):
        click.echo("warning: serving the JWKS over plain http on a non-loopback address; servers expect https "
                   "(use --tls-cert/--tls-key or a TLS reverse proxy)", err=True)
    ring = KeyRing(_key_path(obj, None))
    ring.published()  # fail now, naming the file, if the keys cannot be read

    async def serve() -> None:
        server = await JwksServer(ring, host=host, port=port, path=url_path, ssl_context=context).start()
        click.echo(f"publishing the JWKS at {server.url} (Ctrl-C stops)")
        try:
            await server.serve_forever()
        finally:
            await server.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
