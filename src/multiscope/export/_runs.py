"""What the exporters read of a run: its documents, streams, frames and pixel size.

A run is what :meth:`multiscope.catalog.Catalog.run` returns (a tiled
``BlueskyRun``): ``run.metadata`` holds the ``start`` and ``stop`` documents,
``list(run)`` the stream names, ``list(run[stream])`` its keys (with ``time``,
``seq_num`` and ``ts_*``), ``run[stream][key]`` an array client with ``shape``,
``dtype`` and slicing that fetches only the slice, and
``run[stream].read(variables=[...])`` an xarray Dataset of those keys with one row
per event. Anything with those behaves the same (the unit tests use a stand-in).

Memory: an export never reads a stream's images whole. Scalars are read per stream
(one number per event); images through :class:`Frames`, in chunks of at most
:data:`CHUNK_BYTES` (``chunks()``), so an export holds one chunk of frames at a
time however long the stream (decision 0030).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = [
    "CHUNK_BYTES",
    "Frames",
    "documents",
    "frame_keys",
    "frames",
    "pixel_size_um",
    "plan_name",
    "read_scalars",
    "read_stream",
    "stream_frames",
    "stream_shapes",
    "scalar_keys",
    "short_uid",
    "start_of",
    "write_metadata",
]


def documents(run) -> dict:
    """The run's ``start`` and ``stop`` documents (``None`` for one it lacks)."""
    metadata = dict(run.metadata)
    return {key: metadata.get(key) for key in ("start", "stop")}


def start_of(run) -> dict:
    """The run's start document (an empty dict if it has none)."""
    return dict(documents(run)["start"] or {})


def plan_name(run) -> str:
    """``plan_name`` of the run's start document (``""`` if none)."""
    return str(start_of(run).get("plan_name") or "")


def short_uid(run) -> str:
    """The first 8 characters of the run's uid (file names)."""
    return str(start_of(run).get("uid") or "run")[:8]


def read_stream(run, name: str):
    """``run[name].read()``: the stream's events as an xarray Dataset (images included)."""
    return run[name].read()


#: Largest block of frames an export holds at once (bytes; at least one frame).
CHUNK_BYTES = 64 * 2**20

_NOT_DATA = ("seq_num", "time")


def stream_shapes(run, name: str) -> dict[str, tuple[int, ...]]:
    """Shape of each data key of stream ``name`` (no ``time``, ``seq_num``, ``ts_*``).

    Read from the array clients' structure: no data is fetched.
    """
    stream = run[name]
    return {
        key: tuple(stream[key].shape)
        for key in stream
        if key not in _NOT_DATA and not key.startswith("ts_")
    }


def read_scalars(run, name: str, shapes: dict | None = None):
    """The one-number-per-event keys of stream ``name`` as an xarray Dataset.

    ``time`` is its coordinate; images and other arrays are not read.
    """
    shapes = stream_shapes(run, name) if shapes is None else shapes
    keys = [key for key, shape in shapes.items() if len(shape) == 1]
    return run[name].read(variables=[*keys, "time"])


