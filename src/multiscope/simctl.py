"""Start, watch and stop the simulated IOCs (``multiscope sim start/stop/status``).

Each IOC runs as ``python -m <module> --prefix P --port N`` in its own process
group, with the server environment of :func:`multiscope.config.ca_server_environment`
and its output in a log file. When a launcher runs (:mod:`multiscope.launcher`,
decision 0037), it forks the IOC from a process that has imported the simulators
already (1.4 CPU-s for all six, paid once instead of at every start); the IOC shows
the same command line. A JSON state file, ``<data_dir>/sim/state.json``,
records what was started so a later command can report or stop it; a recorded
PID counts as alive only if the process exists *and* its command line is the
recorded IOC (PIDs get reused).

An IOC may need another: the TXM renders with the ring current of the ring IOC,
served on its own process as at a facility (decision 0009). Starting ``txm``
starts ``ring`` first and tells the TXM where it is (:func:`link_args`).

Only the standard library, :mod:`multiscope.config`, ``ports`` and ``launcher`` are
imported: the simulated hardware is reached by module name, never imported (the
launcher imports it in its own process).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from multiscope import launcher
from multiscope.config import ca_server_environment
from multiscope.ports import free_port, port_is_free, range_permits

__all__ = [
    "DEFAULT_PORTS",
    "LAUNCHER_PRELOAD",
    "DEFAULT_PREFIXES",
    "READY_PVS",
    "SIM_MODULES",
    "IOCProcess",
    "IOCNotReadyError",
    "REQUIRES",
    "free_port",
    "link_args",
    "data_args",
    "names",
    "pid_exists",
    "port_is_free",
    "is_alive",
    "start",
    "start_ioc",
    "state_file",
    "status",
    "stop",
    "stop_ioc",
    "wait_until_ready",
]

SIM_MODULES: dict[str, str] = {
    "demo": "sim_devices.demo",
    "ring": "sim_devices.ring",
    "txm": "sim_devices.txm",
    "fibsem": "sim_devices.fibsem",
    "laser": "sim_devices.laser",
    "xrm": "sim_devices.xrm",
}
# Imported once by the launcher that forks the IOCs (they share most of their imports).
LAUNCHER_PRELOAD = tuple(SIM_MODULES.values())
DEFAULT_PORTS: dict[str, int] = {
    "demo": 5070, "txm": 5071, "ring": 5072, "fibsem": 5073, "laser": 5074, "xrm": 5075,
}  # fmt: skip
DEFAULT_PREFIXES: dict[str, str] = {
    "demo": "DEMO:", "txm": "TXM:", "ring": "SR:", "fibsem": "PFIB:", "laser": "LASER:",
    "xrm": "XRM:",
}  # fmt: skip
# One PV per IOC (after the prefix) that answers once the server is up.
READY_PVS: dict[str, str] = {
    "demo": "m1.RBV",
    "ring": "ring:current",
    "txm": "sample:theta.RBV",
    "fibsem": "stage:tilt.RBV",
    "laser": "table:x.RBV",
    "xrm": "sample:theta.RBV",
}
# IOCs an IOC reads from (started first); it is told where with link_args.
REQUIRES: dict[str, tuple[str, ...]] = {"txm": ("ring",)}

STOP_GRACE_S = 3.0
# An IOC serves once it is ready; a live process is waited for this long. A cold numba
# cache on a loaded 2-core machine took longer than the 10 s this used to be (issue 9).
READY_TIMEOUT_S = 600.0
# After this long, `wait_until_ready` explains the wait (once).
SLOW_START_S = 5.0


class IOCNotReadyError(RuntimeError):
    """The IOC process died or did not answer in time (message carries the log tail)."""


@dataclass
class IOCProcess:
    """One simulated IOC process as recorded in the state file."""

    name: str
    prefix: str
    port: int
    pid: int
    log_path: str
    module: str
    started: float = field(default_factory=time.time)

    @property
    def ready_pv(self) -> str:
        """A PV that exists once the IOC serves."""
        return self.prefix + READY_PVS.get(self.name, "")


def names() -> list[str]:
    """Names of the simulated IOCs, in the order of the imaging chain (requirements first)."""
    return list(SIM_MODULES)


def link_args(name: str, required: dict[str, IOCProcess]) -> list[str]:
    """Options telling IOC ``name`` where its :data:`REQUIRES` run.

    ``--<req>-prefix P --<req>-port N`` for each required IOC, e.g. the TXM's
    ``--ring-prefix SR: --ring-port 5072``.
    """
    args: list[str] = []
    for requirement in REQUIRES.get(name, ()):
        ioc = required[requirement]
        args += [f"--{requirement}-prefix", ioc.prefix, f"--{requirement}-port", str(ioc.port)]
    return args


def data_args(name: str, data_dir: str | os.PathLike) -> list[str]:
    """Options putting IOC ``name``'s own files in the data directory.

    The PFIB-SEM keeps its sample state (slices milled, depth) in
    ``<data_dir>/sim/fibsem-state.json``, the laser mill its cut count and material map
    in ``<data_dir>/sim/laser-state.json`` (and ``.map.npz``), beside the data, so a
    restarted IOC resumes.
    """
    if name in ("fibsem", "laser"):
        return ["--state-file", str(Path(data_dir) / "sim" / f"{name}-state.json")]
    return []


def start_ioc(
    name: str,
    *,
    prefix: str,
    port: int,
    log_dir: str | os.PathLike,
    extra_args: Sequence[str] = (),
) -> IOCProcess:
    """Launch ``python -m SIM_MODULES[name]`` in its own process group; do not wait.

    Parameters
    ----------
    name : str
        Key of :data:`SIM_MODULES`.
    prefix, port
        PV prefix and CA port of the IOC.
    log_dir : path
        Directory for ``<name>-<port>.log`` (stdout and stderr).
    extra_args : sequence of str
        Instrument options, e.g. ``["--shape", "256", "256"]``.
    """
    module = SIM_MODULES[name]
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    env = dict(os.environ)
    env.update(ca_server_environment(port))
    argv = ["--prefix", prefix, "--port", str(port), *extra_args]
    with open(log_path, "ab") as log:
        pid = _launch(module, argv, env, log.fileno())
        if pid is None:
            pid = subprocess.Popen(
                [sys.executable, "-m", module, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # own process group: a Ctrl-C here does not kill it
            ).pid
    return IOCProcess(name, prefix, port, pid, str(log_path), module)


def _launch(module: str, argv: list[str], env: dict[str, str], log_fd: int) -> int | None:
    """The PID of the IOC a launcher forked, or None: start it with ``python -m``."""
    fds = {1: log_fd, 2: log_fd}
    try:
        return launcher.launch(module, argv, preload=LAUNCHER_PRELOAD, env=env, fds=fds)
    except launcher.LaunchOutcomeUnknownError:
        # The launcher got the request and did not answer: use the IOC if it forked it.
        wanted = [module, *argv]
        for entry in Path("/proc").iterdir():
            cmd = launcher.command_line(int(entry.name)) if entry.name.isdigit() else None
            if cmd and cmd[-len(wanted) :] == wanted and pid_exists(int(entry.name)):
                return int(entry.name)
        return None


def _log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("IOC closed the connection")
        data += chunk
    return data


def _ca_get(pv: str, port: int, timeout: float) -> bool:
    """One Channel Access read of ``pv`` on 127.0.0.1:``port``, in plain sockets.

    A minimal CA v4.13 exchange (VERSION, CREATE_CHAN, READ_NOTIFY) keeps this
    module free of CA client libraries and of their process-wide environment.
    """
    header = struct.Struct(">HHHHII")
    name = pv.encode() + b"\0"
    name += b"\0" * (-len(name) % 8)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(
                header.pack(0, 0, 0, 13, 0, 0)  # VERSION, minor 13
                + header.pack(18, len(name), 0, 0, 1, 13)  # CREATE_CHAN, cid 1
                + name
            )
            while True:
                cmd, size, dtype, count, p1, p2 = header.unpack(_recv_exact(sock, 16))
                _recv_exact(sock, size)
                if cmd == 26:  # CREATE_CH_FAIL
                    return False
                if cmd == 18:  # CREATE_CHAN: p2 is the server id; read one element
                    sock.sendall(header.pack(15, 0, dtype, 1, p2, 1))
                elif cmd == 15:  # READ_NOTIFY reply
                    return p1 == 1  # ECA_NORMAL
    except (OSError, ConnectionError, struct.error):
        return False


def wait_until_ready(
    ioc: IOCProcess,
    timeout: float = READY_TIMEOUT_S,
    progress: Callable[[str], object] | None = None,
) -> float:
    """Block until the IOC's TCP port accepts and one CA read succeeds.

    An IOC serves only once it is ready to render (the TXM first warms its numba
    kernels, compiling them on a fresh install: tens of seconds, minutes under load),
    so the wait is for that signal while the process lives, up to the generous
    ``timeout``; a process that exits ends it at once.

    Parameters
    ----------
    ioc : IOCProcess
    timeout : float
        Seconds to wait for a live process.
    progress : callable, optional
        Called once with a line of explanation when the wait passes
        :data:`SLOW_START_S` (``multiscope sim start`` prints it).

    Returns
    -------
    float
        The seconds waited.

    Raises
    ------
    IOCNotReadyError
        With the log tail, if the process exits or ``timeout`` passes; the message
        says what to do.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    told = False
    while time.monotonic() < deadline:
        if not pid_exists(ioc.pid):
            raise IOCNotReadyError(
                f"IOC {ioc.name} (pid {ioc.pid}) exited during startup; its log "
                f"{ioc.log_path} ends:\n{_log_tail(ioc.log_path)}"
            )
        if _port_accepts(ioc.port) and (
            not READY_PVS.get(ioc.name) or _ca_get(ioc.ready_pv, ioc.port, timeout=1.0)
        ):
            return time.monotonic() - t0
        if progress is not None and not told and time.monotonic() - t0 > SLOW_START_S:
            told = True
            progress(
                f"{ioc.name}: still starting (pid {ioc.pid}); a first start compiles the "
                f"simulator's numba kernels, which takes minutes on a busy machine; "
                f"waiting up to {timeout:.0f} s"
            )
        time.sleep(0.05)
    raise IOCNotReadyError(
        f"IOC {ioc.name} (pid {ioc.pid}, port {ioc.port}) still not serving after "
        f"{timeout:.0f} s, though its process runs. A first start compiles its numba "
        "kernels (cached afterwards), slow on a busy machine: check `multiscope sim status` "
        f"in a while, or `multiscope sim stop {ioc.name}` and start it again when the "
        f"machine is quieter. Its log {ioc.log_path} ends:\n{_log_tail(ioc.log_path)}"
    )


