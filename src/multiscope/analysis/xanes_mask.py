"""The edge-step model of full-field XANES: each pixel's edge step, its error, the mask.

:func:`~multiscope.analysis.xanes.normalize` fits a line to each pixel's pre-edge
and another to its post-edge energies and divides by the step between them at
``e0`` (:func:`steepest_rise` of the mean spectrum by default).  Here are the
pieces that decide which pixels hold the element: the step's standard error from
each pixel's own scatter (:func:`edge_step_error`) and the significance mask with
hysteresis (:func:`material_mask`).  Re-exported by :mod:`multiscope.analysis.xanes`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["edge_step_error", "material_mask", "steepest_rise"]


def _range_index(energies, rng, what):
    lo, hi = sorted(float(v) for v in rng)
    idx = np.flatnonzero((energies >= lo) & (energies <= hi))
    if idx.size < 2:
        raise ValueError(f"{what} range {rng} holds {idx.size} energies, need >= 2")
    return idx


def _line_fit(y, e, idx, e_ref):
    """Least-squares line over ``idx`` for all pixels at once -> (offset, slope) at e_ref."""
    x = e[idx] - e_ref
    pinv = np.linalg.pinv(np.stack([np.ones_like(x), x], axis=1))  # (2, n)
    # One weighted sum per energy, not a GEMM: BLAS rounds differently for different
    # numbers of columns, and a pixel's result must not depend on how a stack is cut
    # into chunks (map_in_chunks, the 3D live map's z-slabs).
    out = np.zeros((2, y.shape[1]), np.float64)
    for j, k in enumerate(idx):
        out[0] += pinv[0, j] * y[k]
        out[1] += pinv[1, j] * y[k]
    return out.astype(y.dtype)


def _edge_lines(y, e, pre_edge, post_edge, e0):
    """Pre- and post-edge ranges, ``e0`` and the lines fitted there (normalize's steps)."""
    i_pre = _range_index(e, pre_edge, "pre_edge")
    i_post = _range_index(e, post_edge, "post_edge")
    if e0 is None:
        e0 = steepest_rise(y, e, pre_edge, post_edge)
    return i_pre, i_post, e0, _line_fit(y, e, i_pre, e0), _line_fit(y, e, i_post, e0)


def steepest_rise(spectra: np.ndarray, energies: np.ndarray, pre_edge, post_edge) -> float:
    """Edge energy ``e0``: where the mean spectrum rises fastest between the ranges.

    Parameters
    ----------
    spectra : numpy.ndarray
        One spectrum ``(energies,)`` or spectra ``(energies, ...)``, averaged over
        their pixels (only between the end of ``pre_edge`` and the start of
        ``post_edge``).
    energies : numpy.ndarray
        Increasing energies.
    pre_edge, post_edge : tuple of float
        The ranges of :func:`normalize`.

    Returns
    -------
    float
        Middle of the steepest interval; the middle between the ranges when fewer
        than three energies lie there or the mean is not finite.

    Examples
    --------
    >>> e = np.linspace(8.30, 8.36, 7)
    >>> print(round(steepest_rise(np.tanh((e - 8.335) / 0.005), e, (8.30, 8.32), (8.35, 8.36)), 4))
    8.335
    """
    e = np.asarray(energies, dtype=np.float64)
    lo = int(_range_index(e, pre_edge, "pre_edge")[-1])
    hi = int(_range_index(e, post_edge, "post_edge")[0])
    if hi <= lo + 1:
        return 0.5 * (e[lo] + e[hi])
    segment = np.asarray(spectra)[lo : hi + 1]
    if segment.ndim > 1:
        segment = np.nanmean(segment.reshape(segment.shape[0], -1), axis=1)
    if not np.all(np.isfinite(segment)):
        return 0.5 * (e[lo] + e[hi])
    k = int(np.argmax(np.diff(segment) / np.diff(e[lo : hi + 1])))
    return 0.5 * (e[lo + k] + e[lo + k + 1])


def edge_step_error(
    stack: np.ndarray,
    energies: np.ndarray,
    pre_edge: tuple[float, float],
    post_edge: tuple[float, float],
    e0: float | None = None,
) -> np.ndarray:
    """Per-pixel standard error of the edge step :func:`normalize` measures.

    The noise is estimated from each pixel's own data: the scatter of its spectrum
    about the pre-edge and post-edge lines (residual variance pooled over both
    ranges, ``n_pre + n_post - 4`` degrees of freedom), propagated to the step
    ``post(e0) - pre(e0)``.  It therefore includes whatever scatters from energy to
    energy besides photon noise (flat-field errors, re-sampling errors at particle
    rims), so a pixel whose step is only such an error does not look significant.

    Parameters
    ----------
    stack, energies, pre_edge, post_edge, e0
        As for :func:`normalize` (same ``e0`` default).

    Returns
    -------
    numpy.ndarray
        ``spatial`` float64 standard error of the edge step (absorbance); NaN where
        the spectrum is not finite.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> e = np.linspace(8.2, 8.45, 60)
    >>> spec = 0.3 + 0.25 / (1 + np.exp(-(e - 8.345) / 0.002))
    >>> stack = spec[:, None] + rng.normal(0, 0.01, (60, 2000))
    >>> err = edge_step_error(stack, e, (8.2, 8.32), (8.37, 8.45))
    >>> from multiscope.analysis.xanes import normalize
    >>> _, jump, _ = normalize(stack, e, (8.2, 8.32), (8.37, 8.45))
    >>> print(round(float(np.std(jump) / np.median(err)), 1))  # the error is the scatter
    1.0
    """
    stack = np.asarray(stack)
    e = np.asarray(energies, dtype=np.float64)
    y = stack.reshape(stack.shape[0], -1).astype(np.float64)
    i_pre, i_post, e0, pre, post = _edge_lines(y, e, pre_edge, post_edge, e0)
    if i_pre.size + i_post.size <= 4:
        raise ValueError("need > 4 pre- and post-edge energies in all to estimate the noise")
    ssr = np.zeros(y.shape[1])
    var_intercepts = 0.0
    for idx, (offset, slope) in ((i_pre, pre), (i_post, post)):  # normalize()'s lines
        x = e[idx] - e0
        residual = y[idx] - (offset + slope * x[:, None])
        ssr += np.sum(residual * residual, axis=0)
        pinv = np.linalg.pinv(np.stack([np.ones_like(x), x], axis=1))
        var_intercepts += float(np.sum(pinv[0] ** 2))  # Var(intercept at e0) / sigma^2
    sigma2 = ssr / (i_pre.size + i_post.size - 4)
    return np.sqrt(sigma2 * var_intercepts).reshape(stack.shape[1:])


def material_mask(
    edge_jump: np.ndarray,
    edge_jump_error: np.ndarray,
    *,
    min_edge_jump: float = 0.03,
    low: float = 6.0,
    high: float = 8.0,
    min_significance: float = 1.0,
    noise_window: int = 5,
) -> np.ndarray:
    """Pixels without a detectable edge (True = masked), by significance and hysteresis.

    A pixel *certainly* holds the element where its edge step is ``high`` times its
    standard error (``z = edge_jump / sigma``; ``sigma`` is the pixel's
    ``edge_jump_error``, never taken below the median error of its
    ``noise_window`` x ``noise_window`` neighbourhood: an error estimated from ~17
    residuals is itself noisy, and an empty pixel beside a particle rim can pick
    up a consistent ~0.01 of its neighbours' step from sub-pixel re-sampling).  A
    pixel is *possibly* material where ``z >= low``, or where the step is at least ``min_edge_jump``
    (absorbance) and ``z >= min_significance`` (rim pixels whose spectra scatter
    from re-sampling errors, not from noise).  Possible pixels are kept when they
    connect (8-neighbourhood) to a certain one
    (:func:`skimage.filters.apply_hysteresis_threshold` logic); everything else is
    masked.  Pure-noise pixels essentially never reach ``z >= 6`` and would only
    count next to material, and an isolated outlier (a defective pixel) is never
    certain, so pixels without the element are not fitted.  ``low`` is set by the
    whiteline, not by detection: ``z >= 3.5`` already detects NMC down to ~0.25 um
    at 1e5 photons per pixel and energy, but the whiteline of a pixel whose edge
    step is only 3.5-6 standard errors is worth ~0.7 eV rms, which would double a
    map's RMSE (``tests/unit/test_analysis_xanes.py``).

    Parameters
    ----------
    edge_jump, edge_jump_error : numpy.ndarray
        ``spatial`` step (:func:`normalize`) and its standard error
        (:func:`edge_step_error`); non-finite pixels are masked.
    min_edge_jump : float
        Step (absorbance) that makes a pixel possible material whatever its scatter.
    low, high : float
        Significance of possible and certain material (``low <= high``).
    min_significance : float
        Least significance of a pixel admitted by ``min_edge_jump``.
    noise_window : int
        Side (px) of the neighbourhood whose median error floors each pixel's.

    Returns
    -------
    numpy.ndarray
        ``spatial`` bool, True where masked.

    Examples
    --------
    >>> jump = np.array([[0.0, 0.02, 0.2, 0.02, 0.0, 0.0, 0.02, 0.0]])
    >>> error = np.full(jump.shape, 0.003)
    >>> material_mask(jump, error)  # the weak pixel beside nothing stays masked
    array([[ True, False, False, False,  True,  True,  True,  True]])
    """
    if not low <= high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    jump = np.asarray(edge_jump, dtype=np.float64)
    error = np.asarray(edge_jump_error, dtype=np.float64)
    finite = np.isfinite(jump) & np.isfinite(error)
    if noise_window > 1 and finite.any():
        filled = np.where(finite, error, np.median(error[finite]))
        error = np.maximum(error, ndimage.median_filter(filled, int(noise_window)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(finite, jump / np.where(error > 0, error, np.nan), 0.0)
    z = np.where(np.isfinite(z), z, np.where(finite & (jump > 0), np.inf, 0.0))
    possible = finite & ((z >= low) | ((jump >= min_edge_jump) & (z >= min_significance)))
    certain = possible & (z >= high)
    labels, n = ndimage.label(possible, structure=np.ones((3,) * jump.ndim, bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[certain])] = True  # certain is within possible: never label 0
    return ~keep[labels]
