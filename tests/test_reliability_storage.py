"""Issue #7, storage faults: the outbox on a full or read-only file system, and files that are not a
phg outbox. `phg send` must fail loudly (exit 74, the file named, "nothing was queued") and store
nothing; the daemon (`phg run`, a real subprocess) must keep running while the disk is full and
deliver everything once space returns; a corrupt or foreign database is refused, never migrated over.

The file systems are real: a small tmpfs mounted by the test (root in this sandbox), filled with a
filler file until ENOSPC, and the same tmpfs remounted read-only (chmod is no test: root ignores it).
Where mounting is not permitted those tests skip and say so; the full-database case then still runs
in-process on SQLite's own limit (PRAGMA max_page_count).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from phg.demo.sim import simulated_readings
from phg.errors import ConfigError, StorageError
from phg.fhir import conditional_identifier
from phg.model import PatientRef, Reading
from phg.outbox import Outbox
from phg.outbox.sqlite import ROOMY_CHECKPOINT_PAGES, ROOMY_FREE, WAL_CHECKPOINT_PAGES, WAL_LIMIT
from phg.viewstore.sqlite import SqliteViewStore

PHG = str(Path(sys.executable).parent / "phg")
EXIT_IOERR = 74
LEASED = 5.0  # seconds until the batch "left by a killed daemon" comes due: room for the next one to start


def readings(n: int, seed: int = 0) -> list[Reading]:
    patient = PatientRef("urn:oid:1.2.3.4.5", f"storage-{uuid.uuid4().hex[:12]}")
    return simulated_readings(patient, datetime(2026, 11, 28, 9, tzinfo=UTC), per_device=n // 5, seed=seed)


def jsonl(batch: list[Reading]) -> str:
    return "\n".join(r.to_json() for r in batch)


def phg(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHG, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def states(path: Path) -> dict[str, int]:
    with Outbox(path) as outbox:
        return outbox.counts()


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_DATA_HOME": str(tmp_path / "data"), "PHG_GATEWAY_SYSTEM_ID": "02AB7FFFFE00C5D1",
            "PHG_CONFIG": "", "PHG_FHIR_BASE_URL": "", "PHG_CLIENT_ID": "", "PHG_KEY_FILE": ""}


# ------------------------------------------------------------------------------------ a small tmpfs


class SmallFs:
    """A tmpfs of `size` mounted at `path` for one test; `fill()` takes every free block."""

    def __init__(self, path: Path, size: str):
        self.path = path
        self.size = size
        self.filler = path / "filler"

    def fill(self) -> int:
        """Write the filler file until the file system refuses (ENOSPC); return the bytes written."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
                while True:
                    try:
                        written += os.write(fd, b"\0" * chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True, timeout=10)


@pytest.fixture
def small_fs(tmp_path) -> Iterator[SmallFs]:
    """`mount -t tmpfs -o size=4m`: skips (saying why) where the sandbox does not allow mounting."""
    with _tmpfs(tmp_path, "4m") as fs:
        yield fs


@pytest.fixture
def tiny_fs(tmp_path) -> Iterator[SmallFs]:
    """A 2 MiB tmpfs: less than SQLite's default WAL grows to (1,000 pages, about 4 MB)."""
    with _tmpfs(tmp_path, "2m") as fs:
        yield fs


@contextlib.contextmanager
def _tmpfs(tmp_path: Path, size: str) -> Iterator[SmallFs]:
    path = tmp_path / "fs"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True, timeout=10)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the in-process max_page_count test "
                    "covers the full-database case")
    try:
        yield SmallFs(path, size)
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["mount", "-o", "remount,rw", str(path)], capture_output=True, timeout=10)
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)  # never leave a mount behind


# ------------------------------------------------------------------------------------ full disk


def test_a_full_database_stores_nothing_and_says_which_file(tmp_path):
    """In-process, on SQLite's own size limit (works without mounting anything)."""
    path = tmp_path / "outbox.sqlite"
    first, second = readings(10, seed=1), readings(500, seed=2)
    with Outbox(path) as outbox:
        outbox.enqueue("fhir", [(r.key, r.to_json()) for r in first])
        pages = outbox._conn.execute("PRAGMA page_count").fetchone()[0]
        outbox._conn.execute(f"PRAGMA max_page_count = {pages}")  # a test-only stand-in for a full disk
        with pytest.raises(StorageError, match="disk is full") as caught:
            outbox.enqueue("fhir", [(r.key, r.to_json()) for r in second])
        assert caught.value.path == str(path) and str(path) in str(caught.value)
        assert outbox.counts()["queued"] == 10  # the failed batch left nothing
        outbox._conn.execute("PRAGMA max_page_count = 1073741823")
        outbox.enqueue("fhir", [(r.key, r.to_json()) for r in second])  # the same connection works again
        assert outbox.counts()["queued"] == 510


