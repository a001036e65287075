"""[view] on PostgreSQL (phg.config._postgres_view): url or path, never both; no password in the URL
(password_file, mode 0600); TLS that verifies the server to any other machine unless allow_insecure; every
key from its PHG_VIEW_* variable; and `phg send` with a view on SQLite loads nothing of PostgreSQL."""

from __future__ import annotations

import pytest

from phg.config import load_config
from phg.errors import ConfigError
from test_cli import env  # noqa: F401  (the fixture of a user without config)
from test_cli_startup import HEAVY, _send_loads

REMOTE = "postgresql://phg@db.example.org:5432/phg_view"


def view(tmp_path, text: str = "", **variables: str):
    path = tmp_path / "phg.toml"
    path.write_text(text)
    return load_config(path, env={"PHG_OUTBOX": str(tmp_path / "o.sqlite"), **variables}).view


def test_view_url_or_path_not_both(tmp_path):
    with pytest.raises(ConfigError, match=r"\[view\] url and .*\[view\] path: give one of them"):
        view(tmp_path, f'[view]\nurl = "{REMOTE}"\npath = "/var/lib/phg/view.sqlite"\n')
    with pytest.raises(ConfigError, match=r"environment PHG_VIEW_URL: \[view\] url and environment PHG_VIEW_PATH"):
        view(tmp_path, PHG_VIEW_URL=REMOTE, PHG_VIEW_PATH="/tmp/v.sqlite")
    sqlite = view(tmp_path, '[view]\nretention = "30d"\n')
    assert (sqlite.path, sqlite.url) == (tmp_path / "view.sqlite", None)  # SQLite beside the outbox, as before


@pytest.mark.parametrize("url", ["postgresql://phg:pw@db.example.org/phg_view",
                                 "postgres://phg:@127.0.0.1/phg_view",
                                 "postgresql://phg@127.0.0.1/phg_view?password=pw"])
def test_view_url_with_a_password_is_refused(tmp_path, url):
    with pytest.raises(ConfigError, match=r"\[view\] url: the URL holds a password: put it in \[view\] password_file")\
            as info:
        view(tmp_path, PHG_VIEW_URL=url)
    assert "pw" not in str(info.value).replace("password", "")


@pytest.mark.parametrize("url", ["https://db.example.org/phg_view", "postgresql://db.example.org",
                                 "postgresql://db.example.org/", "postgresql://db[x/phg_view"])
def test_view_url_that_is_not_a_postgresql_database_is_refused(tmp_path, url):
    with pytest.raises(ConfigError, match=r"\[view\] url"):
        view(tmp_path, PHG_VIEW_URL=url)


def test_view_password_file_must_be_private(tmp_path):
    secret = tmp_path / "view-password"
    secret.write_text("pw\n")
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match=r"\[view\] password_file: .*view-password is accessible by group/others "
                                          r"\(mode 0640\); run: chmod 600"):
        view(tmp_path, PHG_VIEW_URL=REMOTE, PHG_VIEW_PASSWORD_FILE=str(secret))
    secret.chmod(0o600)
    assert view(tmp_path, PHG_VIEW_URL=REMOTE, PHG_VIEW_PASSWORD_FILE=str(secret)).password_file == secret
    with pytest.raises(ConfigError, match=r"\[view\] password_file: .*cannot read it"):
        view(tmp_path, PHG_VIEW_URL=REMOTE, PHG_VIEW_PASSWORD_FILE=str(tmp_path / "missing"))


@pytest.mark.parametrize("url, sslmode", [
    (REMOTE, "verify-full"),  # another machine, no sslmode: phg asks libpq to verify the server
    (f"{REMOTE}?sslmode=verify-full", None),  # the URL says so itself
    ("postgresql://phg@127.0.0.1:5432/phg_view", None),  # loopback: plain is allowed, libpq's default
    ("postgresql://phg@localhost/phg_view?sslmode=disable", None),
    ("postgresql://phg@[::1]:5433,127.0.0.1/phg_view?sslmode=disable", None),
    ("postgresql:///phg_view?host=/var/run/postgresql", None),  # a Unix socket
])
def test_view_tls_to_another_machine_verifies_the_server(tmp_path, url, sslmode):
    assert view(tmp_path, PHG_VIEW_URL=url).sslmode == sslmode


@pytest.mark.parametrize("url", [f"{REMOTE}?sslmode=disable", f"{REMOTE}?sslmode=require", f"{REMOTE}?sslmode=prefer",
                                 "postgresql://phg@127.0.0.1,db.example.org/phg_view?sslmode=verify-ca",
                                 "postgresql://phg@localhost/phg_view?sslmode=disable&hostaddr=10.0.0.5",
                                 "postgresql://phg@/phg_view?host=db.example.org&sslmode=allow"])
