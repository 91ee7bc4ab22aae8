"""Drift between the tomograms of a 3D XANES run: estimate it on projections, correct it.

Between two energies the sample sits elsewhere in the image (monochromator and zone
plate moves, thermal load): a shift ``(rows, cols)`` of the image plane that is the
same for every projection of that energy.  On a tomogram it means two different
things:

* ``cols``: the rotation axis sits ``cols`` px further right in every projection, so
  the tomogram is reconstructed with the rotation centre moved by the same amount
  (:func:`~multiscope.analysis.tomo.reconstruct` centres each slice on the axis, so
  the volume lands in the reference frame with no re-sampling at all);
* ``rows``: the slices move along z; the projections are shifted back by a
  sub-pixel row shift (:func:`shift_rows`) before reconstruction.

The shift of one energy against the reference energy comes from angle-matched
projections: the cross-power spectra of the gradient-feature images
(:func:`~multiscope.analysis.xanes.feature_image`: edges survive the change of
contrast across the absorption edge) of every pair (reference angle, nearest angle
of the other energy) are summed, and the one peak of their sum is located to sub-pixel
precision (the upsampled DFT of :func:`~multiscope.analysis.xanes.register_translation`).
Summing before locating the peak uses every projection's features at once: a
pair alone is noisy, the sum is not.  Only a subset of the reference projections
is kept (``max_angles``, evenly spread over the angles), so memory stays at
``4 * max_angles * rows * cols`` bytes.

Step tomograms repeat their angles exactly, and so do fly tomograms started by the
rotation's position trigger (decision 0008: within 0.0005 deg on the simulated
TXM).  Fly tomograms started by a client-side gate do not: the camera starts a few
tens of ms after the rotation passes the gate, so every energy's angles are offset
by a fraction of their spacing, and a projection at a slightly different angle is
shifted by its features' motion: the column shift is biased by about
``d * (2 / pi) * x`` px for an offset ``d`` rad and features ``x`` px from the
axis (measured on the simulated TXM: 0.3-1.9 px at some energy with gaps of
0.6-3 deg).  Rows are not affected.  Pairing with the neighbours on both sides
and interpolating to a zero gap, or registering the mean projections, were tried
and are worse (decorrelation over a whole angle step).

Examples
--------
>>> from scipy import ndimage
>>> rng = np.random.default_rng(0)
>>> base = ndimage.gaussian_filter(rng.random((12, 40, 48)), (0, 2, 2))
>>> angles = np.linspace(0, np.pi, 12, endpoint=False)
>>> ref = projection_reference(base, angles)
>>> moved = np.stack([ndimage.shift(p, (1.3, -0.6), mode="nearest") for p in base])
>>> print(np.round(register_projections(ref, moved, angles), 1))
[-1.3  0.6]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .xanes import cross_power_peak, feature_image, out_of_view, shift_stack

__all__ = [
    "ProjectionReference",
    "matched_angles",
    "out_of_view_rows",
    "projection_reference",
    "register_projections",
    "shift_rows",
]


@dataclass(frozen=True)
class ProjectionReference:
    """Feature images of some of the reference energy's projections.

    Attributes
    ----------
    features : numpy.ndarray
        ``(k, rows, cols)`` float32 feature images (:func:`feature_image`).
    angles_rad : numpy.ndarray
        ``(k,)`` their rotation angles, rad.
    sigma : float
        Smoothing of the gradient features, px.
    """

    features: np.ndarray
    angles_rad: np.ndarray
    sigma: float

    @property
    def shape(self) -> tuple[int, int]:
        """Projection shape ``(rows, cols)``."""
        return self.features.shape[1:]


def projection_reference(
    projections: np.ndarray, angles_rad, max_angles: int = 32, sigma: float = 1.0
) -> ProjectionReference:
    """Keep the features of up to ``max_angles`` projections of the reference energy.

    Parameters
    ----------
    projections : numpy.ndarray
        ``(angles, rows, cols)`` line integrals (``-log`` of the normalised frames).
    angles_rad : array_like
        Their rotation angles, rad.
    max_angles : int
        Projections kept, evenly spread over the angles (all if fewer).
    sigma : float
        Gaussian smoothing of the gradient features, px.
    """
    projections = np.asarray(projections)
    angles = np.asarray(angles_rad, dtype=np.float64)
    if projections.ndim != 3 or projections.shape[0] != angles.size:
        raise ValueError("projections must be (angles, rows, cols) with one angle each")
    if max_angles < 1:
        raise ValueError("max_angles must be >= 1")
    n = angles.size
    picks = np.unique(np.round(np.linspace(0, n - 1, min(n, int(max_angles)))).astype(int))
    features = np.stack([feature_image(projections[i], sigma=sigma) for i in picks])
    return ProjectionReference(features.astype(np.float32), angles[picks], float(sigma))


def matched_angles(reference_rad, angles_rad) -> tuple[np.ndarray, np.ndarray]:
    """For each reference angle, the index of the nearest angle (modulo 2 pi) and the gap.

    Returns
    -------
    index : numpy.ndarray
        ``(k,)`` indices into ``angles_rad``.
    gap_rad : numpy.ndarray
        ``(k,)`` absolute angle differences, rad.
    """
    ref = np.asarray(reference_rad, dtype=np.float64)[:, None]
    ang = np.asarray(angles_rad, dtype=np.float64)[None, :]
    diff = np.abs(np.angle(np.exp(1j * (ang - ref))))
    index = np.argmin(diff, axis=1)
    return index, diff[np.arange(index.size), index]


def register_projections(
    reference: ProjectionReference, projections: np.ndarray, angles_rad, upsample: int = 20
) -> np.ndarray:
    """Shift ``(rows, cols)`` registering one energy's projections onto the reference's.

    Parameters
    ----------
    reference : ProjectionReference
        From :func:`projection_reference` on the reference energy.
    projections : numpy.ndarray
        ``(angles, rows, cols)`` line integrals of another energy.
    angles_rad : array_like
        Their angles, rad; each reference angle is paired with the nearest one.
    upsample : int
        Sub-pixel search grid (1/upsample px, then a parabolic refinement).

    Returns
    -------
    numpy.ndarray
        ``(2,)`` shift (px, rows and columns) to apply to ``projections``
        (``scipy.ndimage.shift`` convention): minus the image's drift relative to
        the reference.
    """
    projections = np.asarray(projections)
    if projections.shape[1:] != reference.shape:
        raise ValueError(
            f"projections {projections.shape[1:]} and reference {reference.shape} differ"
        )
    index, _ = matched_angles(reference.angles_rad, angles_rad)
    cross = np.zeros(reference.shape, np.complex128)
    for ref, i in zip(reference.features, index, strict=True):
        moving = feature_image(projections[i], sigma=reference.sigma)
        cross += np.fft.fft2(ref) * np.fft.fft2(moving).conj()
    return cross_power_peak(cross, upsample)


def shift_rows(projections: np.ndarray, rows: float, order: int = 3) -> np.ndarray:
    """Shift every projection by ``rows`` px along the rows (sub-pixel, cubic spline).

    Border rows the shift uncovers repeat the nearest row (a reconstruction cannot
    take NaN); :func:`out_of_view_rows` names them.  A zero shift returns the input.

    Parameters
    ----------
    projections : numpy.ndarray
        ``(angles, rows, cols)``.
    rows : float
        Shift, px (positive: content towards larger row indices).
    order : int
        Spline order.
    """
    projections = np.asarray(projections)
    if rows == 0:
        return projections
    # One image at a time (shift_stack): a 3D shift would interpolate across angles.
    shifts = np.broadcast_to((float(rows), 0.0), (len(projections), 2))
    shifted = shift_stack(projections, shifts, order=order, fill_value=None)
    return shifted.astype(np.float32, copy=False)


def out_of_view_rows(row_shifts, n_rows: int, tolerance_px: float = 0.5) -> np.ndarray:
    """Rows (z-slices) that some energy's row shift could not fill (``(n_rows,)`` bool).

    A border row counts as filled while its source lies less than ``tolerance_px``
    beyond the detector (:func:`shift_rows` then extends the last row by less than
    that): a registration's noise of a few hundredths of a pixel must not cost
    whole slices.  With ``tolerance_px=0`` this is
    :func:`~multiscope.analysis.xanes.out_of_view` (any fraction counts).

    Examples
    --------
    >>> out_of_view_rows([0.0, 0.3, -1.6], 6).astype(int)
    array([0, 0, 0, 0, 1, 1])
    """
    shifts = np.asarray(row_shifts, dtype=np.float64).reshape(-1)
    shifts = shifts[np.isfinite(shifts)]
    beyond = np.sign(shifts) * np.maximum(np.abs(shifts) - float(tolerance_px), 0.0)
    return out_of_view(beyond[:, None], (int(n_rows),))