def test_send_on_a_full_filesystem_fails_loudly_and_queues_nothing(small_fs, env):
    outbox = small_fs.path / "outbox.sqlite"
    env = {**env, "PHG_OUTBOX": str(outbox)}
    first, second = readings(10, seed=1), readings(100, seed=2)
    assert phg("send", "--no-deliver", "-", env=env, stdin=jsonl(first)).returncode == 0
    small_fs.fill()

    refused = phg("send", "--no-deliver", "-", env=env, stdin=jsonl(second))
    assert refused.returncode == EXIT_IOERR, refused.stdout + refused.stderr
    assert str(outbox) in refused.stderr and "disk is full" in refused.stderr
    assert "nothing was queued: 100 reading(s) not stored" in refused.stderr
    assert "queued" not in refused.stdout and "Traceback" not in refused.stderr

    small_fs.free()
    assert states(outbox)["queued"] == 10  # acknowledged nothing it did not store
    again = phg("send", "--no-deliver", "-", env=env, stdin=jsonl(second))
    assert again.returncode == 0, again.stderr
    assert states(outbox)["queued"] == 110


@pytest.mark.peers
def test_daemon_keeps_running_on_a_full_disk_and_delivers_when_space_returns(small_fs, env, sekmet, tmp_path):
    """A batch leased by a killed daemon comes due while the disk is full: the next daemon cannot
    lease it (no room to write), logs, waits, retries, and delivers everything once space returns."""
    outbox = small_fs.path / "outbox.sqlite"
    config = tmp_path / "phg.toml"
    config.write_text("[fhir]\ntimeout = 5\n[delivery]\nmax_retry_delay = 1\nlease_seconds = 5\n")
    env = {**env, "PHG_OUTBOX": str(outbox), "PHG_CONFIG": str(config), "PHG_FHIR_BASE_URL": sekmet.base_url}
    batch = readings(100, seed=3)
    with Outbox(outbox) as box:
        box.enqueue("fhir", [(r.key, r.to_json()) for r in batch])
        box.lease("fhir", len(batch), lease_seconds=LEASED)  # as a daemon killed mid-send leaves them
    due = time.monotonic() + LEASED
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([PHG, "run"], env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not Path(f"{outbox}-shm").exists():  # the daemon has the outbox open
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            small_fs.fill()
            full_at = time.monotonic()
            assert full_at < due, "the daemon took too long to start: the batch came due before the disk was full"
            while "the outbox cannot be written" not in log_path.read_text():
                assert proc.poll() is None, f"the daemon died on a full disk:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            time.sleep(1.5)  # a few more failed attempts
            assert proc.poll() is None, f"the daemon died on a full disk:\n{log_path.read_text()}"
            failures = log_path.read_text().count("the outbox cannot be written")
            assert failures >= 2 and "disk is full" in log_path.read_text() and str(outbox) in log_path.read_text()

            small_fs.free()
            freed_at = time.monotonic()
            deadline = freed_at + 20
            while states(outbox)["delivered"] < len(batch):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            recovered_s = time.monotonic() - freed_at
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert states(outbox) == {"queued": 0, "inflight": 0, "delivered": 100, "dead": 0}
    ids = [conditional_identifier(r, m) for r in batch for m in r.metrics]
    found = httpx.post(f"{sekmet.base_url}/Observation/_search", headers={"Accept": "application/fhir+json"},
                       data={"identifier": ",".join(f"{s}|{v}" for s, v in ids), "_count": "1000"},
                       timeout=60).raise_for_status().json()
    assert found["total"] == len(ids)  # every metric once
    print(f"full disk for {freed_at - full_at:.1f} s, {failures} failed outbox writes logged, "
          f"drained {recovered_s:.1f} s after space returned")


# ------------------------------------------------------------------------------------ small disks


def wal_size(path: Path) -> int:
    try:
        return os.path.getsize(f"{path}-wal")
    except FileNotFoundError:
        return 0


class Gateway:
    """Queues and delivers in-process as the daemon does (enqueue, lease, delivered), retrying a write
    that fails for space the way the worker does (later, the same call), and records the WAL's size
    after every write."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox
        self.failed_writes = 0
        self.largest_wal = 0

    def write(self, call, *args):
        for _ in range(20):
            try:
                return call(*args)
            except StorageError as exc:
                assert "disk is full" in str(exc), exc
                self.failed_writes += 1
            finally:
                self.largest_wal = max(self.largest_wal, wal_size(self.outbox.path))
        raise AssertionError(f"the outbox stayed full: {self.outbox.counts()}")

    def enqueue(self, batch: list[Reading]) -> None:
        self.write(self.outbox.enqueue, "fhir", [(r.key, r.to_json()) for r in batch])

    def deliver(self) -> None:
        while items := self.write(self.outbox.lease, "fhir", 50, 60.0):
            self.write(self.outbox.delivered, [i.id for i in items])


def test_600_readings_queue_and_deliver_on_a_2mib_disk_with_the_wal_bounded(tiny_fs):
    """Issue 10.9: SQLite's default WAL (checkpointed at about 4 MB) filled a 2 MiB disk after 56 readings."""
    path = tiny_fs.path / "outbox.sqlite"
    batch = readings(600, seed=4)
    with Outbox(path) as outbox:
        gateway = Gateway(outbox)
        for start in range(0, len(batch), 10):  # readings arrive a few at a time, delivery keeps up
            gateway.enqueue(batch[start:start + 10])
            if start % 100 == 90:
                gateway.deliver()
        gateway.deliver()
        assert outbox.counts() == {"queued": 0, "inflight": 0, "delivered": 600, "dead": 0}
    assert gateway.failed_writes == 0
    assert gateway.largest_wal <= WAL_LIMIT, gateway.largest_wal


def test_a_full_small_disk_fails_cleanly_and_recovers_with_less_space_than_the_wal_grew_to(tiny_fs):
    """Truly full: a write fails and stores nothing. Then freeing 384 KiB, far less than the WAL had
    grown to before the fix (1.6 MB for these 300 readings: phg refilled the freed space with WAL and
    stuck again), is enough to deliver everything and queue the other 300."""
    path = tiny_fs.path / "outbox.sqlite"
    first, second = readings(300, seed=5), readings(300, seed=6)
    with Outbox(path) as outbox:
        gateway = Gateway(outbox)
        for start in range(0, len(first), 10):
            gateway.enqueue(first[start:start + 10])
        tiny_fs.fill()
        more = iter(second[start:start + 10] for start in range(0, len(second), 10))
        for chunk in more:  # whatever the WAL gave back may take a batch or two; then the disk is truly full
            before = outbox.counts()
            try:
                outbox.enqueue("fhir", [(r.key, r.to_json()) for r in chunk])
            except StorageError as exc:
                assert "disk is full" in str(exc) and str(path) in str(exc)
                assert outbox.counts() == before  # nothing of the failed batch was stored
                break
        else:
            raise AssertionError("a full disk took every reading")
        tiny_fs.fill()  # whatever the failed write's checkpoint gave back is taken too: nothing is left

        with tiny_fs.filler.open("r+b") as filler:  # free 384 KiB
            filler.truncate(os.path.getsize(tiny_fs.filler) - 384 * 1024)
        gateway.deliver()
        gateway.enqueue(chunk)
        for chunk in more:
            gateway.enqueue(chunk)
            gateway.deliver()
        gateway.deliver()
        assert outbox.counts() == {"queued": 0, "inflight": 0, "delivered": 600, "dead": 0}
    assert gateway.largest_wal <= WAL_LIMIT, gateway.largest_wal
    print(f"{gateway.failed_writes} writes failed for space after 384 KiB were freed; largest WAL "
          f"{gateway.largest_wal} bytes")


def test_the_wal_has_sqlites_room_while_the_disk_has_room_and_the_tight_bound_once_it_has_not(tmp_path, monkeypatch):
    """The bound costs a checkpoint per large batch (docs/benchmarks.md, section 1), so it applies only
    below ROOMY_FREE free: the write after the free space fell below it brings the WAL back under WAL_LIMIT."""
    free = ROOMY_FREE
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=free, f_frsize=1, f_flag=0))
    batch = readings(1000, seed=7)
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        for start in range(0, 800, 100):
            outbox.enqueue("fhir", [(r.key, r.to_json()) for r in batch[start:start + 100]])
        assert outbox._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == ROOMY_CHECKPOINT_PAGES
        assert wal_size(outbox.path) > WAL_LIMIT  # grown as SQLite lets it: no checkpoint every 64 pages
        free = ROOMY_FREE - 1
        outbox.enqueue("fhir", [(r.key, r.to_json()) for r in batch[800:900]])  # commits, then checkpoints
        outbox.enqueue("fhir", [(r.key, r.to_json()) for r in batch[900:]])  # starts the WAL over, cut back
        assert outbox._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_CHECKPOINT_PAGES
        assert wal_size(outbox.path) <= WAL_LIMIT
        assert outbox.counts()["queued"] == 1000


