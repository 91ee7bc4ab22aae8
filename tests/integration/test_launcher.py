"""The launcher forks processes that have their libraries imported already (decision 0037).

A child must be what ``python -m module args`` would be: the caller's arguments,
environment, working directory and descriptors, stdin from /dev/null, its own session,
its own command line in ``/proc``. The launcher is only an optimisation: a dead or idle
one is replaced, and its children outlive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from launcher_sockets import accepts
from waiting import wait_until

from multiscope import launcher

pytestmark = pytest.mark.integration

PROBE = textwrap.dedent(
    """
    import json, os, signal, sys

    IMPORTED_BY = os.getpid()  # the launcher's PID when it was preloaded there
    HELD = None
    if os.environ.get("PROBE_HELD_NOTE"):  # hold a file open, as an imported library may
        HELD = open(__file__, "rb")
        with open(os.environ["PROBE_HELD_NOTE"], "w") as note:
            note.write(str(HELD.fileno()))


    def main(argv):
        report_fd, mode = int(argv[0]), argv[1]
        report = {
            "argv": argv, "pid": os.getpid(), "sid": os.getsid(0), "cwd": os.getcwd(),
            "env": dict(os.environ), "imported_by": IMPORTED_BY,
            "stdin": os.readlink("/proc/self/fd/0"),
            "cmdline": open("/proc/self/cmdline", "rb").read().decode(),
            "held": os.pread(HELD.fileno(), 20, 0).decode() if HELD else None,
        }
        os.write(report_fd, json.dumps(report).encode())
        os.close(report_fd)
        print("probe wrote to stdout", flush=True)
        if mode == "fail":
            raise RuntimeError("probe failed on purpose")
        if mode == "live":  # until killed
            while True:
                signal.pause()
    """
)
PRELOAD = ("probe_child",)


@pytest.fixture
def isolated(monkeypatch):
    """Its own socket directory (short: a socket path holds 107 bytes) and probe module."""
    root = Path(tempfile.mkdtemp(prefix="msl-", dir="/tmp"))
    (root / "run").mkdir(mode=0o700)
    (root / "mods").mkdir()
    (root / "mods" / "probe_child.py").write_text(PROBE)
    monkeypatch.setenv(launcher.DIR_ENV, str(root / "run"))
    # Found by us and by the launcher at the same place (it checks).
    monkeypatch.syspath_prepend(str(root / "mods"))
    pythonpath = os.environ.get("PYTHONPATH")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(root / "mods"), pythonpath]))
    )
    yield root
    path = launcher.socket_path(PRELOAD)
    for pid in _launchers_serving(path):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def _launchers_serving(path: Path | None) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                if path is not None and str(path).encode() in cmd:
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _launch(mode: str, out: int, report_w: int, *, idle_s: float = 30.0, env=None, cwd=None):
    return launcher.launch(
        "probe_child",
        ["9", mode],
        preload=PRELOAD,
        env=env if env is not None else dict(os.environ),
        fds={1: out, 2: out, 9: report_w},
        idle_s=idle_s,
        cwd=cwd,
    )


def _report(report_r: int) -> dict:
    chunks = []
    while chunk := os.read(report_r, 65536):
        chunks.append(chunk)
    return json.loads(b"".join(chunks))


class Probe:
    """A pipe for the child's report and a file for its stdout and stderr."""

    def __init__(self, root: Path):
        self.log = root / f"child-{len(list(root.glob('child-*')))}.log"
        self.out = os.open(self.log, os.O_WRONLY | os.O_CREAT, 0o600)
        self.report_r, self.report_w = os.pipe()

    def launch(self, mode: str, **kwargs) -> int | None:
        try:
            return _launch(mode, self.out, self.report_w, **kwargs)
        finally:
            os.close(self.report_w)  # the child holds the only write end: EOF when it is done
            os.close(self.out)

    def report(self) -> dict:
        try:
            return _report(self.report_r)
        finally:
            os.close(self.report_r)


