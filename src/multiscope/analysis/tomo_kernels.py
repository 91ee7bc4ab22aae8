"""numba kernels of :mod:`multiscope.analysis.tomo`'s reconstructions.

gridrec's gathers of filtered spectra into NUFFT strengths and its loading of a
sinogram pair, and the filtered back projection's inner loop. Kept apart from the
algorithms that call them; each is compiled once and cached (``cache=True``).
"""

import numba
import numpy as np

__all__ = ["backproject", "gather", "gather_pairs", "load_pair"]


@numba.njit(cache=True, boundscheck=False, nogil=True)
def gather(spec, src, weight, n_direct, out):  # pragma: no cover
    # out[a * m + j] = spec[a, src[j]] * weight[j], spec conjugated for j >= n_direct
    # (the mirrored bins of a lone slice's half spectrum): one pass, no temporaries.
    m = src.shape[0]
    for a in range(spec.shape[0]):
        base = a * m
        for j in range(n_direct):
            out[base + j] = spec[a, src[j]] * weight[j]
        for j in range(n_direct, m):
            out[base + j] = np.conj(spec[a, src[j]]) * weight[j]


@numba.njit(cache=True, boundscheck=False, nogil=True)
def gather_pairs(specs, src, weight, out):  # pragma: no cover
    # out[a * m + j, v] = specs[v, a, src[j]] * weight[j] (as gather, k pairs at once).
    k, n_ang, _ = specs.shape
    m = src.shape[0]
    for a in range(n_ang):
        base = a * m
        for j in range(m):
            s = src[j]
            w = weight[j]
            row = out[base + j]
            for v in range(k):
                row[v] = specs[v, a, s] * w


@numba.njit(cache=True, boundscheck=False, nogil=True)
def load_pair(a, b, buf, left):  # pragma: no cover
    # buf[:, left:left + n] = a + ib, zeros elsewhere: one pass over the buffer.
    n_ang, n = a.shape
    width = buf.shape[1]
    for i in range(n_ang):
        row = buf[i]
        for j in range(left):
            row[j] = 0
        for j in range(n):
            row[left + j] = complex(a[i, j], b[i, j])
        for j in range(left + n, width):
            row[j] = 0


@numba.njit(parallel=True, fastmath=True, cache=True)
def backproject(filtered, cos_a, sin_a, center, n_out, radius2, tile):  # pragma: no cover
    # filtered: (angles, n_det, n_slices), slices innermost so the interpolation
    # weights computed once per (pixel, angle) serve all slices with unit stride.
    n_ang, n_det, n_sl = filtered.shape
    out = np.zeros((n_out, n_out, n_sl), np.float32)
    half = n_out // 2
    n_t = (n_out + tile - 1) // tile
    # Tiles of pixels keep the detector span touched per angle small (cache reuse).
    for t in numba.prange(n_t * n_t):
        i0 = (t // n_t) * tile
        j0 = (t % n_t) * tile
        i1 = min(i0 + tile, n_out)
        j1 = min(j0 + tile, n_out)
        for a in range(n_ang):
            ca = cos_a[a]
            sa = sin_a[a]
            for i in range(i0, i1):
                base = center - (i - half) * sa
                for j in range(j0, j1):
                    if (i - half) ** 2 + (j - half) ** 2 > radius2:
                        continue
                    s = base + (j - half) * ca
                    k = int(np.floor(s))
                    if k < 0 or k >= n_det - 1:
                        continue
                    w1 = np.float32(s - k)
                    w0 = np.float32(1.0) - w1
                    for b in range(n_sl):
                        out[i, j, b] += w0 * filtered[a, k, b] + w1 * filtered[a, k + 1, b]
    return out
