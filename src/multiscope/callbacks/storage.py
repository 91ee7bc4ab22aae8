"""Document consumers that keep acquisition independent of storage.

Two callbacks, both subscribed on the RunEngine side, and the :class:`RunTracker`
that files each document under its run (by the uids it references, for documents
arriving from several threads):

``DocumentJournal``
    Appends every document to ``<journal_dir>/<start uid>.jsonl``, one JSON line
    per document, written with a single ``os.write`` so a killed process loses at
    most the line being written. This is the durable record; the catalog is a
    view that can always be rebuilt from it.
``BackgroundWriter``
    Runs a slow consumer (the tiled writer) on a daemon thread fed by a bounded
    queue. The RunEngine thread only enqueues; when the queue is full or the
    consumer fails, that run is dropped from live writing and re-loaded from its
    journal later.

The tiled writer is stateful (it caches rows and creates nodes as documents
arrive), so a failed document is never retried on its own: that could duplicate
rows. The unit of retry is the whole run, rewritten from the journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiscope.locks import locked_elsewhere

__all__ = [
    "COMMITTED_SUBDIR",
    "RunTracker",
    "DocumentJournal",
    "BackgroundWriter",
    "JournalContents",
    "encode_line",
    "read_journal",
    "journal_is_active",
]

logger = logging.getLogger(__name__)

COMMITTED_SUBDIR = "committed"


def _json_default(obj: Any) -> Any:
    """Convert numpy values (and a few other types RunEngines emit) for ``json.dumps``."""
    # numpy only if loaded (a numpy value implies it is): `multiscope catalog` commands
    # import this module and should not pay numpy's import.
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray):
        return obj.tolist()
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    # Last resort: keep the journal writable rather than losing the document.
    return repr(obj)


def encode_line(name: str, doc: dict) -> bytes:
    """Serialise one document as a JSON line (``{"name": ..., "doc": ...}\\n``)."""
    return (json.dumps({"name": name, "doc": doc}, default=_json_default) + "\n").encode()


class RunTracker:
    """Assign every document to the run it belongs to, by the uids it references.

    Thread-safe: the RunEngine thread and the live-analysis thread (derived runs)
    write through the same callback, so several runs are open at once and
    "the run started last" says nothing about who owns a document.

    ``start``
        its own uid.
    ``descriptor``, ``stop``
        ``run_start``.
    ``event``, ``event_page``
        the run of their ``descriptor``.
    ``stream_datum``
        the run of its ``descriptor`` (else of its ``stream_resource``).
    ``datum``, ``datum_page``
        the run of their ``resource``.
    ``resource``, ``stream_resource``
        ``run_start`` when present. event-model makes it optional: devices compose
        these documents without it, bluesky's RunEngine (1.15) adds it to those it
        emits, other senders may not. Without it, with one run open, that run;
        with several open, the document is held until the first ``stream_datum``
        that references it: the datum's descriptor names the run, and the
        resource is released just before that datum. A filed resource that
        lacked ``run_start`` is passed on as a copy that carries it, because
        event-model's ``RunRouter`` (in ``TiledWriter``, and in recovery) needs it.

    The bookkeeping of a run is dropped at its stop, so long sessions stay flat in memory.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_runs: set[str] = set()
        self._run_of_descriptor: dict[str, str] = {}
        self._run_of_resource: dict[str, str] = {}
        self._descriptors_of: dict[str, list[str]] = {}
        self._resources_of: dict[str, list[str]] = {}
        # Resources without run_start that arrived while several runs were open:
        # resource uid -> (name, doc, runs open at its arrival that have not stopped).
        self._held: dict[str, tuple[str, dict, set[str]]] = {}

    def route(self, name: str, doc: dict) -> list[tuple[str | None, str, dict]]:
        """The documents to record now, each with the uid of its run.

        Parameters
        ----------
        name, doc : str, dict
            One document, as a RunEngine callback receives it.

        Returns
        -------
        list of (run uid or None, name, doc)
            Usually ``[(run, name, doc)]``; ``[]`` for a resource held until its first
            datum, two entries when that datum releases it; ``None`` for a document
            whose run is unknown (not recordable).
        """
        with self._lock:
            return self._route(name, doc)

    def held(self) -> list[str]:
        """Uids of the resources waiting for a datum to name their run."""
        with self._lock:
            return list(self._held)

    def _route(self, name: str, doc: dict) -> list[tuple[str | None, str, dict]]:
        if name == "start":
            self._open_runs.add(doc["uid"])
            return [(doc["uid"], name, doc)]
        if name == "descriptor":
            run = doc.get("run_start")
            if run is not None:
                self._run_of_descriptor[doc["uid"]] = run
                self._descriptors_of.setdefault(run, []).append(doc["uid"])
            return [(run, name, doc)]
        if name == "stop":
            run = doc.get("run_start")
            self._forget(run)
            return [(run, name, doc)]
        if name in ("event", "event_page"):
            return [(self._run_of_descriptor.get(doc.get("descriptor")), name, doc)]
        if name in ("resource", "stream_resource"):
            return self._route_resource(name, doc)
        if name == "stream_datum":
            resource_uid = doc.get("stream_resource")
            run = self._run_of_descriptor.get(doc.get("descriptor"))
            run = run or self._run_of_resource.get(resource_uid)
            routed = []
            if run is not None and resource_uid in self._held:
                held_name, held_doc, _ = self._held.pop(resource_uid)
                routed.append(self._file_resource(run, held_name, held_doc))
            routed.append((run, name, doc))
            return routed
        if name in ("datum", "datum_page"):
            return [(self._run_of_resource.get(doc.get("resource")), name, doc)]
        return [(None, name, doc)]

    def _route_resource(self, name: str, doc: dict) -> list[tuple[str | None, str, dict]]:
        run = doc.get("run_start")
        if run is None and len(self._open_runs) == 1:
            (run,) = self._open_runs
        elif run is None and self._open_runs:
            self._held[doc["uid"]] = (name, doc, set(self._open_runs))
            return []
        if run is None:
            return [(None, name, doc)]
        return [self._file_resource(run, name, doc)]

    def _file_resource(self, run: str, name: str, doc: dict) -> tuple[str, str, dict]:
        if doc.get("run_start") != run:
            doc = {**doc, "run_start": run}  # a copy: other subscribers share the original
        self._run_of_resource[doc["uid"]] = run
        self._resources_of.setdefault(run, []).append(doc["uid"])
        return run, name, doc

    def _forget(self, run: str | None) -> None:
        self._open_runs.discard(run)
        for uid in self._descriptors_of.pop(run, []):
            self._run_of_descriptor.pop(uid, None)
        for uid in self._resources_of.pop(run, []):
            self._run_of_resource.pop(uid, None)
        for uid, (name, _, candidates) in list(self._held.items()):
            candidates.discard(run)
            if not candidates:
                # No datum referenced it before every run it could belong to ended:
                # it references no data, and no run can be said to own it.
                del self._held[uid]
                logger.warning("%s %s without run_start: no datum named its run", name, uid)


