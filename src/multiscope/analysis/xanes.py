"""Full-field (TXM) XANES analysis: align, normalise, whiteline / edge / LCF maps.

Every function is vectorised over all pixels at once (no per-pixel Python loop and
no per-pixel optimiser).  Stacks are absorbance images ``-ln(I / I0)`` shaped
``(energies, rows, cols)`` for 2D XANES or ``(energies, z, rows, cols)`` for 3D
XANES; maps come back with the spatial shape.  Energies may be in keV or eV: every
energy argument and result is in the unit of ``energies``.

Typical pipeline (Spence et al. 2021, section 4)::

    post = np.flatnonzero(energies >= 8.37)       # every valence absorbs alike here
    shifts, aligned = align_stack(absorbance, reference_index=len(energies) - 1,
                                  structure=post, related=np.flatnonzero(energies >= 8.346))
    norm, jump, mask = normalize(aligned, energies, pre_edge=(8.20, 8.32),
                                 post_edge=(8.37, 8.45))  # masked by significance
    mask |= out_of_view(shifts, mask.shape)       # already masked: their spectra are NaN
    wl = fit_whiteline(norm, energies)            # window from the data (logged)

Without ``min_edge_jump`` :func:`normalize` masks the pixels whose edge step is not
significant against their own scatter (:func:`material_mask`); without ``window``
:func:`fit_whiteline` searches from the typical edge to as far above the typical
peak (:func:`whiteline_window`).

``structure``/``related`` switch on the re-sampling (partial-volume) correction of
drifted 2D stacks (:func:`align_stack`, :func:`super_resolve`,
:func:`resampling_gain`); without them the shifts come from cross-correlation alone
and particle-rim pixels keep an energy-dependent interpolation error.

The alignment steps live in :mod:`multiscope.analysis.xanes_register` (feature
images, sub-pixel registration, shifts, out-of-view pixels) and
:mod:`multiscope.analysis.xanes_align` (``align_stack`` with the re-sampling
correction), the edge-step error and the significance mask in
:mod:`multiscope.analysis.xanes_mask`; this module re-exports them, so
``xanes.align_stack`` and the rest keep working.  It holds the per-pixel
spectra: normalisation, whiteline and edge fits, linear combinations, chunking.

Large 3D stacks: ``map_in_chunks(lambda s: fit_whiteline(...), stack, 64)`` keeps
the working memory to a 64-row slab (works on ``h5py`` datasets and memmaps too).

Examples
--------
>>> e = np.linspace(8.30, 8.40, 101)
>>> peak = 8.3512
>>> mu = 1 / (1 + np.exp(-(e - 8.343) / 0.0015)) + 0.5 * np.exp(-0.5 * ((e - peak) / 0.002) ** 2)
>>> stack = np.broadcast_to(mu[:, None, None], (101, 2, 3)).copy()
>>> wl = fit_whiteline(stack, e, window=(8.345, 8.36))
>>> bool(np.all(np.abs(wl - peak) < 2e-5))
True
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable

import numba as nb
import numpy as np
from scipy import ndimage

# Alignment and the mask model live in their own modules; re-exported here.
from .xanes_align import StructureModel, align_stack, resampling_gain, super_resolve
from .xanes_mask import _edge_lines, _range_index, edge_step_error, material_mask, steepest_rise
from .xanes_register import (
    cross_power_peak,
    feature_image,
    out_of_view,
    register_translation,
    shift_stack,
)

_log = logging.getLogger(__name__)

__all__ = [
    "StructureModel",
    "align_stack",
    "cross_power_peak",
    "edge_energy",
    "edge_step_error",
    "steepest_rise",
    "feature_image",
    "fit_whiteline",
    "linear_combination_fit",
    "map_in_chunks",
    "material_mask",
    "normalize",
    "out_of_view",
    "register_translation",
    "resampling_gain",
    "shift_stack",
    "super_resolve",
    "whiteline_window",
]


# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------
def normalize(
    stack: np.ndarray,
    energies: np.ndarray,
    pre_edge: tuple[float, float],
    post_edge: tuple[float, float],
    min_edge_jump: float | None = None,
    e0: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-edge subtraction and edge-step normalisation of every pixel's spectrum.

    For each pixel a straight line is least-squares fitted over the ``pre_edge``
    energies and another over the ``post_edge`` energies (one matrix product for all
    pixels).  The pre-edge line is subtracted and the result divided by the edge
    step ``post(e0) - pre(e0)``, so the normalised spectrum is 0 before the edge and
    1 at the edge (Athena convention, no flattening).

    By default the pixels without the element are masked by significance: each
    pixel's step is compared with its own standard error (:func:`edge_step_error`,
    the scatter of its spectrum about the two lines), and :func:`material_mask`
    keeps the pixels whose step is at least 6 standard errors and connected to one
    of at least 8 (its hysteresis, without its absolute ``min_edge_jump`` route,
    which is in absorbance units and admits noise where the data's scale is
    large).  A noisy empty pixel is thus not fitted whatever the scale of the data
    or the number of pre- and post-edge energies.  An absolute ``min_edge_jump``
    threshold instead masks every pixel whose step is below it: at a per-energy
    noise of 1 % of the edge step, 0.02 let 5 % (11 pre- and 8 post-edge energies)
    to 30 % (3 and 3) of the empty pixels of a map through, the significance mask
    none (``tests/unit/test_xanes_user_path.py``).  The significance mask looks at
    each pixel's neighbourhood, so stacks cut into slabs (:func:`map_in_chunks`)
    may differ at the slab borders; pass ``min_edge_jump`` there for a per-pixel
    result, or call :func:`material_mask` with other settings.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(energies, *spatial)`` absorbance.
    energies : numpy.ndarray
        ``(energies,)`` increasing photon energies.
    pre_edge, post_edge : tuple of float
        Inclusive energy ranges of the two line fits (>= 2 energies each).
    min_edge_jump : float, optional
        None (default): mask by significance (above; needs more than 4 pre- and
        post-edge energies in all).  A number: mask the pixels whose edge step
        (absorbance units) is below it; ``-numpy.inf`` masks only non-finite
        spectra.  Non-finite steps are always masked.
    e0 : float, optional
        Edge energy where the step is evaluated; default: the steepest rise of the
        mean spectrum between the two ranges (one value for all pixels).

    Returns
    -------
    normalized : numpy.ndarray
        Same shape as ``stack`` (float32 unless the input is float64); NaN spectra
        for masked pixels.
    edge_jump : numpy.ndarray
        ``spatial`` edge step in absorbance units (all pixels, masked or not): a
        thickness map of the absorbing element.
    mask : numpy.ndarray
        ``spatial`` bool, **True where masked** (no usable edge).

    Raises
    ------
    ValueError
        If the significance mask is asked for with 4 or fewer pre- and post-edge
        energies in all (no scatter left to estimate the noise from).

    Examples
    --------
    >>> e = np.linspace(8.2, 8.45, 60)
    >>> spec = 0.3 - 0.1 * (e - 8.2) + 0.25 / (1 + np.exp(-(e - 8.345) / 0.002))
    >>> stack = np.stack([spec, np.full_like(spec, 0.3)], axis=1)[:, :, None]
    >>> norm, jump, mask = normalize(stack, e, (8.2, 8.32), (8.37, 8.45))
    >>> print(np.round(jump.ravel(), 3), mask.ravel())
    [0.25 0.  ] [False  True]
    >>> print(round(float(norm[-1, 0, 0]), 3))
    1.0
    """
    stack = np.asarray(stack)
    e = np.asarray(energies, dtype=np.float64)
    if e.shape != (stack.shape[0],):
        raise ValueError(f"energies {e.shape} do not match stack {stack.shape}")
    dtype = np.float64 if stack.dtype == np.float64 else np.float32
    y = stack.reshape(stack.shape[0], -1).astype(dtype, copy=False)
    i_pre, i_post, e0, pre, post = _edge_lines(y, e, pre_edge, post_edge, e0)
    step = post[0] - pre[0]
    spatial = stack.shape[1:]
    if min_edge_jump is None:
        if i_pre.size + i_post.size <= 4:
            raise ValueError(
                "the significance mask needs > 4 pre- and post-edge energies in all; "
                "pass min_edge_jump (an absolute edge-step threshold) instead"
            )
        error = edge_step_error(stack, e, pre_edge, post_edge, e0=e0)
        # Significance alone: material_mask's absolute route is for drift-corrected
        # rim pixels (the live map passes it), and in absorbance units it admits
        # noise wherever the data's scale makes 0.03 only a standard error or two.
        masked = material_mask(
            np.atleast_1d(step.reshape(spatial)), np.atleast_1d(error), min_edge_jump=np.inf
        ).ravel()
    else:
        masked = ~(step >= min_edge_jump)
    safe = np.where(masked, 1.0, step).astype(dtype)
    norm = (y - pre[0] - pre[1] * (e[:, None] - e0).astype(dtype)) / safe
    norm[:, masked] = np.nan
    return norm.reshape(stack.shape), step.reshape(spatial), masked.reshape(spatial)


