"""Focus metrics: how sharp an image is, and where a through-focus scan peaks.

A calibration scans the zone plate along the beam and records one frame per
position; a sharpness metric turns each frame into a number, and the focus is
the peak of that curve, located to a fraction of the scan step by a
least-squares parabola through the points around the best one (the most
accurate of the fast peak fits, docs/stack-facts.md). Pure numpy: frames from
anywhere (a live plan, a catalog replay) give the same answer.

Two metrics, both independent of the illumination's absolute scale only where
stated:

* :func:`normalized_variance` ``sum((I - mean)^2) / (N mean)``: robust to photon
  noise (it averages over every pixel), the default. It scales with the flux,
  so compare frames of one energy and exposure only.
* :func:`brenner_gradient` ``sum((I[x+2] - I[x])^2) / (N mean^2)``: more
  selective for fine detail, noisier at low counts; scale-free.

Examples
--------
>>> import numpy as np
>>> x = np.linspace(-1, 1, 9)
>>> peak = find_focus_peak(x, 1 - (x - 0.13) ** 2)
>>> round(peak.position, 6), peak.at_edge
(0.13, False)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .optics import lens_distances_mm
from .xanes import feature_image, register_translation

__all__ = [
    "DETECTOR_MODES",
    "SHARPNESS_METRICS",
    "FocusPeak",
    "brenner_gradient",
    "effective_focal_length_mm",
    "find_focus_peak",
    "focus_offsets_mm",
    "image_displacement_px",
    "normalized_variance",
    "sharpness",
    "zone_plate_correction_um",
]


def _frames(image) -> np.ndarray:
    data = np.asarray(image, dtype=float)
    if data.ndim < 2 or min(data.shape[-2:]) < 3:
        raise ValueError(f"need images of at least 3 x 3 pixels, got shape {data.shape}")
    return data


def _means(data: np.ndarray) -> np.ndarray:
    mean = data.mean(axis=(-2, -1))
    if np.any(~np.isfinite(mean)) or np.any(mean <= 0):
        raise ValueError("sharpness needs images with a positive mean (dark frames have none)")
    return mean


def normalized_variance(image) -> float | np.ndarray:
    """Normalised variance ``var(I) / mean(I)`` of an image (or of each of a stack).

    Parameters
    ----------
    image : array_like, shape (..., ny, nx)
        One frame, or frames stacked along the leading axes.

    Returns
    -------
    float or ndarray
        One value per frame (a float for a single frame).
    """
    data = _frames(image)
    value = data.var(axis=(-2, -1)) / _means(data)
    return float(value) if value.ndim == 0 else value


def brenner_gradient(image) -> float | np.ndarray:
    """Brenner gradient ``mean((I[x+2] - I[x])^2)`` over both axes, divided by ``mean(I)^2``.

    Parameters
    ----------
    image : array_like, shape (..., ny, nx)
        One frame, or frames stacked along the leading axes.

    Returns
    -------
    float or ndarray
        One value per frame (a float for a single frame).
    """
    data = _frames(image)
    across = ((data[..., :, 2:] - data[..., :, :-2]) ** 2).mean(axis=(-2, -1))
    along = ((data[..., 2:, :] - data[..., :-2, :]) ** 2).mean(axis=(-2, -1))
    value = (across + along) / _means(data) ** 2
    return float(value) if value.ndim == 0 else value


#: Sharpness metrics by the name plans record in their metadata.
SHARPNESS_METRICS = {
    "normalized_variance": normalized_variance,
    "brenner": brenner_gradient,
}


def sharpness(image, metric: str = "normalized_variance") -> float | np.ndarray:
    """Sharpness of a frame (or of each of a stack) by the metric named ``metric``."""
    try:
        function = SHARPNESS_METRICS[metric]
    except KeyError:
        raise ValueError(
            f"metric must be one of {sorted(SHARPNESS_METRICS)}, got {metric!r}"
        ) from None
    return function(image)


@dataclass(frozen=True)
class FocusPeak:
    """Where a through-focus curve peaks.

    Attributes
    ----------
    position : float
        Peak position (units of the scan), between samples when the fit succeeded.
    value : float
        Metric at the peak (fitted, or the best sample's).
    index : int
        Index of the best sample, in increasing position order.
    at_edge : bool
        The best sample is the first or the last: the scan does not bracket the
        focus, and ``position`` is only a bound.
    fitted : bool
        False when no downward parabola fitted (flat or noisy curve) and
        ``position`` is the best sample's.
    """

    position: float
    value: float
    index: int
    at_edge: bool
    fitted: bool


def find_focus_peak(positions, values, *, window: int = 2) -> FocusPeak:
    """Locate the peak of a through-focus curve to a fraction of the step.

    A least-squares parabola through the best sample and ``window`` samples on
    each side (fewer at the ends of the scan); its vertex, kept within those
    samples, is the peak.

    Parameters
    ----------
    positions : array_like
        Scan positions (any order; distinct).
    values : array_like
        Metric at each position.
    window : int
        Samples on each side of the best one used in the fit (>= 1).

    Returns
    -------
    FocusPeak
    """
    x = np.asarray(positions, dtype=float).ravel()
    y = np.asarray(values, dtype=float).ravel()
    if x.size != y.size or x.size < 3:
        raise ValueError("need at least 3 positions, each with one value")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("positions and values must be finite")
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    order = np.argsort(x)
    x, y = x[order], y[order]
    if np.any(np.diff(x) <= 0):
        raise ValueError("positions must be distinct")
    best = int(np.argmax(y))
    at_edge = best in (0, x.size - 1)
    fallback = FocusPeak(float(x[best]), float(y[best]), best, at_edge, False)
    if at_edge:
        return fallback
    lo, hi = max(0, best - int(window)), min(x.size, best + int(window) + 1)
    # Centred, scaled coordinates keep the normal equations well conditioned.
    centre, scale = x[best], float(x[hi - 1] - x[lo])
    u = (x[lo:hi] - centre) / scale
    a, b, c = np.polyfit(u, y[lo:hi], 2)
    if not a < 0:
        return fallback
    vertex = float(np.clip(-b / (2 * a), u[0], u[-1]))
    return FocusPeak(
        float(centre + vertex * scale), float(np.polyval((a, b, c), vertex)), best, False, True
    )


#: How a calibration turns a measured zone-plate focus into detector offsets.
DETECTOR_MODES = ("fixed", "magnification")


def effective_focal_length_mm(p_mm, length_mm):
    """Focal length that focuses an object at ``p`` onto a detector at ``length`` from it.

    From ``1/p + 1/q = 1/f`` with ``q = length - p``: ``f = p (length - p) / length``.
    """
    p = np.asarray(p_mm, dtype=float)
    length = np.asarray(length_mm, dtype=float)
    if np.any(length <= p) or np.any(p <= 0):
        raise ValueError("need 0 < p < detector distance")
    f = p * (length - p) / length
    return float(f) if f.ndim == 0 else f


def focus_offsets_mm(
    best_zp_z_mm: float,
    det_z_mm: float,
    thin_zp_z_mm: float,
    thin_det_z_mm: float,
    magnification: float,
    detector: str = "fixed",
) -> tuple[float, float]:
    """Calibration offsets ``(zp_z, det_z)`` (mm) from a zone-plate focus found at ``det_z``.

    Parameters
    ----------
    best_zp_z_mm : float
        Zone-plate position of best focus, found with the detector at ``det_z_mm``.
    det_z_mm : float
        Detector position during the scan.
    thin_zp_z_mm, thin_det_z_mm : float
        Thin-lens prediction at the same energy.
    magnification : float
        The X-ray magnification the energy axis keeps (``q / p``).
    detector : {"fixed", "magnification"}
        ``"fixed"``: the detector stays where it was scanned (offset ``det_z -
        thin_det_z``) and the zone plate goes to the focus found: exact whatever
        the cause of the deviation, at a magnification slightly off nominal.
        ``"magnification"``: the deviation is read as an effective focal length
        (:func:`effective_focal_length_mm`) and both axes go to the thin-lens
        positions of that focal length: nominal magnification, but the detector
        offset is ~``M`` times the zone plate's (so is its noise).

    Returns
    -------
    tuple of float
        Offsets to store under ``"zp_z"`` and ``"det_z"`` of a ``FocusCalibration``.
    """
    if detector == "fixed":
        return float(best_zp_z_mm - thin_zp_z_mm), float(det_z_mm - thin_det_z_mm)
    if detector == "magnification":
        p, q = lens_distances_mm(effective_focal_length_mm(best_zp_z_mm, det_z_mm), magnification)
        return float(p - thin_zp_z_mm), float(p + q - thin_det_z_mm)
    raise ValueError(f"detector must be one of {DETECTOR_MODES}, got {detector!r}")


# -- lateral: where the image sits, and the zone-plate move that puts it back ---------------


def image_displacement_px(reference, moving, *, sigma: float = 1.0) -> np.ndarray:
    """Displacement (rows, columns) of ``moving`` against ``reference``, px.

    ``moving`` is ``reference`` shifted by the result (``scipy.ndimage.shift``
    sense). Both frames are turned into absorbance-like images ``-ln(I / mean I)``
    and registered on their Gaussian gradient magnitude
    (:func:`~multiscope.analysis.xanes.feature_image`,
    :func:`~multiscope.analysis.xanes.register_translation`): edges stay where they
    are when the contrast changes across an absorption edge, so frames below and
    above the edge register as well as two frames at one energy.

    Parameters
    ----------
    reference, moving : array_like, shape (ny, nx)
        Raw frames (counts > 0; dark offsets do not matter much for edges).
    sigma : float
        Gaussian scale of the gradient, px (1: noise-robust at full resolution).
    """
    images = []
    for frame in (reference, moving):
        data = _frames(frame)
        if data.ndim != 2:
            raise ValueError(f"need one 2D frame each, got shape {data.shape}")
        mean = _means(data)
        images.append(feature_image(-np.log(np.clip(data, 1e-3 * mean, None) / mean),
                                    "gradient", sigma))  # fmt: skip
    if images[0].shape != images[1].shape:
        raise ValueError(f"frames differ in shape: {images[0].shape} vs {images[1].shape}")
    # register_translation gives the shift that registers moving onto reference: minus ours
    return -register_translation(images[0], images[1])


def zone_plate_correction_um(
    displacement_px, pixel_size_um: float, magnification: float, orientation
) -> np.ndarray:
    """Zone-plate move (x, y), um, that undoes an image displacement.

    A transverse zone-plate move ``d`` moves the image of the sample by
    ``(1 + 1/M) d`` in the sample plane, i.e. ``(1 + 1/M) d / pixel`` px, along the
    instrument's ``orientation``.

    Parameters
    ----------
    displacement_px : array_like, shape (2,)
        Image displacement (rows, columns) to undo (:func:`image_displacement_px`).
    pixel_size_um : float
        Pixel size at the sample, um.
    magnification : float
        X-ray magnification ``M``.
    orientation : array_like, shape (2, 2)
        Image displacement (rows, columns) per +1 of zone-plate (x, y), in units of
        ``(1 + 1/M) / pixel`` (``TXMEnergy.zp_image_orientation``).

    Returns
    -------
    numpy.ndarray
        ``(dx, dy)`` um to add to the zone plate's x and y.

    Examples
    --------
    >>> zone_plate_correction_um([0.0, 10.2], 0.26, 50.0, ((0, 1), (-1, 0)))
    array([2.6, 0. ])
    """
    shift = np.asarray(displacement_px, dtype=float).reshape(2)
    matrix = np.asarray(orientation, dtype=float).reshape(2, 2)
    if not (pixel_size_um > 0 and magnification > 0):
        raise ValueError("pixel size and magnification must be positive")
    gain = (1.0 + 1.0 / magnification) / pixel_size_um  # px per um of zone plate
    return np.linalg.solve(gain * matrix, -shift) + 0.0  # + 0.0: no negative zeros
