"""`phg keys`: the gateway's signing keys and their public JWKS (SMART Backend Services).

Loaded lazily by phg.cli."""

from __future__ import annotations

import json
from pathlib import Path

import click

from phg.auth import generate_key, jwks, load_key


def _key_path(obj, given: Path | None) -> Path:
    from phg.config import user_data_dir

    return given or obj.config().key_file or user_data_dir() / "phg-key.pem"


@click.group()
def keys() -> None:
    """Create the gateway's signing key and show its public JWKS."""


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


@keys.command("jwks")
@click.option("--key", "key_file", type=click.Path(path_type=Path), help="Private key file.")
@click.pass_obj
def keys_jwks(obj, key_file: Path | None) -> None:
    """Print the public JWKS of the configured key."""
    click.echo(json.dumps(jwks([load_key(_key_path(obj, key_file))]), indent=2))
