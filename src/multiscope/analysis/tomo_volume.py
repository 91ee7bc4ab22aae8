"""Whole-volume reconstruction, slab by slab, with the batch sharing its plans.

:func:`~multiscope.analysis.tomo.reconstruct` reconstructs what it is given
at once; a 1024^3 volume from 1601 projections needs 6.7 GB of line integrals
and 4.3 GB of result. :func:`reconstruct_volume` streams it instead: slabs of
``slab_rows`` detector rows are read, reconstructed and written, the reading
of the next slab and the writing of finished rows overlapped (one reader and
one writer thread) with the computing, and the next slab's tasks queued
before the current one ends (no core waits at a slab's end), so memory holds
two slabs of line integrals and two of slices.

The computing is shared by ``threads`` threads, each with its own gridrec
engine of the volume's geometry (filter, weights; the NUFFT plan, kernel
values computed once for the whole volume, shared by the engines) running
single-threaded: slices are independent, so the 8 slice pairs an engine grids
at once need no synchronisation with the other core
(docs/decisions/0026-volume-reconstruction-pipeline.md,
docs/decisions/0028-gridrec-batched-gridding.md). The result
equals :func:`~multiscope.analysis.tomo.reconstruct` of the whole stack to
float rounding (the same slice pairs, the same points; only the order of the
NUFFT's sums differs).

The input and output are callables (``read(r0, r1)``, ``write(r0, slab)``) so
this module stays free of files: :mod:`multiscope.compute` reads HDF5, writes
HDF5 and runs slabs on a dask cluster.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import tomo

__all__ = ["SlabReconstructor", "VolumeTimings", "reconstruct_volume"]

# Rows per task handed to one compute thread: the pairs one engine grids at
# once (tomo._PAIRS), so a slow thread (a loaded core) holds back no more
# than that at the end of a slab.
_ROWS_PER_TASK = 2 * tomo._PAIRS
# Slabs of line integrals (and of slices) held by reconstruct_volume: the
# slab computing and the next (being read, then queued). Fresh memory is dear
# here: a page first touched costs ~5 s per GB of system time on this
# virtual machine (decision 0032), reused buffers ~0.1.
_SLABS_IN_FLIGHT = 2


class SlabReconstructor:
    """Gridrec of one geometry for many slabs: one engine (plans) per compute thread.

    Parameters
    ----------
    angles : array_like, shape (angles,)
        Projection angles in radians.
    n_det : int
        Detector columns (the slices are ``n_det x n_det``).
    center : float
        Rotation-axis column (px).
    filter_name, circle, interp, eps
        As :func:`~multiscope.analysis.tomo.reconstruct` (gridrec).
    threads : int, optional
        Compute threads (each a single-threaded engine); default all cores.

    Notes
    -----
    The engines share one NUFFT plan (~0.15 GB for a 1024-pixel detector and
    1600 angles) and each holds ~0.55 GB of work arrays. Build one per volume
    (or keep it for volumes of the same geometry) and call :meth:`close` when
    done.
    """

    def __init__(
        self,
        angles,
        n_det,
        center,
        *,
        filter_name="shepp",
        circle=False,
        interp="linear",
        eps=3e-3,
        threads=None,
    ):
        self.angles = np.asarray(angles, dtype=np.float64)
        self.n_det = int(n_det)
        self.center = float(center)
        self.circle = circle
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self._engines: queue.SimpleQueue = queue.SimpleQueue()
        first = None
        for _ in range(self.threads):
            engine = tomo._Gridrec(
                self.angles, self.n_det, self.center, filter_name, self.n_det, eps, 1, interp,
                circle,
            )  # fmt: skip
            if first is None:
                # One set of plans (points, kernel values: ~0.15 GB) for all engines.
                first = engine
                first._plan("full")
            else:
                engine.share_plans(first)
            self._engines.put(engine)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gridrec")

    def _run(self, proj, out):
        t0 = time.perf_counter()
        engine = self._engines.get()
        try:
            engine(proj, out)
        finally:
            self._engines.put(engine)
        if self.circle:
            np.copyto(out, 0, where=tomo._outside_circle(self.n_det))
        return time.perf_counter() - t0

    def _check(self, proj):
        proj = np.asarray(proj, dtype=np.float32)
        if proj.ndim != 3 or proj.shape[0] != len(self.angles) or proj.shape[2] != self.n_det:
            raise ValueError(
                f"slab shape {proj.shape} does not match {len(self.angles)} angles "
                f"x rows x {self.n_det} columns"
            )
        return proj

    def submit(self, proj, out):
        """Queue the tasks of a slab; returns ``[(row0, row1, future), ...]`` in row order.

        Each future gives its task's seconds. The engines take tasks in the
        order queued, so the tasks of the next slab, queued before this one's
        end, keep every core busy across slabs.
        """
        proj = self._check(proj)
        n_rows = proj.shape[1]
        bounds = list(range(0, n_rows, _ROWS_PER_TASK)) + [n_rows]
        return [
            (a, b, self._pool.submit(self._run, proj[:, a:b], out[a:b]))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    def __call__(self, proj, out=None):
        """Reconstruct a slab ``(angles, rows, n_det)`` into ``out`` ``(rows, n, n)``.

        Rows are paired ``(0, 1), (2, 3), ...`` within the slab, as
        :func:`~multiscope.analysis.tomo.reconstruct` pairs them (an even
        ``slab_rows`` keeps the pairs of the whole volume).
        """
        proj = self._check(proj)
        if out is None:
            out = np.empty((proj.shape[1], self.n_det, self.n_det), np.float32)
        for _, _, f in self.submit(proj, out):
            f.result()
        return out

    def close(self):
        """Stop the compute threads."""
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class VolumeTimings:
    """Where the time of :func:`reconstruct_volume` went (seconds).

    ``read`` and ``write`` are summed over the calls (each in its own
    thread); ``compute`` is the engines' busy time over the volume divided by
    the compute threads (``per_slab``: each slab's share), so with all cores
    busy it is the wall time of computing; ``wall`` is the whole call and
    ``plans`` the engines' set-up (made while the first slab is read). With
    full overlap ``wall`` is about ``compute`` plus one read and one task's
    write; ``overlap`` is the part of reading and writing hidden behind
    computing: ``(read + write + compute + plans - wall) / (read + write)``.
    """

    rows: int = 0
    slabs: int = 0
    plans: float = 0.0
    read: float = 0.0
    compute: float = 0.0
    write: float = 0.0
    wall: float = 0.0
    per_slab: list = field(default_factory=list)

    @property
    def per_slice(self) -> float:
        """Compute seconds per slice."""
        return self.compute / max(self.rows, 1)

    @property
    def overlap(self) -> float:
        io = self.read + self.write
        if io <= 0:
            return 1.0
        return float(np.clip((io + self.compute + self.plans - self.wall) / io, 0.0, 1.0))


class _Timed:
    """A callable that adds its run time to ``timings.<name>``."""

    def __init__(self, fn, timings, name):
        self.fn, self.timings, self.name = fn, timings, name
        self.lock = threading.Lock()

    def __call__(self, *args):
        t0 = time.perf_counter()
        result = self.fn(*args)
        with self.lock:
            setattr(
                self.timings, self.name, getattr(self.timings, self.name) + time.perf_counter() - t0
            )
        return result


def reconstruct_volume(
    read: Callable[..., np.ndarray | None],
    write: Callable[[int, np.ndarray], object],
    n_rows: int,
    angles,
    center: float,
    n_det: int,
    *,
    slab_rows: int = 64,
    threads: int | None = None,
    reconstructor: SlabReconstructor | None = None,
    read_fills: bool = False,
    **options,
) -> VolumeTimings:
    """Reconstruct ``n_rows`` detector rows slab by slab, IO overlapped with computing.

    Parameters
    ----------
    read : callable
        ``read(r0, r1)`` returns the line integrals of rows ``r0:r1``, shaped
        ``(angles, r1 - r0, n_det)``; with ``read_fills``, ``read(r0, r1, out)``
        fills ``out`` (float32, that shape) instead. Called from one reader
        thread, in order, one slab ahead of the computing.
    write : callable
        ``write(r0, slices)`` stores slices ``r0:r0 + len(slices)`` (a task's
        rows, up to 16, as soon as they and all rows before them are done).
        Called from one writer thread, in order; ``slices`` is a view of a
        buffer reused two slabs later, so copy it if you keep it.
    n_rows : int
        Detector rows (slices) of the volume.
    angles : array_like
        Projection angles in radians.
    center : float
        Rotation-axis column (px).
    n_det : int
        Detector columns.
    slab_rows : int, optional
        Rows per slab read at once (even, to keep
        :func:`~multiscope.analysis.tomo.reconstruct`'s slice pairs). Memory:
        two slabs of line integrals and two of slices.
    threads : int, optional
        Compute threads; default all cores.
    reconstructor : SlabReconstructor, optional
        Engines of this geometry built before (their plans are reused).
    read_fills : bool, optional
        ``read`` fills buffers of this function (allocated once, reused:
        no page faults of fresh slabs, no copy).
    **options
        ``filter_name``, ``circle``, ``interp``, ``eps`` as
        :func:`~multiscope.analysis.tomo.reconstruct`.

    Returns
    -------
    VolumeTimings
        Read, compute and write seconds, wall time and the overlap.

    Notes
    -----
    The engines never wait at the end of a slab: the tasks of the next slab
    are queued (its line integrals read ahead) before the current slab's
    end, and slices are written task by task while later tasks compute. Only
    the volume's last task and its write are not overlapped (halving the last
    tasks would cost as much as it saves: an engine grids 4 pairs at ~1.25x
    the cost per pair of 8; docs/decisions/0032-volume-under-a-minute.md).

    Examples
    --------
    >>> import numpy as np
    >>> theta = np.linspace(0, np.pi, 90, endpoint=False)
    >>> proj = np.random.default_rng(0).random((90, 6, 32), dtype=np.float32)
    >>> vol = np.empty((6, 32, 32), np.float32)
    >>> t = reconstruct_volume(
    ...     lambda a, b: proj[:, a:b], lambda a, s: vol.__setitem__(slice(a, a + len(s)), s),
    ...     6, theta, 16.0, 32, slab_rows=4)
    >>> ref = tomo.reconstruct(proj, theta, 16.0)
    >>> bool(np.allclose(vol, ref, atol=1e-5 * np.abs(ref).max())), t.slabs
    (True, 2)
    """
    if slab_rows < 1:
        raise ValueError("slab_rows must be >= 1")
    n_rows = int(n_rows)
    slab_rows = max(1, min(int(slab_rows), n_rows))
    timings = VolumeTimings(rows=n_rows)
    t_start = time.perf_counter()
    own = reconstructor is None
    read_t, write_t = _Timed(read, timings, "read"), _Timed(write, timings, "write")
    slabs = [(r0, min(r0 + slab_rows, n_rows)) for r0 in range(0, n_rows, slab_rows)]
    n_ang = len(np.atleast_1d(angles) if own else reconstructor.angles)
    # Two slabs of line integrals (computing; being read, then queued) and two
    # of slices (computing, queued; the previous one's being written).
    in_free = [None] * _SLABS_IN_FLIGHT
    out_free = [None] * _SLABS_IN_FLIGHT
    reads: deque = deque()  # futures of slabs read ahead, in order
    writes: deque = deque()  # (out buffer, write futures) of slabs being written
    next_read = 0

    def schedule_reads():
        nonlocal next_read
        while next_read < len(slabs) and in_free:
            r0, r1 = slabs[next_read]
            buf = in_free.pop()
            if read_fills:
                if buf is None:  # flat: a shorter last slab uses its start
                    buf = np.empty(n_ang * slab_rows * n_det, np.float32)
                view = buf[: n_ang * (r1 - r0) * n_det].reshape(n_ang, r1 - r0, n_det)
                reads.append((buf, reader.submit(_fill, read_t, r0, r1, view)))
            else:
                reads.append((None, reader.submit(read_t, r0, r1)))
            next_read += 1

    def drain(slab):
        """Wait for a slab's tasks, writing their rows in order; free its input."""
        r0, in_buf, out_buf, tasks = slab
        busy, futures = 0.0, []
        for a, b, f in tasks:
            busy += f.result()
            futures.append(writer.submit(write_t, r0 + a, out_buf[a:b]))
        in_free.append(in_buf)
        writes.append((out_buf, futures))
        dt = busy / reconstructor.threads  # the slab's share of the cores' time
        timings.compute += dt
        timings.per_slab.append(dt)
        timings.slabs += 1

    try:
        with (
            ThreadPoolExecutor(1, thread_name_prefix="slab-read") as reader,
            ThreadPoolExecutor(1, thread_name_prefix="slab-write") as writer,
        ):
            computing, queued = None, []
            try:
                schedule_reads()
                if own:  # the plans are made while the first slab is read
                    reconstructor = SlabReconstructor(
                        angles, n_det, center, threads=threads, **options
                    )
                timings.plans = time.perf_counter() - t_start
                for r0, r1 in slabs:
                    in_buf, future = reads.popleft()
                    proj = future.result()
                    if not out_free:  # the oldest written slab's buffer
                        buf, futures = writes.popleft()
                        for f in futures:
                            f.result()
                        out_free.append(buf)
                    out_buf = out_free.pop()
                    if out_buf is None:
                        out_buf = np.empty((slab_rows, n_det, n_det), np.float32)
                    tasks = reconstructor.submit(proj, out_buf[: r1 - r0])
                    queued.append(tasks)
                    del proj
                    if computing is not None:
                        # The engines already have this slab's tasks queued.
                        drain(computing)
                        schedule_reads()
                    computing = (r0, in_buf, out_buf, tasks)
                if computing is not None:
                    drain(computing)
                    computing = None
                for _, futures in writes:
                    for f in futures:
                        f.result()
            finally:
                # On an error, no task may still write into the buffers after return.
                for tasks in queued:
                    for *_, f in tasks:
                        f.exception()
    finally:
        if own and reconstructor is not None:
            reconstructor.close()
    timings.wall = time.perf_counter() - t_start
    return timings


def _fill(read, r0, r1, buf):
    read(r0, r1, buf)
    return buf
