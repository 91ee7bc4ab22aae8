"""Write one run from the catalog to files other tools open: DXchange, TIFF, CSV.

=============  ==============================================================
format         files (``docs/export.md``)
=============  ==============================================================
``raw``        the default: ``<stream>.csv`` (scalars) and ``<stream>.h5``
               (arrays, frames ``(frames, rows, cols)``) per stream
``dxchange``   one DXchange HDF5 file per tomogram (tomopy, TomocuPy):
               :mod:`multiscope.export.dxchange`
``tiff``       ImageJ TIFF stacks with the pixel size (Fiji, Avizo):
               :mod:`multiscope.export.tiff`
``csv``        ``<stream>.csv`` per stream: the event tables
=============  ==============================================================

Every format also writes ``metadata.json`` (the run's start and stop documents).
The command line: ``multiscope export RUN --format dxchange --out DIR``.

Examples
--------
>>> from multiscope.catalog import Catalog  # doctest: +SKIP
>>> with Catalog.embedded() as cat:  # doctest: +SKIP
...     export_run(cat.run(-1), "out", format="dxchange")
"""

from __future__ import annotations

from pathlib import Path

from ._runs import write_metadata
from .dxchange import export_dxchange
from .tables import export_csv, export_raw
from .tiff import export_tiff

__all__ = ["FORMATS", "export_run"]

#: The formats :func:`export_run` writes.
FORMATS = ("raw", "dxchange", "tiff", "csv")


def export_run(run, out, format: str = "raw", *, catalog=None, max_bytes=None) -> list[Path]:
    """Export ``run`` (a tiled BlueskyRun client) into directory ``out``.

    Parameters
    ----------
    run : BlueskyRun
        A run from :class:`multiscope.catalog.Catalog` (``catalog.run(-1)``).
    out : path-like
        Output directory, created if needed.
    format : {'raw', 'dxchange', 'tiff', 'csv'}
        What to write (module docstring).
    catalog : Catalog, optional
        Finds the tiles of a ``mosaic_stitch`` run for ``dxchange``.
    max_bytes : int, optional
        Most bytes of frames held in memory at once (default
        :data:`~multiscope.export._runs.CHUNK_BYTES`, 64 MiB): frames are read from
        the catalog and written a chunk at a time, never a stream whole.

    Returns
    -------
    list of Path
        The files written, ``metadata.json`` first.

    Raises
    ------
    ValueError
        An unknown format, or one that does not fit the run (``dxchange`` of a run
        that holds no tomogram, ``tiff`` of a run without images); no file
        is written then.
    """
    writers = {
        "raw": lambda r, o: export_raw(r, o, max_bytes=max_bytes),
        "dxchange": lambda r, o: export_dxchange(r, o, catalog=catalog, max_bytes=max_bytes),
        "tiff": lambda r, o: export_tiff(r, o, max_bytes=max_bytes),
        "csv": export_csv,
    }
    if format not in writers:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = writers[format](run, out)
    return [write_metadata(run, out), *files]