class DocumentJournal:
    """Append every document to a JSON-lines file per run.

    Parameters
    ----------
    directory : path-like
        Journal directory (``<data_dir>/journal``). Finished and stored runs are
        moved to its ``committed/`` subdirectory by :meth:`commit`.
    fsync : bool, optional
        Also ``os.fsync`` after every document. Without it a killed *process*
        still loses at most one document (the data is in the kernel); fsync also
        covers power loss at ~ms per document. The stop document is always synced.

    Notes
    -----
    While a run is open its file holds an exclusive ``flock``; :func:`journal_is_active`
    uses it so recovery never closes a run that another process is still acquiring.
    The lock is released by the kernel if the process dies.
    """

    def __init__(self, directory: str | os.PathLike, *, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / COMMITTED_SUBDIR).mkdir(exist_ok=True)
        self.fsync = fsync
        self._fds: dict[str, int] = {}
        self._tracker = RunTracker()  # for standalone use; CatalogWriter routes itself
        self._lock = threading.Lock()

    def path(self, uid: str) -> Path:
        """Journal file of the run ``uid`` (not yet committed)."""
        return self.directory / f"{uid}.jsonl"

    def __call__(self, name: str, doc: dict) -> None:
        for run, routed_name, routed_doc in self._tracker.route(name, doc):
            self.record(run, routed_name, routed_doc)

    def record(self, run: str | None, name: str, doc: dict) -> None:
        """Append a document to the journal of ``run`` (routed by a :class:`RunTracker`)."""
        with self._lock:
            if name == "start":
                self._open(run)
            fd = self._fds.get(run) if run is not None else None
            if fd is None:
                logger.warning("journal: %s document of an unknown run was not recorded", name)
                return
            os.write(fd, encode_line(name, doc))
            if self.fsync or name == "stop":
                os.fsync(fd)
            if name == "stop":
                self._close(run)

    def _open(self, uid: str) -> None:
        fd = os.open(self.path(uid), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fds[uid] = fd

    def _close(self, uid: str) -> None:
        fd = self._fds.pop(uid, None)
        if fd is not None:
            os.close(fd)  # also releases the flock

    def commit(self, uid: str) -> Path | None:
        """Move the journal of a run fully stored in the catalog to ``committed/``.

        Returns the new path, or None if there was no uncommitted journal.
        """
        src = self.path(uid)
        if not src.exists():
            return None
        dst = self.directory / COMMITTED_SUBDIR / src.name
        os.replace(src, dst)
        return dst

    def open_runs(self) -> list[str]:
        """Uids of the runs whose stop document has not arrived yet."""
        with self._lock:
            return list(self._fds)

    def close(self) -> None:
        """Close every open file; runs left open stay recoverable."""
        with self._lock:
            for uid in list(self._fds):
                self._close(uid)


def journal_is_active(path: str | os.PathLike) -> bool:
    """True if a live :class:`DocumentJournal` (any process) still holds the file open."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return locked_elsewhere(fd)
    finally:
        os.close(fd)


@dataclass
class JournalContents:
    """Documents read back from one journal file.

    Attributes
    ----------
    documents : list of (name, doc)
        Every document that decoded, in order.
    bad_lines : int
        Lines that did not decode (a process killed mid-write leaves one, last).
    good_bytes : int
        Length of the file up to the end of the last good line; truncating the
        file there removes a torn final line before appending to it.
    """

    documents: list[tuple[str, dict]] = field(default_factory=list)
    bad_lines: int = 0
    good_bytes: int = 0

    @property
    def start(self) -> dict | None:
        return next((d for n, d in self.documents if n == "start"), None)

    @property
    def stop(self) -> dict | None:
        return next((d for n, d in reversed(self.documents) if n == "stop"), None)


def read_journal(path: str | os.PathLike) -> JournalContents:
    """Read a journal file, tolerating a torn (truncated) line.

    Parameters
    ----------
    path : path-like
        A ``.jsonl`` file written by :class:`DocumentJournal`.

    Returns
    -------
    JournalContents
    """
    out = JournalContents()
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                out.bad_lines += 1  # torn final write: the process died mid-line
                break
            try:
                item = json.loads(raw)
                out.documents.append((item["name"], item["doc"]))
            except (ValueError, KeyError, TypeError):
                out.bad_lines += 1
                logger.warning("journal %s: undecodable line skipped", path)
                continue
            out.good_bytes = offset
    return out


class BackgroundWriter:
    """Feed a slow document consumer from a daemon thread so the caller never waits.

    Parameters
    ----------
    consumer : callable
        ``consumer(name, doc)``, e.g. a ``TiledWriter``. Called only on the worker thread.
    maxsize : int, optional
        Capacity of the queue, in documents. When it is full the current run is
        dropped from live writing and marked for recovery.
    recover : callable, optional
        ``recover(uid)`` rewrites a whole run from its journal (raising on failure).
        Called on the worker thread, when the queue is idle, for every run whose live
        write failed or was dropped, once its stop document has been seen.
    verify : callable, optional
        ``verify(uid) -> bool`` after a run's stop document went through the
        consumer, before ``on_written``: whether the run was stored as recorded (e.g.
        its rows counted against its journal's events). False, or an
        error, sends the run to ``recover`` (rewritten whole) instead of ``on_written``:
        a write retried after its reply was lost may have stored rows twice.
    on_written : callable, optional
        ``on_written(uid)`` after a run's stop document went through the consumer
        and ``verify`` (e.g. commit the journal).
    retry_delays : sequence of float, optional
        Back-off between recovery attempts of one run, in seconds; the last delay
        repeats for as long as the process lives (an error is logged when reached).
        While :meth:`drain` waits, attempts are made every second.

    Attributes
    ----------
    consumer, recover : callable
        As given; may be replaced while running (tests use this to inject outages).

    Notes
    -----
    A failing document is not re-sent to the consumer: ``TiledWriter`` keeps state
    per run and a repeated document can duplicate rows. Retrying happens per run,
    from the journal, with back-off, which also covers a storage outage.
    """

    def __init__(
        self,
        consumer: Callable[[str, dict], Any],
        *,
        maxsize: int = 100_000,
        recover: Callable[[str], Any] | None = None,
        verify: Callable[[str], bool] | None = None,
        on_written: Callable[[str], Any] | None = None,
        retry_delays: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
        name: str = "multiscope-storage",
    ) -> None:
        self.consumer = consumer
        self.recover = recover
        self._verify = verify
        self._on_written = on_written
        self._retry_delays = tuple(retry_delays)
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._tracker = RunTracker()  # for standalone use; CatalogWriter routes itself
        self._lock = threading.Lock()
        self._failed_runs: set[str] = set()  # live write abandoned; read by both threads
        self._ended_runs: set[str] = set()  # stop document seen by the caller
        self._recovery: dict[str, tuple[int, float]] = {}  # uid -> (attempts, next time)
        self._busy = False
        self._closed = False
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.unverified = 0
        self.recovered = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    def __call__(self, name: str, doc: dict) -> None:
        """Enqueue a document; never blocks."""
        for run, routed_name, routed_doc in self._tracker.route(name, doc):
            self.put(run, routed_name, routed_doc)

    def put(self, uid: str | None, name: str, doc: dict) -> None:
        """Enqueue a document of run ``uid`` (routed by a :class:`RunTracker`); never blocks."""
        with self._lock:
            if name == "stop" and uid is not None:
                self._ended_runs.add(uid)
            skip = self._closed or (uid is not None and uid in self._failed_runs)
        if not skip:
            try:
                self._queue.put_nowait((uid, name, doc))
                return
            except queue.Full:
                logger.warning(
                    "storage queue full (%d documents): run %s will be loaded from its "
                    "journal instead of live",
                    self._queue.maxsize,
                    uid,
                )
                self._mark_failed(uid)
        with self._lock:  # callers on several threads
            self.dropped += 1
        if name == "stop" and uid is not None:
            # The worker learns here that the dropped run is over and can be recovered.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait((uid, "_ended", None))

    def _mark_failed(self, uid: str | None) -> None:
        if uid is None:
            return
        with self._lock:
            if uid not in self._failed_runs:
                self._failed_runs.add(uid)
                self._recovery.setdefault(uid, (0, 0.0))

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._try_recoveries()
                continue
            if item is None:
                self._queue.task_done()
                return
            try:
                self._busy = True
                self._handle(*item)
                if item[1] in ("stop", "_ended"):
                    # Between runs too, not only when idle: back-to-back runs may never idle.
                    self._try_recoveries()
            finally:
                self._busy = False
                self._queue.task_done()

    def _handle(self, uid: str | None, name: str, doc: dict | None) -> None:
        if name == "_ended":
            return
        with self._lock:
            failed = uid in self._failed_runs
        if failed:
            with self._lock:
                self.dropped += 1
            return
        try:
            self.consumer(name, doc)
        except Exception:
            self.failed += 1
            logger.warning(
                "live write of a %s document failed; run %s will be loaded from its journal",
                name,
                uid,
                exc_info=True,
            )
            self._mark_failed(uid)
            return
        self.written += 1
        if name != "stop" or uid is None:
            return
        if not self._stored_as_recorded(uid):
            self._mark_failed(uid)
            return
        if self._on_written is not None:
            try:
                self._on_written(uid)
            except Exception:
                logger.exception("post-write hook failed for run %s", uid)

    def _stored_as_recorded(self, uid: str) -> bool:
        if self._verify is None:
            return True
        try:
            if self._verify(uid):
                return True
            reason = "its stored events differ from its record"
        except Exception as exc:  # e.g. storage gone right after the stop document
            reason = f"checking it failed ({exc!r})"
        self.unverified += 1
        logger.warning("run %s: %s; it will be rewritten from its journal", uid, reason)
        return False

    def _try_recoveries(self, *, force: bool = False) -> None:
        """Rewrite ended, failed runs from their journals, respecting the back-off."""
        if self.recover is None:
            return
        now = time.monotonic()
        with self._lock:
            due = [
                (uid, attempts)
                for uid, (attempts, when) in self._recovery.items()
                if uid in self._ended_runs and (force or when <= now)
            ]
        for uid, attempts in due:
            try:
                self.recover(uid)
            except Exception as exc:
                attempts += 1
                # Keep trying at the longest delay: the journal is safe meanwhile.
                delay = self._retry_delays[min(attempts, len(self._retry_delays)) - 1]
                log = logger.error if attempts == len(self._retry_delays) else logger.info
                log("recovery of run %s failed (%s); retry in %.0f s", uid, exc, delay)
                with self._lock:
                    self._recovery[uid] = (attempts, time.monotonic() + delay)
            else:
                self.recovered += 1
                with self._lock:
                    self._recovery.pop(uid, None)
                    self._failed_runs.discard(uid)
                    self._ended_runs.discard(uid)

    # ------------------------------------------------------------------ control
    @property
    def pending_recovery(self) -> list[str]:
        """Runs whose live write failed and that are not yet rewritten from the journal."""
        with self._lock:
            return sorted(self._recovery)

    def status(self) -> dict[str, Any]:
        """Counts for a status display: queued, written, failed, dropped, unverified, recovered."""
        return {
            "queued": self._queue.qsize(),
            "written": self.written,
            "failed": self.failed,
            "dropped": self.dropped,
            "unverified": self.unverified,
            "recovered": self.recovered,
            "pending_recovery": self.pending_recovery,
            "alive": self._thread.is_alive(),
        }

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued document is consumed and ended runs are recovered.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most; None waits indefinitely.

        Returns
        -------
        bool
            True if the queue is empty and no ended run awaits recovery.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            idle = self._queue.unfinished_tasks == 0 and not self._busy
            if idle:
                with self._lock:
                    waiting = [u for u in self._recovery if u in self._ended_runs]
                if not waiting:
                    return True
                if self._thread.is_alive():
                    # Someone is waiting: retry at least every second, not after the back-off.
                    soon = time.monotonic() + 1.0
                    with self._lock:
                        for uid in waiting:
                            attempts, when = self._recovery[uid]
                            self._recovery[uid] = (attempts, min(when, soon))
                elif self.recover is not None:
                    self._try_recoveries(force=True)
                    with self._lock:
                        waiting = [u for u in self._recovery if u in self._ended_runs]
                    return not waiting
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Drain, then stop the worker thread. Idempotent.

        Returns
        -------
        bool
            True if everything queued was written (or recovered) before closing.
        """
        with self._lock:
            already, self._closed = self._closed, True
        if already:
            return not self.pending_recovery
        ok = self.drain(timeout)
        # The sentinel may wait if the queue is still full after a timeout.
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(timeout=5.0)
        return ok
