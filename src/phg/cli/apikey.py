"""`phg api-key create|list|revoke`: the keys apps use with the service off loopback ([api] keys_file).
A key is printed once, when it is created; only its SHA-256 is stored (phg.service.security)."""

from __future__ import annotations

import click

from phg.cli.common import Context
from phg.cli.options import JSON_OPTION
from phg.cli.output import print_json


def _store(obj: Context):
    from phg.config import ApiSettings
    from phg.service.security import KeyStore

    return KeyStore((obj.config().api or ApiSettings()).keys_file)


@click.group("api-key")
def api_key() -> None:
    """API keys for the service: create (printed once), list, revoke."""


@api_key.command()
@click.argument("name")
@JSON_OPTION
@click.pass_obj
def create(obj: Context, name: str, as_json: bool) -> None:
    """Create a key named NAME (who uses it) and print it: it is not shown again."""
    record, key = _store(obj).create(name)
    if as_json:
        print_json({"id": record.id, "name": record.name, "key": key})
        return
    click.echo(f"{key}\n(id {record.id}, {record.name!r}: send it as 'Authorization: Bearer <key>' or "
               "'X-API-Key: <key>'; it is not shown again)")


@api_key.command("list")
@JSON_OPTION
@click.pass_obj
def list_keys(obj: Context, as_json: bool) -> None:
    """The keys: id, name, created, revoked (never the key or its hash)."""
    rows = [{"id": k.id, "name": k.name, "created": k.created, "revoked": k.revoked} for k in _store(obj).keys()]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']}  {row['created']}  {('revoked ' + row['revoked']) if row['revoked'] else 'active'}"
                   f"  {row['name']}")


@api_key.command()
@click.argument("key_id")
@click.pass_obj
def revoke(obj: Context, key_id: str) -> None:
    """Revoke the key KEY_ID (from `phg api-key list`); a running service refuses it at once."""
    record = _store(obj).revoke(key_id)
    click.echo(f"revoked {record.id} ({record.name!r}) at {record.revoked}")
