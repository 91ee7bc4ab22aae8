"""Slice-stack drift: measured against the drift put in, removed, assembled into a volume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from multiscope.analysis.stack import align_stack, apply_shifts, assemble_volume, measure_drift

N_SLICES, SHAPE = 20, (96, 128)


def _microstructure(seed):
    """Blobs a few pixels across that change slowly with depth, plus an "x" fiducial."""
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.random((N_SLICES * 4, *SHAPE)), (6, 3, 3))
    volume = (volume > np.median(volume)).astype(float)
    volume = ndimage.gaussian_filter(volume, (0, 0.8, 0.8))[::4]  # a face every 4 planes
    rows, cols = np.mgrid[0:20, 0:20]
    cross = ((np.abs(rows - cols) <= 1) | (np.abs(rows + cols - 19) <= 1)).astype(float)
    volume[:, 70:90, 100:120] = 2.0 * cross  # the milled "x", the same on every face
    return volume


def _drifted(volume, seed):
    rng = np.random.default_rng(seed)
    drift = np.cumsum(rng.normal(0, 0.7, (N_SLICES, 2)), axis=0)
    drift -= drift[0]
    noisy = [ndimage.shift(face, d, order=3, mode="nearest") for face, d in zip(volume, drift,
             strict=True)]  # fmt: skip
    noisy = np.asarray(noisy) + rng.normal(0, 0.05, volume.shape)
    return noisy, drift


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fiducial_drift_is_measured_to_a_fraction_of_a_pixel(seed):
    volume = _microstructure(seed)
    stack, drift = _drifted(volume, seed + 10)
    shifts = measure_drift(stack, fiducial=(slice(60, 96), slice(90, 128)))
    residual = np.abs(shifts + drift).max()  # the shift that undoes the drift
    assert residual < 0.5, residual  # the bound; typical ~0.05 px
    aligned = apply_shifts(stack, shifts)
    inner = (slice(None), slice(12, -12), slice(12, -12))
    error = np.nanmean(np.abs(aligned[inner] - volume[inner]))
    unaligned = np.mean(np.abs(stack[inner] - volume[inner]))
    assert error < unaligned / 3, (error, unaligned)


def test_slice_to_slice_drift_without_a_fiducial():
    """Without a fiducial, consecutive faces are registered: exact when the faces image the
    same structure, but structure inclined through depth reads as drift, which is why
    slice and view mills a fiducial (the fiducial keeps its bound on the same stack)."""
    volume = _microstructure(5)
    same = np.repeat(volume[:1], N_SLICES, axis=0)
    stack, drift = _drifted(same, 6)
    aligned, shifts = align_stack(stack)
    assert np.abs(shifts + drift).max() < 0.5
    assert np.isnan(aligned).any() and not np.isnan(aligned[0]).any()  # uncovered edges
    changing, drift = _drifted(volume, 6)
    chained = np.abs(measure_drift(changing) + drift).max()
    fiducial = np.abs(measure_drift(changing, fiducial=(slice(60, 96), slice(90, 128))) + drift)
    assert fiducial.max() < min(0.5, chained), (fiducial.max(), chained)


def test_volume_has_the_voxel_of_the_pixel_and_the_slice():
    volume, voxel = assemble_volume(np.zeros((39, 216, 352)), 0.0814, 0.060)
    assert volume.shape == (39, 216, 352) and volume.dtype == np.float32
    assert voxel == (0.060, 0.0814, 0.0814)  # seed 004: 81.4 x 81.4 x 60 nm
    with pytest.raises(ValueError, match="> 0"):
        assemble_volume(np.zeros((2, 4, 4)), 0.08, 0.0)
    with pytest.raises(ValueError, match="one"):
        apply_shifts(np.zeros((3, 4, 4)), np.zeros((2, 2)))