def pid_exists(pid: int) -> bool:
    """True if process ``pid`` runs.

    A zombie child of ours is reaped and counts as gone; so does another process's
    zombie (a launcher's child that ended, until the launcher reaps it).
    """
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux), or it ended just now: kill() said it ran
    return state != "Z"


def is_alive(ioc: IOCProcess) -> bool:
    """True if ``ioc.pid`` runs and is this IOC (module and port in its command line)."""
    if not pid_exists(ioc.pid):
        return False
    cmd = launcher.command_line(ioc.pid)
    if not cmd:  # no /proc (not Linux): trust the PID
        return True
    return ioc.module in cmd and str(ioc.port) in cmd


def stop_ioc(pid: int, grace: float = STOP_GRACE_S) -> bool:
    """SIGTERM the IOC's process group, SIGKILL it after ``grace`` s. True if it ended."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return True
    # start_ioc made the IOC a group leader; never signal another group (e.g. ours).
    send = (lambda sig: os.killpg(pgid, sig)) if pgid == pid else (lambda sig: os.kill(pid, sig))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            send(sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not pid_exists(pid):
                _wait_reaped(pid, deadline)
                return True
            time.sleep(0.02)
    return False


def _wait_reaped(pid: int, deadline: float) -> None:
    """Wait (until ``deadline``) for an ended process to leave the process table.

    Its parent (a launcher, or init for an orphan) reaps it within milliseconds; until
    then ``kill(pid, 0)`` still finds it, and a caller who stopped it would too.
    """
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(0.01)


# -- state file -------------------------------------------------------------------


def state_file(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/sim/state.json``."""
    return Path(data_dir) / "sim" / "state.json"


