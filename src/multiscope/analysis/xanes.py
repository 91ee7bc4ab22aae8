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
                                 post_edge=(8.37, 8.45), min_edge_jump=0.03)
    mask |= out_of_view(shifts, mask.shape)       # already masked: their spectra are NaN
    wl = fit_whiteline(norm, energies, window=(8.346, 8.358))

``structure``/``related`` switch on the re-sampling (partial-volume) correction of
drifted 2D stacks (:func:`align_stack`, :func:`super_resolve`,
:func:`resampling_gain`); without them the shifts come from cross-correlation alone
and particle-rim pixels keep an energy-dependent interpolation error.

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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numba as nb
import numpy as np
from scipy import ndimage
from scipy.sparse import linalg as splinalg
from skimage.filters import window as _window

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
]


# --------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------
def feature_image(image: np.ndarray, method: str = "gradient", sigma: float = 1.0) -> np.ndarray:
    """The image :func:`align_stack` registers: edges survive the contrast change at the edge.

    Parameters
    ----------
    image : numpy.ndarray
        Absorbance image (any dimension; NaN read as 0).
    method : {"gradient", "intensity"}
        Gaussian gradient magnitude, or the smoothed image itself.
    sigma : float
        Gaussian smoothing, px.

    Returns
    -------
    numpy.ndarray
        Zero-mean, Hann-windowed float64 image for :func:`register_translation`.
    """
    return _features(image, method, sigma)


def _features(img: np.ndarray, method: str, sigma: float) -> np.ndarray:
    """Registration image: edges survive the contrast change across the edge."""
    a = np.nan_to_num(np.asarray(img, dtype=np.float64))
    if method == "gradient":
        f = ndimage.gaussian_gradient_magnitude(a, sigma) if sigma > 0 else _grad_mag(a)
    elif method == "intensity":
        f = ndimage.gaussian_filter(a, sigma) if sigma > 0 else a
    else:
        raise ValueError(f"method must be 'gradient' or 'intensity', got {method!r}")
    f = f - f.mean()
    # Hann window: the FFT correlation must not see the wrap-around border jump.
    return f * _window("hann", f.shape)


def _grad_mag(a):
    return np.sqrt(sum(g * g for g in np.gradient(a)))


def shift_stack(
    stack: np.ndarray, shifts: np.ndarray, order: int = 3, fill_value: float = np.nan
) -> np.ndarray:
    """Shift every image of a stack by its own (sub-pixel) vector.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(n, *spatial)`` images.
    shifts : numpy.ndarray
        ``(n, len(spatial))`` shifts in pixels (``scipy.ndimage.shift`` convention:
        content moves towards larger indices for positive shifts).
    order : int
        Spline order of the interpolation (3: cubic).
    fill_value : float
        Value of pixels whose source lies outside the image (default NaN, so later
        steps mask them).

    Returns
    -------
    numpy.ndarray
        Shifted float stack (float32 for float32/integer input, else float64).

    Examples
    --------
    >>> s = np.zeros((1, 8, 8)); s[0, 3, 3] = 1
    >>> out = shift_stack(s, np.array([[1.0, -2.0]]), order=1, fill_value=0.0)
    >>> [int(v) for v in np.argwhere(out[0] > 0.5)[0]]
    [4, 1]
    """
    stack = np.asarray(stack)
    dtype = np.float64 if stack.dtype == np.float64 else np.float32
    out = np.empty(stack.shape, dtype)
    sh = np.asarray(shifts, dtype=np.float64).reshape(stack.shape[0], stack.ndim - 1)
    for i in range(stack.shape[0]):
        # 'nearest' avoids ringing from an implicit zero border; the border is refilled.
        out[i] = ndimage.shift(stack[i].astype(np.float64), sh[i], order=order, mode="nearest")
        if fill_value is not None:
            for ax, s in enumerate(sh[i]):
                n = int(math.ceil(abs(s) - 1e-3))
                if n <= 0:
                    continue
                idx = [slice(None)] * (stack.ndim - 1)
                idx[ax] = slice(0, n) if s > 0 else slice(out.shape[ax + 1] - n, None)
                out[i][tuple(idx)] = fill_value
    return out


def _cmatmul(a, b):
    """Complex matrix product from four real GEMMs.

    OpenBLAS 0.3.31 (numpy 2.4 wheels) runs complex ``a @ b`` with two C-ordered
    operands ~200x slower than its real GEMM on this machine (14 ms for 30x128 @
    128x128); real products are fast.
    """
    ar, ai, br, bi = a.real, a.imag, b.real, b.imag
    return (ar @ br - ai @ bi) + 1j * (ar @ bi + ai @ br)


