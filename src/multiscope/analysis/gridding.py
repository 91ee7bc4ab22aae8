"""Type-1 NUFFT of fixed points for many vectors at once: gridrec's gridding step.

A 2D type-1 NUFFT, ``f[k1, k2] = sum_j c_j exp(+i (k1 x_j + k2 y_j))`` for
``-n/2 <= k1, k2 < n/2``, computed as finufft does it: spread the strengths
onto an oversampled periodic grid with a compact kernel, FFT, divide by the
kernel's Fourier transform. What differs is what gridrec's points allow:

* the points (polar samples of one geometry) are the same for every slice,
  so the kernel values, grid cells and a cache-friendly order of the points
  are computed once, when the plan is made, not at every transform;
* the transform takes ``k`` vectors at once and the grid holds their ``k``
  values side by side (``(nf, nf, k)``): each kernel weight, computed once,
  is applied to ``k`` strengths in one SIMD loop. With ``k = 8`` (16 slices
  packed in pairs) gridrec's gridding costs about half of finufft's
  single-precision transform one pair at a time, at the same accuracy
  (docs/decisions/0028-gridrec-batched-gridding.md).

:class:`FinufftPlan` puts finufft behind the same interface, for a lone
slice (one vector) and for accuracies this kernel does not meet.

The kernel is a Kaiser-Bessel window ``I0(beta sqrt(1 - (2t / W)^2))``, ``W
= 4`` cells wide on a grid ``1.5625`` times the number of modes; its
``beta`` gives the error of finufft at ``eps = 3e-3`` with that
oversampling (relative l2 error ~1.5e-3 on random points).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import finufft
import numba
import numpy as np
import scipy.fft
import scipy.special

__all__ = ["GRIDDING_EPS", "FinufftPlan", "GriddingPlan"]

#: The accuracy asked of a NUFFT that this kernel meets (finufft's ``eps``).
GRIDDING_EPS = 3e-3

# Kernel width (grid cells), oversampling and shape. The oversampling is
# finufft's for the lone slices too: our polar grids have 2-4 points per mode,
# where a finer grid with a narrower kernel (4 instead of 5 points wide at
# eps = 3e-3) costs 10-20 % less than finufft's own choice (1.25); coarser ones
# (1.4-1.47) moved the RMSE of the 128-px test phantom by up to 0.014 %, this
# one by < 0.004 %. the relative l2 error of
# the transform is 1.54e-3 at beta = 8.2 (finufft eps=3e-3, upsampfac=1.5625:
# 1.51e-3); beta 7.5 or 9 doubles it.
_WIDTH = 4
_SIGMA = 1.5625
_BETA = 8.2
# Points are ordered by tiles of this many grid cells a side (then by their
# order in the input: along the polar rays), so a tile's (k-deep) grid cells
# stay in cache while its points are spread.
_TILE = 16
# Samples of the kernel's half (linearly interpolated: error < 1e-7).
_TABLE = 1 << 14


def _kernel(t):
    """Kaiser-Bessel kernel at offsets ``t`` (grid cells) from its centre."""
    z = np.clip(1.0 - (2.0 * t / _WIDTH) ** 2, 0.0, None)
    return np.where(
        np.abs(t) < _WIDTH / 2, scipy.special.i0(_BETA * np.sqrt(z)) / scipy.special.i0(_BETA), 0.0
    )


class GriddingPlan:
    """Type-1 NUFFT ``(n, n)`` of fixed points ``(x, y)`` (radians, any real value).

    Parameters
    ----------
    n : int
        Modes along each axis (even); the output is ``(k, n, n)`` with mode
        ``k1`` at row ``k1 + n // 2`` (finufft's default ``modeord=0``).
    x, y : array_like, shape (M,)
        Point coordinates along the first and second output axes; periodic
        with period ``2 pi``.

    Notes
    -----
    The plan holds 40 bytes per point (order, cells, kernel values): 150 MB
    for the 3.75 M points of a 1024-pixel, 1601-angle gridrec. It is read
    only once made: threads may share one plan, each calling :meth:`execute`
    with its own work array.
    """

    def __init__(self, n, x, y):
        self.n = n = int(n)
        nf = int(np.ceil(n * _SIGMA))
        self.nf = nf = scipy.fft.next_fast_len(nf + nf % 2)
        # Each point's first cell (wrapped into [0, nf): cells run 0..nf + 2 on
        # a grid padded by W cells, whose margins are folded back after
        # spreading), kernel values from a fine table, tile for the order.
        table = _kernel(np.linspace(0, _WIDTH / 2, _TABLE + 1)).astype(np.float64)
        self.order, self.i1, self.i2, self.w1, self.w2 = _cells(
            np.ascontiguousarray(x, np.float64), np.ascontiguousarray(y, np.float64), nf, table
        )
        # Deconvolution: the kernel's Fourier transform at each mode, by
        # quadrature of the smooth window.
        t = np.linspace(-_WIDTH / 2, _WIDTH / 2, 4001)
        modes = np.arange(-(n // 2), n - n // 2)
        ft = np.trapezoid(_kernel(t) * np.cos(np.outer(modes, t) * (2 * np.pi / nf)), t, axis=1)
        self.correction = (1.0 / ft).astype(np.float32)
        self.modes = np.mod(modes, nf)

    def work(self, k):
        """A work array for :meth:`execute` of ``k`` vectors (reuse it between calls)."""
        return np.empty((self.nf + _WIDTH, self.nf + _WIDTH, 2 * k), np.float32)

    def execute(self, strengths, work=None, threads=1):
        """Transform ``strengths`` ``(M, k)`` complex64 -> ``(n, n, k)`` complex64.

        ``work`` (from :meth:`work`) is overwritten; ``threads`` > 1 splits the
        points between threads, each spreading onto its own grid (summed).
        """
        grid = self._grid(strengths, work, threads)
        f = grid[np.ix_(self.modes, self.modes)]
        f *= self.correction[:, None, None]
        f *= self.correction[None, :, None]
        return f

    def execute_pairs(self, strengths, out, work=None, threads=1):
        """Transform ``strengths`` ``(M, k)`` of slice pairs into real slices ``out``.

        As :meth:`execute`, but mode ``(i, j)`` of vector ``v`` goes to
        ``out[2 v, i, j]`` (real part) and ``out[2 v + 1, i, j]`` (imaginary
        part), ``out`` float32 ``(2 k, n, n)`` (or ``2 k - 1`` planes: the last
        imaginary part dropped): the mode selection, the deconvolution and the
        split into slices in one pass, without the temporaries of :meth:`execute`.
        """
        grid = self._grid(strengths, work, threads)
        _unpack(grid, self.modes.astype(np.int64), self.correction, out)
        return out

    def _grid(self, strengths, work, threads):
        """Spread and inverse-transform in ``work``: a view ``(nf, nf, k)`` complex64.

        Only the columns of the ``n`` modes are transformed along the first
        axis; the other columns hold intermediate values.
        """
        strengths = np.ascontiguousarray(strengths, dtype=np.complex64)
        if strengths.ndim == 1:
            strengths = strengths[:, None]
        k = strengths.shape[1]
        if work is None or work.shape[2] != 2 * k:
            work = self.work(k)
        flat = strengths.view(np.float32)
        bounds = np.linspace(0, len(self.order), max(1, int(threads)) + 1).astype(int)
        grids = [work] + [self.work(k) for _ in bounds[2:]]

        def spread(j):
            grids[j].fill(0)
            a, b = bounds[j], bounds[j + 1]
            _spread(grids[j], flat, self.order[a:b], self.i1[a:b], self.i2[a:b],
                    self.w1[a:b], self.w2[a:b])  # fmt: skip

        if len(grids) == 1:
            spread(0)
        else:
            with ThreadPoolExecutor(len(grids), thread_name_prefix="spread") as pool:
                list(pool.map(spread, range(len(grids))))
            for g in grids[1:]:
                work += g
        nf, w, n = self.nf, _WIDTH, self.n
        grid = work.view(np.complex64)  # (nf + W, nf + W, k)
        grid[:w] += grid[nf : nf + w]
        grid[:, :w] += grid[:, nf : nf + w]
        # Inverse DFTs (exp(+i ...), unnormalised) in place (fresh arrays of
        # this size cost their page faults at every call): along the second
        # axis, then along the first for the columns of the n modes only (the
        # two ends of the period, negative modes wrapped to the top).
        workers = max(1, int(threads))
        grid = grid[:nf, :nf]
        scipy.fft.ifft(grid, axis=1, norm="forward", workers=workers, overwrite_x=True)
        for cols in (slice(0, n - n // 2), slice(nf - n // 2, nf)):
            scipy.fft.ifft(grid[:, cols], axis=0, norm="forward", workers=workers, overwrite_x=True)
        return grid


class FinufftPlan:
    """finufft's type-1 NUFFT behind :class:`GriddingPlan`'s interface.

    For a lone slice, and for pairs when ``eps`` is below what
    :class:`GriddingPlan` meets. finufft plans are not thread-safe: one per
    calling thread (and batch size).
    """

    def __init__(self, n, x, y, eps):
        self.n, self.x, self.y, self.eps = n, x.astype(np.float32), y.astype(np.float32), eps
        self._plans = {}
        self._lock = threading.Lock()

    def work(self, k):
        return None

    def execute(self, strengths, work=None, threads=1):
        strengths = np.asarray(strengths, np.complex64)
        if strengths.ndim == 1:
            strengths = strengths[:, None]
        k = strengths.shape[1]
        key = (k, threads, threading.get_ident())
        with self._lock:
            plan = self._plans.get(key)
        if plan is None:
            plan = finufft.Plan(
                1, (self.n, self.n), n_trans=k, eps=self.eps, isign=1, dtype="complex64",
                nthreads=threads, upsampfac=_SIGMA,
            )  # fmt: skip
            # The points are those of every slice: set and sorted once.
            plan.setpts(self.x, self.y)
            with self._lock:
                self._plans[key] = plan
        img = plan.execute(np.ascontiguousarray(strengths.T))
        return np.moveaxis(img.reshape(k, self.n, self.n), 0, -1)


@numba.njit(cache=True)
def _cells(x, y, nf, table):  # pragma: no cover
    m = x.shape[0]
    i1 = np.empty(m, np.int32)
    i2 = np.empty(m, np.int32)
    w1 = np.empty((m, _WIDTH), np.float32)
    w2 = np.empty((m, _WIDTH), np.float32)
    key = np.empty(m, np.int64)
    tiles = (nf + _TILE - 1) // _TILE
    scale = nf / (2 * np.pi)
    step = (_WIDTH / 2) / _TABLE
    for p in range(m):
        for axis in range(2):
            u = (x[p] if axis == 0 else y[p]) * scale
            u -= np.floor(u / nf) * nf  # [0, nf]
            first = np.ceil(u - _WIDTH / 2)
            for t in range(_WIDTH):
                d = abs(first + t - u) / step
                j = int(d)
                val = 0.0
                if j < _TABLE:
                    val = table[j] + (d - j) * (table[j + 1] - table[j])
                if axis == 0:
                    w1[p, t] = val
                else:
                    w2[p, t] = val
            cell = int(first) % nf
            if axis == 0:
                i1[p] = cell
            else:
                i2[p] = cell
        key[p] = (i1[p] // _TILE) * tiles + i2[p] // _TILE
    # Counting sort by tile (stable: points of a tile stay in input order).
    start = np.zeros(tiles * tiles + 1, np.int64)
    for p in range(m):
        start[key[p] + 1] += 1
    for t in range(tiles * tiles):
        start[t + 1] += start[t]
    order = np.empty(m, np.int32)
    s1 = np.empty(m, np.int32)
    s2 = np.empty(m, np.int32)
    v1 = np.empty((m, _WIDTH), np.float32)
    v2 = np.empty((m, _WIDTH), np.float32)
    for p in range(m):
        q = start[key[p]]
        start[key[p]] += 1
        order[q] = p
        s1[q] = i1[p]
        s2[q] = i2[p]
        v1[q] = w1[p]
        v2[q] = w2[p]
    return order, s1, s2, v1, v2


@numba.njit(fastmath=True, cache=True, boundscheck=False, nogil=True)
def _spread(grid, strengths, order, i1, i2, w1, w2):  # pragma: no cover
    # grid (R, C, 2k) float32 (k complex values per cell, interleaved);
    # strengths (M, 2k) float32. Each point adds its k strengths times the
    # 4 x 4 kernel weights: the innermost loop (2k floats) is one SIMD axpy.
    k2 = strengths.shape[1]
    for p in range(order.shape[0]):
        s = strengths[order[p]]
        r0 = i1[p]
        c0 = i2[p]
        for a in range(4):
            wa = w1[p, a]
            for b in range(4):
                wab = wa * w2[p, b]
                cell = grid[r0 + a, c0 + b]
                for e in range(k2):
                    cell[e] += wab * s[e]


@numba.njit(fastmath=False, cache=True, boundscheck=False, nogil=True)
def _unpack(grid, modes, correction, out):  # pragma: no cover
    # out[2v, i, j] + i out[2v + 1, i, j] = grid[modes[i], modes[j], v] * c[i] * c[j],
    # the two products rounded as execute's two in-place multiplications.
    n = modes.shape[0]
    k = grid.shape[2]
    planes = out.shape[0]
    for i in range(n):
        row = grid[modes[i]]
        ci = correction[i]
        for j in range(n):
            cell = row[modes[j]]
            cj = correction[j]
            for v in range(k):
                val = cell[v] * ci * cj
                out[2 * v, i, j] = val.real
                if 2 * v + 1 < planes:
                    out[2 * v + 1, i, j] = val.imag
