"""Particle segmentation and size analysis of reconstructed volumes (seed 000 workflow).

Light Gaussian smoothing -> threshold (Otsu's, refined to the half level between
the two phases) -> remove features under ``min_size`` voxels -> watershed
separation of touching particles (one seed per deepest inscribed ball) -> remove
particles cut by the volume border or the edge of the measured region -> label
and measure each particle (size distribution).

Why smoothing: filtered back projection puts its noise at the highest
frequencies. On the simulated TXM tab (~4 contrast-to-noise per voxel at ~1000
photons per pixel) thresholding raw voxels left a speckle that the watershed cut
into fragments: ~16 500 labels where 732 particles were (tests/unit/
test_tomo_truth_scores.py measures the fixed version).

Why the threshold is refined: a particle's edge in a reconstruction is blurred
(detector, filter, interpolation), and only the grey level halfway between the
particle and background levels crosses the blurred edge where the sharp edge
was. Otsu's threshold balances the two classes' variances instead; with a large,
mixed background (pores, binder, foil, truncation shading) it sat above that
half level on the simulated tab and shrank every particle by a further ~0.25
voxel in diameter (mean diameter -2.6 % instead of -1.3 %; -3.7 % with the
median fill the mosaic stitcher puts outside the reconstructed cylinder).

Voxel size: all sizes are computed in voxels; pass ``voxel_size`` (scalar or
``(dz, dy, dx)``, any length unit) to also get physical units in the table and
an anisotropy-aware distance transform for the watershed.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table
from skimage.morphology import ball, remove_small_objects
from skimage.segmentation import relabel_sequential

__all__ = ["half_level_threshold", "label_particles", "size_histogram"]

# Voxels used for threshold statistics: a strided sample bounds the cost of the
# medians on large mosaics and changes the threshold by far less than the noise.
_THRESHOLD_SAMPLE = 2_000_000
# A single float value holding more than this fraction of the voxels is a fill
# (outside the reconstructed cylinder), not a measurement.
_FILL_FRACTION = 0.01


def half_level_threshold(values, *, max_iter=20):
    """Grey level halfway between the background and particle levels.

    Starts from Otsu's threshold and iterates ``t = (median(v <= t) +
    median(v > t)) / 2`` (the intermeans iteration, with medians so that
    partial-volume edge voxels and outliers barely move the levels) until it
    stops moving.

    Parameters
    ----------
    values : array_like
        Grey values (any shape); only their distribution matters.
    max_iter : int, optional
        Iteration limit.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> v = np.concatenate([rng.normal(0, 0.1, 9000), rng.normal(1, 0.1, 1000)])
    >>> round(half_level_threshold(v), 1)
    0.5
    """
    values = np.asarray(values, dtype=np.float32).ravel()
    t = float(threshold_otsu(values))
    for _ in range(max_iter):
        low, high = values[values <= t], values[values > t]
        if low.size == 0 or high.size == 0:
            break
        new = 0.5 * (float(np.median(low)) + float(np.median(high)))
        if abs(new - t) <= 1e-6 * (abs(t) + 1e-12):
            t = new
            break
        t = new
    return t


def _threshold_sample(volume, mask):
    """Voxels for the threshold statistics: the mask's, without a constant fill."""
    values = volume[mask] if mask is not None else volume.ravel()
    values = values[:: max(1, values.size // _THRESHOLD_SAMPLE)]
    if mask is None and np.issubdtype(values.dtype, np.floating) and values.size:
        # A value repeated exactly in over 1 % of the voxels, strictly between the
        # extremes, is a fill (e.g. the median put outside the reconstructed
        # cylinder); counted as background it would drag the background level
        # towards it. The extremes are exempt: a noise-free phantom's exact-zero
        # background is data.
        unique, counts = np.unique(values, return_counts=True)
        k = int(np.argmax(counts))
        if counts[k] > _FILL_FRACTION * values.size and 0 < k < len(unique) - 1:
            values = values[values != unique[k]]
    return values


# ----------------------------------------------------------------------------- kernels
# The distance transform, the seed search and the watershed of the demo's stitched
# mosaic (47 M voxels) took ~15, 9 and 25 s with scipy's distance_transform_edt,
# skimage's peak_local_max (with labels) and watershed; these numba versions
# compute the same things in ~5, 0.3 and 7 s (checked against them in
# tests/unit/test_tomo_truth_scores.py).


@numba.njit(cache=True, inline="always")
def _lower_envelope(f, out, v, z, w):  # pragma: no cover - numba
    # Squared distance transform of one line (Felzenszwalb & Huttenlocher 2012):
    # out[p] = min_q f[q] + w (p - q)^2, for samples f (inf: no site).
    n = f.shape[0]
    k = -1
    for q in range(n):
        fq = f[q]
        if fq == np.inf:
            continue
        if k < 0:
            k = 0
            v[0] = q
            z[0] = -np.inf
            z[1] = np.inf
            continue
        while True:  # z[0] = -inf stops this at k = 0
            vk = v[k]
            s = ((fq + w * q * q) - (f[vk] + w * vk * vk)) / (2.0 * w * (q - vk))
            if s > z[k]:
                break
            k -= 1
        k += 1
        v[k] = q
        z[k] = s
        z[k + 1] = np.inf
    if k < 0:
        for p in range(n):
            out[p] = np.inf
        return
    j = 0
    for p in range(n):
        while z[j + 1] < p:
            j += 1
        d = p - v[j]
        out[p] = w * d * d + f[v[j]]


@numba.njit(parallel=True, cache=True)
def _edt_pass(sq, axis, w):  # pragma: no cover - numba
    # One separable pass of the squared EDT along ``axis`` of a 3D float64 array.
    d0, d1, d2 = sq.shape
    if axis == 0:
        n, n0, n1 = d0, d1, d2
    elif axis == 1:
        n, n0, n1 = d1, d0, d2
    else:
        n, n0, n1 = d2, d0, d1
    for i in numba.prange(n0):
        f = np.empty(n)
        out = np.empty(n)
        v = np.empty(n, np.int64)
        z = np.empty(n + 1)
        for j in range(n1):
            for p in range(n):
                if axis == 0:
                    f[p] = sq[p, i, j]
                elif axis == 1:
                    f[p] = sq[i, p, j]
                else:
                    f[p] = sq[i, j, p]
            _lower_envelope(f, out, v, z, w)
            for p in range(n):
                if axis == 0:
                    sq[p, i, j] = out[p]
                elif axis == 1:
                    sq[i, p, j] = out[p]
                else:
                    sq[i, j, p] = out[p]


def _distance_transform(solid, spacing):
    """Euclidean distance of every solid voxel to the nearest background voxel (float32).

    As :func:`scipy.ndimage.distance_transform_edt` (sampling = ``spacing``).
    """
    sq = np.where(solid, np.inf, 0.0)
    # Inner axis first: its lines are contiguous.
    for axis in (2, 1, 0):
        _edt_pass(sq, axis, float(spacing[axis]) ** 2)
    return np.sqrt(sq).astype(np.float32)


@numba.njit(parallel=True, cache=True)
def _peaks_kernel(values, components, offsets, threshold, out):  # pragma: no cover
    # A voxel is a peak if no voxel of its component within the footprint is higher.
    nz, ny, nx = values.shape
    for z in numba.prange(nz):
        for y in range(ny):
            for x in range(nx):
                c = components[z, y, x]
                if c == 0:
                    continue
                v = values[z, y, x]
                if v <= threshold:
                    continue
                peak = True
                for k in range(offsets.shape[0]):  # nearest first: slopes exit early
                    zz = z + offsets[k, 0]
                    yy = y + offsets[k, 1]
                    xx = x + offsets[k, 2]
                    if zz < 0 or yy < 0 or xx < 0 or zz >= nz or yy >= ny or xx >= nx:
                        continue
                    if components[zz, yy, xx] == c and values[zz, yy, xx] > v:
                        peak = False
                        break
                out[z, y, x] = peak


def _local_maxima(values, components, footprint):
    """Peaks of ``values`` within each component, as ``skimage.feature.peak_local_max``.

    Same as ``peak_local_max(values, footprint=footprint, labels=components,
    exclude_border=False)``: voxels above the volume's minimum that no voxel of
    their own component within the footprint exceeds. Returns ``(n, 3)`` indices.
    """
    fp = np.asarray(footprint, bool)
    centre = np.array(fp.shape) // 2
    offsets = np.argwhere(fp) - centre
    offsets = offsets[np.any(offsets != 0, axis=1)]
    offsets = offsets[np.argsort((offsets**2).sum(axis=1), kind="stable")]
    out = np.zeros(values.shape, bool)
    _peaks_kernel(
        values,
        components.astype(np.int32, copy=False),
        offsets.astype(np.int64),
        float(values.min()),
        out,
    )
    return np.argwhere(out)


@numba.njit(cache=True)
def _flood(levels, mask, labels, shape):  # pragma: no cover - numba
    # Marker-controlled watershed by priority flooding (6-connected), with a
    # bucket queue: levels are small non-negative integers, FIFO within a level
    # (the age order of skimage's heap). A voxel is labelled when first reached.
    nz, ny, nx = shape
    n = levels.shape[0]
    n_levels = 0
    for i in range(n):
        if mask[i] and levels[i] + 1 > n_levels:
            n_levels = levels[i] + 1
    head = np.full(n_levels, -1, np.int64)
    tail = np.full(n_levels, -1, np.int64)
    nxt = np.full(n, -1, np.int64)
    for i in range(n):
        if labels[i] > 0 and mask[i]:
            lv = levels[i]
            if tail[lv] < 0:
                head[lv] = i
            else:
                nxt[tail[lv]] = i
            tail[lv] = i
    plane = ny * nx
    current = 0
    while current < n_levels:
        i = head[current]
        if i < 0:
            current += 1
            continue
        head[current] = nxt[i]
        if head[current] < 0:
            tail[current] = -1
        z = i // plane
        y = (i // nx) % ny
        x = i % nx
        for d in range(6):
            if d == 0:
                if x == 0:
                    continue
                j = i - 1
            elif d == 1:
                if x == nx - 1:
                    continue
                j = i + 1
            elif d == 2:
                if y == 0:
                    continue
                j = i - nx
            elif d == 3:
                if y == ny - 1:
                    continue
                j = i + nx
            elif d == 4:
                if z == 0:
                    continue
                j = i - plane
            else:
                if z == nz - 1:
                    continue
                j = i + plane
            if not mask[j] or labels[j] != 0:
                continue
            labels[j] = labels[i]
            lv = max(levels[j], current)  # flooding never goes back down
            nxt[j] = -1
            if tail[lv] < 0:
                head[lv] = j
            else:
                nxt[tail[lv]] = j
            tail[lv] = j


def _watershed(height, markers, mask, steps_per_unit=16):
    """Marker-controlled watershed of ``height`` inside ``mask`` (6-connected).

    As ``skimage.segmentation.watershed(height, markers, mask=mask)`` with the
    heights quantised to ``1 / steps_per_unit`` (a 16th of a voxel for distance
    maps: the order of flooding changes only between voxels that close).
    """
    inside = height[mask]
    if inside.size == 0:
        return np.zeros(height.shape, np.int32)
    levels = np.zeros(height.shape, np.int32)
    levels[mask] = np.round((inside - inside.min()) * steps_per_unit).astype(np.int32)
    labels = np.where(mask, markers, 0).astype(np.int32)
    _flood(levels.ravel(), mask.ravel(), labels.ravel(), labels.shape)
    return labels


def label_particles(
    volume,
    threshold=None,
    min_size=5,
    separate=True,
    footprint=None,
    remove_border=True,
    *,
    min_distance=3,
    voxel_size=None,
    smooth_sigma=0.7,
    mask=None,
):
    """Label and measure the particles of a grey-level volume.

    Parameters
    ----------
    volume : ndarray, shape (z, y, x)
        Reconstructed volume, particles brighter than the background; or a
        boolean volume of particle voxels (no smoothing or threshold then).
    threshold : float or {'half-level', 'otsu'}, optional
        Grey level separating particles from background (of the smoothed
        volume), or how to find it: ``'half-level'`` (default, also for None),
        :func:`half_level_threshold`, which keeps blurred edges in place;
        ``'otsu'``, :func:`skimage.filters.threshold_otsu`.
    min_size : int, optional
        Features of fewer voxels are removed as noise (seed 000 uses 5).
    separate : bool, optional
        Split touching particles by a watershed of the distance transform,
        seeded at its local maxima; a maximum inside the inscribed ball of a
        deeper one seeds nothing (:func:`_deepest_seeds`).
    footprint : ndarray of bool, optional
        Neighbourhood in which a distance maximum must be the largest to seed
        a particle; default ``ball(min_distance)``. Larger footprints merge
        more (fewer splits of elongated particles), smaller ones split more.
    remove_border : bool, optional
        Drop particles touching the volume border (their size is unknown).
    min_distance : int, optional
        Minimum distance in voxels between two particle seeds (radius of the
        default ``footprint``); about the radius of the smallest particle.
    voxel_size : float or sequence of 3 floats, optional
        Voxel size ``(dz, dy, dx)`` in a length unit of your choice; default 1
        (the physical columns of the table are then in voxels).
    smooth_sigma : float, optional
        Gaussian pre-filter (voxels) of grey volumes; 0 disables it. FBP noise
        is mostly at the highest frequencies: at the simulated TXM's ~4 contrast
        to noise per voxel, thresholding unsmoothed voxels left a speckle of
        noise that the watershed cut into thousands of fragments; 0.7 halves
        the noise and moves half-level edges by < 0.1 voxel.
    mask : ndarray of bool, shape (z, y, x), optional
        Voxels that hold measurements (e.g. the reconstructed cylinder). Only
        they enter the threshold statistics and hold particles, and with
        ``remove_border`` particles touching its edge are dropped too. Default:
        every voxel; a constant fill of a float volume (one value in over 1 %
        of the voxels, strictly between its extremes, as put outside a
        reconstruction's cylinder) is then left out of the threshold
        statistics.

    Returns
    -------
    labels : ndarray of int32, shape (z, y, x)
        0 for background, particles labelled 1..n.
    table : dict of ndarray
        One entry per particle: ``label``, ``volume_voxels``,
        ``equivalent_diameter_voxels`` (diameter of the sphere of the same
        volume), ``centroid_z``, ``centroid_y``, ``centroid_x`` (voxel
        indices), and in physical units ``volume``, ``equivalent_diameter``,
        ``z``, ``y``, ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> zz, yy, xx = np.mgrid[:40, :40, :40]
    >>> vol = ((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 13) ** 2 <= 36).astype(float)
    >>> vol += (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 25) ** 2 <= 36  # touching sphere
    >>> labels, table = label_particles(vol > 0, voxel_size=0.5)
    >>> len(table["label"]), np.round(table["equivalent_diameter"], 1).tolist()
    (2, [6.0, 6.0])
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError("volume must be 3D (z, y, x)")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != volume.shape:
            raise ValueError(f"mask shape {mask.shape} != volume shape {volume.shape}")
    spacing = np.broadcast_to(np.asarray(voxel_size or 1.0, dtype=float), (3,))

    if volume.dtype == bool:
        solid = volume.copy()
    else:
        grey = volume.astype(np.float32, copy=False)
        if smooth_sigma and smooth_sigma > 0:
            grey = ndimage.gaussian_filter(grey, float(smooth_sigma))
        if threshold is None or isinstance(threshold, str):
            method = threshold or "half-level"
            sample = _threshold_sample(grey, mask)
            if method == "half-level":
                threshold = half_level_threshold(sample)
            elif method == "otsu":
                threshold = threshold_otsu(sample)
            else:
                raise ValueError(f"unknown threshold {method!r} (use 'half-level' or 'otsu')")
        solid = grey > threshold
    if mask is not None:
        solid &= mask
    # skimage >= 0.26: max_size removes objects of <= max_size voxels.
    solid = remove_small_objects(solid, max_size=max(min_size - 1, 0))

    if separate:
        distance = _distance_transform(solid, spacing)
        # A light blur breaks ties on the flat ridges of the distance map, which
        # would otherwise seed one particle several times.
        smooth = ndimage.gaussian_filter(distance, 0.5)
        if footprint is None:
            footprint = ball(min_distance)
        components = ndimage.label(solid)[0]
        peaks = _local_maxima(smooth, components, footprint)
        peaks = _deepest_seeds(peaks, smooth, components, spacing)
        markers = np.zeros(volume.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = _watershed(-smooth, markers, solid)
    else:
        labels = ndimage.label(solid)[0]
    if remove_border:
        labels = _clear_border(labels, mask)
    # Watershed splits can leave slivers below min_size (bincount rather than
    # remove_small_objects, which warns when a single label is left).
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    labels[small[labels]] = 0
    labels = relabel_sequential(labels)[0].astype(np.int32)

    props = regionprops_table(labels, properties=("label", "area", "centroid"))
    n_vox = props["area"].astype(np.int64)
    table = {
        "label": props["label"].astype(np.int32),
        "volume_voxels": n_vox,
        "equivalent_diameter_voxels": np.cbrt(6 * n_vox / np.pi),
        "centroid_z": props["centroid-0"],
        "centroid_y": props["centroid-1"],
        "centroid_x": props["centroid-2"],
    }
    voxel_volume = float(np.prod(spacing))
    table["volume"] = n_vox * voxel_volume
    table["equivalent_diameter"] = np.cbrt(6 * table["volume"] / np.pi)
    table["z"] = table["centroid_z"] * spacing[0]
    table["y"] = table["centroid_y"] * spacing[1]
    table["x"] = table["centroid_x"] * spacing[2]
    return labels, table


def _deepest_seeds(peaks, distance, components, spacing):
    """Drop each distance maximum that lies inside the inscribed ball of a deeper one.

    A maximum of the distance map is the centre of a ball inscribed in the solid
    (its value is the radius). One particle has one deepest ball; a second
    maximum within that ball's radius is a bump on the same particle (noise
    roughens big particles' surfaces into several maxima a few voxels apart),
    whereas the centres of two touching spheres are ``r1 + r2`` apart, more than
    either radius, so real neighbours keep their own seeds. On the simulated TXM
    tab at ~700 photons per pixel this removed most over-splits of large
    particles (count error +4.4 % -> +1.8 %) and changed nothing at higher dose.
    """
    if len(peaks) < 2:
        return peaks
    depth = distance[tuple(peaks.T)]
    order = np.argsort(-depth, kind="stable")
    peaks, depth = peaks[order], depth[order]
    owner = components[tuple(peaks.T)]
    points = peaks * spacing  # the distance map is in physical units
    tree = cKDTree(points)
    keep = np.ones(len(peaks), bool)
    neighbours = tree.query_ball_point(points, float(depth[0]))
    for i in range(1, len(peaks)):  # deepest first: every deeper seed is settled
        for j in neighbours[i]:
            if (
                j < i
                and keep[j]
                and owner[j] == owner[i]
                and np.linalg.norm(points[i] - points[j]) < depth[j]
            ):
                keep[i] = False
                break
    return peaks[keep]


def _clear_border(labels, mask):
    """Drop labels touching a face of the volume or, with ``mask``, its edge."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        index = [slice(None)] * labels.ndim
        for end in (0, -1):
            index[axis] = end
            edge[tuple(index)] = True
    if mask is not None:
        edge |= mask & ndimage.binary_dilation(~mask)  # measured voxels next to unmeasured
    drop = np.zeros(int(labels.max()) + 1, bool)
    drop[np.unique(labels[edge])] = True
    drop[0] = False
    labels[drop[labels]] = 0
    return labels


def size_histogram(diameters, bins=20, *, range=None, density=False):  # noqa: A002
    """Particle size distribution.

    Parameters
    ----------
    diameters : array_like
        Particle sizes, e.g. ``table["equivalent_diameter"]``.
    bins : int or array_like, optional
        Number of bins or bin edges (as :func:`numpy.histogram`).
    range : (float, float), optional
        Lower and upper range of the bins.
    density : bool, optional
        Return a probability density instead of counts.

    Returns
    -------
    counts : ndarray
        Number (or density) of particles per bin.
    centers : ndarray
        Bin centres.
    edges : ndarray
        Bin edges (``len(counts) + 1``).

    Examples
    --------
    >>> counts, centers, edges = size_histogram([1.0, 1.2, 2.9, 3.1], bins=2, range=(0, 4))
    >>> counts.tolist(), centers.tolist()
    ([2, 2], [1.0, 3.0])
    """
    counts, edges = np.histogram(np.asarray(diameters, dtype=float), bins, range, density=density)
    return counts, 0.5 * (edges[:-1] + edges[1:]), edges