def _upsampled_dft(data, size, upsample, offsets):
    """DFT of ``data`` (an nD spectrum) on a ``size``^nd grid of step 1/upsample px."""
    out = data
    # Contract the last axis each time and rotate it to the front (Guizar-Sicairos 2008).
    for ax in range(data.ndim - 1, -1, -1):
        n = data.shape[ax]
        freq = np.fft.fftfreq(n, upsample)
        k = np.arange(size) - offsets[ax]
        kern = np.exp(-2j * np.pi * k[:, None] * freq[None, :])  # (size, n)
        moved = np.moveaxis(out, -1, 0)  # (n, ...)
        flat = moved.reshape(n, -1)
        out = _cmatmul(kern, flat).reshape((size, *moved.shape[1:]))
    return out


def register_translation(
    reference: np.ndarray, moving: np.ndarray, upsample: int = 20, phase: bool = False
) -> np.ndarray:
    """Sub-pixel shift registering ``moving`` onto ``reference`` (cross-correlation).

    The algorithm of :func:`skimage.registration.phase_cross_correlation`
    (integer FFT peak, then an upsampled matrix DFT in a 1.5 px neighbourhood,
    Guizar-Sicairos et al. 2008) with the same result convention, ~30x faster here
    because the complex DFT products run as real GEMMs; the upsampled peak is then
    refined by a parabola through its neighbours, so the result is not quantised
    to 1/upsample px.

    Parameters
    ----------
    reference, moving : numpy.ndarray
        Images of equal shape (any dimension).
    upsample : int
        Upsampling of the sub-pixel search grid (1/upsample px steps, then the
        parabolic refinement).
    phase : bool
        Whiten the cross-power spectrum (phase correlation) instead of plain
        cross-correlation (better for sharp, noise-free images; worse with noise).

    Returns
    -------
    numpy.ndarray
        Shift (px, per axis) to apply to ``moving`` (``scipy.ndimage.shift``) to
        register it with ``reference``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> img = ndimage.gaussian_filter(rng.random((48, 40)), 2)
    >>> moved = ndimage.shift(img, (0.37, -1.52), mode="grid-wrap")
    >>> print(np.round(register_translation(img, moved), 1))
    [-0.4  1.5]
    """
    f_ref = np.fft.fftn(reference)
    f_mov = np.fft.fftn(moving)
    cross = f_ref * f_mov.conj()
    if phase:
        cross /= np.maximum(np.abs(cross), 100 * np.finfo(float).eps)
    return cross_power_peak(cross, upsample)