def test_doctor_warns_when_the_outboxs_file_system_is_low(tmp_path, monkeypatch):
    from phg import doctor

    lines: list[str] = []
    checks = doctor.Checks(lines.append)
    monkeypatch.setattr(doctor.os, "statvfs", lambda _: os.statvfs_result((4096, 4096, 512, 100, 75, 0, 0, 0, 0, 255)))
    doctor._free_space(checks, tmp_path)
    assert lines == [f"  warn  [outbox] only 0.3 MiB free of 2.0 MiB on the file system holding {tmp_path}: readings "
                     "cannot be queued once it is full; free some space, move [outbox] path, or shorten [outbox] "
                     "keep_delivered"]
    monkeypatch.undo()
    lines.clear()
    doctor._free_space(checks, tmp_path)  # the test machine's disk: plenty
    assert lines == [] and checks.ok


# ------------------------------------------------------------------------------------ read-only


def test_send_on_a_read_only_filesystem_fails_loudly_and_queues_nothing(small_fs, env):
    outbox = small_fs.path / "outbox.sqlite"
    env = {**env, "PHG_OUTBOX": str(outbox)}
    assert phg("send", "--no-deliver", "-", env=env, stdin=jsonl(readings(10, seed=1))).returncode == 0
    small_fs.remount("ro")  # a read-only mount: root cannot write either (chmod would not stop root)

    refused = phg("send", "--no-deliver", "-", env=env, stdin=jsonl(readings(20, seed=2)))
    assert refused.returncode == EXIT_IOERR, refused.stdout + refused.stderr
    assert str(outbox) in refused.stderr and "read-only" in refused.stderr
    assert "nothing was queued: 20 reading(s) not stored" in refused.stderr
    assert "queued" not in refused.stdout and "Traceback" not in refused.stderr

    small_fs.remount("rw")
    assert states(outbox)["queued"] == 10


