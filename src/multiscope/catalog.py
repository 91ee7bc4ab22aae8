"""Where runs are stored: a tiled catalog, embedded on disk or at a facility server.

Data directory layout (``multiscope.config.data_dir``)::

    <data_dir>/
        catalog/            embedded tiled catalog
            catalog.db      run metadata (SQLite, WAL)
            tables.sqlite   event tables (SQLite, so several processes may open it)
            data/           arrays tiled writes itself (zarr)
            server.log      log of the embedded server
            server.json     URL, PID and key of the running server (mode 0600)
        assets/             detector files (HDF5), referenced, never copied
        journal/            one JSON-lines file per run, the durable record
            committed/      journals of runs fully stored in the catalog

The RunEngine thread only appends each document to the journal and enqueues it;
a background thread writes it to tiled. A run whose live write failed (storage
outage, full queue, killed process) is rewritten from its journal, by the
writer itself when storage is back or by :func:`recover`.

The embedded catalog is served by ``tiled serve catalog`` in a process of its own
on loopback with a random API key (measured faster to write to than a server
thread in the acquiring process, which competes for the GIL). One server per data
directory is shared by every process that opens the catalog: the first starts it,
the later ones find it, and it stops itself once unused
(:mod:`multiscope.catalog_server`, decision 0015), so an IPython session and
``multiscope catalog list`` in another terminal both work without paying its
start-up twice. DuckDB, tiled's default tabular store, admits one process only
and is therefore not used.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from multiscope import catalog_server, compat
from multiscope.callbacks.storage import (
    COMMITTED_SUBDIR,
    BackgroundWriter,
    DocumentJournal,
    RunTracker,
    encode_line,
    journal_is_active,
    read_journal,
)
from multiscope.catalog_index import (
    MIN_UID_PREFIX,
    RUNS_SPEC,
    RunSummary,
    describe_run,
    uid_prefix_error,
)
from multiscope.catalog_location import relocate
from multiscope.catalog_runs import (
    find_run,
    has_run,
    has_runs_spec_version,
    is_run_catalog,
    stored_as_recorded,
    uid_matches,
)
from multiscope.config import data_dir as default_data_dir
from multiscope.ports import free_port
from multiscope.samples import (
    SampleHistory,
    SampleRecord,
    history_from_metadata,
    samples_from_metadata,
)

__all__ = [
    "API_KEY_ENV",
    "RECOVERED_REASON",
    "Catalog",
    "CatalogWriter",
    "RecoveryReport",
    "RunSummary",
    "describe_run",
    "recover",
    "recover_journal",
    "series_documents",
    "stored_as_recorded",
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


def _wait_healthy(url: str, deadline: float, alive) -> None:
    import httpx

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


class _ThreadServer:
    """A loopback tiled server over ``<data_dir>/catalog`` on a thread of this process.

    Not the default (:mod:`multiscope.catalog_server`'s shared server is): it competes
    with acquisition for the GIL and writes slower; kept for measurements.
    """

    def __init__(self, root: Path):
        self.directory = root / "catalog"
        self.assets = root / "assets"
        # Derived results (reconstructions, stitched volumes) are file-referenced like frames.
        self.derived = root / "derived"
        for d in (self.directory / "data", self.assets, self.derived):
            d.mkdir(parents=True, exist_ok=True)
        self.api_key = secrets.token_hex(32)
        self.pid = os.getpid()
        self._uvicorn = None
        self._thread: threading.Thread | None = None
        db = self.directory / "catalog.db"
        tables = f"sqlite:///{self.directory / 'tables.sqlite'}"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        init = not db.exists()
        if not init:
            relocate(root)  # a moved data directory (decision 0023)
        self._start(db, tables, port, init=init)
        if init:
            relocate(root)  # records where it is served from

    def _start(self, db: Path, tables: str, port: int, init: bool) -> None:
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
        compat.analyse_overridden_dependencies_once()  # ~1/4 of each request's CPU

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
        """Stop the server thread. Idempotent."""
        server, self._uvicorn = self._uvicorn, None
        if server is not None:
            server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout)


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


class _TiledWriterOnFirstDocument:
    """A ``TiledWriter``, made at its first document on the background writer's thread.

    Importing bluesky-tiled-plugins costs ~3 s on a loaded machine; a session pays it
    there, off the RunEngine thread, instead of at start-up.
    """

    def __init__(self, catalog: Catalog, batch_size: int) -> None:
        self._catalog = catalog
        self._batch_size = batch_size
        self._writer = None

    def __call__(self, name: str, doc: dict) -> None:
        if self._writer is None:
            self._writer = _tiled_writer(self._catalog.client, self._batch_size)
        self._writer(name, doc)


def _tiled_writer(client, batch_size: int):
    """bluesky-tiled-plugins' ``TiledWriter``, its event tables read back in seq_num order.

    PostgreSQL returns a table's rows in heap order, not insertion order
    (:func:`multiscope.compat.order_event_tables_by_seq_num`).
    """
    from bluesky_tiled_plugins import TiledWriter

    compat.order_event_tables_by_seq_num()
    return TiledWriter(client, batch_size=batch_size)


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
        server: catalog_server.Lease | _ThreadServer | None = None,
        batch_size: int = LIVE_BATCH_SIZE,
        queue_size: int = 100_000,
        fsync: bool = False,
        open_client: Callable[[], Any] | None = None,
    ) -> None:
        # `client` may be a plain container standing in until `open_client` gives the
        # bluesky one, at first use of `.client` (see `embedded`).
        self._client = client
        self._stand_in = None
        self._open_client = open_client
        self._client_lock = threading.Lock()
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
        server: Literal["shared", "thread"] = "shared",
        bluesky_clients: bool = True,
        **kwargs,
    ) -> Catalog:
        """Open (creating if needed) the on-disk catalog of ``data_dir`` behind a loopback server.

        Parameters
        ----------
        data_dir : path-like, optional
            Data directory; default from :func:`multiscope.config.data_dir`.
        server : {"shared", "thread"}
            ``shared``: the data directory's catalog server, started if none runs
            (:mod:`multiscope.catalog_server`); ``thread``: a server of this process's
            own, on a thread (slower to write to; for measurements).
        bluesky_clients : bool
            True: runs come as bluesky-tiled-plugins' ``BlueskyRun`` (``run["primary"]
            .read()``). False: as plain tiled containers, enough for metadata and
            listings, and ~3 s faster to open (no xarray, dask or numba imported).
        **kwargs
            ``batch_size``, ``queue_size``, ``fsync``: see :class:`Catalog`.
        """
        root = default_data_dir(data_dir)
        srv = catalog_server.acquire(root) if server == "shared" else _ThreadServer(root)
        try:
            # A plain client first: bluesky-tiled-plugins' import (~3 s) waits for first use.
            client = _open_runs_container(srv.url, srv.api_key, bluesky_clients=False)
        except BaseException:
            srv.stop()
            raise
        upgrade = partial(_open_runs_container, srv.url, srv.api_key) if bluesky_clients else None
        return cls(client, data_dir=root, server=srv, open_client=upgrade, **kwargs)

    @classmethod
    def remote(
        cls,
        uri: str,
        api_key: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        bluesky_clients: bool = True,
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
        bluesky_clients : bool
            As for :meth:`embedded`.
        """
        from tiled.client import from_uri

        structure_clients = "numpy" if bluesky_clients else _plain_structure_clients()
        client = from_uri(uri, structure_clients, api_key=api_key or os.environ.get(API_KEY_ENV))
        if not is_run_catalog(client):
            if RUNS_NODE in client and is_run_catalog(client[RUNS_NODE]):
                client = client[RUNS_NODE]
            else:
                raise ValueError(f"{uri} is not a container with spec CatalogOfBlueskyRuns")
        if not has_runs_spec_version(client):
            logger.warning(
                "%s: the container's spec has no version %s, so client['<uid prefix>'] "
                "reports 'multiple matches' for any prefix; catalog['<uid prefix>'] works "
                "(docs/catalog.md, facility step 5)", uri, RUNS_SPEC["version"],
            )  # fmt: skip
        return cls(client, data_dir=data_dir, **kwargs)

    @property
    def client(self):
        """The tiled client of the container of runs (``CatalogOfBlueskyRuns``)."""
        if self._open_client is not None:
            with self._client_lock:
                if self._open_client is not None:
                    # The stand-in stays open until close(): another thread may be using it.
                    self._stand_in, self._client = self._client, self._open_client()
                    self._open_client = None
        return self._client

    def warm_up(self) -> threading.Thread:
        """Open the bluesky client on a daemon thread now, so a first read does not wait.

        Returns the thread (joining it is optional).
        """

        def warm() -> None:
            try:
                _ = self.client
            except Exception:  # e.g. the interpreter exiting meanwhile; the next use retries
                logger.debug("catalog warm-up failed", exc_info=True)

        thread = threading.Thread(target=warm, name="catalog-warm-up", daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------ writing
    def writer(self) -> CatalogWriter:
        """The RunEngine callback for this catalog (one per catalog, created on first use)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("catalog is closed")
            if self._writer is None:
                journal = DocumentJournal(self.journal_dir, fsync=self._fsync)
                background = BackgroundWriter(
                    _TiledWriterOnFirstDocument(self, self._batch_size),
                    maxsize=self._queue_size,
                    recover=self._recover_uid,
                    verify=self._stored_as_recorded,
                    on_written=journal.commit,
                )
                self._writer = CatalogWriter(journal, background)
            return self._writer

    def _stored_as_recorded(self, uid: str) -> bool:
        # Against the journal's event documents, not the stop document's num_events,
        # which also counts frames referenced by StreamDatum only (no event, no row).
        contents = read_journal(self.journal_dir / f"{uid}.jsonl")
        return stored_as_recorded(self.client, uid, _count_events(contents.documents))

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
        client = self._client  # metadata only: a plain stand-in serves as well
        n = len(client)
        return [
            RunSummary.from_metadata(uid, run.metadata)
            for uid, run in client.items()[max(0, n - limit) : n]
        ]

    def run(self, uid_or_index: str | int):
        """One run: a uid or a unique uid prefix, a negative index (``-1`` latest) or a scan id.

        A positive number is a scan id (the latest run with it), as in bluesky. A string
        of digits at least five long may be either; when it is both a scan id and the
        beginning of a uid, the error says so.

        Raises
        ------
        KeyError
            No run matches (the message names what was looked up), or several do
            (the message lists them).
        """
        if isinstance(uid_or_index, str):
            try:
                number = int(uid_or_index)  # "-1" from a command line is an index
            except ValueError:
                return find_run(self.client, uid_or_index)
            if number > 0 and len(uid_or_index) >= MIN_UID_PREFIX:
                return self._digits(uid_or_index, number)
            uid_or_index = number
        # Done here rather than by CatalogOfBlueskyRuns, so plain clients work alike.
        if uid_or_index < 0:
            try:
                return self.client.values()[uid_or_index]
            except IndexError:
                raise KeyError(
                    f"no run {uid_or_index} in the catalog: it holds {len(self.client)} run(s)"
                ) from None
        from tiled.queries import Eq

        matches = self.client.search(Eq("start.scan_id", uid_or_index)) if uid_or_index else {}
        if not matches:
            raise KeyError(
                f"no run with scan id {uid_or_index} in the catalog "
                "(a negative number counts back from the latest, -1)"
            )
        return matches.values().last()  # the latest run of that scan id

    def _digits(self, text: str, number: int):
        """A run named by a string of digits: a scan id or the beginning of a uid."""
        try:
            by_scan = self.run(number)
        except KeyError:
            return find_run(self.client, text)
        total, uids = uid_matches(self.client, text)
        if total:
            raise uid_prefix_error(text, total, uids, scan_id=True)
        return by_scan

    def __getitem__(self, uid_or_index: str | int):
        """``catalog[-1]``, ``catalog["b8afe"]``: as :meth:`run`."""
        return self.run(uid_or_index)

    def __len__(self) -> int:
        return len(self._client)

    def search(self, query):
        """Runs matching a tiled query (e.g. ``Key("plan_name") == "line_scan"``)."""
        return self.client.search(query)

    def describe(self, uid_or_index: str | int) -> str:
        """A human-readable account of one run: identity, outcome and streams."""
        run = self.run(uid_or_index)
        # A BlueskyEventStream lists its columns; its base (and a plain container) its parts.
        streams = {
            name: list(node.base.keys() if hasattr(node, "base") else node)
            for name, node in ((name, run[name]) for name in run)
        }
        return describe_run(run.metadata, streams)

    def sample_history(self, sample_id: str) -> SampleHistory:
        """Everything done to one sample, oldest first: cut, surveyed, imaged, sectioned.

        The runs whose start document names ``sample_id`` (every plan records it,
        derived runs too) and the record of the run that registered the sample
        (:mod:`multiscope.samples`). ``print()`` it for a table.
        """
        from tiled.queries import Eq

        client = self._client  # metadata only: a plain stand-in serves as well
        found = client.search(Eq("start.sample_id", sample_id))
        return history_from_metadata(sample_id, ((uid, run.metadata) for uid, run in found.items()))

    def samples(self) -> list[SampleRecord]:
        """The registered samples, in order of registration (:mod:`multiscope.samples`)."""
        from tiled.queries import KeyPresent

        found = self._client.search(KeyPresent("start.sample"))
        return samples_from_metadata((uid, run.metadata) for uid, run in found.items())

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
        for client in (self._client, self._stand_in):
            with contextlib.suppress(Exception):  # the HTTP connection pool; harmless if gone
                client.context.close()
        if self._server is not None:
            self._server.stop()
        return ok

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._server.url if self._server else getattr(self._client, "uri", "?")
        return f"<Catalog {where} data_dir={self.data_dir}>"


def _plain_structure_clients():
    """tiled's structure clients without the ones registered for specs (bluesky's)."""
    from tiled.client.container import DEFAULT_STRUCTURE_CLIENT_DISPATCH
    from tiled.structures.core import StructureFamily
    from tiled.utils import OneShotCachedMap

    numpy = DEFAULT_STRUCTURE_CLIENT_DISPATCH["numpy"]
    return OneShotCachedMap(
        {
            family.value: partial(numpy.__getitem__, family.value)
            for family in StructureFamily
            if family.value in numpy
        }
    )


def _embedded_client(url: str, structure_clients, api_key: str, *path: str):
    """A tiled client of the embedded server at ``url`` (``http://127.0.0.1:PORT``), at ``path``.

    As tiled's ``from_uri``, without what it does for a server elsewhere: for an
    ``http://`` URL, ``from_uri`` first sends a request with a client of its own, to
    follow a redirect to https, and each client loads the CA certificates for TLS.
    The embedded server is plain http on the loopback, so neither is needed: ~55 ms of
    the client's CPU per client (two per session, four in a new data directory), and
    the server answers one request less.

    Parameters
    ----------
    url : str
        The server's root URL.
    structure_clients
        As for tiled's ``from_uri``.
    api_key : str
        The server's key.
    *path : str
        The node's path under the root (``"raw"``).

    Returns
    -------
    tiled client of the node
    """
    from tiled.client.constructors import from_context
    from tiled.client.context import Context

    # verify=False: the connection is plain http (no TLS to verify), and httpx then
    # skips loading the CA bundle.
    context = Context(f"{url}/api/v1", api_key=api_key, verify=False)
    # Served without a streaming cache or webhooks: a run's stop need not close streams.
    compat.serves_no_streams(context)
    try:
        return from_context(context, structure_clients, node_path_parts=list(path))
    except BaseException:  # e.g. 404: no such node yet; the caller makes it
        context.close()
        raise


def _open_runs_container(url: str, api_key: str, bluesky_clients: bool = True):
    """The client of the embedded server's ``raw`` container, creating it if absent."""
    from tiled.client.utils import ClientError
    from tiled.structures.core import Spec

    structure_clients = "numpy" if bluesky_clients else _plain_structure_clients()
    try:
        client = _embedded_client(url, structure_clients, api_key, RUNS_NODE)
    except ClientError as exc:
        if exc.response.status_code != 404:
            raise
    else:
        if not has_runs_spec_version(client):
            # A container made before the spec carried its version (RUNS_SPEC's comment).
            with contextlib.suppress(Exception):
                client.update_metadata(specs=[Spec(**RUNS_SPEC)], drop_revision=True)
            client.context.close()
            client = _embedded_client(url, structure_clients, api_key, RUNS_NODE)
        return client
    # Plain clients: the new container's client, which is discarded, would otherwise
    # import bluesky-tiled-plugins for its spec (~2.5 s) in every new data directory.
    top = _embedded_client(url, _plain_structure_clients(), api_key)
    with contextlib.suppress(Exception):  # another process may create it first
        top.create_container(RUNS_NODE, specs=[Spec(**RUNS_SPEC)])
    top.context.close()
    return _embedded_client(url, structure_clients, api_key, RUNS_NODE)


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
        if has_run(client, uid):
            if find_run(client, uid).metadata.get("stop") and stored_as_recorded(
                client, uid, counts
            ):
                status = "already complete"
            else:
                # A partial run (writer killed or cut off), or one with rows stored twice
                # (a retried write): replace it whole, since mending it would need to
                # know exactly which rows reached the server.
                client.delete_contents([uid], recursive=True, external_only=False)
                status = "rewritten"
        if status != "already complete":
            writer = _tiled_writer(client, RECOVERY_BATCH_SIZE)
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


def _first_line_start(path: Path) -> dict | None:
    """The start document on a journal's first line (None if it has none)."""
    try:
        with open(path, "rb") as f:
            item = json.loads(f.readline() or b"null")
    except (OSError, ValueError):
        return None
    if isinstance(item, dict) and item.get("name") == "start":
        return item.get("doc")
    return None


def series_documents(data_dir: str | os.PathLike, uid: str) -> list[tuple[str, dict]]:
    """Documents of run ``uid`` and of the runs continuing it, from the journal, in order.

    A serial-sectioning series is its first run and every run whose start names it
    in ``resume_of``; all are read from ``<data_dir>/journal`` (also ``committed/``),
    the durable record written before the catalog, so a run whose client was killed
    is complete up to its last document. ``uid`` may be a unique prefix.

    Raises
    ------
    KeyError
        If no journal, or more than one, matches ``uid``.
    """
    journal_dir = Path(data_dir) / "journal"
    paths = [*journal_dir.glob("*.jsonl"), *(journal_dir / COMMITTED_SUBDIR).glob("*.jsonl")]
    matches = sorted({p for p in paths if p.stem.startswith(uid)}, key=lambda p: p.stem)
    stems = sorted({p.stem for p in matches})
    if len(stems) != 1:
        found = "no run" if not stems else f"{len(stems)} runs ({', '.join(stems[:4])})"
        raise KeyError(f"{found} in {journal_dir} match {uid!r}")
    first = stems[0]
    series = [(read_journal(matches[0]).start or {}).get("time", 0.0), matches[0]]
    followers = []
    for path in paths:
        if path.stem == first:
            continue
        start = _first_line_start(path)
        if start and (start.get("slice_and_view") or {}).get("resume_of") == first:
            followers.append((start.get("time", 0.0), path))
    documents: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for _, path in [tuple(series), *sorted(followers, key=lambda item: item[0])]:
        if path.stem in seen:  # a journal in both places (moved while we listed)
            continue
        seen.add(path.stem)
        documents.extend(read_journal(path).documents)
    return documents