class Frames:
    """The images of one data key, read in bounded chunks (a view: nothing read at creation).

    Parameters
    ----------
    source : array-like
        ``(events, ..., rows, cols)`` with ``shape``, ``dtype`` and slicing (tiled's
        array client fetches only the slice; a numpy array works the same). The
        middle axes hold the frames of one event: frame ``i`` is frame ``i % k`` of
        event ``i // k``, ``k`` their product (a file-referenced camera frame:
        ``(events, 1, rows, cols)``; a derived volume: ``(1, 1, z, y, x)``, its z
        slices the frames).
    index : array of int, optional
        The frames taken, in this order (default: all).
    """

    def __init__(self, source, index=None):
        shape = tuple(int(n) for n in source.shape)
        if len(shape) < 3:
            raise ValueError(f"no images: shape {shape}")
        self.source = source
        self.middle = shape[1:-2]
        self.per_event = int(np.prod(self.middle, dtype=int))
        self.image_shape = shape[-2:]
        self.dtype = np.dtype(source.dtype)
        total = shape[0] * self.per_event
        self.index = np.arange(total) if index is None else np.asarray(index, int).reshape(-1)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.image_shape)) * self.dtype.itemsize

    def select(self, which) -> Frames:
        """The frames ``self.index[which]`` (a boolean mask or positions)."""
        return Frames(self.source, self.index[which])

    def _contiguous(self, a: int, b: int) -> np.ndarray:
        """Frames ``a`` to ``b`` (exclusive) of the source, as few slices as the layout allows."""
        k, rows_cols = self.per_event, self.image_shape
        if k == 1:
            return np.asarray(self.source[a:b]).reshape(-1, *rows_cols)
        blocks = []
        while a < b:
            event, within = divmod(a, k)
            if within == 0 and b - a >= k:  # whole events
                n = (b - a) // k
                blocks.append(np.asarray(self.source[event : event + n]).reshape(-1, *rows_cols))
                a += n * k
                continue
            # Part of one event: along its last middle axis, the other middle axes fixed.
            last = self.middle[-1]
            lead, start = divmod(within, last)
            stop = min(last, start + (b - a))
            at = (event, *np.unravel_index(lead, self.middle[:-1]), slice(start, stop))
            blocks.append(np.asarray(self.source[at]).reshape(-1, *rows_cols))
            a += stop - start
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def chunks(self, max_bytes: int | None = None):
        """Yield ``(position, frames)``: the frames in order, at most ``max_bytes`` a block.

        ``position`` is the first frame's place in this selection. Consecutive frames
        of the source are read together, up to the limit (always one frame at least).
        """
        limit = CHUNK_BYTES if max_bytes is None else max_bytes
        per_chunk = max(1, int(limit) // max(1, self.frame_bytes))
        position = 0
        breaks = np.flatnonzero(np.diff(self.index) != 1) + 1
        for run_of in np.split(self.index, breaks):
            for start in range(0, len(run_of), per_chunk):
                part = run_of[start : start + per_chunk]
                yield position, self._contiguous(int(part[0]), int(part[-1]) + 1)
                position += len(part)

    def read(self) -> np.ndarray:
        """All the frames ``(n, rows, cols)`` at once (small selections only)."""
        out = np.empty(self.shape, self.dtype)
        for position, block in self.chunks():
            out[position : position + len(block)] = block
        return out


def stream_frames(run, name: str, key: str) -> Frames:
    """The images of data key ``key`` of stream ``name`` (nothing read yet)."""
    return Frames(run[name][key])


def scalar_keys(dataset) -> list[str]:
    """Data keys with one value per event (the columns of a CSV table)."""
    return [k for k, v in dataset.data_vars.items() if v.ndim == 1]


def frame_keys(dataset) -> list[str]:
    """Data keys holding images: at least ``(events, rows, cols)``."""
    return [k for k, v in dataset.data_vars.items() if v.ndim >= 3]


def frames(dataset, key: str) -> np.ndarray:
    """Data key ``key``'s images as ``(frames, rows, cols)``, in event order.

    A file-referenced camera image reads back as ``(events, 1, rows, cols)`` (one
    frame per event, its ``shape`` ``[1, rows, cols]``); events holding several
    frames (``[k, rows, cols]``) give ``k`` frames each. The dtype is kept.
    """
    array = np.asarray(dataset[key])
    if array.ndim < 3:
        raise ValueError(f"data key {key!r} holds no images (shape {array.shape})")
    return array.reshape(-1, *array.shape[-2:])


def pixel_size_um(start: dict) -> float | None:
    """Pixel size (um) a run's start document records, if any.

    Looked up in the ``tomo`` and ``xanes`` blocks, a derived run's
    ``parameters``, then the top level (``None`` if nowhere, or not positive).
    """
    places = (
        start.get("parameters") or {},
        start.get("tomo") or {},
        start.get("xanes") or {},
        start,
    )
    for place in places:
        value = place.get("pixel_size_um")
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    return None


def write_metadata(run, out: Path) -> Path:
    """Write the run's start and stop documents to ``out/metadata.json``."""
    path = Path(out) / "metadata.json"
    path.write_text(json.dumps(documents(run), indent=1, default=str))
    return path