def _serving_launch(root: Path, mode: str, **kwargs) -> tuple[int, Probe]:
    """Launch once a launcher serves: a call that finds none starts one, which is
    waited for (calling again meanwhile would start more, racing for its lock)."""
    path = launcher.socket_path(PRELOAD)
    for _ in range(3):
        probe = Probe(root)
        pid = probe.launch(mode, **kwargs)
        if pid is not None:
            return pid, probe
        os.close(probe.report_r)
        wait_until(lambda: accepts(path), timeout=60, message=f"no launcher serves {path}")
    raise AssertionError(f"a launcher serving {path} took no request three times")


def test_a_child_is_what_python_m_would_start(isolated):
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ["PYTHONPATH"], "MARK": "x y"}
    cwd = isolated / "work"
    cwd.mkdir()
    pid, probe = _serving_launch(isolated, "exit", env=env, cwd=str(cwd))
    report = probe.report()
    launcher_pid = report["imported_by"]  # preloaded there, not imported again
    assert launcher_pid in _launchers_serving(launcher.socket_path(PRELOAD))
    assert report["pid"] == pid != launcher_pid
    assert report["argv"] == ["9", "exit"]
    assert report["env"] == env  # exactly the caller's, none of the launcher's
    assert report["cwd"] == str(cwd)
    assert report["sid"] == pid  # its own session: a Ctrl-C in the caller's terminal leaves it
    assert report["stdin"] == os.devnull
    assert report["cmdline"].rstrip("\0") == f"{sys.executable} -m probe_child 9 exit"
    wait_until(lambda: not _alive(pid), timeout=30, message="the child did not end")
    assert probe.log.read_text() == "probe wrote to stdout\n"


def test_a_failing_child_reports_to_its_log_and_the_launcher_serves_on(isolated):
    pid, probe = _serving_launch(isolated, "fail")
    first = probe.report()["imported_by"]
    wait_until(lambda: not _alive(pid), timeout=30, message="the child did not end")
    log = probe.log.read_text()
    assert "Traceback" in log and "RuntimeError: probe failed on purpose" in log
    again = Probe(isolated)
    assert again.launch("exit") is not None
    assert again.report()["imported_by"] == first


def test_a_killed_launcher_is_replaced_and_its_children_live_on(isolated):
    path = launcher.socket_path(PRELOAD)
    child, probe = _serving_launch(isolated, "live")
    first = probe.report()["imported_by"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not _alive(first), timeout=30, message="the launcher survived SIGKILL")
    try:
        assert _alive(child)  # its own session: not taken down with the launcher
        # The dead launcher's socket refuses: no child, and a new launcher starts.
        refused = Probe(isolated)
        assert refused.launch("exit") is None
        os.close(refused.report_r)
        wait_until(
            lambda: [p for p in _launchers_serving(path) if p != first],
            timeout=60,
            message="no new launcher started",
        )
        pid, probe = _serving_launch(isolated, "exit")
        second = probe.report()["imported_by"]
        assert second != first and second in _launchers_serving(path)
    finally:
        os.kill(child, signal.SIGKILL)


def test_an_idle_launcher_stops_and_removes_its_socket(isolated):
    path = launcher.socket_path(PRELOAD)
    pid, probe = _serving_launch(isolated, "exit", idle_s=2.0)
    probe.report()
    wait_until(
        lambda: not path.exists() and not _launchers_serving(path),
        timeout=60,
        message="the idle launcher did not stop",
    )
    assert not _alive(pid)


def test_disabled_or_unsafe_socket_directories_launch_nothing(isolated, monkeypatch):
    monkeypatch.setenv(launcher.DISABLE_ENV, "0")
    probe = Probe(isolated)
    assert probe.launch("exit") is None
    os.close(probe.report_r)
    monkeypatch.delenv(launcher.DISABLE_ENV)
    open_dir = isolated / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    monkeypatch.setenv(launcher.DIR_ENV, str(open_dir))
    assert launcher.socket_path(PRELOAD) is None  # others could enter: no socket there
    probe = Probe(isolated)
    assert probe.launch("exit") is None
    os.close(probe.report_r)
    assert not list(open_dir.rglob("*.sock"))


