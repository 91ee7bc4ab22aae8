"""Scout and zoom: find a volume of interest in a survey tomogram of a whole cell.

A cylindrical cell (a coin cell lying flat on the rotation stage) is rotationally
symmetric about its own axis and layered along it: every slice is, apart from noise,
a function of the radius alone. A defect (an internal short circuit: cathode
material pressed through the separator) breaks that symmetry. The detector
(:func:`rotational_anomaly`):

1. finds the cell's axis in each volume as the attenuation-weighted centroid of the
   mean slice (the cell need not sit on the rotation axis);
2. subtracts from every slice its azimuthal mean (the mean over each 1-voxel ring
   around the axis): the layers, the casing, the spring and any rotationally
   symmetric reconstruction artefact (cupping) vanish;
3. smooths the residual with a Gaussian of the defect's scale (``smooth_px``; less
   along the axis, ``smooth_z_px``) and
   divides every slice by its own robust noise (the median absolute deviation,
   floored at the volume's median): slices crossed by photon-starved steel (streaks
   everywhere) score low, a compact anomaly in a quiet slice high;
4. detects the strongest (positive: denser than its ring) voxel by that score and
   locates the anomaly at the centroid of its blob: in its slice, the connected pixels
   around it whose residual is at least half the peak's, among those significant
   (``significance`` sigmas); along the axis, the residual over those pixels in the
   slice and its two neighbours. The blob is cut on the residual, not on the score:
   the score's denominator is one noise estimate per ring, which varies from ring to
   ring with the noise, so a blob cut on the score is cut unevenly along the radius
   and its centroid slides radially (0.34-0.54 mm, 3-5 survey voxels, for the coin
   cell's short in 6 of 40 noise realisations); the residual is centred on the anomaly.

Coordinates (:func:`voxel_to_sample_mm`): a volume from
:func:`multiscope.analysis.tomo.reconstruct` has one slice per detector row (row 0 at
the top) and each slice centred on the rotation axis at pixel ``(n // 2, n // 2)``,
columns along the sample's x and rows along its y (the projection geometry ``s = c
cos(theta) - r sin(theta)``). The stage put the sample point ``voi`` (mm) on the axis
at the beam centre, so voxel ``(iz, iy, ix)`` is the sample point
``voi + ((ix - n//2) p, (iy - n//2) p, ((nz - 1)/2 - iz) p)``, ``p`` the pixel (mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Anomaly", "rotational_anomaly", "sample_mm_to_voxel", "voxel_to_sample_mm"]


@dataclass(frozen=True)
class Anomaly:
    """The strongest departure from rotational symmetry in a volume.

    Attributes
    ----------
    index : tuple of float
        Voxel ``(z, y, x)`` (blob centroid, fractional).
    score : float
        Smoothed residual at the peak in units of its slice's noise.
    axis_px : tuple of float
        ``(y, x)`` of the cell's axis found in the slices.
    """

    index: tuple[float, float, float]
    score: float
    axis_px: tuple[float, float]


def voxel_to_sample_mm(index, shape, pixel_um: float, voi_mm) -> tuple[float, float, float]:
    """Sample-frame point (mm) of voxel ``index`` ``(z, y, x)`` of a volume of ``shape``."""
    iz, iy, ix = (float(v) for v in index)
    nz, ny, nx = shape
    pixel = float(pixel_um) * 1e-3
    x0, y0, z0 = (float(v) for v in voi_mm)
    return (x0 + (ix - nx // 2) * pixel, y0 + (iy - ny // 2) * pixel,
            z0 + ((nz - 1) / 2.0 - iz) * pixel)  # fmt: skip


def sample_mm_to_voxel(point_mm, shape, pixel_um: float, voi_mm) -> tuple[float, float, float]:
    """Inverse of :func:`voxel_to_sample_mm`: fractional voxel ``(z, y, x)`` of a point."""
    nz, ny, nx = shape
    pixel = float(pixel_um) * 1e-3
    dx, dy, dz = (float(p) - float(v) for p, v in zip(point_mm, voi_mm, strict=True))
    return ((nz - 1) / 2.0 - dz / pixel, dy / pixel + ny // 2, dx / pixel + nx // 2)


def _ring_residual(image: np.ndarray, ring: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``image`` minus its mean over each ring (``ring``: the ring index of every pixel)."""
    flat = image.ravel()
    means = np.bincount(ring, weights=flat, minlength=counts.size) / np.maximum(counts, 1)
    return (flat - means[ring]).reshape(image.shape)


