"""Correlative EDS/SIMS/SEM maps: normalise, resample onto one grid, register, correlate.

The processing chain of serial-section correlative microscopy on a PFIB-SEM with
EDS and SIMS: each map is normalised (min-max, or logarithmically, which keeps
outliers visible), the SIMS map (finer pixels, its own field) is resampled onto
the EDS grid with a Lanczos kernel, registered to it across modalities, and the
two are correlated (covariance, per-pixel covariance map, line profiles).

Conventions
-----------
* Images are 2-D arrays indexed ``[row, column]`` = ``[y, x]``; pixel sizes are in
  micrometres and square.
* Physical coordinates of an image put the *centre of its first pixel* at
  ``(0, 0)``: pixel ``(i, j)`` is centred at ``(i * pixel_um, j * pixel_um)``.
* :func:`resample` keeps the *field edges* of the input and the output together
  (both start at the input field's outer edge), as image-scaling programs do; the
  first pixel centres therefore differ by ``(new_pixel_um - pixel_um) / 2``.
* :func:`register` returns the position of ``moving``'s first pixel centre in
  ``reference``'s coordinates, which is the shift that puts ``moving`` onto
  ``reference`` in scikit-image's sign convention
  (:func:`skimage.registration.phase_cross_correlation`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "covariance",
    "covariance_map",
    "line_profile",
    "normalize_log",
    "normalize_minmax",
    "register",
    "resample",
    "to_uint8",
]

LANCZOS_A = 3  # lobes of the Lanczos kernel (Lanczos-3, the usual choice)


def normalize_minmax(x) -> np.ndarray:
    """``(x - min) / (max - min)``: the map scaled onto [0, 1].

    Parameters
    ----------
    x : array_like
        A map (counts or intensities); NaNs are ignored for the min and max.

    Returns
    -------
    ndarray of float64
        Same shape; a constant map gives zeros (it carries no contrast).
    """
    x = np.asarray(x, dtype=np.float64)
    low, high = np.nanmin(x), np.nanmax(x)
    if high == low:
        return np.zeros_like(x)
    return (x - low) / (high - low)


def normalize_log(x) -> np.ndarray:
    """``log10 x / log10 max x``: a logarithmic scale onto [0, 1] that keeps outliers.

    Parameters
    ----------
    x : array_like
        Non-negative counts; the largest must exceed 1 (``log10 max x > 0``).
        Pixels without counts (``x <= 0``; ``log10`` undefined) map to 0, as a
        count of 1 does; NaN stays NaN.

    Returns
    -------
    ndarray of float64
        On [0, 1] for counts (values >= 1 or 0); a value between 0 and 1 (not a
        count) gives a negative result, as the formula does.

    Raises
    ------
    ValueError
        If the map has a negative value or no value above 1.
    """
    x = np.asarray(x, dtype=np.float64)
    if np.nanmin(x) < 0:
        raise ValueError("normalize_log takes counts (>= 0); this map has negative values")
    top = np.nanmax(x)
    if not top > 1:
        raise ValueError(f"normalize_log needs a maximum above 1 (log10 max > 0); max is {top}")
    with np.errstate(invalid="ignore"):
        logged = np.log10(np.where(x > 0, x, 1.0))
    logged[np.isnan(x)] = np.nan
    return logged / np.log10(top)


def to_uint8(x) -> np.ndarray:
    """A map on [0, 1] (e.g. from :func:`normalize_minmax`) as 8-bit grey levels 0-255.

    Values outside [0, 1] are clipped; NaN becomes 0.
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _lanczos(t: np.ndarray) -> np.ndarray:
    out = np.sinc(t) * np.sinc(t / LANCZOS_A)
    out[np.abs(t) >= LANCZOS_A] = 0.0
    return out


