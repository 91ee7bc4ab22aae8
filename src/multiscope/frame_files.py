"""Read the detector frames that StreamResource/StreamDatum documents reference.

Frames stay in the detector's HDF5 files (``docs/decisions/0003-frames-in-hdf5.md``):
a ``stream_resource`` names the file (``uri`` = ``file://localhost/<abs path>``)
and the dataset (``parameters.dataset``, e.g. ``/entry/data/data``); each
``stream_datum`` names a range of rows of that dataset (``indices``). Per-frame
attributes the IOC records (e.g. the rotation angle at exposure) sit in the
same file under ``/entry/instrument/NDAttributes/<name>``, one value per row.

This module sits outside the layers (decision 0001): the live callbacks
(:mod:`multiscope.callbacks.runs`) and the plans that look at their own frames
(``focus_calibration``) read frames with the same :class:`FrameReader`.

The files are still being written (SWMR) while live callbacks read them, so
:class:`FrameReader` opens them with ``swmr=True``, refreshes the datasets
before every read and waits briefly when a row is not visible yet.

Refreshing is only safe while no other identifier of the same dataset is open in
the process. HDF5 shares one in-memory dataset (its chunk index and chunk cache)
among all identifiers of it, whichever ``h5py.File`` on the path opened them, and
``H5Drefresh`` with more than one identifier open re-reads the dataspace and layout
message but does not rebuild the chunk index: afterwards every chunk reads as the
first one (one frame per chunk: every frame comes back as frame 0), or with the
version-1 B-tree index the read fails. Two readers in two threads (the live
reconstruction and a plan reading its survey) met exactly so. Hence every reader
of the process opens, refreshes, reads and closes a dataset under one lock
(:attr:`FrameReader.hdf5_lock`), keeps no dataset open between reads, and does not
refresh a dataset that other code holds open: it waits (up to its ``timeout``) for
that handle to close, then raises :class:`DatasetOpenElsewhereError` rather than
return wrong frames.

Usage inside a :class:`event_model.DocumentRouter`::

    def stream_resource(self, doc):
        self.frames.add_resource(doc)

    def descriptor(self, doc):
        self.frames.add_descriptor(doc)

    def stream_datum(self, doc):
        block = self.frames.read(doc, attributes=("theta",))
        # block.stream, block.data (n, ny, nx), block.attributes["theta"] (n,)

    def stop(self, doc):
        self.frames.close()
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import h5py
import numpy as np

__all__ = [
    "ATTRIBUTES_PATH",
    "DatasetOpenElsewhereError",
    "FrameBlock",
    "FrameReader",
    "stream_data_key",
    "uri_to_path",
]

logger = logging.getLogger(__name__)

ATTRIBUTES_PATH = "/entry/instrument/NDAttributes"


def uri_to_path(uri: str) -> str:
    """Local path of a ``file://localhost/<abs path>`` (or ``file:///<abs path>``) URI."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"cannot read {uri!r}: only file:// URIs are supported")
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"cannot read {uri!r}: the file is on another host")
    return unquote(parsed.path)


def stream_data_key(descriptor: dict, ndim: int | None = None) -> str | None:
    """The file-referenced data key of a descriptor (``external == "STREAM:"``).

    Parameters
    ----------
    descriptor : dict
        An event descriptor document.
    ndim : int, optional
        Only keys whose ``shape`` has this many dimensions (3 for a camera's
        ``[frames, ny, nx]``).

    Returns
    -------
    str or None
        The first matching key (sorted by name), or None.
    """
    for key in sorted(descriptor.get("data_keys", {})):
        info = descriptor["data_keys"][key]
        if info.get("external") != "STREAM:":
            continue
        if ndim is not None and len(info.get("shape") or ()) != ndim:
            continue
        return key
    return None


