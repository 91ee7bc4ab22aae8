"""One embedded catalog server per data directory, shared by the processes using it.

Decision 0015: the first user starts it, later ones find it through
``catalog/server.json`` (0600), a stale record is replaced, concurrent first users
start one server, and it stops itself once nobody holds its lease. The CLI refuses
bad arguments before any catalog opens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from launcher_sockets import accepts
from waiting import wait_until

from multiscope import catalog_server, launcher

pytestmark = pytest.mark.integration

# Acquire the data directory's server, print its PID and whether we started it,
# then hold the lease until stdin closes (or the process is killed).
HOLD = textwrap.dedent(
    """
    import json, sys
    from multiscope import catalog_server, launcher
    lease = catalog_server.acquire(sys.argv[1])
    print(json.dumps({"pid": lease.pid, "started_here": lease.started_here}), flush=True)
    sys.stdin.read()
    lease.release()
    """
)


def _hold(data_dir: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _answer(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    assert line, f"the holder exited with {process.wait(10)}"
    return json.loads(line)


def _servers_of(data_dir: Path) -> list[int]:
    """PIDs of catalog servers (this module's command line) serving ``data_dir``.

    Started with ``python -m``, the arguments are NUL-separated; forked by the launcher,
    the command line is its title, one shell-quoted string (``launcher.command_line``).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = launcher.command_line(int(entry.name)) or []
            if "multiscope.catalog_server" in cmd and str(data_dir) in cmd:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path.resolve()
    yield root
    for pid in _servers_of(root):  # whatever a failed test left running
        os.kill(pid, signal.SIGTERM)


def test_second_process_finds_the_running_server(data_dir):
    lease = catalog_server.acquire(data_dir)
    try:
        assert lease.started_here
        state = catalog_server.state_path(data_dir)
        assert stat.S_IMODE(state.stat().st_mode) == 0o600  # it holds the key
        recorded = json.loads(state.read_text())
        assert recorded["pid"] == lease.pid and recorded["url"] == lease.url
        other = _hold(data_dir)
        try:
            answer = _answer(other)
        finally:
            other.communicate("", timeout=30)
        assert answer == {"pid": lease.pid, "started_here": False}
        assert _servers_of(data_dir) == [lease.pid]
        # Readers and the writer of the run and event-table databases never wait for
        # each other (tiled's SQLite table driver does not wait for a lock).
        for name in ("catalog.db", "tables.sqlite"):
            with contextlib.closing(sqlite3.connect(data_dir / "catalog" / name)) as db:
                assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",), name
    finally:
        lease.release()
    assert catalog_server.stop(data_dir) == "stopped"
    wait_until(lambda: not _alive(lease.pid), timeout=30, message="server still running")
    assert not catalog_server.state_path(data_dir).exists()


def test_stale_state_file_with_a_dead_pid_is_replaced(data_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    catalog_dir = data_dir / "catalog"
    catalog_dir.mkdir()
    stale = {"url": "http://127.0.0.1:9", "pid": dead.pid, "api_key": "0" * 64, "started": 0.0}
    catalog_server.state_path(data_dir).write_text(json.dumps(stale))
    lease = catalog_server.acquire(data_dir)
    try:
        assert lease.started_here and lease.pid != dead.pid and _alive(lease.pid)
        assert json.loads(catalog_server.state_path(data_dir).read_text())["pid"] == lease.pid
        assert lease.api_key != stale["api_key"]
    finally:
        lease.release()
        catalog_server.stop(data_dir)


def test_concurrent_first_use_by_two_processes_starts_one_server(data_dir):
    first, second = _hold(data_dir), _hold(data_dir)  # both find no server
    try:
        answers = [_answer(first), _answer(second)]
        assert answers[0]["pid"] == answers[1]["pid"]
        assert sorted(a["started_here"] for a in answers) == [False, True]
        assert _servers_of(data_dir) == [answers[0]["pid"]]
    finally:
        for process in (first, second):
            process.communicate("", timeout=30)
    catalog_server.stop(data_dir)


def test_server_in_use_is_kept_and_stops_once_idle_even_after_a_killed_user(data_dir):
    holder = _hold(data_dir, env={catalog_server.IDLE_ENV: "2"})
    try:
        pid = _answer(holder)["pid"]
        assert catalog_server.stop(data_dir) == "in use"
        assert _alive(pid)
        # Long past the idle time the server stays while its lease is held.
        time.sleep(4)  # not synchronisation: the time the server must *not* stop in
        assert _alive(pid) and catalog_server.running(data_dir) is not None
        holder.kill()  # a killed user's lease goes with it (flock)
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    wait_until(lambda: not _alive(pid), timeout=60, message="idle server did not stop")
    assert not catalog_server.state_path(data_dir).exists()


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "multiscope", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("catalog", "show", "x!"), "names no run"),
        (("catalog", "show", "0"), "names no run"),
        (("catalog", "list", "--limit", "0"), "--limit 0"),
        (("export", "-1", "--out", "{file}"), "a file is in the way"),
        (("export", "nope", "--out", "{dir}"), "names no run"),
    ],
)
def test_argument_errors_come_before_any_catalog_opens(data_dir, args, message):
    a_file = data_dir / "a_file"
    a_file.write_text("not a directory")
    args = [arg.format(file=a_file, dir=data_dir / "out") for arg in args]
    result = _cli(data_dir / "data", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (data_dir / "data" / "catalog").exists()  # nothing opened, nothing started


def test_a_file_given_as_data_dir_says_what_is_wrong(data_dir):
    a_file = data_dir / "a_file"
    a_file.write_text("not a directory")
    for given in (a_file, a_file / "below"):
        result = _cli(given, "catalog", "list")
        assert result.returncode == 2
        assert f"{a_file} is a file, not a directory" in result.stderr, result.stderr
        assert "Errno" not in result.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_cli_reads_what_the_tiled_client_reads(data_dir):
    """`catalog list/show` read the server over plain HTTP (RunIndex): the same runs,
    the same account of each, as the tiled client's Catalog."""
    from bluesky import RunEngine
    from bluesky.plans import count, scan
    from ophyd.sim import det, motor

    from multiscope.catalog import Catalog, RunSummary, describe_run
    from multiscope.catalog_index import RunIndex

    with Catalog.embedded(data_dir) as catalog:
        RE = RunEngine({})
        RE.subscribe(catalog.writer())
        uids = [RE(count([det], 2))[0], RE(scan([det], motor, 0, 1, 3))[0], RE(count([det]))[0]]
        assert catalog.drain(60)
        lease = catalog_server.acquire(data_dir)
        try:
            with RunIndex(lease.url, lease.api_key) as index:
                assert index.count() == 3
                listed = [RunSummary.from_metadata(u, md) for u, md in index.recent(2)]
                assert listed == catalog.runs(2)
                assert [s.uid for s in listed] == uids[1:]
                # (a prefix of digits only would be a scan id: 9 characters hold the dash)
                for name in ("-1", "-3", "2", uids[0], uids[1][:9]):
                    uid, metadata = index.find(name)
                    assert describe_run(metadata, index.streams(uid)) == catalog.describe(name)
                for missing, message in [("-4", r"holds 3 run\(s\)"), ("99", "scan id 99"),
                                         ("deadbeef", "no run .* 'deadbeef'")]:  # fmt: skip
                    with pytest.raises(KeyError, match=message):
                        index.find(missing)
        finally:
            lease.release()
    shown = _cli(data_dir, "catalog", "show", uids[1][:9])
    assert shown.returncode == 0 and f"uid:         {uids[1]}" in shown.stdout
    listing = _cli(data_dir, "catalog", "list").stdout.splitlines()
    assert listing[0].split() == ["scan", "uid", "started", "plan", "status", "events"]
    assert [line.split()[1] for line in listing[1:]] == [u[:8] for u in uids]
    catalog_server.stop(data_dir)


def test_a_server_whose_data_directory_is_deleted_stops(tmp_path):
    """pytest and users delete data directories; their server must not outlive them."""
    data_dir = (tmp_path / "doomed").resolve()
    holder = _hold(data_dir, env={catalog_server.IDLE_ENV: "600"})  # idle would take 10 min
    try:
        pid = _answer(holder)["pid"]
    finally:
        holder.communicate("", timeout=30)
    assert _alive(pid)
    shutil.rmtree(data_dir)
    wait_until(lambda: not _alive(pid), timeout=60, message="server outlived its directory")


def test_a_server_slow_to_answer_is_kept_for_its_users(data_dir):
    """A server that answers its health check late (a loaded machine: here stopped for
    3 s) is used by the next user, not taken for hung and replaced under the first."""
    first = catalog_server.acquire(data_dir)
    os.kill(first.pid, signal.SIGSTOP)
    resume = threading.Timer(3.0, os.kill, (first.pid, signal.SIGCONT))
    resume.start()
    try:
        second = catalog_server.acquire(data_dir)
    finally:
        resume.join()
        os.kill(first.pid, signal.SIGCONT)
    try:
        assert second.pid == first.pid and second.url == first.url
        assert _servers_of(data_dir) == [first.pid]
    finally:
        second.release()
        first.release()
    assert catalog_server.stop(data_dir) == "stopped"


def test_a_record_naming_a_live_process_that_started_later_is_replaced(data_dir):
    """PIDs get reused: ``server.json`` names its server by PID and start time (0037)."""
    lease = catalog_server.acquire(data_dir)
    lease.release()
    assert catalog_server.stop(data_dir) == "stopped"
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        # The record of a server whose PID another process now has: alive, another start.
        stale = {
            "url": "http://127.0.0.1:9",
            "pid": other.pid,
            "api_key": "0" * 64,
            "started": time.time(),
            "start_ticks": catalog_server._start_ticks(other.pid) - 1,
        }
        catalog_server.state_path(data_dir).write_text(json.dumps(stale))
        lease = catalog_server.acquire(data_dir)
        try:
            assert lease.started_here and lease.pid != other.pid
            assert other.poll() is None  # not taken for the server and stopped
            record = json.loads(catalog_server.state_path(data_dir).read_text())
            assert record["pid"] == lease.pid
            assert record["start_ticks"] == catalog_server._start_ticks(lease.pid)
        finally:
            lease.release()
    finally:
        other.communicate(b"", timeout=30)
    assert catalog_server.stop(data_dir) == "stopped"


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def own_launchers(monkeypatch):
    """Launchers of this test only (a socket directory of its own), killed at its end."""
    run = Path(tempfile.mkdtemp(prefix="msl-", dir="/tmp"))
    monkeypatch.setenv(launcher.DIR_ENV, str(run))
    yield run
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and str(run).encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
    shutil.rmtree(run, ignore_errors=True)


def test_a_server_forked_by_the_launcher_outlives_it_and_is_found(data_dir, own_launchers):
    """The second start in a fresh socket directory is forked by the launcher the first
    started; the server is found by command line and by record, and a killed launcher
    leaves it serving its users."""
    first = catalog_server.acquire(data_dir / "a")
    assert _parent_of(first.pid) == os.getpid()  # no launcher yet: started with python -m
    first.release()
    sock = launcher.socket_path(catalog_server.LAUNCHER_PRELOAD)
    wait_until(lambda: accepts(sock), timeout=90, message="no launcher serves")
    lease = catalog_server.acquire(data_dir / "b")
    try:
        forker = _parent_of(lease.pid)
        assert (
            forker != os.getpid()
            and str(sock).encode() in Path(f"/proc/{forker}/cmdline").read_bytes()
        )
        assert _servers_of(data_dir / "b") == [lease.pid]  # its own command line in ps
        os.kill(forker, signal.SIGKILL)
        wait_until(lambda: not _alive(forker), timeout=30, message="launcher survived")
        other = _hold(data_dir / "b")
        try:
            assert _answer(other) == {"pid": lease.pid, "started_here": False}
        finally:
            other.communicate("", timeout=30)
    finally:
        lease.release()
    assert catalog_server.stop(data_dir / "b") == "stopped"
    assert catalog_server.stop(data_dir / "a") == "stopped"


def test_with_the_launcher_disabled_servers_start_with_python_m(
    data_dir, own_launchers, monkeypatch
):
    monkeypatch.setenv(launcher.DISABLE_ENV, "0")
    for name in ("a", "b"):
        lease = catalog_server.acquire(data_dir / name)
        try:
            assert _parent_of(lease.pid) == os.getpid()
        finally:
            lease.release()
        assert catalog_server.stop(data_dir / name) == "stopped"
    assert not list(own_launchers.rglob("*.sock"))


def test_a_copy_made_while_the_server_runs_gets_a_server_of_its_own(data_dir):
    """``server.json`` travels with a copied directory (decision 0023): the copy's users
    must not be handed the original's server, which serves the original's files."""
    original, copy = data_dir / "original", data_dir / "copy"
    lease = catalog_server.acquire(original)
    try:
        shutil.copytree(original, copy)
        assert json.loads(catalog_server.state_path(copy).read_text())["pid"] == lease.pid
        other = catalog_server.acquire(copy)
        try:
            assert other.started_here and other.pid != lease.pid
            assert _servers_of(copy) == [other.pid] and _servers_of(original) == [lease.pid]
        finally:
            other.release()
    finally:
        lease.release()
    assert catalog_server.stop(copy) == "stopped"
    assert catalog_server.stop(original) == "stopped"