def _resampling_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Weights ``(n_out, n_in)`` of a Lanczos resampling along one axis.

    ``scale`` = new pixel / old pixel. Output pixel ``k``'s centre sits at input
    position ``(k + 0.5) * scale - 0.5`` (field edges together). When shrinking
    (``scale > 1``) the kernel is stretched by ``scale`` so it also low-passes the
    input (no aliasing). Rows are renormalised to sum to 1: near the field's edges
    the kernel is cut off and reweighted (not extended by clamping), which biases
    the outermost ~2 output pixels of a sloped image by up to ~0.1 pixel x slope.
    """
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    stretch = max(scale, 1.0)
    offsets = (centres[:, None] - np.arange(n_in)[None, :]) / stretch
    weights = _lanczos(offsets)
    sums = weights.sum(axis=1, keepdims=True)
    sums[sums == 0] = 1.0
    return weights / sums


def resample(image, pixel_um: float, new_pixel_um: float) -> np.ndarray:
    """Lanczos-resample ``image`` onto a grid of ``new_pixel_um`` pixels.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
    pixel_um, new_pixel_um : float
        Pixel size of ``image`` and of the result, in micrometres.

    Returns
    -------
    ndarray of float64, shape ``(round(ny * pixel_um / new_pixel_um), round(nx * ...))``
        NaN pixels of ``image`` (outside a field) are left out of the kernel sums
        (normalised convolution); an output pixel whose kernel weight falls mostly
        (> half) on NaN is NaN.
        Each output pixel is exactly ``new_pixel_um`` wide. The output's field starts
        at the input field's outer edge (field edges coincide, see the module notes);
        when ``n * pixel_um`` is not a whole number of new pixels the output field
        ends up to half a new pixel short of or beyond the input's far edge.

    Notes
    -----
    Separable Lanczos-3 (:data:`LANCZOS_A`), applied as two small dense matrix
    products, which at the map sizes here (a few hundred pixels a side) is faster
    than a general-purpose warp; shrinking stretches the kernel (anti-aliasing).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"resample takes a 2-D image, not shape {image.shape}")
    if not (pixel_um > 0 and new_pixel_um > 0):
        raise ValueError(f"pixel sizes must be > 0 (got {pixel_um}, {new_pixel_um})")
    scale = new_pixel_um / pixel_um
    ny, nx = image.shape
    out_shape = (round(ny / scale), round(nx / scale))
    if min(out_shape) < 1:
        raise ValueError(f"resampling {image.shape} px to {new_pixel_um} um leaves no pixel")
    rows = _resampling_matrix(ny, out_shape[0], scale)
    cols = _resampling_matrix(nx, out_shape[1], scale)
    valid = np.isfinite(image)
    if valid.all():
        return rows @ image @ cols.T
    weight = rows @ valid.astype(np.float64) @ cols.T
    total = rows @ np.where(valid, image, 0.0) @ cols.T
    out = np.full(out_shape, np.nan)
    enough = weight > 0.5
    out[enough] = total[enough] / weight[enough]
    return out