def test_a_childs_command_line_reads_back_exactly(isolated):
    """``ps`` shows a child's own command line; :func:`launcher.command_line` parses it
    back into the arguments, spaces and quotes included (the IOC and catalog server
    identity checks read it)."""
    args = ["9", "live", "a b", "it's", "--port", "5064"]
    path = launcher.socket_path(PRELOAD)
    first = Probe(isolated)
    assert first.launch("exit") is None  # starts the launcher
    os.close(first.report_r)
    wait_until(lambda: accepts(path), timeout=60, message=f"no launcher serves {path}")
    probe = Probe(isolated)
    pid = launcher.launch(
        "probe_child",
        args,
        preload=PRELOAD,
        env=dict(os.environ),
        fds={1: probe.out, 2: probe.out, 9: probe.report_w},
        idle_s=30.0,
    )
    os.close(probe.report_w)
    os.close(probe.out)
    try:
        assert probe.report()["argv"] == args
        assert launcher.command_line(pid) == [sys.executable, "-m", "probe_child", *args]
    finally:
        os.kill(pid, signal.SIGKILL)
    # A process started the plain way: its NUL-separated arguments, spaces kept.
    plain = [sys.executable, "-c", "import sys; sys.stdin.read()", "a b"]
    other = subprocess.Popen(plain, stdin=subprocess.PIPE)
    try:  # until it has exec'd, /proc shows pytest's command line, or none
        wait_until(
            lambda: launcher.command_line(other.pid) == plain,
            timeout=30,
            message=f"its command line never read back as {plain}",
        )
    finally:
        other.communicate(b"", timeout=30)


def test_a_descriptor_the_launcher_holds_is_never_overwritten(isolated, monkeypatch):
    """A caller asking for a descriptor number a preloaded module holds open is refused
    (and starts its process the plain way); the module's file stays intact."""
    note = isolated / "held-fd"
    monkeypatch.setenv("PROBE_HELD_NOTE", str(note))
    pid, probe = _serving_launch(isolated, "exit")
    assert probe.report()["held"] == PROBE[:20]  # the child reads the inherited file
    held = int(note.read_text())
    clash = Probe(isolated)
    pid = launcher.launch(
        "probe_child",
        [str(held), "exit"],
        preload=PRELOAD,
        env=dict(os.environ),
        fds={1: clash.out, 2: clash.out, held: clash.report_w},
        idle_s=30.0,
    )
    os.close(clash.report_w)
    os.close(clash.out)
    os.close(clash.report_r)
    assert pid is None
    log = launcher.socket_path(PRELOAD).with_suffix(".log").read_text()
    assert f"descriptor {held} is in use in the launcher" in log
    pid, probe = _serving_launch(isolated, "exit")
    assert probe.report()["held"] == PROBE[:20]


def test_a_launcher_that_would_import_other_code_than_its_caller_refuses(isolated, monkeypatch):
    """A package found elsewhere by the launcher than by its caller (here: another
    ``probe_child`` first on the launcher's path) would give the children other code."""
    other = isolated / "other"
    other.mkdir()
    (other / "probe_child.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(other), os.environ["PYTHONPATH"]]))
    path = launcher.socket_path(PRELOAD)
    log = path.with_suffix(".log")
    probe = Probe(isolated)
    assert probe.launch("exit") is None  # starts a launcher, which checks and stops
    os.close(probe.report_r)
    wait_until(
        lambda: log.exists() and "stopping" in log.read_text(),
        timeout=60,
        message="the launcher did not refuse",
    )
    assert str(other / "probe_child.py") in log.read_text()
    assert not path.exists()
    again = Probe(isolated)
    assert again.launch("exit") is None  # still refused: the caller starts it the plain way
    os.close(again.report_r)
