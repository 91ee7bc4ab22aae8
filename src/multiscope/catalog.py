"""Where runs are stored: a tiled catalog, embedded on disk or at a facility server.

Data directory layout (``multiscope.config.data_dir``)::

    <data_dir>/
        catalog/            embedded tiled catalog
            catalog.db      run metadata (SQLite, WAL)
            tables.sqlite   event tables (SQLite, so several processes may open it)
            data/           arrays tiled writes itself (zarr)
            server.log      log of the embedded server
        assets/             detector files (HDF5), referenced, never copied
        journal/            one JSON-lines file per run, the durable record
            committed/      journals of runs fully stored in the catalog

The RunEngine thread only appends each document to the journal and enqueues it;
a background thread writes it to tiled. A run whose live write failed (storage
outage, full queue, killed process) is rewritten from its journal, by the
writer itself when storage is back or by :func:`recover`.

The embedded catalog is served by ``tiled serve catalog`` in a child process on
loopback with a random API key (measured faster to write to than a server thread
in the acquiring process, which competes for the GIL). Each process that opens
the catalog runs its own server over the same SQLite files, so an IPython
session and ``multiscope catalog list`` in another terminal both work. DuckDB,
tiled's default tabular store, admits one process only and is therefore not used.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from multiscope.callbacks.storage import (
    COMMITTED_SUBDIR,
    BackgroundWriter,
    DocumentJournal,
    RunTracker,
    encode_line,
    journal_is_active,
    read_journal,
)
from multiscope.config import data_dir as default_data_dir

__all__ = [
    "API_KEY_ENV",
    "RECOVERED_REASON",
    "Catalog",
    "CatalogWriter",
    "RecoveryReport",
    "RunSummary",
    "recover",
    "recover_journal",
]

logger = logging.getLogger(__name__)

API_KEY_ENV = "MULTISCOPE_TILED_API_KEY"
RECOVERED_REASON = "recovered from journal: acquisition process ended without a stop document"
RUNS_NODE = "raw"
_SERVER_START_TIMEOUT = 60.0
# Live writes: rows are sent every this many events (and at stop). One row per
# request measured ~45 ms (22 events/s), slower than a scan; the journal, not
# the catalog, is what makes each event durable.
LIVE_BATCH_SIZE = 100
# Recovery writes a finished run at once, so one large batch is fastest.
RECOVERY_BATCH_SIZE = 10_000


# ---------------------------------------------------------------------------- embedded server
_CHILD_API_KEY_ENV = "MULTISCOPE_EMBEDDED_TILED_API_KEY"
# `tiled serve catalog`, run by the child with the API key among its *in-process*
# arguments: on the real command line `ps` would show it, and taken from the
# environment (TILED_SINGLE_USER_API_KEY) tiled prints it, in a URL, to its log.
_SERVE_WITH_KEY_FROM_ENVIRONMENT = f"""
import os, sys
from tiled.commandline.main import main
key = os.environ.pop({_CHILD_API_KEY_ENV!r})
main(["serve", "catalog", *sys.argv[1:], "--api-key", key], prog_name="tiled")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the server if the process that started it dies (even SIGKILL).

    Strictly, when the *thread* that started it ends: open the catalog from a
    long-lived thread (normally the main thread).
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _wait_healthy(url: str, deadline: float, alive) -> None:
    with httpx.Client(trust_env=False) as http:
        while True:
            if not alive():
                raise RuntimeError("embedded tiled server exited during start-up")
            try:
                if http.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"embedded tiled server at {url} not ready")
            time.sleep(0.05)