def _load(data_dir) -> dict[str, IOCProcess]:
    path = state_file(data_dir)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {name: IOCProcess(**entry) for name, entry in raw.items()}


def _save(data_dir, iocs: dict[str, IOCProcess]) -> None:
    path = state_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({n: asdict(i) for n, i in iocs.items()}, indent=2))
    tmp.replace(path)  # atomic: a reader never sees half a file


def start(
    names: Iterable[str],
    data_dir: str | os.PathLike,
    *,
    ports: dict[str, int] | None = None,
    prefixes: dict[str, str] | None = None,
    timeout: float = READY_TIMEOUT_S,
    progress: Callable[[str], object] | None = None,
) -> dict[str, IOCProcess]:
    """Start the named IOCs, and those they require, unless already alive; wait until ready.

    ``timeout`` and ``progress`` are those of :func:`wait_until_ready`. Returns every
    requested or required IOC (already running or new).
    """
    chosen_ports = ports or {}
    ports = {**DEFAULT_PORTS, **chosen_ports}
    prefixes = {**DEFAULT_PREFIXES, **(prefixes or {})}
    recorded = _load(data_dir)
    result: dict[str, IOCProcess] = {}
    wanted: list[str] = []
    for name in names:
        if name not in SIM_MODULES:
            raise KeyError(f"unknown simulated IOC {name!r}; known: {sorted(SIM_MODULES)}")
        wanted += [n for n in (*REQUIRES.get(name, ()), name) if n not in wanted]
    for name in wanted:
        old = recorded.get(name)
        if old is not None and is_alive(old):
            result[name] = old
            continue
        port = ports[name]
        confined = name not in chosen_ports and not range_permits(port)
        if confined or not port_is_free(port):
            # Another IOC (say, another data directory's) holds the default, or ports are
            # confined to a range (MULTISCOPE_PORT_RANGE: a test worker's, where two workers
            # would both find the default free): take a free one. The state file records
            # it, and sessions read ports from there.
            port = free_port()
        ioc = start_ioc(
            name,
            prefix=prefixes[name],
            port=port,
            log_dir=Path(data_dir) / "sim" / "logs",
            extra_args=[*link_args(name, result), *data_args(name, data_dir)],
        )
        recorded[name] = ioc
        result[name] = ioc
    _save(data_dir, recorded)
    for ioc in result.values():
        wait_until_ready(ioc, timeout, progress)
    return result


def status(data_dir: str | os.PathLike) -> dict[str, dict]:
    """Recorded IOCs with an ``alive`` flag."""
    return {name: {**asdict(ioc), "alive": is_alive(ioc)} for name, ioc in _load(data_dir).items()}


def stop(names: Iterable[str] | None, data_dir: str | os.PathLike) -> list[str]:
    """Stop the named (or all) recorded IOCs by PID; return the names stopped."""
    recorded = _load(data_dir)
    chosen = list(recorded) if names is None else [n for n in names if n in recorded]
    stopped = []
    for name in chosen:
        ioc = recorded.pop(name)
        if is_alive(ioc):
            stop_ioc(ioc.pid)
            stopped.append(name)
    _save(data_dir, recorded)
    return stopped