def test_view_without_verified_tls_to_another_machine_is_refused_unless_allow_insecure(tmp_path, url):
    with pytest.raises(ConfigError, match=r"\[view\] url: sslmode=[a-z-]+ to another machine does not verify the "
                                          r"server: use sslmode=verify-full .* allow_insecure = true"):
        view(tmp_path, PHG_VIEW_URL=url)
    insecure = view(tmp_path, f'[view]\nurl = "{url}"\nallow_insecure = true\n')
    assert insecure.url == url and insecure.allow_insecure and insecure.sslmode is None


def test_view_keys_from_their_variables(tmp_path):
    ca, secret = tmp_path / "ca.pem", tmp_path / "view-secret"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    secret.write_text("hunter2")
    secret.chmod(0o600)
    found = view(tmp_path, PHG_VIEW_URL=REMOTE, PHG_VIEW_PASSWORD_FILE=str(secret), PHG_VIEW_CA_FILE=str(ca),
                 PHG_VIEW_ALLOW_INSECURE="false", PHG_VIEW_RETENTION="30d")
    assert (found.url, found.password_file, found.ca_file, found.allow_insecure, found.retention, found.path) == \
        (REMOTE, secret, ca, False, 30 * 86400.0, None)
    assert "hunter2" not in repr(found)  # the settings hold the file's name, not the password
    with pytest.raises(ConfigError, match=r"PHG_VIEW_CA_FILE: \[view\] ca_file: .* is not a readable file"):
        view(tmp_path, PHG_VIEW_URL=REMOTE, PHG_VIEW_CA_FILE=str(tmp_path / "missing.pem"))


def test_view_on_sqlite_keeps_phg_send_free_of_postgresql(tmp_path, env):  # noqa: F811
    """`phg send` with [view] on (SQLite) loads neither psycopg nor the PostgreSQL engine, nor anything of
    HEAVY (tests/test_cli_startup.py: issue 16's start-up bound)."""
    loaded = _send_loads(tmp_path, {**env, "PHG_VIEW_PATH": str(tmp_path / "view.sqlite")},
                         (*HEAVY, "psycopg", "phg.viewstore.postgres"))
    assert loaded == []


def test_view_url_without_a_host_is_local_only_when_libpq_adds_none(tmp_path, monkeypatch):
    """Review R of db9b6c3, finding 5: libpq fills a host the URL leaves empty from PGHOST, a hostaddr from
    PGHOSTADDR, and anything from a service (service=, PGSERVICE): then the server may be another machine,
    and phg asks for verify-full as for any other."""
    for name in ("PGHOST", "PGHOSTADDR", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    assert view(tmp_path, PHG_VIEW_URL="postgresql:///phg_view").sslmode is None  # the local Unix socket
    assert view(tmp_path, PHG_VIEW_URL="postgresql:///phg_view?service=prod").sslmode == "verify-full"
    with pytest.raises(ConfigError, match="sslmode=disable to another machine"):
        view(tmp_path, PHG_VIEW_URL="postgresql:///phg_view?service=prod&sslmode=disable")
    for name, value in (("PGHOST", "db.example.org"), ("PGHOSTADDR", "10.0.0.5"), ("PGSERVICE", "prod")):
        monkeypatch.setenv(name, value)
        assert view(tmp_path, PHG_VIEW_URL="postgresql:///phg_view").sslmode == "verify-full", name
        monkeypatch.delenv(name)
    monkeypatch.setenv("PGHOST", "db.example.org")  # the URL's own host wins over PGHOST
    assert view(tmp_path, PHG_VIEW_URL="postgresql://phg@127.0.0.1/phg_view").sslmode is None


def test_view_url_without_psycopg_says_what_to_install(monkeypatch):
    """Review R of db9b6c3, finding 9: as open_queue for JetStream without nats-py, a ConfigError naming
    the extra, not a traceback; the URL is still shown (masked) without psycopg."""
    import sys

    from phg.config import ViewSettings
    from phg.viewstore import open_view, shown_location

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    monkeypatch.delitem(sys.modules, "phg.viewstore.postgres", raising=False)
    settings = ViewSettings(None, url=REMOTE, source="/etc/phg/phg.toml")
    assert shown_location(settings) == REMOTE
    with pytest.raises(ConfigError, match=r"/etc/phg/phg.toml: \[view\] url \(PostgreSQL\) needs psycopg: "
                                          r"pip install 'phg\[hub\]'"):
        open_view(settings)
