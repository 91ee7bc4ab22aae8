"""CSV event tables and the raw export (tables plus HDF5 arrays) of any run.

``csv``: ``<stream>.csv`` per stream, one row per event, the ``time`` column and
every scalar data key (arrays and frames are left out; a stream of frames only
gives its times). ``raw`` (the default): the same tables plus ``<stream>.h5`` with
every array data key, frames as ``(frames, rows, cols)``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ._runs import frames, read_stream, scalar_keys

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
        _table(read_stream(run, stream)).to_csv(path)
        written.append(path)
    return written


def export_raw(run, out: Path) -> list[Path]:
    """Write ``<stream>.csv`` and, for streams with arrays, ``<stream>.h5``, into ``out``.

    In the HDF5 file each array data key is a dataset of its name; images are
    ``(frames, rows, cols)`` (:func:`~multiscope.export._runs.frames`), other
    arrays one row per event.
    """
    written = []
    for stream in list(run):
        dataset = read_stream(run, stream)
        if scalar_keys(dataset):
            path = Path(out) / f"{stream}.csv"
            _table(dataset).to_csv(path)
            written.append(path)
        arrays = [k for k, v in dataset.data_vars.items() if v.ndim > 1]
        if arrays:
            path = Path(out) / f"{stream}.h5"
            with h5py.File(path, "w") as f:
                for key in arrays:
                    data = frames(dataset, key) if dataset[key].ndim >= 3 else dataset[key]
                    f.create_dataset(key, data=np.asarray(data), compression="gzip")
            written.append(path)
    return written
