"""Stripe (ring artefact) removal in sinograms, before reconstruction.

A detector pixel whose gain differs from what the flat field recorded (a
scintillator defect, a pixel whose response drifted after the flats) adds the same
error ``-ln(gain)`` to every projection's line integral in its column: a vertical
stripe in the sinogram of its row, reconstructed as a ring centred on the rotation
axis.  Conventions follow tomopy's ``tomopy.prep.stripe`` (a ``remove_stripe_*``
function of the projections ``(angles, rows, cols)``; a sinogram is one ``row``),
so the step slots in where tomopy's would.

Why not the sorting-based filter (Vo et al. 2018, algotom's and tomopy's
``remove_stripe_based_sorting``) or the wavelet-FFT filter (Münch et al. 2009):
both filter every column, so they also reshape the sample's own column profile.
On simulated particle phantoms (128-256 px, a 0.7-1.5 px optical blur, 10 % of
the columns with gain errors of 2-10 %) the sorting-based filter (algotom 1.7, any
size from 5 to 31; this package's first version reproduced it exactly) raised the
reconstruction's RMSE 1.2-4.7x over not filtering at all; the method here corrects
only the columns it finds offset, and leaves a defect-free sinogram exactly as it
was.  It finds a stripe where its offset stands out of its own column's noise of a
median over the angles: behind the photon-starved centre of a thick sample weak
gain errors stay, beside it they go (``bench/rings.py`` and ``docs/benchmarks.md``).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> angles, cols = np.linspace(0, np.pi, 180), np.arange(64)
>>> sino = np.exp(-(((cols - 32 - 12 * np.cos(angles)[:, None]) / 6) ** 2))  # a blob
>>> sino += rng.normal(0, 0.01, sino.shape)
>>> striped = sino + 0.05 * (cols == 40)  # one column's gain off by 5 %
>>> print(f"{np.abs(remove_stripe_offsets(striped) - sino)[:, 40].mean():.3f}")
0.003
>>> bool(np.array_equal(remove_stripe_offsets(sino), sino))  # nothing to remove
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["remove_stripe_offsets", "stripe_offsets"]


def _narrow(found: np.ndarray, max_width: int) -> np.ndarray:
    """``found`` without its runs of more than ``max_width`` adjacent columns."""
    edges = np.diff(np.concatenate([[0], found.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = found.copy()
    for start, stop in zip(starts, stops, strict=True):
        if stop - start > max_width:
            out[start:stop] = False
    return out


def _structure_error(residual: np.ndarray, error: np.ndarray) -> float:
    """The error common to all columns that their own noise does not explain.

    The sample's structure moves the median over the angles too (more so with few
    angles), and so does the flat field's own noise, a stripe of every column:
    the least ``b`` with which ``residual / hypot(error, b)`` has a robust spread
    (1.4826 MAD) of at most 1, by bisection.
    """

    def spread(b):
        z = residual / np.hypot(error, b)
        return 1.4826 * float(np.median(np.abs(z - np.median(z))))

    if residual.size < 3 or spread(0.0) <= 1:
        return 0.0
    low, high = 0.0, float(np.abs(residual).max())
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if spread(middle) > 1 else (low, middle)
    return high


def stripe_offsets(
    sinogram, snr: float = 6.0, max_passes: int = 8, max_width: int = 3
) -> np.ndarray:
    """The offset of every column of one sinogram against its neighbours (0 if none).

    Each column is predicted, at every angle, by linear interpolation between the
    nearest columns on either side not found offset; its offset is the median over
    the angles of the measured minus the predicted value.  The sample's structure
    moves across the columns as the angle changes, so it disturbs the prediction at
    a few angles only and the median ignores it; a gain error is the same at every
    angle and is what remains.  A column is offset where its offset exceeds ``snr``
    times its own standard error, ``sqrt(pi / 2) * 1.4826 * MAD / sqrt(n_angles)``
    with MAD the median absolute deviation of its differences over the angles,
    combined (in quadrature) with an error common to all columns that their noise
    does not explain (the sample's structure left in the medians, more with few
    angles; the flat field's own noise), the least that brings the robust spread of
    all columns' offsets over their errors to 1; and where it exceeds its
    neighbours' (not yet found) in those units.  The others get 0.  One error for
    all columns, as in this function's first version, is set by the noisiest:
    behind a thick sample the centre columns see a few photons, and their noise
    hid the stripes of all the others.  The neighbour rule is because
    a stripe offsets its neighbours' predictions by half its own offset, which
    against a small error is significant too.  The search repeats with the offset
    columns left out of the predictions, so a stripe's neighbours are predicted
    from clean columns, until the set no longer changes (at most ``max_passes``
    times).  Runs of more than ``max_width`` adjacent columns left at the end,
    counting the columns beside them offset by more than half the threshold, are
    not stripes of defective pixels but the sample's own: the edge of a pillar
    centred on the rotation axis projects the same at every angle too, over many
    columns, whereas a stripe's neighbours, once it is out of their predictions,
    are clean.

    Parameters
    ----------
    sinogram : array_like, shape (angles, cols)
        One row's line integrals.
    snr : float
        Least offset, in units of the column's standard error, that counts as a
        stripe.  6 left every defect-free simulated sinogram of the unit tests
        untouched (256 px, 384 angles; 512 px, 1601 angles, 5 through the thickest
        part) and found every 2-10 % gain error of the 256-px scans
        (``tests/unit/test_analysis_stripe.py``).
    max_passes : int
        Most repetitions of the search.
    max_width : int
        Widest run of adjacent offset columns taken as a stripe.

    Returns
    -------
    numpy.ndarray
        ``(cols,)`` float64 offsets to subtract from each column.
    """
    # Columns as rows, angles contiguous: the medians below run along memory.
    p = np.ascontiguousarray(np.asarray(sinogram, dtype=np.float32).T)
    n_cols = p.shape[0]
    cols = np.arange(n_cols)
    offset_cols = np.zeros(n_cols, bool)
    # Noise-free data have no spread; only offsets above float32 rounding count then.
    floor = 16 * np.finfo(np.float32).eps * float(np.abs(p).max(initial=0.0))
    residual = significance = np.zeros(n_cols)
    structure_error = None
    for _ in range(max(1, int(max_passes))):
        good = np.flatnonzero(~offset_cols)
        if good.size < 2:
            break
        # Nearest good column strictly left and right of each column (one side at the
        # detector's edges): never the column itself.
        left_i = np.searchsorted(good, cols, side="left") - 1
        right_i = np.searchsorted(good, cols, side="right")
        left = good[np.clip(left_i, 0, good.size - 1)]
        right = good[np.clip(right_i, 0, good.size - 1)]
        left = np.where(left_i < 0, right, left)
        right = np.where(right_i >= good.size, left, right)
        span = np.where(right != left, right - left, 1)
        weight = np.where(right != left, (cols - left) / span, 0.5).astype(np.float32)[:, None]
        difference = p - p[left] * (1 - weight) - p[right] * weight
        median = np.median(difference, axis=1)
        residual = median.astype(np.float64)
        # Each column's own standard error of that median, sqrt(pi / 2) sigma / sqrt(n)
        # for a median of n normal values, sigma = 1.4826 MAD (robust to the angles
        # where the sample's edges pass).  Noise differs across the detector (photon
        # starved behind a thick sample, photon rich beside it): one spread for all
        # columns would be set by the noisiest and miss the others' stripes.
        deviation = np.abs(difference - median[:, None], out=difference)
        mad = np.median(deviation, axis=1, overwrite_input=True).astype(np.float64)
        error = np.maximum(np.sqrt(np.pi / 2) * 1.4826 * mad / np.sqrt(p.shape[1]), floor)
        if structure_error is None:  # from all columns once: the stripes are few
            structure_error = _structure_error(residual, error)
        error = np.hypot(error, structure_error)
        significance = np.abs(residual) / error
        # A stripe makes its neighbours look offset by up to half its own offset (it
        # is in their predictions), significantly so where the noise is low: a new
        # column counts only if it stands out more than its neighbours not already
        # found; they are predicted from clean columns in the next pass.
        others = np.where(offset_cols, 0.0, significance)
        neighbours = np.maximum(np.r_[0.0, others[:-1]], np.r_[others[1:], 0.0])
        found = (significance > snr) & (offset_cols | (significance >= neighbours))
        if np.array_equal(found, offset_cols):
            break
        offset_cols = found
    # Wide runs are judged once the set is stable: in the first pass two stripes
    # close together make a run of candidates (each offsets its neighbours).  The
    # sample's smooth structure offsets the columns beside a run too.
    in_narrow_runs = _narrow(offset_cols | (significance > snr / 2), max_width)
    return np.where(offset_cols & in_narrow_runs, residual, 0.0)


def remove_stripe_offsets(
    tomo, snr: float = 6.0, max_passes: int = 8, max_width: int = 3, out=None
) -> np.ndarray:
    """Remove full stripes (per-column gain errors) from projections, row by row.

    Every row's sinogram gets its :func:`stripe_offsets` subtracted: only the
    columns found offset change, each by one constant over all angles.  This is
    what a gain error does to line integrals, so the ring it would reconstruct
    goes, and a sinogram without stripes is returned unchanged.  Stripes that come
    and go during a scan (partial stripes) are not removed; nor is a feature that
    sits on the rotation axis at every angle (it is the same at every angle too,
    but is the sample's own, and is rarely narrower than the noise spread allows).

    Parameters
    ----------
    tomo : array_like, shape (angles, rows, cols)
        Line integrals (:func:`~multiscope.analysis.tomo.minus_log`); ``(angles,
        cols)`` is one sinogram.
    snr, max_passes, max_width
        As for :func:`stripe_offsets`.
    out : numpy.ndarray, optional
        Where to write the result: float32 or float64, the shape of ``tomo``; may be
        ``tomo`` itself (each row's offsets are found before the row is changed), so
        a large stack is corrected without a second copy of it.

    Returns
    -------
    numpy.ndarray
        ``out`` if given, else a new float32 array (float64 input stays float64),
        the shape of ``tomo``.

    Notes
    -----
    Cost: two medians over the angles per column and pass (usually 2-5 passes):
    measured 0.14 s per row of 801 angles x 512 columns and 0.24 s of 1601 x 1024
    (gridrec: 0.07 and 0.36 s for the same rows; 2-core shared machine, +-30 %),
    ``bench/rings.py`` and ``docs/benchmarks.md``.  With ``out=tomo`` no second
    copy of the stack is made (6.7 GB of float32 at 1601 x 1024 x 1024).
    """
    data = np.asarray(tomo)
    dtype = np.float64 if data.dtype == np.float64 else np.float32
    if data.ndim == 2:
        if out is not None:
            remove_stripe_offsets(data[:, None], snr, max_passes, max_width, out[:, None])
            return out
        return remove_stripe_offsets(data[:, None], snr, max_passes, max_width)[:, 0]
    if data.ndim != 3:
        raise ValueError(f"tomo must be (angles, rows, cols) or (angles, cols), got {data.shape}")
    if out is None:
        out = data.astype(dtype, copy=True)
    elif out.shape != data.shape or out.dtype not in (np.float32, np.float64):
        raise ValueError(f"out must be float32 or float64 of shape {data.shape}")
    elif out is not data:
        out[...] = data
    for row in range(data.shape[1]):
        offsets = stripe_offsets(data[:, row], snr, max_passes, max_width)
        out[:, row] -= offsets.astype(out.dtype)
    return out
