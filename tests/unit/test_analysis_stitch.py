"""Vertical stitching: tiles cut from one known volume at known sub-voxel steps."""

import numpy as np
import pytest
from scipy import ndimage

from multiscope.analysis.stitch import register_pair, stitch_vertical

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