def _rings(shape, cy: float, cx: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    radius = np.hypot(yy - cy, xx - cx)
    ring = np.rint(radius).astype(np.int64).ravel()
    return radius, ring, np.bincount(ring)


def _axis(volume: np.ndarray) -> tuple[float, float]:
    """The cell's axis ``(y, x)``: the centre that makes the typical slice most symmetric.

    The typical slice is the median of the slices through the cell (streaks of a few
    photon-starved slices do not move it). The centre starts at its attenuation-weighted
    centroid and is refined on a 0.25-pixel grid (+-1.5 px): an axis a fraction of a
    pixel off leaves a dipole on every sharp ring.
    """
    level = np.abs(np.nan_to_num(volume)).mean(axis=(1, 2))
    in_cell = level > 0.02 * level.max() if level.max() > 0 else np.ones(level.size, bool)
    mean = np.nan_to_num(np.median(volume[in_cell], axis=0))
    weights = np.clip(mean, 0.0, None)
    if weights.max() > 0:
        weights = np.where(weights > 0.2 * weights.max(), weights, 0.0)
    ny, nx = mean.shape
    if weights.sum() <= 0:
        return (float(ny // 2), float(nx // 2))
    yy, xx = np.mgrid[0:ny, 0:nx]
    cy = float((yy * weights).sum() / weights.sum())
    cx = float((xx * weights).sum() / weights.sum())
    best = (np.inf, cy, cx)
    steps = np.arange(-1.5, 1.51, 0.25)
    for dy in steps:
        for dx in steps:
            _, ring, counts = _rings(mean.shape, cy + dy, cx + dx)
            energy = float(np.square(_ring_residual(mean, ring, counts)).sum())
            if energy < best[0]:
                best = (energy, cy + dy, cx + dx)
    return best[1], best[2]


def _ring_median(values: np.ndarray, ring: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median of ``values`` over each ring (``ring``: the ring index of every value)."""
    order = np.lexsort((values, ring))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    middle = starts + np.maximum(counts - 1, 0) // 2
    middle_high = starts + counts // 2
    ordered = values[order]
    present = counts > 0
    medians = np.zeros(counts.size)
    medians[present] = 0.5 * (ordered[middle[present]] + ordered[middle_high[present]])
    return medians


def _cell_radius(volume: np.ndarray, ring: np.ndarray, counts: np.ndarray) -> float:
    """Outermost ring (px) whose mean attenuation exceeds a quarter of the strongest."""
    mean = np.nan_to_num(volume.mean(axis=0)).ravel()
    profile = np.bincount(ring, weights=mean, minlength=counts.size) / np.maximum(counts, 1)
    strong = np.nonzero(profile > 0.25 * profile.max())[0] if profile.max() > 0 else []
    return float(strong[-1]) if len(strong) else float(counts.size)


def rotational_anomaly(
    volume,
    *,
    smooth_px: float = 2.0,
    smooth_z_px: float = 0.5,
    max_radius_fraction: float = 0.45,
    sign: int = 1,
    significance: float = 4.0,
) -> Anomaly:
    """Find the strongest departure from rotational symmetry (see the module docstring).

    Parameters
    ----------
    volume : array_like, shape (nz, ny, nx)
        A reconstruction (any units).
    smooth_px : float
        Gaussian sigma (voxels) of the residual across the slices: about a third of
        the defect's radius.
    smooth_z_px : float
        Gaussian sigma (voxels) along the axis: small, since the layers are thin and a
        quiet slice must not take the streaks of a photon-starved neighbour (steel).
    max_radius_fraction : float
        Only voxels within this fraction of the slice width from the axis count (the
        reconstruction's corners are noise), and only inside the cell: 4 + 3 ``smooth_px`` voxels
        within its outermost strong ring (the casing, whose edges every slice shares).
    sign : {1, -1}
        1: denser than the ring (a short circuit, an inclusion); -1: lighter (a void).
    significance : float
        Score (noise sigmas) a voxel needs to belong to the anomaly's blob (or the
        peak's own score, if lower); it keeps the photon-starved neighbour slices'
        noise out of the blob.
    """
    from scipy import ndimage  # imported here: keeps the module's import cheap

    vol = np.nan_to_num(np.asarray(volume, dtype=np.float32))
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D (z, y, x), got shape {vol.shape}")
    if sign not in (1, -1):
        raise ValueError("sign must be 1 or -1")
    nz, ny, nx = vol.shape
    cy, cx = _axis(vol)
    radius, ring, counts = _rings((ny, nx), cy, cx)
    inside = radius <= min(
        max_radius_fraction * min(ny, nx), _cell_radius(vol, ring, counts) - 4 - 3 * smooth_px
    )
    smooth = ndimage.gaussian_filter(vol, (smooth_z_px, smooth_px, smooth_px))
    # Per slice and ring: the median (the symmetric cell) and the median absolute
    # deviation (streaks, and the pixelisation of sharp rings, spread along the ring).
    level = np.abs(vol[:, inside]).mean(axis=1)
    in_cell = level > 0.02 * level.max() if level.max() > 0 else np.ones(nz, bool)
    residual = np.zeros_like(smooth)
    spread = np.full_like(smooth, np.inf)
    for z in np.nonzero(in_cell)[0]:
        values = smooth[z].ravel()
        deviation = values - _ring_median(values, ring, counts)[ring]
        residual[z] = (sign * deviation).reshape(ny, nx)
        spread[z] = 1.4826 * _ring_median(np.abs(deviation), ring, counts)[ring].reshape(ny, nx)
    # The floor: the median spread inside the cell, over the slices through it (the
    # empty ones are not searched); it keeps a quiet ring of few pixels from scoring
    # its noise.
    floor = max(float(np.median(spread[in_cell][:, inside])), 1e-12)
    score = residual / np.maximum(spread, floor)
    score[:, ~inside] = -np.inf
    peak = np.unravel_index(int(np.argmax(score)), score.shape)
    return Anomaly(_blob_centroid(residual, score, peak, significance), float(score[peak]),
                   (cy, cx))  # fmt: skip


def _blob_centroid(residual, score, peak, significance: float) -> tuple[float, float, float]:
    """Centroid ``(z, y, x)`` of the anomaly whose strongest voxel is ``peak``.

    Across: the residual-weighted centroid of the blob in the peak's slice, the pixels
    connected to the peak with at least half its residual among the significant ones.
    Cut on the residual, not the score: the score's per-ring spread would cut the blob
    unevenly along the radius. In the slice only: a photon-starved neighbour's artefacts
    (streaks, the noise at the rotation axis) would join a 3-D blob. Along the axis: the
    residual over the blob's pixels in the peak's slice and its neighbours.
    """
    from scipy import ndimage

    z = peak[0]
    if not residual[peak] > 0:  # nothing denser (lighter) than its ring: the peak itself
        return tuple(float(v) for v in peak)
    significant = score[z] >= min(float(significance), float(score[peak]))
    blob, _ = ndimage.label(significant & (residual[z] >= 0.5 * residual[peak]))
    members = blob == blob[peak[1:]]
    cy, cx = ndimage.center_of_mass(np.where(members, residual[z], 0.0))
    slices = [k for k in (z - 1, z, z + 1) if 0 <= k < residual.shape[0]]
    mass = np.array([max(float(residual[k][members].sum()), 0.0) for k in slices])
    cz = float(np.dot(slices, mass) / mass.sum())  # the peak's slice's mass is > 0
    return (cz, float(cy), float(cx))