class _EmbeddedServer:
    """A loopback tiled server over ``<data_dir>/catalog``, in a child process or a thread.

    Parameters
    ----------
    root : Path
        The data directory.
    mode : {"subprocess", "thread"}
        ``subprocess`` runs ``tiled serve catalog``; ``thread`` runs uvicorn in this
        process (no child to manage, slower to write to; kept for measurements).
    """

    def __init__(self, root: Path, mode: Literal["subprocess", "thread"] = "subprocess"):
        self.root = root
        self.directory = root / "catalog"
        self.assets = root / "assets"
        # Derived results (reconstructions, stitched volumes) are file-referenced like frames.
        self.derived = root / "derived"
        for d in (self.directory / "data", self.assets, self.derived):
            d.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.api_key = secrets.token_hex(32)
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._uvicorn = None
        self._thread: threading.Thread | None = None
        db = self.directory / "catalog.db"
        # `--init` costs a ~3 s subprocess even when the catalog exists; skip it then.
        init = not db.exists()
        tables = f"sqlite:///{self.directory / 'tables.sqlite'}"
        last_error: Exception | None = None
        for _ in range(3):  # the free port can be taken between probe and bind
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            try:
                if mode == "subprocess":
                    self._start_subprocess(db, tables, port, init)
                else:
                    self._start_thread(db, tables, port, init)
                return
            except (RuntimeError, TimeoutError) as exc:
                last_error = exc
                self.stop()
                init = not db.exists()
        raise RuntimeError(
            f"could not start the embedded tiled server; see {self.directory / 'server.log'}"
        ) from last_error

    def _start_subprocess(self, db: Path, tables: str, port: int, init: bool) -> None:
        cmd = [sys.executable, "-c", _SERVE_WITH_KEY_FROM_ENVIRONMENT, str(db)]
        cmd += ["-w", str(self.directory / "data"), "-w", tables]
        cmd += ["-r", str(self.assets), "-r", str(self.derived)]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        if init:
            cmd.append("--init")
        # The key goes by environment, not argv, so `ps` does not show it.
        env = dict(os.environ, **{_CHILD_API_KEY_ENV: self.api_key})
        # The server reads HDF5 files that detectors may still be writing.
        env.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        # Owner-only: the log names every request, and old versions wrote the key in it.
        log = os.open(self.directory / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(log, 0o600)  # a log created before by a looser version
            self._proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            os.close(log)
        self.pid = self._proc.pid
        _wait_healthy(
            self.url,
            time.monotonic() + _SERVER_START_TIMEOUT,
            lambda: self._proc is not None and self._proc.poll() is None,
        )

    def _start_thread(self, db: Path, tables: str, port: int, init: bool) -> None:
        import uvicorn
        from tiled.catalog import from_uri
        from tiled.config import Authentication
        from tiled.server.app import build_app

        adapter = from_uri(
            db,
            writable_storage=[self.directory / "data", tables],
            readable_storage=[self.assets, self.derived],
            init_if_not_exists=init,
        )
        app = build_app(adapter, authentication=Authentication(single_user_api_key=self.api_key))

        class _Server(uvicorn.Server):
            def install_signal_handlers(self) -> None:  # the main thread owns signals
                pass

        self._uvicorn = _Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio")
        )
        self._thread = threading.Thread(
            target=self._uvicorn.run, name="multiscope-tiled", daemon=True
        )
        self._thread.start()
        _wait_healthy(
            self.url, time.monotonic() + _SERVER_START_TIMEOUT, lambda: self._thread.is_alive()
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (by PID for the child process). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        server, self._uvicorn = self._uvicorn, None
        if server is not None:
            server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout)


