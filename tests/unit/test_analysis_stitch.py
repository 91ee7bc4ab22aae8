"""Vertical stitching: tiles cut from one known volume at known sub-voxel steps."""

import numpy as np
import pytest
from scipy import ndimage

from multiscope.analysis.stitch import _shifted_box, register_pair, stitch_vertical

MARGIN, NZ, NY, NX = 6, 44, 48, 48


def particle_volume(rng, shape=(130, 64, 64)):
    """Smooth two-phase volume (particles in a matrix), like a reconstructed electrode."""
    field = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 1.5)
    solid = (field > np.percentile(field, 70)).astype(np.float32)
    return ndimage.gaussian_filter(solid, 0.8)


def cut_tiles(volume, offsets, rng, noise=0.05):
    """Tile i images volume[k + z_i, j + MARGIN + y_i, l + MARGIN + x_i] (cubic shift)."""
    tiles = []
    for off in offsets:
        moved = ndimage.shift(volume, -np.asarray(off), order=3, mode="nearest")
        tile = moved[:NZ, MARGIN : MARGIN + NY, MARGIN : MARGIN + NX]
        tiles.append((tile + rng.normal(0, noise, tile.shape)).astype(np.float32))
    return tiles


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_offsets_within_half_voxel(seed):
    rng = np.random.default_rng(seed)
    volume = particle_volume(rng)
    # Nominal step 36 slices (overlap 8), true steps off by up to +-2.5 slices,
    # lateral drift up to +-2 voxels per step, all sub-voxel.
    true = [np.zeros(3)]
    for _ in range(2):
        step = [36 + rng.uniform(-2.5, 2.5), rng.uniform(-2, 2), rng.uniform(-2, 2)]
        true.append(true[-1] + step)
    true = np.array(true)
    tiles = cut_tiles(volume, true, rng)

    merged, offsets = stitch_vertical(tiles, overlap_px=8)

    assert offsets.shape == (3, 3)
    # Tolerance 0.5 voxel (brief); measured errors are ~0.02 voxel.
    np.testing.assert_allclose(offsets, true, atol=0.5)
    # Merged volume matches the source where tiles were cut (seam blended).
    assert merged.shape == (int(np.floor(true[-1, 0])) + NZ, NY, NX)
    reference = volume[: merged.shape[0], MARGIN : MARGIN + NY, MARGIN : MARGIN + NX]
    inner = (slice(None), slice(3, -3), slice(3, -3))  # lateral shifts leave uncovered rims
    rmse = np.sqrt(np.mean((merged[inner] - reference[inner]) ** 2))
    assert rmse < 0.05 + 0.01  # noise 0.05, reduced by averaging in the overlaps


def test_register_pair_integer_step_and_no_lateral():
    rng = np.random.default_rng(3)
    volume = particle_volume(rng)
    lower, upper = volume[:40], volume[31:]  # step 31 with nominal overlap 8 (true 9)
    np.testing.assert_allclose(register_pair(lower, upper, 8), [31, 0, 0], atol=0.05)
    np.testing.assert_allclose(register_pair(lower, upper, 8, lateral=False), [31, 0, 0], atol=0.05)


def test_blend_is_seamless_for_identical_tiles():
    rng = np.random.default_rng(4)
    volume = particle_volume(rng, (60, 32, 32))
    merged, offsets = stitch_vertical([volume[:35], volume[25:]], overlap_px=10)
    np.testing.assert_allclose(offsets[1], [25, 0, 0], atol=0.02)
    np.testing.assert_allclose(merged, volume, atol=0.02)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        stitch_vertical([], 5)
    with pytest.raises(ValueError):
        stitch_vertical([np.zeros((4, 4))], 5)


def test_shifted_box_is_the_shifted_volume_of_ones():
    # _blend's coverage, computed per axis, equals shifting the padded box of ones.
    rng = np.random.default_rng(1)
    for trial in range(200):
        shape = tuple(int(n) for n in rng.integers(3, 20, 3))
        rows, cols = (int(rng.integers(1, n + 1)) for n in shape[1:])
        measured = (shape[0], rows, cols)
        shift = (rng.uniform(0, 1), rng.uniform(-5, 5), rng.uniform(-5, 5))
        if trial % 5 == 0:  # whole voxels across, sub-voxel along
            shift = (0.0, float(rng.integers(-3, 3)), rng.uniform(-2, 2))
        if trial % 7 == 0:
            shift = (0.0, 0.0, 0.0)
        box = np.zeros(shape, np.float32)
        box[:, : measured[1], : measured[2]] = 1.0
        expected = box.copy()
        if np.any(np.abs(shift) > 1e-6):
            ndimage.shift(box, shift, output=expected, order=1, mode="constant")
        np.testing.assert_array_equal(_shifted_box(measured, shape, shift), expected)
