"""Where big reconstructions run: this machine's threads, or a dask cluster.

The numerics live in :mod:`multiscope.analysis` (pure, arrays in and out);
this module adds the files and the scheduling:

* :func:`reconstruct_volume_h5` reconstructs a volume of line integrals
  stored in HDF5 slab by slab into an HDF5 file, on local threads
  (:func:`multiscope.analysis.tomo_volume.reconstruct_volume`: reading and
  writing overlapped with computing) or, when a scheduler address is given
  or configured, on a ``dask.distributed`` cluster;
* :func:`reconstruct_array` does the same for line integrals already in
  memory (the end-of-scan reconstruction of
  :class:`~multiscope.callbacks.tomo.TomoReconstructor`);
* :func:`stitch_vertical` registers the neighbouring tiles of a mosaic as
  one task per pair on the cluster, then blends them locally.

The scheduler address comes from the ``scheduler`` argument (a session
option), else the ``MULTISCOPE_DASK_SCHEDULER`` environment variable; without
either everything runs in this process. On a cluster each slab is one task
that reads its own rows from the file (path and row range travel, not
arrays), so a worker holds one slab of line integrals and one of slices at a
time; at most ``2 x workers`` slabs are in flight, and the client writes
each finished slab and drops it. Workers keep the gridrec engines (plans) of
the last geometry between tasks. See
docs/decisions/0026-volume-reconstruction-pipeline.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from multiscope.analysis import stitch as _stitch
from multiscope.analysis.tomo_volume import (
    SlabReconstructor,
    VolumeTimings,
    reconstruct_volume,
)

__all__ = [
    "SCHEDULER_ENV",
    "VOLUME_DATASET",
    "dask_client",
    "reconstruct_array",
    "reconstruct_volume_h5",
    "scheduler_address",
    "stitch_vertical",
]

SCHEDULER_ENV = "MULTISCOPE_DASK_SCHEDULER"
#: Dataset of the output volume, shaped ``(z, y, x)`` (as the derived runs' files).
VOLUME_DATASET = "/entry/data/data"


def scheduler_address(explicit: str | None = None) -> str | None:
    """The dask scheduler to use: ``explicit``, else ``$MULTISCOPE_DASK_SCHEDULER``, else None.

    Examples
    --------
    >>> scheduler_address("tcp://10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    """
    address = explicit or os.environ.get(SCHEDULER_ENV) or None
    return address.strip() if address else None


def _resolve(scheduler):
    """None: the configured address (or local); ``""``: local whatever is configured."""
    if scheduler is None:
        return scheduler_address()
    if isinstance(scheduler, str):
        return scheduler.strip() or None
    return scheduler


@contextlib.contextmanager
def dask_client(scheduler) -> Iterator[object]:
    """A ``distributed.Client`` for ``scheduler``: an address, or a client/cluster given.

    A client passed in is yielded as is (and left open); an address or a
    cluster object gets a client of its own, closed on exit.
    """
    from distributed import Client  # noqa: PLC0415 (only when a cluster is configured)

    if isinstance(scheduler, Client):
        yield scheduler
        return
    client = Client(scheduler)
    try:
        yield client
    finally:
        client.close()


# ----------------------------------------------------------------------------- tasks


@functools.lru_cache(maxsize=1)
def _worker_reconstructor(angles_bytes, n_det, center, options, threads):
    """The engines of the last geometry, kept in the worker between its slabs."""
    angles = np.frombuffer(angles_bytes, dtype=np.float64)
    return SlabReconstructor(angles, n_det, center, threads=threads, **dict(options))


def _geometry(angles, n_det, center, options, threads=1):
    angles = np.ascontiguousarray(angles, dtype=np.float64)
    return (angles.tobytes(), int(n_det), float(center), tuple(sorted(options.items())), threads)


def _slab_task(source, r0, r1, geometry):
    """Rows ``r0:r1``: ``source`` is ``(path, dataset, first row)`` or the slab itself."""
    t0 = time.perf_counter()
    if isinstance(source, tuple):
        path, dataset, first = source
        with h5py.File(path, "r") as f:
            proj = f[dataset][:, first + r0 : first + r1]
    else:
        proj = source
    t1 = time.perf_counter()
    slab = _worker_reconstructor(*geometry)(proj)
    return r0, slab, t1 - t0, time.perf_counter() - t1


def _run_on_cluster(client, slab_source, write, n_rows, slab_rows, geometry):
    """Submit slabs with at most ``2 x workers`` in flight; ``write`` each as it ends."""
    from distributed import as_completed  # noqa: PLC0415

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    starts = iter(range(0, n_rows, slab_rows))
    timings = VolumeTimings(rows=n_rows)

    def submit():
        r0 = next(starts, None)
        if r0 is None:
            return None
        r1 = min(r0 + slab_rows, n_rows)
        source = slab_source(r0, r1)
        if isinstance(source, np.ndarray):
            # Scattered, not embedded in the task (distributed warns of large graphs).
            source = client.scatter(source)
        # pure=False: a re-run of the same slab is a new task, not a cached result.
        return client.submit(_slab_task, source, r0, r1, geometry, pure=False)

    pending = as_completed([f for f in (submit() for _ in range(2 * n_workers)) if f])
    for future in pending:
        r0, slab, t_read, t_compute = future.result()
        future.release()
        t0 = time.perf_counter()
        write(r0, slab)
        timings.write += time.perf_counter() - t0
        timings.read += t_read
        timings.compute += t_compute  # the first slab on each worker includes its plans
        timings.per_slab.append(t_compute)
        timings.slabs += 1
        nxt = submit()
        if nxt is not None:
            pending.add(nxt)
    return timings


# ----------------------------------------------------------------------------- volumes


def reconstruct_array(
    proj,
    angles,
    center,
    *,
    out=None,
    slab_rows=64,
    threads=None,
    scheduler=None,
    **options,
):
    """Reconstruct line integrals in memory ``(angles, rows, cols)`` slab by slab.

    As :func:`multiscope.analysis.tomo.reconstruct` (gridrec; ``options``:
    ``filter_name``, ``circle``, ``interp``, ``eps``), to float rounding, with
    the batch's plans shared by all slabs. ``scheduler`` (or
    ``$MULTISCOPE_DASK_SCHEDULER``) runs the slabs on a dask cluster (each
    task gets its slab's line integrals); otherwise local threads.

    Returns
    -------
    volume : ndarray of float32, shape (rows, cols, cols)
    timings : VolumeTimings
    """
    proj = np.asarray(proj)
    n_ang, n_rows, n_det = proj.shape
    if out is None:
        out = np.empty((n_rows, n_det, n_det), np.float32)

    def write(r0, slab):
        out[r0 : r0 + len(slab)] = slab

    address = _resolve(scheduler)
    if address is None:
        timings = reconstruct_volume(
            lambda a, b: proj[:, a:b],
            write,
            n_rows,
            angles,
            center,
            n_det,
            slab_rows=slab_rows,
            threads=threads,
            **options,
        )
        return out, timings
    t0 = time.perf_counter()
    with dask_client(address) as client:
        timings = _run_on_cluster(
            client,
            lambda a, b: np.ascontiguousarray(proj[:, a:b], dtype=np.float32),
            write,
            n_rows,
            slab_rows,
            _geometry(angles, n_det, center, options),
        )
    timings.wall = time.perf_counter() - t0
    return out, timings


def reconstruct_volume_h5(
    source,
    out,
    angles,
    center,
    *,
    dataset="/exchange/data",
    rows=None,
    slab_rows=64,
    threads=None,
    scheduler=None,
    attrs=None,
    **options,
):
    """Reconstruct the line integrals in an HDF5 file into an HDF5 volume, slab by slab.

    Parameters
    ----------
    source : path
        HDF5 file holding line integrals ``(angles, rows, cols)`` (float32,
        after :func:`~multiscope.analysis.tomo.normalize` and
        :func:`~multiscope.analysis.tomo.minus_log`) at ``dataset``. Chunks of
        one projection, or contiguous, both read fine by rows.
    out : path
        HDF5 file written: ``/entry/data/data`` float32 ``(rows, cols, cols)``,
        one uncompressed chunk per slice (a 1024^3 volume is written in ~5 s;
        gzip would cost ~0.16 s per slice, more than reconstructing it).
        Written under ``<out>.part`` and renamed at the end; on an error
        (a slab lost for good on a cluster) the ``.part`` file is removed and
        the error raised, so ``out`` exists only complete.
    angles, center
        Projection angles (rad) and rotation-axis column (px).
    rows : (int, int), optional
        Only detector rows ``rows[0]:rows[1]`` (default all).
    slab_rows : int, optional
        Rows per slab (task).
    threads : int, optional
        Local compute threads (default all cores); ignored on a cluster.
    scheduler : str or distributed.Client, optional
        Dask scheduler address or client; default (None) ``$MULTISCOPE_DASK_SCHEDULER``
        if set, else local threads; ``""``: local threads.
        The workers must see ``source`` at the same path (a shared file system).
    attrs : dict, optional
        Attributes of the output dataset.
    **options
        ``filter_name``, ``circle``, ``interp``, ``eps`` (gridrec).

    Returns
    -------
    VolumeTimings
    """
    source, out = Path(source), Path(out)
    tmp = out.with_name(out.name + ".part")
    address = _resolve(scheduler)
    t0 = time.perf_counter()
    try:
        with h5py.File(source, "r") as fin, h5py.File(tmp, "w") as fout:
            data = fin[dataset]
            n_ang, n_all, n_det = data.shape
            first, last = rows if rows is not None else (0, n_all)
            n_rows = last - first
            vol = fout.create_dataset(
                VOLUME_DATASET,
                shape=(n_rows, n_det, n_det),
                dtype=np.float32,
                chunks=(1, n_det, n_det),
            )
            for key, value in (attrs or {}).items():
                vol.attrs[key] = value
            fout[VOLUME_DATASET].parent.attrs["NX_class"] = "NXdata"

            def write(r0, slab):
                # One uncompressed chunk per slice, stored as is: half the time
                # of a selection write, which also holds the GIL throughout
                # (the engines' threads wait for it between their C calls).
                for i, plane in enumerate(np.asarray(slab, np.float32)):
                    vol.id.write_direct_chunk((r0 + i, 0, 0), np.ascontiguousarray(plane))

            def read(a, b, buf):
                # Into the pipeline's reused buffer: no page faults of a fresh
                # 0.4 GB array per slab, ~0.7x the time of a slicing read.
                data.read_direct(buf, np.s_[:, first + a : first + b])

            if address is None:
                timings = reconstruct_volume(
                    read,
                    write,
                    n_rows,
                    angles,
                    center,
                    n_det,
                    slab_rows=slab_rows,
                    threads=threads,
                    read_fills=True,
                    **options,
                )
            else:
                path = str(source.resolve())
                with dask_client(address) as client:
                    timings = _run_on_cluster(
                        client,
                        lambda a, b: (path, dataset, first),
                        write,
                        n_rows,
                        slab_rows,
                        _geometry(angles, n_det, center, options),
                    )
    except BaseException:
        # A slab that failed for good (e.g. its worker died more often than the
        # scheduler's allowed-failures) leaves no partial volume behind: the error
        # is the caller's, the disk holds only complete volumes.
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    timings.wall = time.perf_counter() - t0
    return timings


# ----------------------------------------------------------------------------- stitching


def _register_task(lower, upper, overlap_px, lateral):
    return _stitch.register_pair(lower, upper, overlap_px, lateral=lateral)


def stitch_vertical(volumes, overlap_px, *, lateral=True, order=1, scheduler=None):
    """:func:`multiscope.analysis.stitch.stitch_vertical`, pairs registered on a cluster.

    With a scheduler (argument or ``$MULTISCOPE_DASK_SCHEDULER``) each pair of
    neighbouring tiles is registered by one task (a worker holds two tiles);
    the blend runs here. Without one, the plain local function.
    """
    address = _resolve(scheduler)
    if address is None:
        return _stitch.stitch_vertical(volumes, overlap_px, lateral=lateral, order=order)
    volumes = [np.asarray(v) for v in volumes]
    with dask_client(address) as client:
        tiles = client.scatter(volumes)
        futures = [
            client.submit(_register_task, tiles[i - 1], tiles[i], overlap_px, lateral, pure=False)
            for i in range(1, len(tiles))
        ]
        steps = client.gather(futures)
        del futures, tiles
    return _stitch.stitch_vertical(volumes, overlap_px, lateral=lateral, order=order, steps=steps)
