"""One embedded tiled server per data directory, shared by every process that uses it.

Starting ``tiled serve catalog`` costs 8-12 s on a loaded 2-core machine (importing
tiled's server), which every session and every ``multiscope catalog`` command used
to pay for its own server. Now the first user starts one server for the data
directory and the later ones find it (decision 0015)::

    <data_dir>/catalog/
        server.json     url, pid, api_key, started: mode 0600 (it holds the key)
        server.lock     held (flock) while a server starts or decides to stop
        server.lease    every process using the server holds a shared flock on it
        server.log      the server's log (mode 0600; never holds the key)
        location        the data directory it was last served from (decision 0023)

Protocol, all by ``flock`` (the kernel releases a killed process's locks):

- **Start.** A user takes ``server.lock``. A healthy server recorded in
  ``server.json`` (its PID alive, its command line this module's for this data
  directory, ``/healthz`` answering within ``HUNG_AFTER_S``, 20 s: a busy server on a
  loaded machine answers late, and is in use) is used. Otherwise the stale file is
  removed and a server is spawned in its own session, *inheriting the lock*: it
  writes ``server.json`` once healthy and only then lets the lock go, so
  concurrent first users wait on the lock and then all find the one server.
  A server that dies during start-up releases the lock too; the waiter then
  starts another (three attempts) or reports the log.
- **Use.** While holding ``server.lock`` the user takes a shared lock on
  ``server.lease`` and keeps it until :meth:`Lease.release` (or its death).
- **Idle stop.** The server checks every few seconds whether anyone holds
  the lease; after ``MULTISCOPE_CATALOG_IDLE_S`` seconds (default 600) with no
  holder, it takes ``server.lock``, checks again, removes ``server.json`` and
  stops. A user taking the lease holds the same lock, so neither misses the other.
- **Explicit stop.** :func:`stop` (``multiscope sim stop``) stops an idle server.

Before it serves, the server points the catalog's asset URIs at the data directory's
current place (:mod:`multiscope.catalog_location`), so a moved or copied data directory
keeps reading its event tables and frames.

A server is forked by the launcher (:mod:`multiscope.launcher`, decision 0037), which
has imported tiled's server once, when one runs: 0.65-0.8 CPU-s to a healthy server
instead of 3.5-3.7 with ``python -m``. ``server.json`` records the server's start time
(clock ticks since boot) beside its PID, which together name one process however the
server was started.

Only the standard library and :mod:`multiscope`'s ``simctl``, ``catalog_location``,
``locks``, ``ports``, ``launcher`` and ``compat`` (none importing a library at module
level) are imported here, so any layer may use it; tiled is imported only by the server
process itself (and the launcher).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from multiscope import compat, launcher
from multiscope.catalog_location import relocate
from multiscope.locks import locked_elsewhere
from multiscope.ports import free_port
from multiscope.simctl import pid_exists

__all__ = [
    "IDLE_ENV",
    "DEFAULT_IDLE_S",
    "LAUNCHER_PRELOAD",
    "Lease",
    "ServerInfo",
    "acquire",
    "idle_seconds",
    "running",
    "start_in_background",
    "state_path",
    "stop",
]

IDLE_ENV = "MULTISCOPE_CATALOG_IDLE_S"
DEFAULT_IDLE_S = 600.0
START_TIMEOUT_S = 90.0
START_ATTEMPTS = 3
# A live server that has not answered /healthz for this long is taken for hung and replaced.
HUNG_AFTER_S = 20.0
STATE_NAME = "server.json"
LOCK_NAME = "server.lock"
LEASE_NAME = "server.lease"
LOG_NAME = "server.log"
_CHILD_API_KEY_ENV = "MULTISCOPE_EMBEDDED_TILED_API_KEY"
_MODULE = "multiscope.catalog_server"
# What a server imports before it serves (~3 CPU-s): the launcher imports it once.
LAUNCHER_PRELOAD = (
    "tiled.commandline.main",
    "tiled.commandline._serve",
    "tiled.server.app",
    "tiled.server.logging_config",
    "tiled.catalog",
    "tiled.catalog.alembic_constants",
    "aiosqlite",
    "uvicorn",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    _MODULE,
)


@dataclass(frozen=True)
class ServerInfo:
    """What ``server.json`` records about the running server."""

    url: str
    pid: int
    api_key: str
    started: float
    # When the process started, in clock ticks since boot (/proc/PID/stat): with the PID,
    # it names one process for good (PIDs get reused). None: recorded by an older version.
    start_ticks: int | None = None

    def __repr__(self) -> str:  # never print the key
        return f"ServerInfo(url={self.url!r}, pid={self.pid}, started={self.started})"


def state_path(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/catalog/server.json``."""
    return Path(data_dir) / "catalog" / STATE_NAME