@dataclass
class FrameBlock:
    """Frames referenced by one ``stream_datum``.

    Attributes
    ----------
    stream : str or None
        Name of the stream (``primary``, ``dark``, ...) of the datum's descriptor.
    data_key : str
        Data key of the stream resource (e.g. ``camera_image``).
    seq_nums : tuple of int
        ``(start, stop)`` event sequence numbers covered by the datum.
    data : ndarray
        Rows ``indices.start * m : indices.stop * m`` of the dataset (``m`` the
        resource's ``multiplier``, default 1), optionally restricted to some
        detector rows.
    attributes : dict of str to ndarray
        The requested per-frame attributes that the file holds (same rows).
    """

    stream: str | None
    data_key: str
    seq_nums: tuple[int, int]
    data: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Resource:
    path: str
    dataset: str
    data_key: str
    multiplier: int


class FrameReader:
    """Resolve ``stream_datum`` documents to arrays, reading the HDF5 files.

    One reader serves one run (or a few): it remembers the run's stream
    resources and descriptors and keeps each file open until :meth:`close`.

    Parameters
    ----------
    timeout : float, optional
        Seconds to wait for rows that the writer has not flushed yet (or for a
        file it has not created yet) before :meth:`read` raises ``TimeoutError``.
    poll : float, optional
        Seconds between two attempts while waiting.

    Attributes
    ----------
    hdf5_lock : threading.Lock
        Held by every reader of the process while it has a dataset open (see the
        module's docstring): one per process because HDF5 shares an open dataset
        among all the process's identifiers of it.
    """

    hdf5_lock = threading.Lock()

    def __init__(self, *, timeout: float = 2.0, poll: float = 0.002) -> None:
        self.timeout = timeout
        self.poll = poll
        self._resources: dict[str, _Resource] = {}
        self._streams: dict[str, str] = {}
        self._files: dict[str, h5py.File] = {}

    # -- documents -------------------------------------------------------------------
    def add_resource(self, doc: dict) -> None:
        """Remember a ``stream_resource`` document (HDF5 mimetype)."""
        params = doc.get("parameters", {})
        self._resources[doc["uid"]] = _Resource(
            path=uri_to_path(doc["uri"]),
            dataset=params.get("dataset", "/entry/data/data"),
            data_key=doc["data_key"],
            multiplier=int(params.get("multiplier", 1) or 1),
        )

    def add_descriptor(self, doc: dict) -> None:
        """Remember which stream a descriptor belongs to."""
        self._streams[doc["uid"]] = doc["name"]

    def stream_of(self, datum: dict) -> str | None:
        """Stream name of a ``stream_datum`` (None if its descriptor is unknown)."""
        return self._streams.get(datum.get("descriptor", ""))

    def resource_of(self, datum: dict) -> _Resource:
        try:
            return self._resources[datum["stream_resource"]]
        except KeyError:
            raise KeyError(
                f"stream_datum {datum.get('uid')} of an unknown stream_resource"
            ) from None

    # -- reading ---------------------------------------------------------------------
    def read(
        self,
        datum: dict,
        *,
        rows: slice | list[int] | None = None,
        attributes: tuple[str, ...] = (),
    ) -> FrameBlock:
        """Frames (and per-frame attributes) that a ``stream_datum`` references.

        Parameters
        ----------
        datum : dict
            A ``stream_datum`` document of a known resource.
        rows : slice or list of int, optional
            Only these detector rows (second axis) of each frame: the live
            preview needs 3 rows, not the frame. A list must be increasing.
        attributes : tuple of str, optional
            Names under ``/entry/instrument/NDAttributes`` to read for the same
            frames; missing ones are left out of :attr:`FrameBlock.attributes`.

        Returns
        -------
        FrameBlock

        Raises
        ------
        TimeoutError
            If the rows did not become visible within ``timeout``.
        DatasetOpenElsewhereError
            If other code of this process held the dataset open for ``timeout``.
        """
        res = self.resource_of(datum)
        m = res.multiplier
        start = int(datum["indices"]["start"]) * m
        stop = int(datum["indices"]["stop"]) * m
        seq = datum.get("seq_nums") or {"start": 0, "stop": 0}
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                data, attrs = self._read_once(res, start, stop, rows, attributes)
                break
            except DatasetOpenElsewhereError:
                # Another reader's brief look (an h5py read in a test) ends by itself.
                if time.monotonic() > deadline:
                    raise
                time.sleep(self.poll)
            except (_NotYetError, OSError, KeyError) as exc:
                # OSError/KeyError: file or dataset not there yet (writer still creating it);
                # _NotYetError: the rows are not flushed yet. Both clear up within milliseconds.
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"rows {start}:{stop} of {res.path}{res.dataset} not readable "
                        f"after {self.timeout} s ({exc})"
                    ) from exc
                if not isinstance(exc, _NotYetError):
                    self._drop(res.path)  # reopen: a failed open may leave a stale handle
                time.sleep(self.poll)
        return FrameBlock(
            stream=self.stream_of(datum),
            data_key=res.data_key,
            seq_nums=(int(seq["start"]), int(seq["stop"])),
            data=data,
            attributes=attrs,
        )

    def _file(self, path: str) -> h5py.File:
        f = self._files.get(path)
        if f is None:
            # File locking follows HDF5_USE_FILE_LOCKING (FALSE in sessions, ADR 0003);
            # forcing it here would clash with a writer in this process (tests, demos).
            f = h5py.File(path, "r", swmr=True)
            self._files[path] = f
        return f

    def _read_once(self, res, start, stop, rows, attributes):
        with self.hdf5_lock:
            f = self._file(res.path)
            with _open_dataset(f, res.dataset) as ds:
                if ds.shape[0] < stop:
                    raise _NotYetError(f"{ds.shape[0]} rows written")
                if rows is None:
                    data = ds[start:stop]
                elif isinstance(rows, slice):
                    data = ds[start:stop, rows]
                else:
                    data = ds[start:stop, list(rows)]
            attrs = {}
            group = f.get(ATTRIBUTES_PATH)
            for name in attributes:
                if group is None or name not in group:
                    continue
                with _open_dataset(group, name) as a:
                    # Attributes are flushed just after the frame: wait for them too.
                    if a.shape[0] < stop:
                        raise _NotYetError(f"attribute {name}: {a.shape[0]} rows written")
                    attrs[name] = np.asarray(a[start:stop])
        return data, attrs

    def _drop(self, path: str) -> None:
        f = self._files.pop(path, None)
        if f is not None:
            with self.hdf5_lock:
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - a half-open handle; nothing to save
                    logger.debug("closing %s failed", path, exc_info=True)

    def close_files(self) -> None:
        """Close every open file; the resources stay known (a later read reopens)."""
        for path in list(self._files):
            self._drop(path)

    def close(self) -> None:
        """Close every open file and forget the run's resources."""
        self.close_files()
        self._resources.clear()
        self._streams.clear()


