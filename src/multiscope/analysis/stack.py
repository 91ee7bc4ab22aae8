"""Serial-section stacks: measure the drift between slices, align them, assemble a volume.

Slice and view images one freshly milled face after another. Between slices the
image drifts (stage and beam drift, charging), so the raw stack is sheared and
jittered. Two ways to measure the drift:

* against a **fiducial** (seed 003's milled "x" marker beside the region of
  interest): the same mark in every image, so each slice is registered to the first
  one within the fiducial's window and errors do not accumulate;
* **slice to slice** (no fiducial): consecutive faces, a slice thickness apart,
  image nearly the same structure; each is registered to the previous one and the
  shifts are summed (errors add up as a random walk: prefer a fiducial).

Shifts follow scikit-image's sign: ``shifts[k]`` is what moves slice ``k`` onto the
reference (:func:`skimage.registration.phase_cross_correlation`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

__all__ = ["align_stack", "apply_shifts", "assemble_volume", "measure_drift"]

UPSAMPLE = 50  # 1/50 px steps of the sub-pixel search


def _window(image: np.ndarray, region) -> np.ndarray:
    return image if region is None else image[region]


def measure_drift(slices, *, fiducial=None) -> np.ndarray:
    """Per-slice shifts ``(n, 2)`` (rows, columns; px) that bring each slice onto slice 0.

    Parameters
    ----------
    slices : array_like, shape (n, ny, nx)
        The images of the faces, in milling order.
    fiducial : tuple of slice, optional
        ``(rows, columns)`` window holding a fiducial mark seen in every image;
        without it consecutive slices are registered and the shifts summed.

    Returns
    -------
    ndarray, shape (n, 2)
        ``shifts[0]`` is ``(0, 0)``.
    """
    stack = np.asarray(slices, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise ValueError(f"measure_drift takes a stack (n, ny, nx), not shape {stack.shape}")
    shifts = np.zeros((stack.shape[0], 2))
    if fiducial is not None:
        reference = _window(stack[0], fiducial)
        for k in range(1, stack.shape[0]):
            moving = _window(stack[k], fiducial)
            shifts[k] = phase_cross_correlation(reference, moving, upsample_factor=UPSAMPLE)[0]
        return shifts
    for k in range(1, stack.shape[0]):
        step = phase_cross_correlation(stack[k - 1], stack[k], upsample_factor=UPSAMPLE)[0]
        shifts[k] = shifts[k - 1] + step
    return shifts


def apply_shifts(slices, shifts, *, order: int = 3) -> np.ndarray:
    """Shift each slice by its ``shifts[k]`` (spline of ``order``); outside the field: NaN."""
    stack = np.asarray(slices, dtype=np.float64)
    shifts = np.asarray(shifts, dtype=np.float64)
    if shifts.shape != (stack.shape[0], 2):
        raise ValueError(f"need one (dy, dx) per slice: {shifts.shape} for {stack.shape[0]}")
    out = np.empty_like(stack)
    ones = np.ones(stack.shape[1:])
    for k, (image, shift) in enumerate(zip(stack, shifts, strict=True)):
        out[k] = ndimage.shift(image, shift, order=order, mode="nearest")
        covered = ndimage.shift(ones, shift, order=0, mode="constant", cval=0.0)
        out[k][covered < 0.5] = np.nan
    return out


def align_stack(slices, *, fiducial=None, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Measure the drift (:func:`measure_drift`) and remove it; ``(aligned, shifts)``."""
    shifts = measure_drift(slices, fiducial=fiducial)
    return apply_shifts(slices, shifts, order=order), shifts


def assemble_volume(
    slices, pixel_um: float, slice_thickness_um: float
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Stack aligned slices into a volume ``(z, y, x)`` and its voxel size in micrometres.

    The voxel is ``(slice_thickness_um, pixel_um, pixel_um)``: z is the milling
    direction, one slice per face (seed 004: 81.4 x 81.4 x 60 nm). Images taken at
    the SEM pose look at the face along its normal, so no foreshortening applies.
    """
    volume = np.asarray(slices, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"assemble_volume takes slices (n, ny, nx), not shape {volume.shape}")
    if not (pixel_um > 0 and slice_thickness_um > 0):
        raise ValueError(
            f"pixel and slice thickness must be > 0 ({pixel_um}, {slice_thickness_um})"
        )
    return volume, (float(slice_thickness_um), float(pixel_um), float(pixel_um))
