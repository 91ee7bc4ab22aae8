"""What the exporters read of a run: its documents, streams, frames and pixel size.

A run is what :meth:`multiscope.catalog.Catalog.run` returns (a tiled
``BlueskyRun``): ``run.metadata`` holds the ``start`` and ``stop`` documents,
``list(run)`` the stream names and ``run[stream].read()`` an xarray Dataset with
one row per event (frames included, file-referenced ones read from the
detector's files). Anything with those three behaves the same (the unit tests
use a small stand-in).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = [
    "documents",
    "frame_keys",
    "frames",
    "pixel_size_um",
    "plan_name",
    "read_stream",
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
    """``run[name].read()``: the stream's events as an xarray Dataset."""
    return run[name].read()


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