class _NotYetError(Exception):
    """The writer has not flushed the requested rows yet."""


class DatasetOpenElsewhereError(RuntimeError):
    """A dataset to refresh is held open by other code of this process.

    Refreshing it then would make every identifier of it read the first chunk for
    every chunk (see the module's docstring); the other handle must be closed first.
    """


@contextlib.contextmanager
def _open_dataset(group, name: str):
    """Open dataset ``name`` of ``group``, refreshed; closed on exit (lock held)."""
    ds = group[name]
    try:
        # HDF5 refreshes nothing in a file this process also has open for writing.
        read_only = not ds.file.id.get_intent() & h5py.h5f.ACC_RDWR
        opens = h5py.h5f.get_obj_ids(ds.file.id, types=h5py.h5f.OBJ_DATASET) if read_only else []
        others = sum(1 for other in opens if other.id != ds.id.id and other == ds.id)
        del opens  # the listed identifiers hold references until dropped
        if others:
            raise DatasetOpenElsewhereError(
                f"{ds.file.filename}{ds.name} is open {others} more time(s) in this process "
                f"outside FrameReader: refreshing it would make every frame read as the "
                f"first (HDF5 shares the open dataset); close the other handle"
            )
        ds.refresh()
        yield ds
    finally:
        # Closed now, not when the last reference (a traceback's frame) goes.
        ds.id.close()