# ---------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class RunSummary:
    """One line of ``Catalog.runs``."""

    uid: str
    scan_id: int | None
    plan_name: str | None
    time: float | None
    exit_status: str | None
    num_events: dict[str, int]

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time)) if self.time else "?"
        events = ", ".join(f"{k}={v}" for k, v in self.num_events.items()) or "-"
        return (
            f"{self.scan_id!s:>6}  {self.uid[:8]}  {when}  {self.plan_name or '?':<20} "
            f"{self.exit_status or 'running?':<8} {events}"
        )


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover` did with one journal.

    Attributes
    ----------
    uid : str or None
        Run start uid (None if the journal has no start document).
    journal : Path
        The journal file, where it was read.
    status : str
        ``"written"`` (run was absent), ``"rewritten"`` (a partial run was replaced),
        ``"already complete"``, ``"active"`` (still being acquired, left alone),
        ``"unreadable"`` (no start document) or ``"error"``.
    num_events : dict
        Events per stream loaded.
    stop_added : bool
        True if the journal had no stop document and one with ``exit_status='fail'``
        was appended.
    lost_lines : int
        Lines that did not decode (at most the torn last line of a killed process).
    error : str or None
        Message of the failure for ``status == "error"``.
    """

    uid: str | None
    journal: Path
    status: str
    num_events: dict[str, int]
    stop_added: bool = False
    lost_lines: int = 0
    error: str | None = None

    def __str__(self) -> str:
        events = ", ".join(f"{k}={v}" for k, v in self.num_events.items()) or "-"
        extra = " (stop document added: fail)" if self.stop_added else ""
        extra += f", {self.lost_lines} torn line(s) dropped" if self.lost_lines else ""
        extra += f": {self.error}" if self.error else ""
        return f"{self.uid or self.journal.name}  {self.status}  events {events}{extra}"


# ---------------------------------------------------------------------------- writer
class CatalogWriter:
    """Callback that files each document under its run, journals it, then queues it for tiled.

    Obtain it from :meth:`Catalog.writer`; subscribe it with ``RE.subscribe(writer)``
    and give it to the live analysis, which publishes derived runs through it from
    its own thread. One :class:`~multiscope.callbacks.storage.RunTracker` routes
    every document by the uids it references, so the journal and the live writer
    agree on each document's run whichever thread sent it.
    """

    def __init__(self, journal: DocumentJournal, background: BackgroundWriter) -> None:
        self.journal = journal
        self.background = background
        self.tracker = RunTracker()
        # Route, journal and queue as one step, so the journal and the live writer see
        # the documents in the order they were routed, whichever threads sent them.
        self._lock = threading.Lock()

    def __call__(self, name: str, doc: dict) -> None:
        with self._lock:
            for run, routed_name, routed_doc in self.tracker.route(name, doc):
                try:
                    self.journal.record(run, routed_name, routed_doc)
                except OSError:
                    # Acquisition never waits on storage, and a full disk must not abort
                    # a scan; the live writer still has the document.
                    logger.exception("journal write failed for a %s document", routed_name)
                self.background.put(run, routed_name, routed_doc)

    def status(self) -> dict[str, Any]:
        """Counts of the background writer plus the runs still open in the journal."""
        return {**self.background.status(), "open_runs": self.journal.open_runs()}


# ---------------------------------------------------------------------------- catalog
class Catalog:
    """A tiled catalog of bluesky runs with journal-backed, non-blocking writing.

    Build it with :meth:`embedded` or :meth:`remote`. Use as a context manager
    or call :meth:`close`.

    Examples
    --------
    >>> with Catalog.embedded("~/multiscope-data") as cat:  # doctest: +SKIP
    ...     RE.subscribe(cat.writer())
    ...     RE(count([det], 5))
    ...     cat.drain(30)
    ...     cat.run(-1)["primary"].read()
    """

    def __init__(
        self,
        client,
        *,
        data_dir: str | os.PathLike | None = None,
        server: _EmbeddedServer | None = None,
        batch_size: int = LIVE_BATCH_SIZE,
        queue_size: int = 100_000,
        fsync: bool = False,
    ) -> None:
        self.client = client
        self.data_dir = default_data_dir(data_dir)
        self.journal_dir = self.data_dir / "journal"
        self._server = server
        self._batch_size = batch_size
        self._queue_size = queue_size
        self._fsync = fsync
        self._writer: CatalogWriter | None = None
        self._closed = False
        self._lock = threading.Lock()
        # A weak reference, so registering atexit does not keep the catalog alive.
        ref = weakref.ref(self)
        self._atexit = lambda: (c := ref()) is not None and c.close(timeout=10.0)
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def embedded(
        cls,
        data_dir: str | os.PathLike | None = None,
        *,
        server: Literal["subprocess", "thread"] = "subprocess",
        **kwargs,
    ) -> Catalog:
        """Open (creating if needed) the on-disk catalog of ``data_dir`` behind a loopback server.

        Parameters
        ----------
        data_dir : path-like, optional
            Data directory; default from :func:`multiscope.config.data_dir`.
        server : {"subprocess", "thread"}
            How to run the tiled server (see module docstring).
        **kwargs
            ``batch_size``, ``queue_size``, ``fsync``: see :class:`Catalog`.
        """
        from tiled.client import from_uri

        root = default_data_dir(data_dir)
        srv = _EmbeddedServer(root, server)
        try:
            top = from_uri(srv.url, api_key=srv.api_key)
            if RUNS_NODE not in top:
                with contextlib.suppress(Exception):  # another process may create it first
                    top.create_container(RUNS_NODE, specs=["CatalogOfBlueskyRuns"])
            top.context.close()
            client = from_uri(f"{srv.url}/api/v1/metadata/{RUNS_NODE}", api_key=srv.api_key)
        except BaseException:
            srv.stop()
            raise
        return cls(client, data_dir=root, server=srv, **kwargs)

    @classmethod
    def remote(
        cls,
        uri: str,
        api_key: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        **kwargs,
    ) -> Catalog:
        """Connect to a facility tiled server.

        Parameters
        ----------
        uri : str
            URL of the container of runs (spec ``CatalogOfBlueskyRuns``), e.g.
            ``https://tiled.example.org/api/v1/metadata/raw``, or of a server root
            that has such a container named ``raw``.
        api_key : str, optional
            Defaults to the ``MULTISCOPE_TILED_API_KEY`` environment variable.
        data_dir : path-like, optional
            Local data directory holding the journal.
        """
        from tiled.client import from_uri

        client = from_uri(uri, api_key=api_key or os.environ.get(API_KEY_ENV))
        if not _is_run_catalog(client):
            if RUNS_NODE in client and _is_run_catalog(client[RUNS_NODE]):
                client = client[RUNS_NODE]
            else:
                raise ValueError(f"{uri} is not a container with spec CatalogOfBlueskyRuns")
        return cls(client, data_dir=data_dir, **kwargs)

    # ------------------------------------------------------------------ writing
    def writer(self) -> CatalogWriter:
        """The RunEngine callback for this catalog (one per catalog, created on first use)."""
        from bluesky_tiled_plugins import TiledWriter

        with self._lock:
            if self._closed:
                raise RuntimeError("catalog is closed")
            if self._writer is None:
                journal = DocumentJournal(self.journal_dir, fsync=self._fsync)
                background = BackgroundWriter(
                    TiledWriter(self.client, batch_size=self._batch_size),
                    maxsize=self._queue_size,
                    recover=self._recover_uid,
                    on_written=journal.commit,
                )
                self._writer = CatalogWriter(journal, background)
            return self._writer

    def _recover_uid(self, uid: str) -> None:
        report = recover_journal(self.journal_dir / f"{uid}.jsonl", self.client)
        if report.status == "error":
            raise RuntimeError(report.error)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything acquired so far is in the catalog; True if it is."""
        return True if self._writer is None else self._writer.background.drain(timeout)

    def status(self) -> dict[str, Any]:
        """Storage status for a display: queue length, counts, runs awaiting recovery."""
        return {} if self._writer is None else self._writer.status()

    # ------------------------------------------------------------------ reading
    def runs(self, limit: int = 20) -> list[RunSummary]:
        """Summaries of the most recent ``limit`` runs, oldest first."""
        n = len(self.client)
        out = []
        for uid, run in self.client.items()[max(0, n - limit) : n]:
            md = run.metadata
            start, stop = md.get("start") or {}, md.get("stop") or {}
            out.append(
                RunSummary(
                    uid=uid,
                    scan_id=start.get("scan_id"),
                    plan_name=start.get("plan_name"),
                    time=start.get("time"),
                    exit_status=stop.get("exit_status"),
                    num_events=dict(stop.get("num_events") or {}),
                )
            )
        return out

    def run(self, uid_or_index: str | int):
        """One run: a uid or a unique uid prefix, a negative index (``-1`` latest) or a scan id.

        Raises
        ------
        KeyError
            No run, or several runs, match.
        """
        if isinstance(uid_or_index, str):
            try:
                uid_or_index = int(uid_or_index)  # "-1" from a command line is an index
            except ValueError:
                return _find_run(self.client, uid_or_index)
        try:
            return self.client[uid_or_index]
        except (KeyError, IndexError):
            raise KeyError(f"no run {uid_or_index} in the catalog") from None

    def __getitem__(self, uid_or_index: str | int):
        """``catalog[-1]``, ``catalog["b8afe"]``: as :meth:`run`."""
        return self.run(uid_or_index)

    def __len__(self) -> int:
        return len(self.client)

    def search(self, query):
        """Runs matching a tiled query (e.g. ``Key("plan_name") == "line_scan"``)."""
        return self.client.search(query)

    def describe(self, uid_or_index: str | int) -> str:
        """A human-readable account of one run: identity, outcome and streams."""
        run = self.run(uid_or_index)
        md = run.metadata
        start, stop = md.get("start") or {}, md.get("stop") or {}
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start.get("time", 0)))
        lines = [
            f"uid:         {start.get('uid')}",
            f"scan_id:     {start.get('scan_id')}",
            f"plan:        {start.get('plan_name')} {start.get('plan_args', '')}",
            f"started:     {when}",
            f"exit_status: {stop.get('exit_status', 'no stop document (running or lost)')}",
        ]
        if stop.get("reason"):
            lines.append(f"reason:      {stop['reason']}")
        counts = stop.get("num_events") or {}
        for stream in run:
            keys = ", ".join(run[stream].base.keys()) if hasattr(run[stream], "base") else ""
            lines.append(f"stream {stream}: {counts.get(stream, '?')} events  [{keys}]")
        return "\n".join(lines)

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float | None = 30.0) -> bool:
        """Drain the writer, stop the embedded server. Idempotent.

        Returns
        -------
        bool
            True if every run reached the catalog; otherwise the journals are kept
            for :func:`recover`.
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        atexit.unregister(self._atexit)
        ok = True
        if self._writer is not None:
            ok = self._writer.background.close(timeout)
            self._writer.journal.close()
        with contextlib.suppress(Exception):  # the HTTP connection pool; harmless if gone
            self.client.context.close()
        if self._server is not None:
            self._server.stop()
        return ok

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._server.url if self._server else getattr(self.client, "uri", "?")
        return f"<Catalog {where} data_dir={self.data_dir}>"


def _find_run(client, uid: str):
    """Look a run up by uid, exactly first, else by unique prefix.

    ``CatalogOfBlueskyRuns.__getitem__`` (bluesky-tiled-plugins 2.0.12) reports
    "multiple matches" for any uid, even an absent one, once two runs exist, so
    it is bypassed for strings.
    """
    from tiled.client.container import Container
    from tiled.queries import Like

    with contextlib.suppress(KeyError):
        return Container.__getitem__(client, uid)
    if len(uid) >= 5:
        matches = list(client.search(Like("start.uid", f"{uid}%")).items()[:2])
        if len(matches) == 1:
            return matches[0][1]
        if matches:
            raise KeyError(f"uid prefix {uid!r} matches several runs")
    raise KeyError(f"no run with uid {uid!r} in the catalog")


def _has_run(client, uid: str) -> bool:
    from tiled.client.container import Container

    try:
        Container.__getitem__(client, uid)
    except KeyError:
        return False
    return True


def _is_run_catalog(client) -> bool:
    return any(s.name == "CatalogOfBlueskyRuns" for s in getattr(client, "specs", ()))


# ---------------------------------------------------------------------------- recovery
def _count_events(documents: list[tuple[str, dict]]) -> dict[str, int]:
    stream_of = {d["uid"]: d.get("name", "primary") for n, d in documents if n == "descriptor"}
    counts: Counter[str] = Counter()
    for name, doc in documents:
        if name == "event":
            counts[stream_of.get(doc["descriptor"], "?")] += 1
        elif name == "event_page":
            counts[stream_of.get(doc["descriptor"], "?")] += len(doc["seq_num"])
    for stream in stream_of.values():
        counts.setdefault(stream, 0)
    return dict(counts)


def _close_journal(path: Path, contents) -> dict:
    """Append a ``fail`` stop document to a journal that has none (dropping a torn line)."""
    start = contents.start
    last_time = max((d.get("time", 0.0) for _, d in contents.documents), default=time.time())
    stop = {
        "uid": str(uuid.uuid4()),
        "run_start": start["uid"],
        "time": last_time,
        "exit_status": "fail",
        "reason": RECOVERED_REASON,
        "num_events": _count_events(contents.documents),
    }
    with open(path, "r+b") as f:
        f.truncate(contents.good_bytes)  # a torn last line would corrupt the next one
        f.seek(0, os.SEEK_END)
        f.write(encode_line("stop", stop))
        f.flush()
        os.fsync(f.fileno())
    contents.documents.append(("stop", stop))
    return stop


def recover_journal(path: str | os.PathLike, client) -> RecoveryReport:
    """Load one journal into a catalog of runs; see :func:`recover`."""
    path = Path(path)
    if journal_is_active(path):
        return RecoveryReport(None, path, "active", {})
    try:
        contents = read_journal(path)
    except OSError as exc:
        return RecoveryReport(None, path, "error", {}, error=str(exc))
    start = contents.start
    if start is None:
        return RecoveryReport(None, path, "unreadable", {}, lost_lines=contents.bad_lines)
    uid = start["uid"]
    stop_added = False
    if contents.stop is None:
        _close_journal(path, contents)
        stop_added = True
    counts = _count_events(contents.documents)
    try:
        status = "written"
        if _has_run(client, uid):
            if _find_run(client, uid).metadata.get("stop"):
                status = "already complete"
            else:
                # A partial run (writer killed or cut off): replace it whole, since
                # appending would need to know exactly which rows reached the server.
                client.delete_contents([uid], recursive=True, external_only=False)
                status = "rewritten"
        if status != "already complete":
            from bluesky_tiled_plugins import TiledWriter

            writer = TiledWriter(client, batch_size=RECOVERY_BATCH_SIZE)
            for name, doc in contents.documents:
                writer(name, doc)
    except Exception as exc:  # storage still down: keep the journal for the next attempt
        return RecoveryReport(
            uid, path, "error", counts, stop_added, contents.bad_lines, error=repr(exc)
        )
    committed = path.parent / COMMITTED_SUBDIR
    committed.mkdir(exist_ok=True)
    os.replace(path, committed / path.name)
    return RecoveryReport(uid, path, status, counts, stop_added, contents.bad_lines)


def recover(data_dir: str | os.PathLike | None, catalog: Catalog) -> list[RecoveryReport]:
    """Load every uncommitted journal of ``data_dir`` into ``catalog``.

    A journal without a stop document (acquisition process killed) gets one
    appended with ``exit_status='fail'``, ``reason`` :data:`RECOVERED_REASON` and
    ``num_events`` counted from its events; a torn final line is dropped. A run
    already complete in the catalog is not duplicated, a partial one is replaced.
    Journals still held open by a live acquisition are left alone. Successfully
    loaded journals move to ``journal/committed/``, so calling this again is a no-op.

    Parameters
    ----------
    data_dir : path-like or None
        Data directory whose ``journal/`` is scanned; None uses ``catalog.data_dir``.
    catalog : Catalog
        Destination.

    Returns
    -------
    list of RecoveryReport
        One per journal found, oldest first.
    """
    root = Path(data_dir).expanduser().resolve() if data_dir is not None else catalog.data_dir
    journal_dir = root / "journal"
    if not journal_dir.is_dir():
        return []
    paths = sorted(journal_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    reports = []
    for path in paths:
        report = recover_journal(path, catalog.client)
        if report.status == "error":
            logger.warning("recovery of %s failed: %s", path.name, report.error)
        reports.append(report)
    return reports
