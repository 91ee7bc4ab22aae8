"""Particle segmentation against a phantom of spheres (some touching, some cut by the border)."""

import numpy as np
import pytest
from scipy import ndimage

from multiscope.analysis.segment import label_particles, size_histogram

SHAPE = (80, 80, 80)


def sphere_phantom(seed, noise=0.15):
    """Spheres of radii 4, 6 and 8 voxels: free ones, touching pairs and border-cut ones.

    Returns the noisy grey volume and the list of (centre, radius, cut_by_border).
    """
    rng = np.random.default_rng(seed)
    spheres = []

    def fits(c, r):
        return all(np.linalg.norm(c - c2) >= r + r2 + 2 for c2, r2, _ in spheres)

    # Touching pairs: centres r1 + r2 - 1 apart (one voxel of overlap, as sintered).
    while sum(not cut for *_, cut in spheres) < 6:
        r1, r2 = rng.choice([4, 6, 8], 2)
        c1 = rng.uniform(r1 + 3, np.array(SHAPE) - r1 - 3)
        direction = rng.normal(size=3)
        c2 = c1 + direction / np.linalg.norm(direction) * (r1 + r2 - 1)
        inside = np.all(c2 >= r2 + 3) and np.all(c2 <= np.array(SHAPE) - r2 - 3)
        if inside and fits(c1, r1) and fits(c2, r2 + r1):
            spheres += [(c1, r1, False), (c2, r2, False)]
    # Free spheres.
    for _ in range(2000):
        if sum(not cut for *_, cut in spheres) >= 20:
            break
        r = rng.choice([4, 6, 8])
        c = rng.uniform(r + 3, np.array(SHAPE) - r - 3)
        if fits(c, r):
            spheres.append((c, r, False))
    # Spheres cut by the border (centre 2 voxels inside a face).
    for _ in range(2000):
        if sum(cut for *_, cut in spheres) >= 4:
            break
        r = rng.choice([6, 8])
        c = rng.uniform(r + 3, np.array(SHAPE) - r - 3)
        axis = rng.integers(3)
        c[axis] = rng.choice([r - 2.0, SHAPE[axis] - 1 - (r - 2.0)])
        if fits(c, r):
            spheres.append((c, r, True))

    zz, yy, xx = np.indices(SHAPE)
    solid = np.zeros(SHAPE, bool)
    for c, r, _ in spheres:
        solid |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r**2
    grey = ndimage.gaussian_filter(solid.astype(np.float32), 0.7)  # detector blur
    grey += rng.normal(0, noise, SHAPE).astype(np.float32)
    return grey, spheres


@pytest.mark.parametrize("seed", [0, 1])
def test_count_and_mean_diameter_within_5_percent(seed):
    grey, spheres = sphere_phantom(seed)
    labels, table = label_particles(grey, min_size=5)

    inside = [r for _, r, cut in spheres if not cut]
    true_count = len(inside)
    true_mean_diameter = 2 * np.mean(inside)
    count = len(table["label"])
    mean_diameter = table["equivalent_diameter_voxels"].mean()
    # Tolerance 5 % (brief) on both; typically exact count and ~1 % diameter error.
    assert abs(count - true_count) <= 0.05 * true_count, (count, true_count)
    assert mean_diameter == pytest.approx(true_mean_diameter, rel=0.05)
    assert labels.max() == count and labels.dtype == np.int32
    np.testing.assert_array_equal(table["label"], np.arange(1, count + 1))


def test_without_separation_touching_pairs_merge():
    grey, spheres = sphere_phantom(0)
    _, table = label_particles(grey, separate=False)
    inside = sum(not cut for *_, cut in spheres)
    assert len(table["label"]) == inside - 3  # three touching pairs -> one label each


def test_border_particles_kept_on_request():
    grey, spheres = sphere_phantom(0)
    _, table = label_particles(grey, remove_border=False)
    assert len(table["label"]) == len(spheres)


def test_small_features_removed_and_voxel_size():
    vol = np.zeros((30, 30, 30), bool)
    vol[5:8, 5:8, 5:8] = True  # 27 voxels
    vol[20, 20, 20:24] = True  # 4 voxels: noise, under min_size=5
    labels, table = label_particles(vol, min_size=5, voxel_size=(2.0, 0.5, 0.5))
    assert table["volume_voxels"].tolist() == [27]
    assert table["volume"][0] == pytest.approx(27 * 0.5)
    assert table["z"][0] == pytest.approx(6 * 2.0)
    assert table["equivalent_diameter"][0] == pytest.approx(np.cbrt(6 * 13.5 / np.pi))
    assert np.count_nonzero(labels) == 27


def test_size_histogram():
    counts, centers, edges = size_histogram([2.0, 2.5, 7.0], bins=[0, 5, 10])
    assert counts.tolist() == [2, 1]
    assert centers.tolist() == [2.5, 7.5]
    assert len(edges) == 3