# ------------------------------------------------------------------------------------ a directory not writable


@pytest.mark.parametrize("store", [Outbox, SqliteViewStore])
def test_a_file_that_cannot_be_created_is_a_storage_error_naming_it(tmp_path, monkeypatch, store):
    """Both SQLite stores create their file first (owner-only: create_private), before SQLite's own errors apply."""
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    path = tmp_path / "store.sqlite"
    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(StorageError) as caught:
        store(path)
    prefix = "view store " if store is SqliteViewStore else ""
    assert str(caught.value) == f"{prefix}{path}: cannot create the file: Permission denied"
    assert caught.value.path == str(path) and not path.exists()


@pytest.mark.parametrize("store", [Outbox, SqliteViewStore])
def test_a_file_in_the_way_of_the_directory_is_named(tmp_path, store):
    """A path below a file (a typo, a file where the data directory should be): the file in the way is named, not
    mkdir's "File exists"."""
    (tmp_path / "data").write_text("")
    path = tmp_path / "data" / "phg" / "store.sqlite"
    with pytest.raises(StorageError) as caught:
        store(path)
    prefix = "view store " if store is SqliteViewStore else ""
    in_the_way = tmp_path / "data"
    assert str(caught.value) == f"{prefix}{path}: cannot create its directory: {in_the_way} is a file, not a directory"


def test_phg_run_with_an_outbox_it_cannot_create_says_it_did_not_start(tmp_path, env):
    """Not "delivery stopped ... what is queued stays queued" (review: nothing had started): one error, what it means,
    exit 74."""
    (tmp_path / "data").write_text("")
    outbox = tmp_path / "data" / "outbox.sqlite"
    result = phg("run", env={**env, "PHG_OUTBOX": str(outbox)})
    assert result.returncode == EXIT_IOERR, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"error: {outbox}: cannot create its directory: {tmp_path / 'data'} is a file, not a directory",
        "phg run did not start: nothing was collected or delivered"]