def _read_state(catalog_dir: Path) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads((catalog_dir / STATE_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(catalog_dir: Path, info: ServerInfo) -> None:
    """Write ``server.json`` atomically, owner-only from its creation (it holds the key)."""
    tmp = catalog_dir / f".{STATE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(asdict(info)).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, catalog_dir / STATE_NAME)


def _remove_state(catalog_dir: Path, pid: int | None = None) -> None:
    """Remove ``server.json`` (only if it names ``pid``, when given)."""
    if pid is not None:
        info = _read_state(catalog_dir)
        if info is None or info.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        (catalog_dir / STATE_NAME).unlink()


def _open_lock_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def _lock(fd: int, deadline: float, mode: int = fcntl.LOCK_EX) -> bool:
    """Take ``mode`` on ``fd`` before ``deadline`` (monotonic); False if it could not."""
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _lease_is_free(catalog_dir: Path) -> bool:
    """True when no process holds the lease (a shared lock on ``server.lease``)."""
    fd = _open_lock_file(catalog_dir / LEASE_NAME)
    try:
        return not locked_elsewhere(fd)
    finally:
        os.close(fd)


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None without ``/proc``."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses.
    return int(stat_line.rsplit(")", 1)[1].split()[19])


def _is_our_server(info: ServerInfo, catalog_dir: Path) -> bool:
    """The recorded process runs and serves this data directory.

    PIDs get reused: the PID and its start time name one process (a record of an older
    version has no start time). ``server.json`` moves with a moved or copied directory
    (decision 0023): the command line says which directory the process serves.
    """
    if not pid_exists(info.pid):
        return False
    if info.start_ticks is not None and _start_ticks(info.pid) not in (None, info.start_ticks):
        return False
    cmd = launcher.command_line(info.pid)
    if cmd is None:
        return True  # no /proc (not Linux): trust the live PID
    return _MODULE in cmd and str(catalog_dir.parent) in cmd


def _healthy(url: str, timeout: float = 2.0) -> bool:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _answers(url: str, limit: float = HUNG_AFTER_S) -> bool:
    """The server answers ``/healthz`` within ``limit`` s (asked again while it does not).

    A single 2 s check is not enough: on a loaded machine a busy server answered later,
    and the next user took it for hung and stopped it under the sessions using it
    (a queueserver test, 2026-12-07: five RE workers opening their sessions at once).
    """
    deadline = time.monotonic() + limit
    while not _healthy(url):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM ``pid``, SIGKILL it after ``grace`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not pid_exists(pid):
                return
            time.sleep(0.05)


# ---------------------------------------------------------------------------- user side
class Lease:
    """The right to use the shared server, held until :meth:`release` (or death).

    Attributes
    ----------
    url, api_key, pid
        Of the server (``pid`` is the server's process, not ours).
    started_here : bool
        True if this process started the server (False: found it running).
    """

    def __init__(self, info: ServerInfo, lease_fd: int, catalog_dir: Path, started_here: bool):
        self.url = info.url
        self.api_key = info.api_key
        self.pid = info.pid
        self.started_here = started_here
        self._catalog_dir = catalog_dir
        self._fd: int | None = lease_fd

    def release(self) -> None:
        """Stop using the server (idempotent); it stops itself once nobody uses it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # The server counts its idle time from the last release (its mtime).
        with contextlib.suppress(OSError):
            os.utime(self._catalog_dir / LEASE_NAME)
        os.close(fd)  # drops the shared lock

    stop = release  # the name Catalog.close uses for every server kind

    def __repr__(self) -> str:
        return f"<catalog server lease {self.url} pid {self.pid}>"


def _spawn(root: Path, lock_fd: int) -> int | None:
    """Start a server that inherits ``lock_fd`` (and so the start lock) until it is healthy.

    Forked by the launcher (:mod:`multiscope.launcher`, decision 0037) when one runs,
    else started with ``python -m``. Returns its PID, or None when the launcher got the
    request but did not answer: the caller waits on the lock as for any other start.
    """
    catalog_dir = root / "catalog"
    argv = [str(root), "--port", str(free_port()), "--lock-fd", str(lock_fd)]
    # The key goes by environment, not argv, so `ps` does not show it.
    env = dict(os.environ, **{_CHILD_API_KEY_ENV: secrets.token_hex(32)})
    # The server reads HDF5 files that detectors may still be writing.
    env.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    # Owner-only: the log names every request.
    log = os.open(catalog_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(log, 0o600)  # a log created before by a looser version
        try:
            pid = launcher.launch(
                _MODULE,
                argv,
                preload=LAUNCHER_PRELOAD,
                env=env,
                fds={1: log, 2: log, lock_fd: lock_fd},
            )
        except launcher.LaunchOutcomeUnknownError:
            return None
        if pid is not None:
            return pid
        return subprocess.Popen(
            [sys.executable, "-m", _MODULE, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(lock_fd,),
            start_new_session=True,  # shared: a Ctrl-C in the starting terminal leaves it
        ).pid
    finally:
        os.close(log)


def acquire(data_dir: str | os.PathLike, *, timeout: float = START_TIMEOUT_S) -> Lease:
    """Use the data directory's running catalog server, starting one if there is none.

    Parameters
    ----------
    data_dir : path-like
        The data directory (its ``catalog/`` holds the SQLite files and the state).
    timeout : float
        Seconds to wait for a server another process is starting, or for ours.

    Returns
    -------
    Lease
        URL and key of the server; release it when done.

    Raises
    ------
    RuntimeError
        If no server could be started (the message carries the log's tail).
    """
    root = Path(data_dir).expanduser().resolve()
    catalog_dir = root / "catalog"
    for sub in (catalog_dir / "data", root / "assets", root / "derived"):
        sub.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    spawned: int | None = None  # the PID of the server this call started
    for _attempt in range(START_ATTEMPTS + 1):
        lock_fd = _open_lock_file(catalog_dir / LOCK_NAME)
        try:
            if not _lock(lock_fd, deadline):
                if spawned is not None:
                    _terminate(spawned)
                raise RuntimeError(
                    f"the catalog server did not start within {timeout:.0f} s; see "
                    f"{catalog_dir / LOG_NAME}:\n{_log_tail(catalog_dir / LOG_NAME)}"
                )
            info = _read_state(catalog_dir)
            if info is not None and _is_our_server(info, catalog_dir) and _answers(info.url):
                lease_fd = _open_lock_file(catalog_dir / LEASE_NAME)
                fcntl.flock(lease_fd, fcntl.LOCK_SH)  # the server's own check is brief
                started_here = spawned is not None and spawned == info.pid
                return Lease(info, lease_fd, catalog_dir, started_here)
            if info is not None:
                if _is_our_server(info, catalog_dir):  # alive but not answering: hung
                    _terminate(info.pid)
                _remove_state(catalog_dir)
            if _attempt == START_ATTEMPTS:
                break
            spawned = _spawn(root, lock_fd)
        finally:
            os.close(lock_fd)  # a spawned server keeps the lock through its own copy
    raise RuntimeError(
        f"could not start the embedded tiled server; see {catalog_dir / LOG_NAME}:\n"
        f"{_log_tail(catalog_dir / LOG_NAME)}"
    )


def start_in_background(data_dir: str | os.PathLike) -> tuple[str, int | None]:
    """Start the data directory's catalog server if none runs, without waiting for it.

    ``multiscope sim start`` calls it, so the server is up by the time a session or a
    catalog command wants it.

    Returns
    -------
    (str, int or None)
        ``("already running", pid)``, ``("starting", pid)`` (ours, or another
        process's start in progress: pid None).
    """
    root = Path(data_dir).expanduser().resolve()
    catalog_dir = root / "catalog"
    for sub in (catalog_dir / "data", root / "assets", root / "derived"):
        sub.mkdir(parents=True, exist_ok=True)
    lock_fd = _open_lock_file(catalog_dir / LOCK_NAME)
    try:
        if not _lock(lock_fd, time.monotonic()):
            return "starting", None
        info = _read_state(catalog_dir)
        if info is not None and _is_our_server(info, catalog_dir) and _healthy(info.url):
            return "already running", info.pid
        if info is not None:
            if _is_our_server(info, catalog_dir):
                _terminate(info.pid)
            _remove_state(catalog_dir)
        return "starting", _spawn(root, lock_fd)
    finally:
        os.close(lock_fd)  # the spawned server holds the lock until it is healthy


def running(data_dir: str | os.PathLike) -> ServerInfo | None:
    """The data directory's catalog server if one runs and answers, else None."""
    catalog_dir = Path(data_dir).expanduser().resolve() / "catalog"
    info = _read_state(catalog_dir)
    if info is not None and _is_our_server(info, catalog_dir) and _healthy(info.url):
        return info
    return None


def stop(data_dir: str | os.PathLike, *, timeout: float = START_TIMEOUT_S) -> str:
    """Stop the data directory's catalog server unless a process still uses it.

    A server still starting is waited for (up to ``timeout`` s), then stopped.

    Returns
    -------
    str
        ``"stopped"``, ``"in use"`` (left running; it stops itself once idle),
        ``"starting"`` (still starting after ``timeout``) or ``"not running"``.
    """
    catalog_dir = Path(data_dir).expanduser().resolve() / "catalog"
    if not (catalog_dir / LOCK_NAME).exists():
        return "not running"
    lock_fd = _open_lock_file(catalog_dir / LOCK_NAME)
    try:
        if not _lock(lock_fd, time.monotonic() + timeout):
            return "starting"
        info = _read_state(catalog_dir)
        if info is None or not _is_our_server(info, catalog_dir):
            _remove_state(catalog_dir)
            return "not running"
        if not _lease_is_free(catalog_dir):
            return "in use"
        _remove_state(catalog_dir)
        _terminate(info.pid)
        return "stopped"
    finally:
        os.close(lock_fd)


# ---------------------------------------------------------------------------- server side
def idle_seconds() -> float:
    """How long the server runs without users: ``$MULTISCOPE_CATALOG_IDLE_S`` or 600 s."""
    try:
        return max(1.0, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
    except ValueError:
        return DEFAULT_IDLE_S


def _announce_when_healthy(catalog_dir: Path, info: ServerInfo, lock_fd: int) -> None:
    """Write ``server.json`` once the server answers, then let the start lock go."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _healthy(info.url, timeout=1.0):
            _write_state(catalog_dir, info)
            break
        time.sleep(0.05)
    os.close(lock_fd)  # without server.json the waiter starts another (or reports)


def _stop_when_idle(catalog_dir: Path, idle_s: float) -> None:
    """Stop this server after ``idle_s`` s in which no process held the lease.

    Also once its data directory is gone (deleted under it): nothing is left to serve.
    """
    poll = min(5.0, idle_s / 4)
    with contextlib.suppress(OSError):  # the idle time counts from the server's start
        os.close(_open_lock_file(catalog_dir / LEASE_NAME))
        os.utime(catalog_dir / LEASE_NAME)
    while catalog_dir.is_dir():
        time.sleep(poll)
        try:
            if _idle_for(catalog_dir, idle_s, poll):
                break
        except OSError:  # the directory vanished between the check and the files
            continue
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown


def _idle_for(catalog_dir: Path, idle_s: float, poll: float) -> bool:
    """True (and ``server.json`` removed) once nobody used the server for ``idle_s`` s."""
    if not _lease_is_free(catalog_dir):
        os.utime(catalog_dir / LEASE_NAME)  # busy now: the idle time counts from here
        return False
    if time.time() - (catalog_dir / LEASE_NAME).stat().st_mtime < idle_s:
        return False  # released (the mtime) less than idle_s ago
    lock_fd = _open_lock_file(catalog_dir / LOCK_NAME)
    try:
        if not _lock(lock_fd, time.monotonic() + poll) or not _lease_is_free(catalog_dir):
            return False  # someone is starting to use it
        _remove_state(catalog_dir, pid=os.getpid())
        return True
    finally:
        os.close(lock_fd)


def _initialize_catalog(db: Path) -> None:  # pragma: no cover - runs in the server process
    """Create and stamp a new catalog database here, as ``tiled catalog init`` does.

    tiled's ``serve catalog --init`` runs that command in a subprocess, which imports
    tiled's catalog again (3-5 s on a loaded 2-core machine, at every new data
    directory); this process imports it anyway. Nothing else runs yet, so SQLite sees
    one thread, as in tiled's own in-process ``serve catalog --temp``.
    """
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database

    uri = f"sqlite+aiosqlite:///{db}"

    async def create() -> bool:
        engine = create_async_engine(uri)
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
        except UninitializedDatabase:
            await initialize_database(engine)
            return True
        finally:
            await engine.dispose()
        return False

    if asyncio.run(create()):
        stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)


def _write_ahead_logging(*databases: Path) -> None:  # pragma: no cover - server process
    """Put each SQLite database (made if absent) in WAL mode, before tiled opens it.

    tiled reads and writes the event tables through ADBC's SQLite driver, which does not
    wait for a lock. In SQLite's default (rollback journal) mode a read that arrives
    while a write commits fails at once with "database is locked": a 500 to the reader
    (seen on a catalog server shared by a test module's sessions, 2026-12-07). In WAL
    mode a reader and the writer never wait for each other (two writers at once still
    can fail so). The mode is kept in the file. A database that cannot be switched (another
    process holding it) is served as it is, and the log says so.
    """
    import sqlite3

    for path in databases:
        try:
            with contextlib.closing(sqlite3.connect(path)) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as error:  # e.g. another process holds it: serve anyway
            print(f"{path.name} left in its journal mode: {error}", flush=True)


def main(argv: list[str]) -> None:  # pragma: no cover - runs in the server process
    """``python -m multiscope.catalog_server ROOT --port N --lock-fd K`` (or a launcher's child)."""
    try:
        _serve(argv)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        sys.exit(f"port taken: {exc}")


def _serve(argv: list[str]) -> None:  # pragma: no cover - runs in the server process
    """Serve the data directory ``argv`` names until idle (or SIGTERM)."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    parser.add_argument("root")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lock-fd", type=int, required=True)
    args = parser.parse_args(argv)
    root = Path(args.root)
    catalog_dir = root / "catalog"
    key = os.environ.pop(_CHILD_API_KEY_ENV)
    url = f"http://127.0.0.1:{args.port}"
    info = ServerInfo(
        url=url,
        pid=os.getpid(),
        api_key=key,
        started=time.time(),
        start_ticks=_start_ticks(os.getpid()),
    )
    db = catalog_dir / "catalog.db"
    tiled_args = [str(db), "-w", str(catalog_dir / "data")]
    tiled_args += ["-w", f"sqlite:///{catalog_dir / 'tables.sqlite'}"]
    tiled_args += ["-r", str(root / "assets"), "-r", str(root / "derived")]
    tiled_args += ["--host", "127.0.0.1", "--port", str(args.port)]
    if not db.exists():
        _initialize_catalog(db)
    _write_ahead_logging(db, catalog_dir / "tables.sqlite")
    # A moved or copied data directory: its asset URIs still name the old place (0023).
    moved = relocate(root)
    if moved:
        print(f"catalog moved to {root}: {moved} asset URI(s) rewritten", flush=True)
    threading.Thread(
        target=_announce_when_healthy, args=(catalog_dir, info, args.lock_fd), daemon=True
    ).start()
    threading.Thread(
        target=_stop_when_idle, args=(catalog_dir, idle_seconds()), daemon=True
    ).start()
    from tiled.commandline.main import main

    # tiled's app overrides a dependency, so FastAPI would analyse every request's
    # dependencies again: about a quarter of the CPU a request costs (docs/benchmarks.md).
    compat.analyse_overridden_dependencies_once()
    try:
        # The key among tiled's *in-process* arguments: on the real command line `ps`
        # would show it, and taken from TILED_SINGLE_USER_API_KEY tiled logs it in a URL.
        main(["serve", "catalog", *tiled_args, "--api-key", key], prog_name="tiled")
    finally:
        _remove_state(catalog_dir, pid=os.getpid())


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
