"""One slice of a slice-and-view series: its drift, and its EDS and SIMS maps correlated.

The pure steps that :class:`multiscope.callbacks.slice_and_view.SliceAndViewAssembler`
runs on each slice as it arrives (so the end of a 12 h series costs no more than
stacking):

* :func:`slice_drift`: the shift that brings a slice's SEM image onto the series'
  first slice, measured in the fiducial window (as :func:`multiscope.analysis.stack.
  measure_drift` does, against the first slice: no accumulated error; with the
  windows high-passed and tapered, see its notes), and the residual left after it;
* :func:`li_host_reference`: the EDS map the SIMS lithium maps are registered to;
* :func:`correlate_slice`: SIMS registered to EDS (:func:`multiscope.analysis.
  correlative.register`), resampled onto the EDS grid, and the Li x Zr covariance
  map of seed 004 (fig. 6) with its line profile;
* :func:`place_on_grid`: a map resampled onto another grid at a known offset (the
  SIMS maps onto the EDS grid; NaN outside the SIMS field).

Why a Li-host reference, not EDS Zr La alone: 6Li+ comes from every Li-bearing
phase (LiCoO2 and NMC with yield 1, LLZTO with 0.35), Zr La from LLZTO only. On
the simulated composite faces (seed 004's phantom, 216 x 352 EDS px against 500 x
500 SIMS px, 1-2 um offsets) Zr La against 6Li+ chose a wrong correlation peak in
8 of 8 faces (8-14 EDS px off), while the sum of the min-max normalised Co La, Ni Ka
and Zr La maps (the lines of the Li hosts: what 6Li+ sees, bar the yields)
registered all 8 within 0.06 EDS px. The covariance map stays Li x Zr as the seed's.

Coordinates follow :mod:`multiscope.analysis.correlative`: a map's first pixel
centre is its origin; shifts follow scikit-image's sign (what moves the moving map
onto the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from multiscope.analysis.correlative import (
    covariance,
    covariance_map,
    line_profile,
    normalize_minmax,
    register,
    resample,
)
from multiscope.analysis.stack import UPSAMPLE

__all__ = [
    "LI_HOST_LINES",
    "SliceCorrelation",
    "correlate_slice",
    "li_host_reference",
    "place_on_grid",
    "shift_map",
    "slice_drift",
]

#: EDS lines of the phases that hold lithium (LiCoO2, NMC811, LLZTO).
LI_HOST_LINES = ("Co La", "Ni Ka", "Zr La")
REFERENCE_SMOOTH_PX = 1.0  # Poisson maps of a few counts: min-max of raw counts is one outlier


HIGHPASS_SIGMA_PX = 6.0  # removes the window's background ramp, keeps the mark's edges
TUKEY_ALPHA = 0.5  # tapered fraction of the window (flat in the middle half)


def _prepared(image: np.ndarray) -> np.ndarray:
    """High-passed (minus a Gaussian of :data:`HIGHPASS_SIGMA_PX`) and tapered (Tukey
    window): a cut-out window's edges are the same in both images and, taken as
    periodic by the Fourier correlation, would pull the peak towards zero shift; a
    uniform background (the Pt cap around the mark) times the taper would too."""
    from scipy.signal.windows import tukey

    detail = image - ndimage.gaussian_filter(image, HIGHPASS_SIGMA_PX, mode="nearest")
    taper = np.outer(tukey(image.shape[0], TUKEY_ALPHA), tukey(image.shape[1], TUKEY_ALPHA))
    return (detail - detail.mean()) * taper


def slice_drift(reference, image, *, fiducial=None) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``(dy, dx)`` px bringing ``image`` onto ``reference``, and the residual after it.

    Parameters
    ----------
    reference, image : array_like, 2-D
        The series' first slice and this slice (same detector, same grid).
    fiducial : tuple of slice, optional
        ``(rows, columns)`` window holding the fiducial mark; None: the whole image.

    Returns
    -------
    shift : ndarray (2,)
        scikit-image's ``phase_cross_correlation`` of the two windows, each
        high-passed and tapered (:func:`_prepared`), without the phase normalisation,
        refined to 1/:data:`~multiscope.analysis.stack.UPSAMPLE` px.
    residual : ndarray (2,)
        The same measure on ``image`` shifted by ``shift`` (linear interpolation):
        what the alignment left, ideally well under a pixel.

    Notes
    -----
    :func:`~multiscope.analysis.stack.measure_drift` correlates the windows as they
    are, with the phase normalisation, which whitens the spectrum and so lifts the
    Poisson noise of a BSE image to the level of the mark's own detail: on the
    simulated Pt cap with a milled cross (60 drifts of up to 14 px, 400 counts) its
    error was 0.14 px median and 0.39 px at worst; prepared windows, correlated
    plainly, 0.02 and 0.11 px (and 0.02 / 0.03 px against 0.06 / 0.16 px on a
    textured window without a mark).
    """
    from skimage.registration import phase_cross_correlation

    reference = np.asarray(reference, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    window = fiducial if fiducial is not None else (slice(None), slice(None))
    fixed = _prepared(reference[window])

    def measure(moving):
        found = phase_cross_correlation(fixed, _prepared(moving[window]),
                                        upsample_factor=UPSAMPLE, normalization=None)  # fmt: skip
        return np.asarray(found[0], dtype=np.float64)

    shift = measure(image)
    residual = measure(ndimage.shift(image, shift, order=1, mode="nearest"))
    return shift, residual


def shift_map(image, shift, *, order: int = 1) -> np.ndarray:
    """``image`` moved by ``shift`` px (scikit-image's sign); pixels from outside: NaN."""
    image = np.asarray(image, dtype=np.float64)
    return place_on_grid(image, image.shape, np.asarray(shift, dtype=np.float64), order=order)


def place_on_grid(image, grid_shape, first_centre_px, *, order: int = 1) -> np.ndarray:
    """``image`` on a grid of the same pixel size where its first pixel centre sits at
    ``first_centre_px`` (grid pixels, ``(row, col)``); grid pixels outside it: NaN.

    Linear interpolation by default (a cubic spline rings at NaN edges).
    """
    image = np.asarray(image, dtype=np.float64)
    offset = -np.asarray(first_centre_px, dtype=np.float64)
    out = ndimage.affine_transform(image, np.eye(2), offset=offset, output_shape=tuple(grid_shape),
                                   order=order, mode="constant", cval=np.nan)  # fmt: skip
    # Points within half a pixel past the edge are still the edge pixel (nearest), the
    # rest stays NaN: a rounding difference must not blank a whole row.
    rows = np.arange(grid_shape[0]) + offset[0]
    cols = np.arange(grid_shape[1]) + offset[1]
    inside = ((rows >= -0.5) & (rows <= image.shape[0] - 0.5))[:, None] & (
        (cols >= -0.5) & (cols <= image.shape[1] - 0.5)
    )[None, :]
    edge = inside & ~np.isfinite(out)
    if edge.any():
        near = ndimage.affine_transform(image, np.eye(2), offset=offset,
                                        output_shape=tuple(grid_shape), order=0,
                                        mode="nearest")  # fmt: skip
        out[edge] = near[edge]
    out[~inside] = np.nan
    return out


def li_host_reference(eds_maps: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple[str, ...]]:
    """The EDS map that SIMS lithium is registered to, and the lines it sums.

    The min-max normalised (after a Gaussian of :data:`REFERENCE_SMOOTH_PX`) maps of
    the Li hosts' lines present (:data:`LI_HOST_LINES`), summed; a line without
    counts adds nothing. Without any of them (fallback): every line given.

    Raises
    ------
    ValueError
        No EDS map at all.
    """
    if not eds_maps:
        raise ValueError("li_host_reference needs at least one EDS map")
    lines = tuple(line for line in LI_HOST_LINES if line in eds_maps) or tuple(eds_maps)
    total = None
    for line in lines:
        smooth = ndimage.gaussian_filter(np.asarray(eds_maps[line], float), REFERENCE_SMOOTH_PX)
        scaled = normalize_minmax(smooth)
        total = scaled if total is None else total + scaled
    return total, lines


@dataclass
class SliceCorrelation:
    """One slice's SIMS registered to its EDS and the Li x Zr covariance.

    Attributes
    ----------
    shift_um : ndarray (2,)
        Position of the SIMS map's first pixel centre in the EDS map's coordinates
        (:func:`~multiscope.analysis.correlative.register`).
    sims_on_eds : dict of str to ndarray
        Every SIMS mass resampled onto the EDS grid (NaN outside the SIMS field).
    reference_lines : tuple of str
        EDS lines the registration used (:func:`li_host_reference`).
    moving_mass : str
        SIMS mass the registration used.
    covariance : float
        Sample covariance of the normalised Li and Zr maps (NaN: a map missing).
    covariance_map : ndarray or None
        Per-pixel covariance of the normalised maps (seed 004, fig. 6).
    profile : ndarray or None
        The covariance map along its middle row (:func:`line_profile`).
    li_mass, zr_line : str or None
        The maps the covariance used.
    """

    shift_um: np.ndarray
    sims_on_eds: dict
    reference_lines: tuple[str, ...]
    moving_mass: str
    covariance: float = float("nan")
    covariance_map: np.ndarray | None = None
    profile: np.ndarray | None = None
    li_mass: str | None = None
    zr_line: str | None = None


def _moving_mass(sims_maps: dict) -> str:
    """6Li+ when mapped (seed 004's choice), else the first mass."""
    return "6Li+" if "6Li+" in sims_maps else next(iter(sims_maps))


def correlate_slice(
    eds_maps: dict[str, np.ndarray],
    sims_maps: dict[str, np.ndarray],
    eds_pixel_um: float,
    sims_pixel_um: float,
    *,
    shift_um=None,
    grid_shape=None,
    zr_line: str = "Zr La",
) -> SliceCorrelation:
    """Register one slice's SIMS maps to its EDS maps and correlate Li with Zr.

    Parameters
    ----------
    eds_maps, sims_maps : dict of str to 2-D array
        The slice's maps by line and by mass.
    eds_pixel_um, sims_pixel_um : float
    shift_um : (float, float), optional
        A known registration (e.g. the previous slice's, when this one's fails):
        skip the measurement (``reference_lines`` is then empty).
    grid_shape : (int, int), optional
        The EDS grid when ``eds_maps`` is empty (a slice SIMS mapped and EDS did not;
        needs ``shift_um``).
    zr_line : str
        The EDS line of the covariance's Zr map.

    Returns
    -------
    SliceCorrelation
        The covariance is NaN (and its map None) without ``zr_line`` or with fewer
        than 2 pixels where both maps are defined.

    Raises
    ------
    ValueError
        No SIMS map, no EDS map without a shift and a grid, or no overlap to
        register (``register``'s error).
    """
    if not sims_maps or not (eds_maps or (shift_um is not None and grid_shape is not None)):
        raise ValueError("correlate_slice needs SIMS maps, and EDS maps or a shift and a grid")
    mass = _moving_mass(sims_maps)
    lines: tuple[str, ...] = ()
    if shift_um is None:
        reference, lines = li_host_reference(eds_maps)
        shift_um = register(reference, np.asarray(sims_maps[mass], float),
                            eds_pixel_um, sims_pixel_um)  # fmt: skip
    shift_um = np.asarray(shift_um, dtype=np.float64)
    # resample keeps the field edges: its first centre lies (new - old) / 2 past
    # the SIMS map's own.
    first = (shift_um + (eds_pixel_um - sims_pixel_um) / 2.0) / eds_pixel_um
    grid = np.asarray(next(iter(eds_maps.values()))).shape if eds_maps else tuple(grid_shape)
    on_eds = {
        name: place_on_grid(
            resample(np.asarray(m, float), sims_pixel_um, eds_pixel_um), grid, first
        )  # fmt: skip
        for name, m in sims_maps.items()
    }
    result = SliceCorrelation(shift_um, on_eds, lines, mass)
    li_mass = "6Li+" if "6Li+" in on_eds else mass
    if zr_line in eds_maps and np.isfinite(eds_maps[zr_line]).any():
        zr = normalize_minmax(np.asarray(eds_maps[zr_line], float))
        li = normalize_minmax(on_eds[li_mass])
        if (np.isfinite(zr) & np.isfinite(li)).sum() >= 2:
            result.covariance = covariance(li, zr)
            result.covariance_map = covariance_map(li, zr)
            middle = grid[0] // 2
            result.profile = line_profile(np.nan_to_num(result.covariance_map),
                                          (middle, 0), (middle, grid[1] - 1))  # fmt: skip
            result.li_mass, result.zr_line = li_mass, zr_line
    return result