def test_send_into_a_directory_this_user_cannot_write_fails_in_one_line(env):
    """A directory that exists but is not writable (0555) for a user who is not root (root may write anywhere): not
    a PermissionError traceback but the storage failure's message and exit code."""
    if os.geteuid() != 0:
        user = []
    elif shutil.which("setpriv"):
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]  # nobody
        if subprocess.run([*user, sys.executable, "-c", "pass"], capture_output=True, timeout=60).returncode:
            # .ci/python's CPythons live under root's 0700 home: nobody cannot load them (libpython)
            pytest.skip(f"{sys.executable} cannot run as nobody here; the refusal itself is covered by "
                        "test_a_file_that_cannot_be_created_is_a_storage_error_naming_it")
    else:
        pytest.skip("root without setpriv: no user here for whom a 0555 directory is not writable")
    home = Path(tempfile.mkdtemp())  # not under tmp_path, which is its owner's alone
    try:
        home.chmod(0o755)
        (home / "readonly").mkdir(mode=0o555)
        outbox = home / "readonly" / "outbox.sqlite"
        refused = subprocess.run(
            [*user, PHG, "send", "--no-deliver", "-"], input=jsonl(readings(5)), capture_output=True, text=True,
            timeout=60, env={**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home),
                             "PHG_OUTBOX": str(outbox)})
    finally:
        shutil.rmtree(home)
    assert refused.returncode == EXIT_IOERR, refused.stdout + refused.stderr
    assert refused.stderr.splitlines() == [
        f"error: {outbox}: cannot create the file: Permission denied",
        "nothing was queued: 5 reading(s) not stored; send them again once the outbox is writable"]


# ------------------------------------------------------------------------------------ not an outbox


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path, env):
    path = tmp_path / "outbox.sqlite"
    garbage = random.Random(7).randbytes(8192)
    path.write_bytes(garbage)
    with pytest.raises(StorageError, match="not a phg outbox: the file is not an SQLite database") as caught:
        Outbox(path)
    assert str(path) in str(caught.value)

    result = phg("send", "--no-deliver", "-", env={**env, "PHG_OUTBOX": str(path)}, stdin=jsonl(readings(5)))
    assert result.returncode == EXIT_IOERR and "nothing was queued" in result.stderr
    assert str(path) in result.stderr and "not an SQLite database" in result.stderr and "Traceback" not in result.stderr
    listing = phg("queue", "ls", env={**env, "PHG_OUTBOX": str(path)})
    assert listing.returncode != 0 and "not an SQLite database" in listing.stderr and "Traceback" not in listing.stderr
    assert path.read_bytes() == garbage


@pytest.mark.parametrize("kind", ["other tables", "other application_id", "user_version without our tables"])
def test_a_foreign_sqlite_database_is_refused_not_migrated_over(tmp_path, kind):
    path = tmp_path / "notes.sqlite"
    with sqlite3.connect(path) as conn:
        if kind == "other tables":
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        elif kind == "other application_id":
            conn.execute("PRAGMA application_id = 1095774532")  # another program's stamp
        else:
            conn.execute("CREATE TABLE settings (k TEXT)")
            conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="not a phg outbox: an SQLite database") as caught:
        Outbox(path)
    assert str(path) in str(caught.value) and "phg will not write into it" in str(caught.value)
    assert path.read_bytes() == before
    with sqlite3.connect(path) as conn:
        assert "item" not in {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_a_phg_outbox_is_stamped_and_opened_without_a_write(tmp_path):
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x7068674F
        conn.execute("PRAGMA application_id = 0")  # as written by a phg from before the stamp
    conn.close()
    Outbox(path).close()  # still ours (its own tables): stamped now
    # Another process holds the write lock: opening an up-to-date outbox must not wait for it.
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with Outbox(path) as outbox:
            assert outbox.counts()["queued"] == 0
        assert time.monotonic() - started < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_damaged_outbox_says_so(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        outbox.enqueue("fhir", [(r.key, r.to_json()) for r in readings(200)])
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page:len(data) - page] = random.Random(1).randbytes(len(data) - 3 * page)  # keep header and schema
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="damaged|not an SQLite database") as caught:
        with Outbox(path) as outbox:
            outbox.items(limit=1000)
    assert str(path) in str(caught.value)


def test_a_newer_outbox_is_still_a_config_error(tmp_path):
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        Outbox(path)
