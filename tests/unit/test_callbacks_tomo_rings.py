"""The reconstruction callback's ring removal, on a synthetic run with detector defects.

A sphere phantom (synthetic_tomo.py) whose projections see 10 detector columns
with gains of +-3-10 % that the flats did not see: rings in every slice. With
``TomoReconstructor(ring_removal=True)`` they go, the slice is closer to the
truth, and the derived run says which function removed them.
"""

import numpy as np
import pytest
from synthetic_tomo import RunSpec, random_spheres, tomo_run, truth_slice

from multiscope.callbacks.tomo import TomoReconstructor

NY, NX = 24, 128
CENTER = (NX - 1) / 2 + 2.2


def _ring_and_rmse(image, truth):
    """Rms over radii of the azimuthal mean error (rings), and the rmse, in the field."""
    n = image.shape[-1]
    yy, xx = np.mgrid[:n, :n] - n // 2
    radius = np.hypot(yy, xx)
    fov = radius < 0.42 * n
    error = (image - truth)[fov]
    ring = np.round(radius[fov]).astype(int)
    mean_error = np.bincount(ring, error) / np.maximum(np.bincount(ring), 1)
    return float(np.sqrt(np.mean(mean_error[1:] ** 2))), float(np.sqrt(np.mean(error**2)))


@pytest.fixture(scope="module")
def defective_run(tmp_path_factory):
    rng = np.random.default_rng(5)
    spheres = random_spheres(rng, 10, z_range=(4, NY - 4), lateral=40)
    gain = np.ones(NX)
    bad = rng.choice(np.arange(20, NX - 20), size=10, replace=False)
    gain[bad] = 1 + rng.choice([-1, 1], bad.size) * rng.uniform(0.03, 0.10, bad.size)
    runs = {}
    for name, column_gain in (("clean", None), ("defective", gain)):
        spec = RunSpec(
            spheres, ny=NY, nx=NX, center=CENTER, fly=False, seed=3, photons=2e4,
            column_gain=column_gain,
        )  # fmt: skip
        runs[name] = list(tomo_run(spec, tmp_path_factory.mktemp(name)))
    return spheres, runs


def _reconstruct(docs, output_dir, ring_removal):
    published = []
    recon = TomoReconstructor(
        output_dir, publish=lambda name, doc: published.append((name, doc)), center=CENTER,
        ring_removal=ring_removal,
    )  # fmt: skip
    for name, doc in docs:
        recon(name, doc)
    return recon.volume, published[0][1]["parameters"]


def test_ring_removal_option_removes_the_rings_of_defective_columns(tmp_path, defective_run):
    spheres, runs = defective_run
    rows = range(6, NY - 6)
    scores = {}
    for run, ring_removal in (("clean", False), ("defective", False), ("defective", True)):
        volume, parameters = _reconstruct(
            runs[run], tmp_path / f"{run}{ring_removal}", ring_removal
        )
        scores[run, ring_removal] = np.mean(
            [_ring_and_rmse(volume[r], truth_slice(spheres, r, NX)) for r in rows], axis=0
        )
        expected = "multiscope.analysis.stripe.remove_stripe_offsets" if ring_removal else None
        assert parameters["ring_removal"] == expected
    clean = scores["clean", False]
    (rings, rmse), (rings_removed, rmse_removed) = (
        scores["defective", False],
        scores["defective", True],
    )
    print(f"rings {rings:.2e} -> {rings_removed:.2e} (no defects {clean[0]:.2e}), "
          f"rmse {rmse:.2e} -> {rmse_removed:.2e} (no defects {clean[1]:.2e})")  # fmt: skip
    assert rings > 3 * clean[0]  # the defects make rings (measured 3.7x) ...
    assert rings_removed < 1.5 * clean[0]  # ... and they are gone
    assert rmse_removed < rmse and rmse_removed < 1.1 * clean[1]