def _standardise(image: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread over the finite pixels; NaN pixels become 0."""
    finite = np.isfinite(image)
    values = image[finite]
    out = np.zeros_like(image)
    if values.size and values.std() > 0:
        out[finite] = (values - values.mean()) / values.std()
    return out


def _inside(image: np.ndarray, margin: int) -> np.ndarray:
    """Finite pixels at least ``margin`` pixels from a NaN (the map's own edges count
    as inside: only NaN borders make false gradients)."""
    from scipy import ndimage

    finite = np.isfinite(image)
    if finite.all():
        return finite
    return ndimage.binary_erosion(finite, iterations=margin, border_value=1)


def _masked_ncc(ref, mov, ref_mask, mov_mask, min_overlap: float) -> np.ndarray:
    """Normalised cross-correlation of ``ref`` and ``mov`` at every integer shift.

    Padfield's masked NCC (IEEE TIP 2012): at each shift only the pixels valid in
    both masks count, by FFT. Entry ``[dy + mov_ny - 1, dx + mov_nx - 1]`` scores
    ``mov`` placed with its first pixel at ``ref[dy, dx]``. Shifts whose overlap is
    below ``min_overlap`` of the smaller map's valid pixels score -inf.
    """
    from scipy import fft

    shape = [a + b - 1 for a, b in zip(ref.shape, mov.shape, strict=True)]
    fast = [fft.next_fast_len(n, real=True) for n in shape]

    def correlate(a, b):  # sum over x of a[x] * b[x - shift], every shift
        flipped = b[::-1, ::-1]
        spectrum = fft.rfft2(a, fast) * fft.rfft2(flipped, fast)
        return fft.irfft2(spectrum, fast)[: shape[0], : shape[1]]

    mr, mm = ref_mask.astype(np.float64), mov_mask.astype(np.float64)
    r, m = ref * mr, mov * mm
    overlap = np.maximum(np.round(correlate(mr, mm)), 1.0)
    sum_r, sum_m = correlate(r, mm), correlate(mr, m)
    numerator = correlate(r, m) - sum_r * sum_m / overlap
    var_r = np.maximum(correlate(r * r, mm) - sum_r**2 / overlap, 0.0)
    var_m = np.maximum(correlate(mr, m * m) - sum_m**2 / overlap, 0.0)
    denominator = np.sqrt(var_r * var_m)
    ncc = np.full(shape, -np.inf)
    smaller = min(mr.sum(), mm.sum())
    enough = (overlap >= min_overlap * smaller) & (denominator > 1e-12)
    ncc[enough] = numerator[enough] / denominator[enough]
    return ncc


def _smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    from scipy import ndimage

    finite = np.isfinite(image)
    filled = np.where(finite, image, np.nanmean(image) if finite.any() else 0.0)
    return ndimage.gaussian_filter(filled, sigma_px)


def _classes(image: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """``image``'s pixels in ``count`` intensity classes (multi-Otsu over ``mask``)."""
    from skimage.filters import threshold_multiotsu

    values = image[mask]
    try:
        thresholds = threshold_multiotsu(values, classes=count)
    except ValueError:  # fewer distinct values than classes: equal-count classes
        thresholds = np.unique(np.quantile(values, np.linspace(0, 1, count + 1)[1:-1]))
    return np.digitize(image, thresholds)


def _mutual_information_surface(ref, mov, ref_mask, mov_mask, min_overlap: float,
                                classes: int = 3) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Mutual information of the two maps' intensity classes at every integer shift, and
    the overlap (valid pixels in both) there.

    Indexed as :func:`_masked_ncc`. The joint histogram at every shift is the
    correlation of each pair of class indicators (valid pixels only), by FFT.
    Shifts whose overlap is below ``min_overlap`` of the smaller map score -inf.
    """
    from scipy import fft

    ref_classes = _classes(ref, ref_mask, classes)
    mov_classes = _classes(mov, mov_mask, classes)
    shape = [a + b - 1 for a, b in zip(ref.shape, mov.shape, strict=True)]
    fast = [fft.next_fast_len(n, real=True) for n in shape]
    ref_spectra = [
        fft.rfft2(((ref_classes == i) & ref_mask).astype(np.float64), fast) for i in range(classes)
    ]
    mov_spectra = [
        fft.rfft2(((mov_classes == j) & mov_mask).astype(np.float64)[::-1, ::-1], fast)
        for j in range(classes)
    ]
    joint = np.empty((classes, classes, *shape))
    for i, a in enumerate(ref_spectra):
        for j, b in enumerate(mov_spectra):
            counts = fft.irfft2(a * b, fast)[: shape[0], : shape[1]]
            joint[i, j] = np.maximum(np.round(counts), 0.0)
    overlap = joint.sum(axis=(0, 1))
    p = joint / np.maximum(overlap, 1.0)
    p_ref, p_mov = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / (p_ref * p_mov)), 0.0)
    information = terms.sum(axis=(0, 1))
    smaller = min(ref_mask.sum(), mov_mask.sum())
    information[overlap < max(min_overlap * smaller, 1.0)] = -np.inf
    return information, overlap


def _in_reference_contrast(ref, mov, ref_mask, mov_mask, peak, levels: int = 24) -> np.ndarray:
    """``mov`` with each of its intensity levels replaced by the mean of ``ref`` over the
    pixels at that level, in their overlap at integer ``peak`` (indexed as
    :func:`_masked_ncc`): ``mov`` seen in ``ref``'s contrast, for a plain correlation."""
    dy, dx = peak[0] - (mov.shape[0] - 1), peak[1] - (mov.shape[1] - 1)
    r0, r1 = max(0, dy), min(ref.shape[0], dy + mov.shape[0])
    c0, c1 = max(0, dx), min(ref.shape[1], dx + mov.shape[1])
    a = ref[r0:r1, c0:c1]
    b = mov[r0 - dy : r1 - dy, c0 - dx : c1 - dx]
    valid = ref_mask[r0:r1, c0:c1] & mov_mask[r0 - dy : r1 - dy, c0 - dx : c1 - dx]
    bounds = np.unique(np.quantile(mov[mov_mask], np.linspace(0, 1, levels + 1)))
    n = max(len(bounds) - 1, 1)
    level = np.clip(np.digitize(b[valid], bounds[1:-1]), 0, n - 1)
    sums = np.bincount(level, weights=a[valid], minlength=n)
    counts = np.bincount(level, minlength=n)
    fallback = a[valid].mean() if valid.any() else 0.0
    means = np.where(counts > 0, sums / np.maximum(counts, 1), fallback)
    return means[np.clip(np.digitize(mov, bounds[1:-1]), 0, n - 1)]


def _best_supported_peak(information: np.ndarray, overlap: np.ndarray,
                         tolerance: float = 0.05) -> tuple[int, int]:  # fmt: skip
    """The integer shift: of the local maxima of ``information`` within ``tolerance``
    (relative) of the highest, the one over the largest overlap.

    A small overlap's estimate is biased upwards (fewer pixels), and a repeating
    structure matches again one period away over less of the maps: between shifts
    that explain the maps about equally well, the one more pixels support wins.
    """
    from scipy import ndimage

    finite = np.where(np.isfinite(information), information, -np.inf)
    local = (finite == ndimage.maximum_filter(finite, size=5)) & np.isfinite(finite)
    rows, cols = np.nonzero(local)
    best = finite[rows, cols].max()
    close = finite[rows, cols] >= best - tolerance * abs(best)
    rows, cols = rows[close], cols[close]
    support = overlap[rows, cols]
    pick = max(range(len(rows)), key=lambda i: (support[i], finite[rows[i], cols[i]]))
    return int(rows[pick]), int(cols[pick])


def _nearby_maximum(surface: np.ndarray, index, reach: int) -> tuple[int, int]:
    """The index of ``surface``'s maximum within ``reach`` of ``index`` (each axis)."""
    y, x = (int(v) for v in index)
    y0, x0 = max(0, y - reach), max(0, x - reach)
    window = surface[y0 : y + reach + 1, x0 : x + reach + 1]
    if not np.isfinite(window).any():
        return y, x
    wy, wx = np.unravel_index(int(np.argmax(window)), window.shape)
    return y0 + int(wy), x0 + int(wx)


def _parabolic_peak(surface: np.ndarray, index: tuple[int, int]) -> tuple[float, float]:
    """Sub-pixel peak of ``surface`` around ``index``: a parabola through 3 points per axis."""
    offsets = []
    for axis in (0, 1):
        i = list(index)
        values = []
        for step in (-1, 0, 1):
            i[axis] = index[axis] + step
            inside = 0 <= i[axis] < surface.shape[axis]
            values.append(surface[tuple(i)] if inside else -np.inf)
        left, centre, right = values
        denominator = left - 2 * centre + right
        if not np.isfinite(denominator) or denominator >= 0:
            offsets.append(0.0)
        else:
            offsets.append(float(np.clip(0.5 * (left - right) / denominator, -0.5, 0.5)))
    return index[0] + offsets[0], index[1] + offsets[1]


def register(
    reference,
    moving,
    reference_pixel_um: float,
    moving_pixel_um: float,
    *,
    min_overlap: float = 0.5,
    smooth_px: float = 1.0,
) -> tuple[float, float]:
    """Where ``moving`` sits on ``reference``, across modalities and pixel sizes, sub-pixel.

    Parameters
    ----------
    reference, moving : array_like, 2-D
        Maps of the same face, e.g. an EDS Zr La map (reference) and a SIMS 6Li+
        map (moving): different contrast, different pixels, fields that overlap
        only in part. NaN marks pixels outside a field.
    reference_pixel_um, moving_pixel_um : float
        Their pixel sizes in micrometres.
    min_overlap : float, optional
        Smallest overlap considered, as a fraction of the smaller map (after
        ``moving`` is resampled onto the reference's pixels). Scores over a small
        overlap are noisy and can win by chance.
    smooth_px : float, optional
        Gaussian smoothing (reference pixels) against counting noise before the
        maps' phases are told apart; the sub-pixel step uses half of it.

    Returns
    -------
    (dy_um, dx_um) : tuple of float
        The position of ``moving``'s first pixel centre in ``reference``'s
        coordinates (origin at ``reference``'s first pixel centre), i.e. the shift
        that puts ``moving`` onto ``reference`` (scikit-image's sign).

    Notes
    -----
    Two modalities need not share intensities, only phases: 6Li+ is bright in LCO,
    which holds no Zr, and moderate in LLZTO, where Zr La is bright. Their mutual
    information does not care which phase is bright in which map. So:

    1. ``moving`` is resampled onto the reference's pixel size (:func:`resample`);
    2. each map, smoothed, is split into three intensity classes (multi-Otsu);
    3. the joint histogram of the classes at *every* integer shift is 9 masked
       correlations of class indicators, by FFT, hence the mutual information at
       every shift (a full search: no starting guess). The integer shift is its
       maximum over overlaps of at least ``min_overlap``; of maxima within 5 % of
       the highest (a repeating structure, or a small overlap's upward bias), the
       one over the largest overlap;
    4. at that shift ``moving`` is shown in the reference's contrast (each of its
       intensity levels replaced by the mean reference value over the pixels at
       that level), and the normalised cross-correlation of the two, refined by a
       parabola per axis, gives the sub-pixel shift.

    On seed 004's pair rendered by the simulator (Zr La, ~3 counts per pixel,
    against 6Li+, ~4), eight faces: largest error 0.11 EDS pixel
    (``bench/fibsem.py``, ``docs/benchmarks.md``).
    """
    reference = np.asarray(reference, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    if reference.ndim != 2 or moving.ndim != 2:
        raise ValueError("register takes two 2-D maps")
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap is a fraction in (0, 1], not {min_overlap}")
    if not smooth_px > 0:
        raise ValueError(f"smooth_px must be > 0, not {smooth_px}")
    on_grid = resample(moving, moving_pixel_um, reference_pixel_um)
    # NaN marks pixels outside a field: leave them, and what smoothing spreads from
    # their border, out of every score.
    margin = int(np.ceil(3 * smooth_px)) + 1
    ref_mask = _inside(reference, margin)
    mov_mask = _inside(on_grid, margin)
    if not ref_mask.any() or not mov_mask.any():
        raise ValueError("register found no overlap of at least min_overlap in both maps")
    information, overlap = _mutual_information_surface(
        _smooth(reference, 2 * smooth_px), _smooth(on_grid, 2 * smooth_px),
        ref_mask, mov_mask, min_overlap,
    )  # fmt: skip
    if not np.isfinite(information).any():
        raise ValueError(
            "register found no overlap of at least min_overlap with contrast in both maps"
        )
    peak = _best_supported_peak(information, overlap)
    fine_ref = _smooth(reference, 0.5 * smooth_px)
    in_ref_contrast = _in_reference_contrast(
        fine_ref, _smooth(on_grid, 0.5 * smooth_px), ref_mask, mov_mask, peak
    )
    ncc = _masked_ncc(
        _standardise(fine_ref), _standardise(in_ref_contrast), ref_mask, mov_mask, min_overlap
    )
    peak = _nearby_maximum(ncc, peak, reach=2)
    fine_y, fine_x = _parabolic_peak(ncc, peak)
    # Peak index -> the resampled map's first pixel in reference pixels.
    first_y = fine_y - (on_grid.shape[0] - 1)
    first_x = fine_x - (on_grid.shape[1] - 1)
    # The resampled first pixel centre lies (new - old) / 2 past moving's own first
    # pixel centre (field edges together, see resample).
    half = (reference_pixel_um - moving_pixel_um) / 2.0
    return first_y * reference_pixel_um - half, first_x * reference_pixel_um - half


def covariance(a, b) -> float:
    """Sample covariance of two maps on one grid: sum((a - mean a)(b - mean b)) / (n - 1).

    NaN pixels (outside either field) are left out of ``n`` and the means.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"covariance needs maps on one grid: {a.shape} vs {b.shape}")
    valid = np.isfinite(a) & np.isfinite(b)
    n = int(valid.sum())
    if n < 2:
        raise ValueError("covariance needs at least 2 pixels in both maps")
    da, db = a[valid] - a[valid].mean(), b[valid] - b[valid].mean()
    return float((da * db).sum() / (n - 1))


def covariance_map(a, b) -> np.ndarray:
    """Per-pixel ``(a - mean a)(b - mean b)``: where two maps vary together (positive).

    Means over the pixels finite in both; NaN where either map is NaN.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"covariance_map needs maps on one grid: {a.shape} vs {b.shape}")
    valid = np.isfinite(a) & np.isfinite(b)
    out = np.full(a.shape, np.nan)
    out[valid] = (a[valid] - a[valid].mean()) * (b[valid] - b[valid].mean())
    return out


def line_profile(image, start, end, *, num: int | None = None) -> np.ndarray:
    """Values of ``image`` along the segment ``start`` -> ``end`` (``(row, col)`` pixels).

    Bilinear interpolation at ``num`` equally spaced points (default: one per pixel
    of the segment's length, both ends included).
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    (r0, c0), (r1, c1) = start, end
    if num is None:
        num = int(np.ceil(np.hypot(r1 - r0, c1 - c0))) + 1
    if num < 2:
        raise ValueError("a line profile needs at least 2 points")
    rows, cols = np.linspace(r0, r1, num), np.linspace(c0, c1, num)
    return ndimage.map_coordinates(image, [rows, cols], order=1, mode="nearest")
