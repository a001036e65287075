"""What `phg doctor` tells a new operator about the mistakes of a first config: each failing check names the
setting at fault and says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from phg.auth import generate_key
from phg.config import load_config, render_template
from phg.doctor import _reserved_example, run_checks
from phg.errors import ConfigError


async def failure(tmp_path: Path, toml: str, step: str | None = None) -> dict:
    """Doctor's one failing check (of ``step``, when given) for the config ``toml`` (its outbox in tmp_path
    unless it says where)."""
    path = tmp_path / "phg.toml"
    outbox = "" if "[outbox]" in toml else f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
    path.write_text(outbox + toml)
    results: list[dict] = []
    assert not await run_checks(load_config(path, env={}), lambda line: None, results=results)
    [failed] = [r for r in results if r["status"] == "fail" and step in (None, r["step"])]
    return failed


async def test_the_example_base_url_phg_init_writes_is_named_as_one(tmp_path):
    """A config from `phg init` whose base_url was not edited: the name never resolves, and doctor says it is the
    example to replace rather than "check the URL, DNS, firewall"."""
    generate_key(tmp_path / "key.pem", "ES384")
    failed = await failure(tmp_path, render_template(tmp_path / "key.pem", tmp_path / "outbox.sqlite"))
    assert failed["step"] == "tls"
    assert failed["fix"] == ("ehr.example.org is an example name (RFC 2606 reserves it; phg init writes one): "
                             "set [fhir] base_url to your EHR's FHIR base")


async def test_a_destination_base_url_is_named_by_its_table(tmp_path):
    failed = await failure(tmp_path, '[destinations.ehr2]\ntype = "fhir"\nbase_url = "http://ehr2.example.org/fhir"\n')
    assert failed["destination"] == "ehr2" and failed["step"] == "config"
    assert failed["what"].startswith("[destinations.ehr2] base_url 'http://ehr2.example.org/fhir' uses plain http")
    assert failed["fix"] == "set [destinations.ehr2] base_url to the EHR's https FHIR base"


async def test_a_key_file_refused_names_the_auth_table_to_fix(tmp_path):
    """The line above says what is wrong with the key (here: no such file); the fix names the table holding it
    rather than a generic "fix the credentials"."""
    failed = await failure(tmp_path, '[destinations.ehr2]\ntype = "fhir"\nbase_url = "https://ehr2.example.org/fhir"\n'
                                     f'[destinations.ehr2.auth]\nclient_id = "gw"\nkey_file = "{tmp_path / "none.pem"}"\n')
    assert failed["step"] == "config" and "no such private key file" in failed["what"]
    assert failed["fix"].startswith("fix [destinations.ehr2.auth] as the line above says")


async def test_an_hl7_http_url_in_plain_http_names_its_table_and_the_setting_that_allows_it(tmp_path):
    failed = await failure(tmp_path, '[destinations.v2]\ntype = "hl7-http"\nurl = "http://hl7.example.org/pcd01"\n')
    assert failed["destination"] == "v2" and failed["step"] == "config"
    assert failed["what"] == ("[destinations.v2] url 'http://hl7.example.org/pcd01' uses plain http to a non-loopback "
                              "host; use https (or set [destinations.v2] allow_insecure_http = true on a network you trust)")


async def test_an_outbox_that_cannot_be_made_names_the_file_once_and_the_setting(tmp_path):
    (tmp_path / "afile").write_text("")  # its "directory" is a file: no outbox can be made below it
    outbox = tmp_path / "afile" / "outbox.sqlite"
    failed = await failure(tmp_path, f'[outbox]\npath = "{outbox}"\n', step="outbox")
    assert failed["what"].count(str(outbox)) == 1
    assert failed["fix"].startswith("check [outbox] path (PHG_OUTBOX, --outbox)")


@pytest.mark.parametrize(("host", "reserved"), [
    ("ehr.example.org", True), ("EXAMPLE.COM", True), ("fhir.example.net.", True), ("ehr.test", True),
    ("gw.example", True), ("x.invalid", True), ("example.org.uk", False), ("myexample.org", False),
    ("ehr.hospital.org", False), ("127.0.0.1", False), ("localhost", False),
])
def test_reserved_example_names(host, reserved):
    assert _reserved_example(host) is reserved


@pytest.mark.parametrize("base", [
    "https://u:s3cr3t@ehr.example.org/fhir/metadata",  # an endpoint below the base: refused with the base to give
    "https://u:s3cr3t@ehr.example.org/fhir/.well-known/smart-configuration",
    "https://u:s3/cr3t@ehr.example.org/fhir",  # not a URL: httpx's reason quotes "s3" as the port
    "http://u:s3cr3t@ehr.example.org/fhir",  # plain http
    "u:s3cr3t@ehr.example.org/fhir", "//u:s3cr3t@ehr.example.org/fhir",  # no scheme
    "https://u:s3cr3t@127.0.0.1:{port}/fhir",  # loads: doctor names it and cannot connect
])
@pytest.mark.parametrize("where", ["env", "[fhir]", "[destinations.ehr2]"])
async def test_no_message_about_a_base_url_shows_its_password(tmp_path, unused_tcp_port, base, where):
    """A base_url holding user:password@ (PHG_FHIR_BASE_URL or the file, [fhir] or a destination's table): what
    load_config refuses and every line doctor prints (to a terminal, to the journal under systemd) has it
    redacted, never the password or a part of it."""
    base = base.format(port=unused_tcp_port)
    table = {"env": "", "[fhir]": f'[fhir]\nbase_url = "{base}"\n',
             "[destinations.ehr2]": f'[destinations.ehr2]\ntype = "fhir"\nbase_url = "{base}"\n'}[where]
    path = tmp_path / "phg.toml"
    path.write_text(f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n{table}')
    lines: list[str] = []
    try:
        config = load_config(path, env={"PHG_FHIR_BASE_URL": base} if where == "env" else {})
    except ConfigError as exc:
        lines.append(str(exc))
    else:
        assert not await run_checks(config, lines.append)
    assert lines and not any("s3" in line for line in lines), lines
