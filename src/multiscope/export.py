"""Write one run from the catalog to plain files a collaborator can open anywhere.

Per stream: ``<stream>.csv`` with every scalar column (time included) and
``<stream>.h5`` with every array column (frames), plus ``metadata.json`` with the
start and stop documents. Instrument issues add richer exporters (TIFF stacks...).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

__all__ = ["export_run"]


def _documents(run) -> dict:
    metadata = dict(run.metadata)
    return {key: metadata.get(key) for key in ("start", "stop")}


def export_run(run, out: Path) -> list[Path]:
    """Export ``run`` (a tiled BlueskyRun client) into directory ``out``.

    Parameters
    ----------
    run : BlueskyRun
        A run from :class:`multiscope.catalog.Catalog` (``catalog.run(-1)``).
    out : Path
        Output directory, created if needed.

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    meta_path = out / "metadata.json"
    meta_path.write_text(json.dumps(_documents(run), indent=1, default=str))
    written.append(meta_path)
    for stream_name in list(run):
        dataset = run[stream_name].read()
        scalars = {k: v for k, v in dataset.data_vars.items() if v.ndim == 1}
        arrays = {k: v for k, v in dataset.data_vars.items() if v.ndim > 1}
        if scalars:
            table = dataset[list(scalars)].to_dataframe()
            csv_path = out / f"{stream_name}.csv"
            table.to_csv(csv_path)
            written.append(csv_path)
        if arrays:
            h5_path = out / f"{stream_name}.h5"
            with h5py.File(h5_path, "w") as f:
                for key, variable in arrays.items():
                    f.create_dataset(key, data=np.asarray(variable), compression="gzip")
            written.append(h5_path)
    return written