def cross_power_peak(cross: np.ndarray, upsample: int = 20) -> np.ndarray:
    """Sub-pixel peak of the correlation whose spectrum is ``cross`` (``F(ref) * conj(F(mov))``).

    The peak search of :func:`register_translation`, for callers that sum the
    cross-power spectra of several image pairs before locating one peak.

    Returns
    -------
    numpy.ndarray
        Shift (px, per axis) to apply to the moving image(s).
    """
    cc = np.fft.ifftn(cross)
    peak = np.array(np.unravel_index(int(np.argmax(np.abs(cc))), cc.shape), dtype=np.float64)
    shape = np.array(cc.shape)
    peak[peak > shape // 2] -= shape[peak > shape // 2]
    if upsample <= 1:
        return peak
    peak = np.round(peak * upsample) / upsample
    size = int(np.ceil(upsample * 1.5))
    centre = np.fix(size / 2.0)
    offsets = centre - peak * upsample
    up = np.abs(_upsampled_dft(cross.conj(), size, upsample, offsets))
    sub = np.array(np.unravel_index(int(np.argmax(up)), up.shape), dtype=np.float64)
    return peak + (sub + _parabolic_offset(up, sub.astype(int)) - centre) / upsample


def _parabolic_offset(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Sub-sample vertex of a parabola through the peak and its two neighbours, per axis.

    The upsampled grid alone quantises the shift to 1/upsample px (a uniform error of
    rms 0.29/upsample: 0.014 px at 20x, the largest term of the registration error of
    the simulated XANES stacks); the parabola removes it at no cost.
    """
    out = np.zeros(values.ndim)
    for ax in range(values.ndim):
        if not 0 < at[ax] < values.shape[ax] - 1:
            continue
        lo, hi = at.copy(), at.copy()
        lo[ax] -= 1
        hi[ax] += 1
        ym, y0, yp = values[tuple(lo)], values[tuple(at)], values[tuple(hi)]
        den = ym - 2.0 * y0 + yp
        if den < 0:
            out[ax] = float(np.clip(0.5 * (ym - yp) / den, -0.5, 0.5))
    return out


def align_stack(
    stack: np.ndarray,
    reference_index: int,
    upsample: int = 20,
    *,
    method: str = "gradient",
    sigma: float = 1.0,
    chain: bool = False,
    refine: bool = True,
    order: int = 3,
    fill_value: float = np.nan,
    structure: Sequence[int] | None = None,
    related: Sequence[int] | None = None,
    structure_scale: int = 3,
    structure_regularization: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Register every energy's image to the reference and shift it into place.

    Images are compared through a feature image robust to the contrast change across
    an absorption edge: the Gaussian gradient magnitude (``method="gradient"``,
    default; particle outlines stay put while their absorbance jumps) or the smoothed
    absorbance itself (``"intensity"``), Hann-windowed, by cross-correlation with
    upsampled-DFT sub-pixel refinement (:func:`register_translation`, the algorithm
    of :func:`skimage.registration.phase_cross_correlation`).  With ``refine`` a
    second pass registers each image to the mean of the first-pass aligned
    features (a high-SNR template, contrast averaged over the edge), keeping the
    reference image fixed.  With ``chain`` neighbours are registered and their
    shifts accumulated outward from the reference (for very large contrast
    changes; errors add up as a random walk).

    Re-sampling a drifted image onto the reference grid is exact only for smooth
    content.  Pixels on sharp edges (particle rims) integrated a different share of
    the particle at each energy, so interpolation leaves an energy-dependent gain
    error on their spectra that no interpolation kernel removes (cubic, quintic and
    Fourier shifts all left whiteline errors ~4x the noise on thin rim pixels of the
    simulated tab).  With ``structure`` -- indices of images that show one spatial
    structure (e.g. the post-edge energies, where every valence absorbs alike) --
    that structure is super-resolved from their different sub-pixel positions
    (:func:`super_resolve`), every image's shift is refined by fitting it with the
    model (the cross-correlation's ~0.01 px error is a few % of a thin rim pixel's
    signal), the structure is super-resolved again from ``structure`` and
    ``related`` images with the refined shifts, and every shifted image is
    multiplied by the :func:`resampling_gain` the model predicts for its own shift.
    On the simulated NMC tab (128 x 128 px, 61 energies, drift up to 3 px) this
    took the whiteline RMSE over all unmasked pixels from 0.13-0.16 eV to 0.078 eV,
    the drift-free stack's being 0.077 eV (tests/unit/test_analysis_xanes.py).

    Parameters
    ----------
    stack : numpy.ndarray
        ``(energies, *spatial)`` absorbance (or transmission) images.
    reference_index : int
        Index of the energy whose image defines the frame (its shift is 0).
    upsample : int
        Upsampling factor of the sub-pixel search (1/upsample px resolution).
    method : {"gradient", "intensity"}
        Feature image used for registration.
    sigma : float
        Gaussian smoothing (px) of the feature image (suppresses photon noise).
    chain : bool
        Register neighbours instead of every image against the reference.
    refine : bool
        Second pass against the mean aligned template.
    order : int
        Spline order used to apply the shifts.
    fill_value : float
        Value for pixels shifted in from outside the field (NaN: masked later).
        Which pixels these are follows from the shifts alone
        (:func:`out_of_view`).
    structure : sequence of int, optional
        Images sharing one spatial structure (up to a scale factor each; XANES: the
        post-edge energies), used to correct the re-sampling of 2D stacks (see
        above); None: no correction (shifts from cross-correlation alone).
    related : sequence of int, optional
        Images showing the same structure with a contrast that varies smoothly
        across the field (XANES: the whiteline and post-edge energies); they add
        sub-pixel positions to the model.  Default: ``structure`` only.
    structure_scale, structure_regularization : int, float
        ``scale`` and ``regularization`` of :func:`super_resolve`.

    Returns
    -------
    shifts : numpy.ndarray
        ``(energies, ndim_spatial)`` float64 shifts in px that were applied (the
        negative of the measured drift of each image relative to the reference).
    aligned : numpy.ndarray
        Shifted stack, float32 (float64 input stays float64).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = ndimage.gaussian_filter(rng.random((64, 64)), 2)
    >>> moved = ndimage.shift(img, (1.5, -2.3), mode="grid-wrap")
    >>> shifts, _ = align_stack(np.stack([img, moved]), reference_index=0, refine=False)
    >>> bool(np.all(np.abs(shifts[1] - (-1.5, 2.3)) < 0.15))  # applied = -drift
    True
    """
    stack = np.asarray(stack)
    n = stack.shape[0]
    if not -n <= reference_index < n:
        raise IndexError(f"reference_index {reference_index} out of range for {n} images")
    ref = reference_index % n
    feats = [_features(stack[i], method, sigma) for i in range(n)]

    def register(a, b):
        return register_translation(a, b, upsample)

    shifts = np.zeros((n, stack.ndim - 1))
    if chain:
        for i in range(ref + 1, n):
            shifts[i] = shifts[i - 1] + register(feats[i - 1], feats[i])
        for i in range(ref - 1, -1, -1):
            shifts[i] = shifts[i + 1] + register(feats[i + 1], feats[i])
    else:
        for i in range(n):
            if i != ref:
                shifts[i] = register(feats[ref], feats[i])
    if refine and n > 2:
        moved = shift_stack(np.stack(feats), shifts, order=1, fill_value=0.0)
        template = moved.mean(axis=0) * _window("hann", moved.shape[1:])
        shifts = np.stack([register(template, f) for f in feats])
        shifts -= shifts[ref]
    if structure is None:
        return shifts, shift_stack(stack, shifts, order=order, fill_value=fill_value)
    if stack.ndim != 3:
        raise ValueError("the structure correction is for 2D stacks (energies, rows, cols)")
    strict = np.unique(np.asarray(structure, dtype=np.int64) % n)
    if strict.size < 2:
        raise ValueError("structure needs >= 2 images")
    loose = strict if related is None else np.asarray(related, dtype=np.int64) % n
    loose = np.union1d(strict, loose)
    # The model must reach every image's drift, not only the structure images'.
    margin = int(math.ceil(np.abs(shifts).max(initial=0.0))) + 3
    sr = {"scale": structure_scale, "regularization": structure_regularization, "margin": margin}
    model = _structure_model(stack, shifts, strict, **sr)
    # Cross-correlation of feature images leaves ~0.01 px errors (aliasing of the
    # features, contrast changes); at a particle rim that is a few % of a thin pixel's
    # signal.  Fitting each raw image with the model (same pixel-area integration,
    # local contrast) pins its shift to ~0.005 px.  The local contrast is measured once,
    # on the reference grid, and held fixed: re-measured at each trial shift it would
    # absorb part of the misfit the shift has to explain.
    plain = shift_stack(stack, shifts, order=1)
    ref_model = model.sample((0.0, 0.0))
    drifts = np.empty((n, 2))
    for k in range(n):
        # Smooth fields: re-sampling them into the image's geometry is harmless.
        fields = shift_stack(
            np.stack(_local_fit(plain[k], ref_model)), np.repeat(-shifts[k][None], 2, 0),
            order=1, fill_value=None,
        )  # fmt: skip
        drifts[k] = _refine_drift(model, stack[k], -shifts[k], *fields)
    shifts = -(drifts - drifts[ref])
    model = _structure_model(stack, shifts, strict, **sr)
    if loose.size > strict.size:
        model = _structure_model(stack, shifts, loose, base=model, **sr)
    aligned = shift_stack(stack, shifts, order=order, fill_value=fill_value)
    aligned *= resampling_gain(model, shifts, order=order)
    return shifts, aligned


def _structure_model(stack, shifts, idx, base=None, **kwargs) -> StructureModel:
    """Super-resolve the structure shown by images ``idx`` (see :func:`align_stack`).

    Without ``base`` the images are taken as the structure times one contrast each
    (least squares against their mean).  With ``base`` (a model of the structure)
    each image is divided by its smooth local contrast against ``base`` first, so
    images whose contrast varies across the field (the whiteline energies: each
    valence has its own) add their sub-pixel positions too.
    """
    frames = stack[idx].astype(np.float64)
    if base is None:
        sel = shift_stack(frames, shifts[idx], order=1)
        seen = np.all(np.isfinite(sel), axis=0)
        target = sel[:, seen].mean(axis=0)
        frames /= (sel[:, seen] @ target / float(target @ target))[:, None, None]
    else:
        for j, k in enumerate(idx):
            frames[j] /= _local_ratio(frames[j], base.sample(-shifts[k]))
    return super_resolve(frames, -shifts[idx], **kwargs)


def _local_ratio(image: np.ndarray, model: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Smooth field ``rho`` minimising ``sum G_sigma (image - rho model)^2`` at every pixel.

    Weighted by ``model^2``, so faint pixels (pores) take the ratio of their bright
    neighbours instead of noise.
    """
    den = ndimage.gaussian_filter(model * model, sigma)
    num = ndimage.gaussian_filter(image * model, sigma)
    return num / np.maximum(den, 1e-9 * float(den.max()) + np.finfo(float).tiny)


def _local_fit(
    image: np.ndarray, model: np.ndarray, sigma: float = 2.0, damping: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth fields ``alpha``, ``rho`` with ``image ~ alpha + rho model`` near every pixel.

    A least-squares line of ``image`` against ``model`` in a Gaussian window of
    ``sigma`` px (local means, covariance and variance); where the model is nearly
    flat (pores) the slope is pulled to the global one by ``damping`` times the mean
    local variance.  NaN pixels of ``image`` carry no weight.  An offset is needed:
    a contrast that differs between materials (pre-edge background vs the edge's
    structure) would otherwise bend a pure ratio at every particle rim.
    """
    seen = np.isfinite(image)
    w = seen.astype(np.float64)
    a = np.where(seen, image, 0.0).astype(np.float64)
    p = np.asarray(model, dtype=np.float64)

    def smooth(z):
        return ndimage.gaussian_filter(z, sigma)

    weight = np.maximum(smooth(w), 1e-6)
    mean_a, mean_p = smooth(w * a) / weight, smooth(w * p) / weight
    cov = smooth(w * a * p) / weight - mean_a * mean_p
    var = smooth(w * p * p) / weight - mean_p * mean_p
    dp = (p - p[seen].mean()) * w
    slope = float(np.sum(dp * a) / max(float(np.sum(dp * dp)), np.finfo(float).tiny))
    lam = damping * max(float(np.mean(var)), np.finfo(float).tiny)
    rho = (cov + lam * slope) / (var + lam)
    return mean_a - rho * mean_p, rho


def _refine_drift(
    model: StructureModel, image, drift, alpha, rho, iters: int = 4, h: float = 0.05
) -> np.ndarray:
    """Gauss-Newton fit of one image's drift: ``image ~ a + c alpha + b rho P_d(model)``.

    ``alpha``, ``rho`` are the image's smooth local offset and contrast against the
    model, in the image's own geometry (:func:`_local_fit`), held fixed; ``a``,
    ``c``, ``b`` free.  The derivative of the prediction with respect to the drift
    is a central difference of the model over ``h`` px.  Pixels within the largest
    drift of the border are left out (the model is least constrained there).
    """
    start = np.asarray(drift, dtype=np.float64)
    d = start.copy()
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    b = min(int(math.ceil(np.abs(d).max())) + 2, min(ny, nx) // 4)
    inner = (slice(b, ny - b), slice(b, nx - b))
    for _ in range(iters):
        p = model.sample(d)
        dr = (model.sample(d + (h, 0.0)) - model.sample(d - (h, 0.0))) / (2 * h)
        dc = (model.sample(d + (0.0, h)) - model.sample(d - (0.0, h))) / (2 * h)
        cols = [np.ones_like(p), alpha, rho * p, rho * dr, rho * dc]
        a = np.stack([c[inner].ravel() for c in cols], axis=1)
        coef = np.linalg.lstsq(a, img[inner].ravel(), rcond=None)[0]
        if not coef[2] > 0:
            break  # no usable contrast: keep the cross-correlation result
        step = np.clip(coef[3:] / coef[2], -0.5, 0.5)
        d += step
        if np.abs(d - start).max() > 1.0 or np.abs(d).max() > model.margin - 1:
            return start  # diverged (an image without structure): keep cross-correlation
        if np.abs(step).max() < 1e-4:
            break
    return d


def out_of_view(shifts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Pixels of the reference grid that some shifted image cannot fill.

    A pixel is out of view if, for any image, the shift brings its source outside
    that image (the rows/columns :func:`shift_stack` fills with ``fill_value``): the
    field the whole stack does not share.  It depends on the shifts only, never on
    the data.

    Parameters
    ----------
    shifts : numpy.ndarray
        ``(n, len(shape))`` shifts applied (:func:`align_stack` convention).
    shape : tuple of int
        Spatial shape.

    Returns
    -------
    numpy.ndarray
        ``shape`` bool, True where out of view.

    Examples
    --------
    >>> out_of_view(np.array([[0.0, 0.0], [1.2, -0.4]]), (4, 5)).astype(int)
    array([[1, 1, 1, 1, 1],
           [1, 1, 1, 1, 1],
           [0, 0, 0, 0, 1],
           [0, 0, 0, 0, 1]])
    """
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, len(shape))
    out = np.zeros(shape, bool)
    for sh in shifts:
        for ax, v in enumerate(sh):
            k = int(math.ceil(abs(v) - 1e-3))
            if k <= 0:
                continue
            idx = [slice(None)] * len(shape)
            idx[ax] = slice(0, k) if v > 0 else slice(shape[ax] - k, None)
            out[tuple(idx)] = True
    return out


# --------------------------------------------------------------------------------------
# Resampling correction: a super-resolved structure model
# --------------------------------------------------------------------------------------
def _area_weights(drift: float, scale: int, margin: int) -> tuple[int, np.ndarray]:
    """Pixel-area weights of a detector pixel on a ``scale``-times finer grid, one axis.

    Detector pixel ``y`` sees the scene window ``[y - drift - 1/2, y - drift + 1/2)``
    (content displaced by ``drift``); fine cell ``j`` covers
    ``[o + j / scale, o + (j + 1) / scale)`` with ``o = -margin - 1/2``.  The window
    of pixel ``y`` overlaps cells ``scale * y + first + t`` (``t = 0 .. scale``) by
    ``weights[t]`` (overlap lengths, summing to 1: an area-integrating pixel) -- the
    same for every pixel, so sampling is ``scale + 1`` strided slices.
    """
    if abs(drift) > margin - 1:
        raise ValueError(f"drift {drift:.2f} px exceeds the model margin of {margin} px")
    first = int(math.floor((margin - drift) * scale))
    delta = first / scale - (margin - drift)  # window start minus that cell's start
    t = np.arange(scale + 1)
    weights = np.minimum(delta + (t + 1) / scale, 1.0) - np.maximum(delta + t / scale, 0.0)
    return first, np.clip(weights, 0.0, None)


def _spread_axis(r: np.ndarray, axis: int, first: int, weights: np.ndarray, n_fine: int):
    """Spread pixel values back onto the fine grid along ``axis`` (adjoint of sampling)."""
    scale = weights.size - 1
    r = np.moveaxis(r, axis, 0)
    n = r.shape[0]
    out = np.zeros((n_fine, *r.shape[1:]))
    for t, w in enumerate(weights):
        if w > 0:
            j = first + t
            out[j : j + scale * (n - 1) + 1 : scale] += w * r
    return np.moveaxis(out, 0, axis)


@nb.njit(parallel=True, cache=True)
def _sample2d(u, fr, wr, fc, wc, out):  # pragma: no cover - numba
    # out[y, x] = sum_t sum_q wr[t] wc[q] u[s y + fr + t, s x + fc + q]: the pixel-area
    # integral of both axes in one pass, no temporaries.
    ny, nx = out.shape
    s = wr.size - 1
    for y in nb.prange(ny):
        for x in range(nx):
            acc = 0.0
            for t in range(s + 1):
                if wr[t] == 0.0:
                    continue
                row = s * y + fr + t
                part = 0.0
                for q in range(s + 1):
                    part += wc[q] * u[row, s * x + fc + q]
                acc += wr[t] * part
            out[y, x] = acc


@nb.njit(parallel=True, cache=True)
def _spread2d_add(r, fr, wr, fc, wc, out):  # pragma: no cover - numba
    # Adjoint of _sample2d, added to out.  Columns first (rows are independent), then
    # a gather over fine rows: fine row j receives pixel row y with tap t = j - fr - s y
    # in [0, s] (at most two rows), so the parallel loop never writes one row twice.
    ny, nx = r.shape
    fy, fx = out.shape
    s = wr.size - 1
    cols = np.zeros((ny, fx))
    for y in nb.prange(ny):
        for x in range(nx):
            v = r[y, x]
            base = s * x + fc
            for q in range(s + 1):
                cols[y, base + q] += wc[q] * v
    for j in nb.prange(fy):
        k = j - fr
        if k < 0:
            continue
        for dy in range(2):
            y = k // s - dy
            if y < 0 or y >= ny:
                continue
            t = k - s * y
            if t > s or wr[t] == 0.0:
                continue
            w = wr[t]
            for i in range(fx):
                out[j, i] += w * cols[y, i]


@dataclass(frozen=True, eq=False)
class StructureModel:
    """Super-resolved image of the spatial structure several drifted frames share.

    Built by :func:`super_resolve`.  The scene is a piecewise-constant image on a grid
    ``scale`` times finer than the detector, covering the field plus ``margin``
    detector pixels on every side; :meth:`sample` integrates it over the detector's
    pixel areas for any sub-pixel displacement.

    Attributes
    ----------
    fine : numpy.ndarray
        ``(scale * (ny + 2 margin), scale * (nx + 2 margin))`` float64 scene.
    scale : int
        Fine cells per detector pixel and axis.
    margin : int
        Detector pixels modelled beyond each edge of the field.
    shape : tuple of int
        ``(ny, nx)`` detector shape.
    """

    fine: np.ndarray
    scale: int
    margin: int
    shape: tuple[int, int]

    def sample(self, drift) -> np.ndarray:
        """What the detector sees with the content displaced by ``drift`` (rows, cols) px.

        ``drift`` is the negative of the :func:`align_stack` shift that undoes it.
        """
        d_r, d_c = (float(v) for v in drift)
        fr, wr = _area_weights(d_r, self.scale, self.margin)
        fc, wc = _area_weights(d_c, self.scale, self.margin)
        out = np.empty(self.shape)
        _sample2d(self.fine, fr, wr, fc, wc, out)
        return out


def super_resolve(
    frames: np.ndarray,
    drifts: np.ndarray,
    scale: int = 3,
    regularization: float = 0.3,
    maxiter: int = 30,
    tol: float = 1e-5,
    margin: int | None = None,
) -> StructureModel:
    """Least-squares super-resolution of one scene seen by several drifted frames.

    Multi-frame super-resolution in the image domain: the scene is a piecewise-constant
    image on a ``scale``-times finer grid; each frame is modelled as its exact
    pixel-area integral at the frame's (known, sub-pixel) displacement.  The scene
    minimising the squared misfit of all frames plus ``regularization`` times a
    squared-gradient penalty (which only fixes what the frames leave undetermined) is
    found by Jacobi-preconditioned conjugate gradients on the normal equations; the
    operators are sparse and separable, so one iteration costs
    ``O(frames * scale^2 * ny * nx)``.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(n, ny, nx)`` images of one structure (same contrast; scale them first).
    drifts : numpy.ndarray
        ``(n, 2)`` displacement (px, rows and cols) of the content in each frame
        relative to the reference frame (``-shifts`` of :func:`align_stack`).
    scale : int
        Fine cells per pixel and axis (2-4; 3 resolves particle rims to ~1/3 px).
    regularization : float
        Weight of the gradient penalty relative to one frame's data term.
    maxiter, tol : int, float
        Conjugate-gradient iteration limit and relative residual tolerance.
    margin : int, optional
        Pixels modelled beyond each edge (at least the largest drift + 2, the
        default); :meth:`StructureModel.sample` accepts drifts up to ``margin - 1``.

    Returns
    -------
    StructureModel

    Examples
    --------
    >>> yy, xx = np.mgrid[:24, :24]
    >>> def disc(dy, dx):  # area-integrated disc, radius 6 px, centre displaced by (dy, dx)
    ...     s = (np.arange(8) + 0.5) / 8 - 0.5
    ...     y = yy[..., None, None] + s[:, None] - 12 - dy
    ...     x = xx[..., None, None] + s[None, :] - 12 - dx
    ...     return (y**2 + x**2 < 36).mean(axis=(-2, -1))
    >>> drifts = np.random.default_rng(0).uniform(-1, 1, (12, 2))
    >>> model = super_resolve(np.stack([disc(*d) for d in drifts]), drifts)
    >>> err = model.sample((0.3, -0.4)) - disc(0.3, -0.4)  # a position no frame had
    >>> interp = shift_stack(disc(0, 0)[None], np.array([[0.3, -0.4]]), fill_value=None)
    >>> print(f"{np.std(err):.3f} vs one frame shifted: {np.std(interp[0] - disc(0.3, -0.4)):.3f}")
    0.009 vs one frame shifted: 0.035
    """
    frames = np.asarray(frames, dtype=np.float64)
    drifts = np.asarray(drifts, dtype=np.float64).reshape(frames.shape[0], 2)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n, rows, cols), got {frames.shape}")
    n, ny, nx = frames.shape
    s = int(scale)
    margin = max(int(math.ceil(np.abs(drifts).max(initial=0.0))) + 2, int(margin or 0))
    w_r = [_area_weights(d, s, margin) for d in drifts[:, 0]]
    w_c = [_area_weights(d, s, margin) for d in drifts[:, 1]]
    fy, fx = s * (ny + 2 * margin), s * (nx + 2 * margin)
    # A frame's data term weighs ~1/s^4 per fine cell (1/s per axis, squared): scale the
    # penalty alike so `regularization` means the same at every scale.
    lam = float(regularization) * n / s**4

    pixels = np.empty((ny, nx))

    def normal(vec):
        u = np.ascontiguousarray(vec, dtype=np.float64).reshape(fy, fx)
        out = lam * _neg_laplacian(u)
        for (ar, wr), (ac, wc) in zip(w_r, w_c, strict=True):
            _sample2d(u, ar, wr, ac, wc, pixels)
            _spread2d_add(pixels, ar, wr, ac, wc, out)
        return out.ravel()

    rhs = np.zeros((fy, fx))
    for (ar, wr), (ac, wc), f in zip(w_r, w_c, frames, strict=True):
        _spread2d_add(np.ascontiguousarray(f), ar, wr, ac, wc, rhs)
    diag = 4.0 * lam + sum(
        np.outer(_spread_axis(np.ones(ny), 0, a[0], a[1] ** 2, fy),
                 _spread_axis(np.ones(nx), 0, b[0], b[1] ** 2, fx))
        for a, b in zip(w_r, w_c, strict=True)
    )  # fmt: skip
    # Start from the nearest-pixel mean of the frames put back in place (few CG steps).
    start = np.nanmean(shift_stack(frames, -np.round(drifts), order=0), axis=0)
    start = np.where(np.isfinite(start), start, np.nanmean(start))
    x0 = np.kron(np.pad(start, margin, mode="edge"), np.ones((s, s)))
    op = splinalg.LinearOperator((fy * fx, fy * fx), matvec=normal, dtype=np.float64)
    pre = splinalg.LinearOperator(
        (fy * fx, fy * fx), matvec=lambda v: np.ravel(v) / diag.ravel(), dtype=np.float64
    )
    sol, _ = splinalg.cg(op, np.ravel(rhs), x0=x0.ravel(), rtol=tol, maxiter=maxiter, M=pre)
    return StructureModel(fine=sol.reshape(fy, fx), scale=s, margin=margin, shape=(ny, nx))


def _neg_laplacian(u: np.ndarray) -> np.ndarray:
    """Gradient of half the sum of squared neighbour differences (Neumann edges)."""
    out = np.zeros_like(u)
    for ax in range(u.ndim):
        d = np.diff(u, axis=ax)
        lead = [slice(None)] * u.ndim
        tail = [slice(None)] * u.ndim
        lead[ax], tail[ax] = slice(1, None), slice(None, -1)
        out[tuple(lead)] += d
        out[tuple(tail)] -= d
    return out


def resampling_gain(
    model: StructureModel, shifts: np.ndarray, order: int = 3, floor: float = 0.01
) -> np.ndarray:
    """Per-pixel factors that undo the partial-volume error of sub-pixel re-sampling.

    Re-sampling a drifted frame onto the reference grid (:func:`shift_stack`) cannot
    restore what its pixels integrated: at a sharp edge (a particle rim) the pixel
    integrated a different share of the particle, and each energy, drifted by its own
    sub-pixel amount, gets its own error -- a random, energy-dependent gain on the
    spectra of rim pixels.  The model predicts that error exactly: for each frame the
    factor ``P0 / S(Pk)`` (``P0``: the model seen by the reference frame; ``Pk``: seen
    with frame k's drift, re-sampled by the same interpolation as the data).  Because
    the spectrum is nearly constant across a rim pixel's few-pixel neighbourhood
    while the amount of material is not, correcting by a ratio (not a difference)
    holds for every energy and valence.  Where the model is faint (``|S(Pk)| <
    floor * max|P0|``) the factor fades to 1.

    Parameters
    ----------
    model : StructureModel
        From :func:`super_resolve`.
    shifts : numpy.ndarray
        ``(n, 2)`` shifts applied to the frames (:func:`align_stack` convention).
    order : int
        Spline order of the data's re-sampling.
    floor : float
        Fraction of the model's 99.5th-percentile magnitude below which no correction
        is applied.

    Returns
    -------
    numpy.ndarray
        ``(n, ny, nx)`` float32 factors (1 outside the field).
    """
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    ref = model.sample((0.0, 0.0))
    eps2 = (floor * float(np.percentile(np.abs(ref), 99.5))) ** 2 or np.finfo(float).tiny
    out = np.empty((shifts.shape[0], *model.shape), np.float32)
    for k, sh in enumerate(shifts):
        seen = shift_stack(model.sample(-sh)[None], sh[None], order=order)[0].astype(np.float64)
        gain = 1.0 + (ref - seen) * seen / (seen * seen + eps2)
        out[k] = np.where(np.isfinite(gain), gain, 1.0)
    return out


# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------
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


def normalize(
    stack: np.ndarray,
    energies: np.ndarray,
    pre_edge: tuple[float, float],
    post_edge: tuple[float, float],
    min_edge_jump: float = 0.02,
    e0: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-edge subtraction and edge-step normalisation of every pixel's spectrum.

    For each pixel a straight line is least-squares fitted over the ``pre_edge``
    energies and another over the ``post_edge`` energies (one matrix product for all
    pixels).  The pre-edge line is subtracted and the result divided by the edge
    step ``post(e0) - pre(e0)``, so the normalised spectrum is 0 before the edge and
    1 at the edge (Athena convention, no flattening).

    Parameters
    ----------
    stack : numpy.ndarray
        ``(energies, *spatial)`` absorbance.
    energies : numpy.ndarray
        ``(energies,)`` increasing photon energies.
    pre_edge, post_edge : tuple of float
        Inclusive energy ranges of the two line fits (>= 2 energies each).
    min_edge_jump : float
        Pixels whose edge step (absorbance units) is below this, or not finite, are
        masked.
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
    _, _, e0, pre, post = _edge_lines(y, e, pre_edge, post_edge, e0)
    step = post[0] - pre[0]
    masked = ~(step >= min_edge_jump)
    safe = np.where(masked, 1.0, step).astype(dtype)
    norm = (y - pre[0] - pre[1] * (e[:, None] - e0).astype(dtype)) / safe
    norm[:, masked] = np.nan
    spatial = stack.shape[1:]
    return norm.reshape(stack.shape), step.reshape(spatial), masked.reshape(spatial)


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


def fit_whiteline(
    normalized: np.ndarray,
    energies: np.ndarray,
    window: tuple[float, float],
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
    window : tuple of float
        Inclusive energy range containing the whiteline (>= ``n_points`` energies).
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
