"""`pip install .` on a machine without Node.js (issue 11: 5): the wheel built from this checkout, installed
into a fresh venv whose PATH has no `node`. `phg --help`, `phg render` and `phg send --no-deliver` work;
`phg demo` says in one line what it needs; `phg demo --no-auth` runs with the Python peers alone.

Quick and offline: the wheel is built without build isolation (setuptools from the test extra) from a copy
of the checkout without node_modules, and installed without dependencies into a venv that borrows this
venv's packages (the [demo] extra included) through a .pth file naming its site-packages directory: a
directory listed in a .pth file is not a site directory, so this venv's editable phg stays out of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from phg.demo.sim import simulated_readings
from phg.model import PatientRef

pytestmark = pytest.mark.peers

REPO = Path(__file__).resolve().parents[1]
COPIED = shutil.ignore_patterns("node_modules", "__pycache__", "*.egg-info")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    checkout = root / "checkout"
    for name in ("src", "peers"):  # src/phg/demo/node is a relative link to peers/
        shutil.copytree(REPO / name, checkout / name, symlinks=True, ignore=COPIED)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(checkout)], check=True, capture_output=True, timeout=120)
    (built,) = (root / "dist").glob("phg-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    """The fresh venv's bin directory, phg installed from the wheel."""
    venv = wheel.parent.parent / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    return venv / "bin"


@pytest.fixture
def env(venv: Path, tmp_path) -> dict[str, str]:
    """No Node.js on PATH (this venv's bin stays for the `sekmet` command of the [demo] extra), no config."""
    path = f"{venv}{os.pathsep}{Path(sys.executable).parent}"
    assert shutil.which("node", path=path) is None and shutil.which("npm", path=path) is None
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PHG_", "XDG_", "VIRTUAL_ENV"))}
    return {**inherited, "PATH": path, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"),
            "PHG_OUTBOX": str(tmp_path / "outbox.sqlite"), "PHG_GATEWAY_SYSTEM_ID": "02AB7FFFFE00C11B"}


def phg(venv: Path, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "phg"), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["HOME"])


def test_the_wheel_ships_the_node_peers_without_their_packages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("phg/demo/node/") for n in names if n.startswith("phg/demo/node/")}
    assert {"gate.mjs", "oauth-server.mjs", "medplum-fhir.mjs", "package.json", "package-lock.json"} <= shipped
    assert not any("node_modules" in n for n in names)
    assert "phg/reading.schema.json" in names
    assert "phg/service/templates/status.html" in names  # the status page's template (package data)
    assert "phg/service/templates/charts.css" in names  # its charts' style, shared with the view in the EHR


def test_installed_phg_is_the_wheel_not_the_checkout(venv, env):
    where = subprocess.run([str(venv / "python"), "-c", "import phg; print(phg.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv.parent)) and "site-packages" in where


def test_help_render_and_send_work_without_node(venv, env, tmp_path):
    assert phg(venv, env, "--help").returncode == 0
    readings = simulated_readings(PatientRef("urn:oid:1.2.3.4.5", "pip-patient"), datetime(2026, 11, 28, 9, tzinfo=UTC))
    files = []
    for n, reading in enumerate(readings[:2]):
        files.append(tmp_path / f"r{n}.json")
        files[-1].write_text(reading.to_json())
    rendered = phg(venv, env, "render", *map(str, files))
    assert rendered.returncode == 0, rendered.stderr
    assert json.loads(rendered.stdout)["type"] == "transaction"
    sent = phg(venv, env, "send", "--no-deliver", *map(str, files))
    assert sent.returncode == 0, sent.stderr
    assert Path(env["PHG_OUTBOX"]).is_file()


def test_demo_without_node_says_what_to_install_in_one_line(venv, env):
    result = phg(venv, env, "demo")
    assert result.returncode == 3
    said = (result.stdout + result.stderr).strip()
    assert len(said.splitlines()) == 1, said
    assert "Node.js 20+" in said and "https://nodejs.org" in said and "phg demo --no-auth" in said


def test_demo_no_auth_runs_with_the_python_peers(venv, env):
    result = phg(venv, env, "demo", "--no-auth", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "first delivery: delivered" in result.stdout and "Observation:" in result.stdout
