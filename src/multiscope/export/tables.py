"""CSV event tables and the raw export (tables plus HDF5 arrays) of any run.

``csv``: ``<stream>.csv`` per stream, one row per event, the ``time`` column and
every scalar data key (arrays and frames are left out, and not read; a stream of
frames only gives its times). ``raw`` (the default): the same tables plus
``<stream>.h5`` with every array data key, frames as ``(frames, rows, cols)``,
copied a chunk at a time (``multiscope.export._runs.Frames``).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ._runs import Frames, read_scalars, scalar_keys, stream_shapes

__all__ = ["export_csv", "export_raw"]


def _table(dataset) -> pd.DataFrame:
    keys = scalar_keys(dataset)
    if keys:
        return dataset[keys].to_dataframe()
    return pd.DataFrame(index=pd.Index(np.asarray(dataset["time"]), name="time"))


def export_csv(run, out: Path) -> list[Path]:
    """Write ``<stream>.csv`` (scalars per event) for every stream of ``run`` into ``out``."""
    written = []
    for stream in list(run):
        path = Path(out) / f"{stream}.csv"
        _table(read_scalars(run, stream)).to_csv(path)
        written.append(path)
    return written


def export_raw(run, out: Path, max_bytes: int | None = None) -> list[Path]:
    """Write ``<stream>.csv`` and, for streams with arrays, ``<stream>.h5``, into ``out``.

    In the HDF5 file each array data key is a dataset of its name; images are
    ``(frames, rows, cols)`` (:func:`~multiscope.export._runs.frames`), other
    arrays one row per event.
    """
    written = []
    for stream in list(run):
        shapes = stream_shapes(run, stream)
        scalars = read_scalars(run, stream, shapes)
        if scalar_keys(scalars):
            path = Path(out) / f"{stream}.csv"
            _table(scalars).to_csv(path)
            written.append(path)
        arrays = [key for key, shape in shapes.items() if len(shape) > 1]
        if arrays:
            path = Path(out) / f"{stream}.h5"
            with h5py.File(path, "w") as f:
                for key in arrays:
                    _write_array(f, key, run[stream][key], max_bytes)
            written.append(path)
    return written


def _write_array(f, key: str, source, max_bytes: int | None) -> None:
    """Images a chunk at a time as ``(frames, rows, cols)``; other arrays one row per event."""
    if len(source.shape) < 3:
        f.create_dataset(key, data=np.asarray(source[:]), compression="gzip")
        return
    frames = Frames(source)
    ds = f.create_dataset(key, shape=frames.shape, dtype=frames.dtype, compression="gzip",
                          chunks=(1, *frames.image_shape) if len(frames) else None)  # fmt: skip
    for position, block in frames.chunks(max_bytes):
        ds[position : position + len(block)] = block