# --------------------------------------------------------------------------------------
# Whiteline fit
# --------------------------------------------------------------------------------------
def _smoothing_matrix(e, rows_idx, sigma):
    """Rows of a Gaussian smoothing operator in energy units (non-uniform grids)."""
    w = np.exp(-0.5 * ((e[rows_idx, None] - e[None, :]) / sigma) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def _quadratic_tables(x, n_points):
    """Per stencil start: centre energy and pinv rows of the b and c coefficients."""
    n_win = x.size
    n_st = n_win - n_points + 1
    h = n_points // 2
    centre = np.empty(n_st)
    pb = np.empty((n_st, n_points))
    pc = np.empty((n_st, n_points))
    for s in range(n_st):
        xs = x[s : s + n_points] - x[s + h]  # centred: well conditioned
        pinv = np.linalg.pinv(np.stack([np.ones_like(xs), xs, xs * xs], axis=1))
        centre[s], pb[s], pc[s] = x[s + h], pinv[1], pinv[2]
    return centre, pb, pc


@nb.njit(parallel=True, cache=True)
def _whiteline_numba(y, valid, x, centre, pb, pc, n_points, quadratic, out):  # pragma: no cover
    n_win, npix = y.shape
    h = n_points // 2
    # Blocks of pixels per task: the energy loop then streams along contiguous memory.
    block = 256
    nblk = (npix + block - 1) // block
    for bi in nb.prange(nblk):
        p0 = bi * block
        p1 = min(npix, p0 + block)
        best = np.full(p1 - p0, -np.inf)
        arg = np.zeros(p1 - p0, np.int64)
        for k in range(n_win):
            km = max(k - 1, 0)
            kp = min(k + 1, n_win - 1)
            for p in range(p0, p1):
                v = y[km, p] + y[k, p] + y[kp, p]  # 3-point mean: no lone noise spikes
                if v != v:  # NaN anywhere in the window: skip the pixel
                    best[p - p0] = np.inf
                elif v > best[p - p0]:
                    best[p - p0] = v
                    arg[p - p0] = k
        for p in range(p0, p1):
            if not valid[p] or not math.isfinite(best[p - p0]):
                out[p] = np.nan
                continue
            k = arg[p - p0]
            if not quadratic:
                out[p] = x[k]
                continue
            s = min(max(k - h, 0), n_win - n_points)
            b = 0.0
            c = 0.0
            for j in range(n_points):
                yj = y[s + j, p]
                b += pb[s, j] * yj
                c += pc[s, j] * yj
            if c < 0.0:
                e = centre[s] - b / (2.0 * c)
                out[p] = min(max(e, x[s]), x[s + n_points - 1])
            else:
                out[p] = x[k]


def _whiteline_numpy(y, valid, x, centre, pb, pc, n_points, quadratic):
    n_win, npix = y.shape
    finite = np.all(np.isfinite(y), axis=0)
    work = ndimage.uniform_filter1d(np.where(finite, y, 0.0), 3, axis=0, mode="nearest")
    k = np.argmax(work, axis=0)
    bad = ~valid | ~finite
    if not quadratic:
        return np.where(bad, np.nan, x[k])
    h = n_points // 2
    s = np.clip(k - h, 0, n_win - n_points)
    cols = np.arange(npix)
    b = np.zeros(npix)
    c = np.zeros(npix)
    for j in range(n_points):
        yj = y[s + j, cols]
        b += pb[s, j] * yj
        c += pc[s, j] * yj
    ok = c < 0
    e = np.where(ok, centre[s] - b / np.where(ok, 2.0 * c, -1.0), x[k])
    e = np.clip(e, x[s], x[s + n_points - 1])
    return np.where(bad, np.nan, e)


def whiteline_window(
    normalized: np.ndarray,
    energies: np.ndarray,
    mask: np.ndarray | None = None,
    min_points: int = 5,
    max_pixels: int = 65536,
) -> tuple[float, float]:
    """The whiteline window :func:`fit_whiteline` uses by default, taken from the data.

    The typical spectrum -- the median over the pixels with finite, unmasked
    spectra (at most ``max_pixels`` of them, evenly spaced) -- gives the edge, its
    first rise through half the edge step (:func:`edge_energy`), and the peak, its
    maximum above the edge.  The window runs from the edge to as far above the
    peak as the peak lies above the edge, ``(edge, 2 peak - edge)``: every pixel
    whose whiteline lies within that distance of the typical one is inside, the
    rising edge below it holds no maximum, and the post-edge oscillations beyond
    it are left out.  Unit free (keV or eV alike).  A window holding fewer than
    ``min_points`` energies is widened upward (then downward) until it holds them.

    Parameters
    ----------
    normalized : numpy.ndarray
        ``(energies, *spatial)`` normalised spectra (:func:`normalize`; NaN spectra
        of masked pixels are left out).
    energies : numpy.ndarray
        ``(energies,)`` increasing energies.
    mask : numpy.ndarray, optional
        ``spatial`` bool, True = leave the pixel out.
    min_points : int
        Least number of energies in the window (:func:`fit_whiteline`'s
        ``n_points``).
    max_pixels : int
        Most spectra the median is taken over.

    Returns
    -------
    tuple of float
        ``(low, high)`` energies, unit of ``energies``.

    Raises
    ------
    ValueError
        If no pixel has a finite spectrum, or the typical spectrum never rises
        through half the edge step.

    Examples
    --------
    >>> e = np.arange(8.300, 8.400, 0.001)
    >>> edge = 1 / (1 + np.exp(-(e - 8.343) / 0.0015))
    >>> mu = edge + 0.5 * np.exp(-0.5 * ((e - 8.351) / 0.002) ** 2)
    >>> [round(v, 3) for v in whiteline_window(mu[:, None], e)]
    [8.343, 8.359]
    """
    e = np.asarray(energies, dtype=np.float64)
    flat = np.asarray(normalized).reshape(e.size, -1)
    use = np.all(np.isfinite(flat), axis=0)
    if mask is not None:
        use &= ~np.asarray(mask, bool).ravel()
    columns = np.flatnonzero(use)
    if columns.size == 0:
        raise ValueError("no finite, unmasked spectrum to take the whiteline window from")
    columns = columns[:: max(1, columns.size // int(max_pixels))]
    typical = np.median(flat[:, columns].astype(np.float64), axis=1)
    edge = float(edge_energy(typical[:, None], e)[0])
    if not np.isfinite(edge):
        raise ValueError(
            "the typical spectrum never rises through half the edge step: pass window="
        )
    above = np.flatnonzero(e >= edge)
    peak = float(e[above[np.argmax(typical[above])]])
    lo, hi = edge, max(2.0 * peak - edge, peak)
    inside = np.flatnonzero((e >= lo) & (e <= hi))
    while inside.size < min(int(min_points), e.size):
        first, last = (int(inside[0]), int(inside[-1])) if inside.size else (above[0], above[0] - 1)
        if last + 1 < e.size:
            hi = float(e[last + 1])
        else:
            lo = float(e[first - 1])
        inside = np.flatnonzero((e >= lo) & (e <= hi))
    return lo, hi


def fit_whiteline(
    normalized: np.ndarray,
    energies: np.ndarray,
    window: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
    method: str = "quadratic",
    n_points: int = 5,
    smooth: float = 0.0,
    engine: str = "numba",
) -> np.ndarray:
    """Whiteline (peak) energy of every pixel: argmax + 5-point least-squares quadratic.

    Inside ``window`` the maximum of each spectrum is located (on its 3-point
    running mean, so a single noisy point cannot capture it); a quadratic is
    least-squares fitted to the ``n_points`` energies around it (the stencil slides
    inward at the window edges; any grid spacing) and its vertex, clipped to the
    fitted points' span (inside the window), is the result.  Pixels whose quadratic
    is not concave get the located grid energy.  No per-pixel optimiser.

    Choose ``n_points`` so the stencil spans about the whiteline FWHM: 5 points for
    ~1 eV steps, 9 for 0.5 eV steps on a ~4-5 eV wide Ni K whiteline (a narrower
    stencil is noise-limited, a wider one is biased by the peak's asymmetry).

    Parameters
    ----------
    normalized : numpy.ndarray
        ``(energies, *spatial)`` normalised spectra (from :func:`normalize`).
    energies : numpy.ndarray
        ``(energies,)`` increasing energies.
    window : tuple of float, optional
        Inclusive energy range containing the whiteline (>= ``n_points`` energies).
        Default: :func:`whiteline_window` of the data (from the typical spectrum's
        edge to as far above its peak), logged at INFO by this module's logger
        (``multiscope.analysis.xanes``); call :func:`whiteline_window` to see it
        before fitting, and pass it explicitly when fitting a stack in slabs
        (:func:`map_in_chunks`) so every slab uses the same.
    mask : numpy.ndarray, optional
        ``spatial`` bool, True = skip the pixel (NaN result).  Pixels with a NaN in
        the window are skipped too.
    method : {"quadratic", "argmax"}
        Sub-grid quadratic vertex, or the grid energy of the maximum only.
    n_points : int
        Points of the quadratic fit (odd, >= 3).
    smooth : float
        Sigma (energy units) of a Gaussian smoothing of each spectrum before the fit
        (0: none); computed as one matrix product, valid for non-uniform grids.
    engine : {"numba", "numpy"}
        Parallel compiled kernel (fastest) or pure numpy (same results).

    Returns
    -------
    numpy.ndarray
        ``spatial`` float64 whiteline energies in the unit of ``energies``; NaN where
        masked.

    Examples
    --------
    >>> e = np.arange(8.340, 8.362, 0.0005)
    >>> true = np.array([8.3503, 8.3521])
    >>> spec = np.exp(-0.5 * ((e[:, None] - true) / 0.0019) ** 2)
    >>> np.round(fit_whiteline(spec, e, (8.345, 8.358)), 4)
    array([8.3503, 8.3521])
    """
    if method not in ("quadratic", "argmax"):
        raise ValueError(f"method must be 'quadratic' or 'argmax', got {method!r}")
    if engine not in ("numba", "numpy"):
        raise ValueError(f"engine must be 'numba' or 'numpy', got {engine!r}")
    if n_points < 3 or n_points % 2 == 0:
        raise ValueError("n_points must be odd and >= 3")
    normalized = np.asarray(normalized)
    e = np.asarray(energies, dtype=np.float64)
    if e.shape != (normalized.shape[0],):
        raise ValueError(f"energies {e.shape} do not match stack {normalized.shape}")
    if window is None:
        usable = np.all(np.isfinite(normalized.reshape(e.size, -1)), axis=0)
        if mask is not None:
            usable &= ~np.asarray(mask, bool).ravel()
        if not usable.any():  # nothing to fit, and no spectrum to take a window from
            return np.full(normalized.shape[1:], np.nan)
        window = whiteline_window(normalized, e, mask=mask, min_points=n_points)
        _log.info("fit_whiteline: window %.6g to %.6g from the data", *window)
    idx = _range_index(e, window, "window")
    if idx.size < n_points:
        raise ValueError(f"window holds {idx.size} energies, need >= n_points={n_points}")
    spatial = normalized.shape[1:]
    flat = normalized.reshape(e.size, -1)
    if smooth > 0:
        kern = _smoothing_matrix(e, idx, float(smooth)).astype(np.float32)
        y = kern @ flat.astype(np.float32, copy=False)  # NaN spectra stay NaN
    elif idx[-1] - idx[0] + 1 == idx.size:
        y = flat[idx[0] : idx[-1] + 1]  # contiguous: a view, no copy
    else:
        y = flat[idx]
    if y.dtype not in (np.float32, np.float64):
        y = y.astype(np.float32)
    valid = np.ones(y.shape[1], bool) if mask is None else ~np.asarray(mask, bool).ravel()
    x = e[idx]
    centre, pb, pc = _quadratic_tables(x, n_points)
    quadratic = method == "quadratic"
    if engine == "numba":
        out = np.empty(y.shape[1])
        _whiteline_numba(
            np.ascontiguousarray(y), valid, x, centre, pb, pc, n_points, quadratic, out
        )
    else:
        out = _whiteline_numpy(y, valid, x, centre, pb, pc, n_points, quadratic)
    return out.reshape(spatial)


# --------------------------------------------------------------------------------------
# Edge energy
# --------------------------------------------------------------------------------------
def edge_energy(
    normalized: np.ndarray,
    energies: np.ndarray,
    level: float = 0.5,
    mask: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Energy where each normalised spectrum first rises through ``level``.

    Scanning up in energy (inside ``window`` if given), the first index whose value
    is ``>= level`` and the one before it are linearly interpolated.

    Parameters
    ----------
    normalized : numpy.ndarray
        ``(energies, *spatial)`` normalised spectra.
    energies : numpy.ndarray
        ``(energies,)`` increasing energies.
    level : float
        Crossing level (0.5: half edge step).
    mask : numpy.ndarray, optional
        ``spatial`` bool, True = skip (NaN).
    window : tuple of float, optional
        Energy range searched (default: all).

    Returns
    -------
    numpy.ndarray
        ``spatial`` float64 energies (unit of ``energies``); NaN where masked, where
        the spectrum never crosses, or where it starts above ``level``.

    Examples
    --------
    >>> e = np.array([8.33, 8.34, 8.35])
    >>> s = np.array([[0.0], [0.4], [0.9]])
    >>> print(np.round(edge_energy(s, e), 4))
    [8.342]
    """
    y = np.asarray(normalized)
    e = np.asarray(energies, dtype=np.float64)
    spatial = y.shape[1:]
    y = y.reshape(e.size, -1)
    if window is not None:
        idx = _range_index(e, window, "window")
        y, e = y[idx[0] : idx[-1] + 1], e[idx[0] : idx[-1] + 1]
    above = y >= level  # NaN compares False
    k = np.argmax(above, axis=0)
    cols = np.arange(y.shape[1])
    ok = above[k, cols] & (k > 0)
    km = np.maximum(k - 1, 0)
    y0, y1 = y[km, cols].astype(np.float64), y[k, cols].astype(np.float64)
    ok &= np.isfinite(y0)
    t = (level - y0) / np.where(ok & (y1 != y0), y1 - y0, 1.0)
    out = np.where(ok, e[km] + t * (e[k] - e[km]), np.nan)
    if mask is not None:
        out[np.asarray(mask, bool).ravel()] = np.nan
    return out.reshape(spatial)


# --------------------------------------------------------------------------------------
# Linear combination fit (non-negative)
# --------------------------------------------------------------------------------------
def linear_combination_fit(
    normalized: np.ndarray,
    energies: np.ndarray,
    references: np.ndarray,
    window: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
    return_residual: bool = False,
):
    """Non-negative least-squares weights of reference spectra, all pixels at once.

    Exact NNLS by active-set enumeration: for every non-empty subset of references
    the unconstrained least-squares weights of all pixels come from one matrix
    product; per pixel the feasible (all weights >= 0) subset with the smallest
    residual is the NNLS optimum (KKT: the optimum is the unconstrained solution on
    its support).  Practical for up to ~6 references (63 subsets).

    Parameters
    ----------
    normalized : numpy.ndarray
        ``(energies, *spatial)`` normalised spectra.
    energies : numpy.ndarray
        ``(energies,)`` energies of the stack (and of the references).
    references : numpy.ndarray
        ``(n_ref, energies)`` reference spectra on the same grid (e.g. normalised
        Ni2+ and Ni4+ standards).
    window : tuple of float, optional
        Fit range (default: all energies).
    mask : numpy.ndarray, optional
        ``spatial`` bool, True = skip (NaN).
    return_residual : bool
        Also return the rms residual map.

    Returns
    -------
    weights : numpy.ndarray
        ``(n_ref, *spatial)`` float64 non-negative weights (NaN where masked or where
        the spectrum has NaNs); they need not sum to 1 (their sum checks the
        normalisation).
    residual : numpy.ndarray
        ``spatial`` rms residual, only if ``return_residual``.

    Examples
    --------
    >>> e = np.linspace(0, 1, 50)
    >>> refs = np.stack([np.sin(3 * e), e**2])
    >>> spec = (0.3 * refs[0] + 0.7 * refs[1])[:, None]
    >>> print(np.round(linear_combination_fit(spec, e, refs)[:, 0], 6))
    [0.3 0.7]
    """
    y = np.asarray(normalized)
    e = np.asarray(energies, dtype=np.float64)
    refs = np.atleast_2d(np.asarray(references, dtype=np.float64))
    if refs.shape[1] != e.size or y.shape[0] != e.size:
        raise ValueError("references, stack and energies must share the energy axis")
    n_ref = refs.shape[0]
    if n_ref > 8:
        raise ValueError("active-set enumeration supports <= 8 references")
    spatial = y.shape[1:]
    y = y.reshape(e.size, -1)
    if window is not None:
        idx = _range_index(e, window, "window")
        y, refs = y[idx], refs[:, idx]
    y = y.astype(np.float64)
    good = np.all(np.isfinite(y), axis=0)
    if mask is not None:
        good &= ~np.asarray(mask, bool).ravel()
    y = np.where(good[None, :], y, 0.0)
    aty = refs @ y  # (n_ref, npix)
    gram = refs @ refs.T
    yy = np.einsum("ij,ij->j", y, y)
    best = yy.copy()  # the empty support (all weights 0) is always feasible
    weights = np.zeros((n_ref, y.shape[1]))
    for size in range(1, n_ref + 1):
        for sub in itertools.combinations(range(n_ref), size):
            s = list(sub)
            w = np.linalg.pinv(gram[np.ix_(s, s)]) @ aty[s]
            # ||y - A w||^2 = y.y - 2 w.A'y + w'Gw = y.y - w.A'y at the LS solution
            r2 = yy - np.einsum("ij,ij->j", w, aty[s])
            take = np.all(w >= 0.0, axis=0) & (r2 < best)
            best = np.where(take, r2, best)
            weights[:, take] = 0.0
            weights[np.ix_(s, np.flatnonzero(take))] = w[:, take]
    weights[:, ~good] = np.nan
    weights = weights.reshape((n_ref, *spatial))
    if not return_residual:
        return weights
    rms = np.sqrt(np.maximum(best, 0.0) / y.shape[0])
    rms[~good] = np.nan
    return weights, rms.reshape(spatial)


# --------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------
def map_in_chunks(
    func: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, ...]],
    stack,
    chunk_rows: int,
    axis: int = 1,
):
    """Apply a per-pixel stack function slab by slab so memory stays bounded.

    ``stack`` is cut along spatial ``axis`` (default 1: rows of a 2D stack, z of a
    3D one) into slabs of ``chunk_rows``; only one slab is read at a time, so
    ``stack`` may be an ``h5py.Dataset`` or a memmap.  Outputs shaped like the slab
    (energy axis kept) are reassembled along ``axis``; outputs with one dimension
    less (maps) along ``axis - 1``.  A tuple of outputs gives a tuple.

    Parameters
    ----------
    func : callable
        ``func(slab) -> array or tuple of arrays``; must treat pixels independently.
    stack : array_like
        ``(energies, *spatial)`` stack supporting slicing.
    chunk_rows : int
        Slab thickness along ``axis``.
    axis : int
        Spatial axis to cut (>= 1).

    Returns
    -------
    numpy.ndarray or tuple of numpy.ndarray
        Same as ``func(stack)``.

    Examples
    --------
    >>> s = np.random.default_rng(0).random((5, 7, 3))
    >>> out = map_in_chunks(lambda c: c.max(axis=0), s, chunk_rows=2)
    >>> bool(np.array_equal(out, s.max(axis=0)))
    True
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    ndim = len(stack.shape)
    if not 1 <= axis < ndim:
        raise ValueError(f"axis must be a spatial axis (1..{ndim - 1})")
    n = stack.shape[axis]
    outs = None
    single = False
    for r0 in range(0, n, chunk_rows):
        r1 = min(n, r0 + chunk_rows)
        sl = [slice(None)] * ndim
        sl[axis] = slice(r0, r1)
        res = func(np.asarray(stack[tuple(sl)]))
        if not isinstance(res, tuple):
            single, res = True, (res,)
        if outs is None:
            outs = []
            for r in res:
                r = np.asarray(r)
                ax = axis if r.ndim == ndim else axis - 1
                if r.ndim not in (ndim, ndim - 1) or r.shape[ax] != r1 - r0:
                    raise ValueError(f"cannot reassemble output of shape {r.shape}")
                shape = list(r.shape)
                shape[ax] = n
                outs.append((np.empty(shape, r.dtype), ax))
        for (buf, ax), r in zip(outs, res, strict=True):
            idx = [slice(None)] * buf.ndim
            idx[ax] = slice(r0, r1)
            buf[tuple(idx)] = r
    result = tuple(buf for buf, _ in outs)
    return result[0] if single else result
