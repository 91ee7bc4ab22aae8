"""Tomography analysis scored against the simulated TXM's ground truth (issue 3, must-shows).

Frames are rendered exactly as the TXM IOC renders them, without EPICS
(:meth:`sim_devices.physics.txm_scene.TXMScene.render`: exact line integrals of the seeded
electrode tab, flat field, Poisson photon noise, dark current and read noise),
at the demo's optics: binning 4 (0.26 um pixels, 256 columns, a 66.6 um field of
view on a tab ~80 x 100 um: every projection is truncated), 361 angles over
180 deg, 50 ms at the IOC's 20 000 photons/px/s (~1000 photons per pixel).
The ground truth comes from :mod:`sim_devices.tomo_truth`.

Figures measured when this test was written are in the comments (and printed
with ``pytest -s``); the tolerances are the issue's and are not tuned to them.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.morphology import ball
from skimage.segmentation import watershed
from skimage.transform import iradon

from multiscope.analysis import segment
from multiscope.analysis.segment import label_particles
from multiscope.analysis.stitch import stitch_vertical
from multiscope.analysis.tomo import find_center, minus_log, normalize, reconstruct
from sim_devices.physics.txm_scene import TXMState
from sim_devices.tomo_truth import build_truth, phantom, read_truth, scene, write_truth
from sim_devices.tomo_truth import main as tomo_truth_main

SEED = 0
BINNING = 4
COLS = 256
N_ANGLES = 361
EXPOSURE_S = 0.05
ENERGY_KEV = 8.0
# Single tile: the axis on a whole column (127.5 - 4.5 = 123), so that iradon can get
# exactly the same sinograms (integer padding, no interpolation).
TILE_ROWS = 128
TILE_OFFSET_PX = -4.5
TILE_Z_UM = 0.0
# Mosaic: the IOC's default (fractional) axis offset; one whole and one fractional step.
MOSAIC_ROWS = 128
MOSAIC_OFFSET_PX = 3.7
MOSAIC_STEPS_VOX = (100.0, 105.4)
MOSAIC_Z0_UM = -40.0

CENTER_TOLERANCE_PX = 0.5  # issue: find_center within 0.5 px
RMSE_RATIO_LIMIT = 1.005  # "no worse than iradon", up to gridrec's NUFFT accuracy (eps 3e-3)
STEP_TOLERANCE_VOX = 0.5  # issue: stitch offsets within 0.5 voxel
PARTICLE_TOLERANCE = 0.05  # issue: count and mean diameter within 5 %
# Segmentation as the mosaic stitcher runs it (callbacks/mosaic.py defaults).
MIN_SIZE_VOX = 20
MIN_DISTANCE_VOX = 3


def render_scan(scene_, shape, sample_z_um, seed, n_flats=10, n_darks=10):
    """A step tomogram as the IOC renders it: angles, line integrals (normalised, -log)."""
    rng = np.random.default_rng(seed)
    theta_deg = 180.0 * np.arange(N_ANGLES) / N_ANGLES  # as tomo_scan: no end point

    def frame(**state):
        return scene_.render(TXMState(binning=BINNING, **state), EXPOSURE_S, shape, rng)[0]

    frames = np.stack([frame(theta_deg=t, sample_um=(0.0, 0.0, sample_z_um)) for t in theta_deg])
    # Flats with the sample out (sample:x = 300 um), darks with the shutter closed.
    flats = np.stack([frame(sample_um=(300.0, 0.0, sample_z_um)) for _ in range(n_flats)])
    darks = np.stack([frame(shutter_open=False) for _ in range(n_darks)])
    return np.deg2rad(theta_deg), minus_log(normalize(frames, flats, darks))


@pytest.fixture(scope="module")
def tab():
    return phantom(SEED)


@pytest.fixture(scope="module")
def tile(tab):
    """One tile: its line integrals, angles and ground truth."""
    renderer = scene(tab, BINNING, TILE_OFFSET_PX, SEED)
    theta, lines = render_scan(renderer, (TILE_ROWS, COLS), TILE_Z_UM, seed=1)
    truth = build_truth(
        SEED, BINNING, (TILE_ROWS, COLS), [TILE_Z_UM], axis_offset_px=TILE_OFFSET_PX,
        energy_keV=ENERGY_KEV, tab=tab,
    )  # fmt: skip
    return theta, lines, truth


@pytest.fixture(scope="module")
def mosaic(tab):
    """Three tiles of a vertical mosaic, each reconstructed at its found centre."""
    pixel = scene(tab, BINNING).geometry(TXMState(binning=BINNING), (1, 1)).pixel_size_um
    z = MOSAIC_Z0_UM + pixel * np.concatenate([[0.0], np.cumsum(MOSAIC_STEPS_VOX)])
    renderer = scene(tab, BINNING, MOSAIC_OFFSET_PX, SEED)
    tiles = []
    for k, zk in enumerate(z):
        theta, lines = render_scan(renderer, (MOSAIC_ROWS, COLS), zk, seed=10 + k)
        center = find_center(lines, theta)
        tiles.append((center, reconstruct(lines, theta, center=center)))
    truth = build_truth(
        SEED, BINNING, (MOSAIC_ROWS, COLS), z, axis_offset_px=MOSAIC_OFFSET_PX,
        energy_keV=ENERGY_KEV, volume=False, tab=tab,
    )  # fmt: skip
    return tiles, truth


def scored_cylinder(truth):
    """(cols, cols) mask of the region every projection sees, minus the margin (8 voxels:
    the truncation rim, where every reconstruction of a truncated scan is biased)."""
    half = int(truth.attrs["slice_center_px"])
    radius = float(truth.attrs["seen_radius_px"]) - float(truth.attrs["margin_px"])
    yy, xx = np.ogrid[-half : COLS - half, -half : COLS - half]
    return yy**2 + xx**2 <= radius**2


# ------------------------------------------------------------------------ convention


def test_truth_frame_is_the_reconstruction_frame(tile):
    """Of the 16 ways to orient the truth (z flip, transpose, y and x flips), the
    documented one correlates best with the reconstruction, by far."""
    theta, lines, truth = tile
    rows = slice(40, 72)
    rec = reconstruct(lines[:, rows], theta, center=truth.axis_column_px)
    mu = truth.mu[0][rows]
    inside = scored_cylinder(truth)
    scores = {}
    for flip_z in (False, True):
        for transpose in (False, True):
            for flip_y in (False, True):
                for flip_x in (False, True):
                    m = mu[::-1] if flip_z else mu
                    m = m.transpose(0, 2, 1) if transpose else m
                    m = m[:, ::-1] if flip_y else m
                    m = m[:, :, ::-1] if flip_x else m
                    key = (flip_z, transpose, flip_y, flip_x)
                    scores[key] = np.corrcoef(rec[:, inside].ravel(), m[:, inside].ravel())[0, 1]
    best = max(scores, key=scores.get)
    runner_up = sorted(scores.values())[-2]
    print(f"\norientation: documented {scores[best]:.3f}, next best {runner_up:.3f}")
    # Measured: 0.87 for the documented frame, < 0.1 for every other orientation.
    assert best == (False, False, False, False), scores
    assert scores[best] > 0.7 and runner_up < 0.5 * scores[best], scores


def test_truth_file_round_trip(tmp_path, tile):
    _, _, truth = tile
    path = write_truth(tmp_path / "truth.h5", truth)
    back = read_truth(path)
    assert back.attrs["axis_column_px"] == pytest.approx(truth.axis_column_px)
    np.testing.assert_array_equal(back.mu, truth.mu)
    for key, value in truth.particles.items():
        np.testing.assert_array_equal(back.particles[key], value)
    # Geometry: axis column as the IOC puts it, 0.26 um voxels.
    assert truth.axis_column_px == pytest.approx((COLS - 1) / 2 + TILE_OFFSET_PX)
    assert truth.pixel_size_um == pytest.approx(0.26)


def test_cli_writes_the_documented_layout(tmp_path, tab):
    """``python -m sim_devices.tomo_truth`` (as the demo runs it) and ``build_truth`` agree."""
    out = tmp_path / "cli.h5"
    z = [30.0, -12.5]  # any order: tiles are stored by ascending height
    subprocess.run(
        [
            sys.executable, "-m", "sim_devices.tomo_truth", "--seed", str(SEED),
            "--binning", str(BINNING), "--shape", "64", str(COLS),
            "--axis-offset-px", "3.7", "--energy-keV", "8", "--sample-z-um", *map(str, z),
            "--no-volume", "--out", str(out),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    expected = build_truth(SEED, BINNING, (64, COLS), z, axis_offset_px=3.7, volume=False, tab=tab)
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "multiscope.tomo_truth"
        assert f.attrs["axis_column_px"] == pytest.approx((COLS - 1) / 2 + 3.7)
        assert f.attrs["margin_px"] == 8.0 and f.attrs["row_margin_px"] == 2.0
        np.testing.assert_array_equal(f["tiles/sample_z_um"][()], sorted(z))
        np.testing.assert_allclose(f["tiles/steps_vox"][()], [42.5 / 0.26])
        assert "mu" not in f["tiles"]
        for key in ("diameter_vox", "row_vox", "slice_col_vox", "inside", "inside_tile"):
            np.testing.assert_array_equal(f["particles"][key][()], expected.particles[key])
        assert f["particles/inside_tile"].shape == (len(f["particles/index"]), 2)


def test_cli_builds_the_tab_the_ioc_is_given(tmp_path):
    """``--tab-width-um`` (the chain's tab, as the laser mill cut it) reaches the phantom."""
    out = tmp_path / "wide.h5"
    width, particles = 96.0, 600
    tomo_truth_main(
        ["--seed", str(SEED), "--particles", str(particles), "--tab-width-um", str(width),
         "--binning", str(BINNING), "--shape", "64", str(COLS), "--sample-z-um", "0",
         "--no-volume", "--out", str(out)]
    )  # fmt: skip
    truth = read_truth(out, volume=False)
    assert truth.attrs["tab_width_um"] == width
    wide, default = phantom(SEED, particles, width), phantom(SEED, particles)
    assert (wide.width_um, default.width_um) == (width, 80.0)
    index = truth.particles["index"]
    assert index.size > 10
    xyz = np.stack([truth.particles[k] for k in ("x_um", "y_um", "z_um")], axis=1)
    # The particles of the wide tab (as TXMIOC(tab_width_um=96) builds it), not the default's.
    np.testing.assert_array_equal(xyz, wide.centers_um[index])
    assert not np.array_equal(wide.centers_um, default.centers_um)


# ------------------------------------------------------------------------ (a) centre


def test_find_center_within_half_a_pixel(tile, mosaic):
    """Every simulated tile: whole- and fractional-pixel axes, middle and off-middle heights."""
    theta, lines, truth = tile
    errors = [find_center(lines, theta) - truth.axis_column_px]
    tiles, mosaic_truth = mosaic
    errors += [center - mosaic_truth.axis_column_px for center, _ in tiles]
    print(f"\ncentre errors (px): {np.round(errors, 3).tolist()}")
    # Measured: |error| <= 0.03 px.
    assert np.all(np.abs(errors) < CENTER_TOLERANCE_PX), errors


# ------------------------------------------------------------------------ (b) RMSE


def iradon_slices(lines, theta, center, rows):
    """scikit-image's iradon on the same sinograms, padded so the axis is its centre."""
    c = int(round(center))
    assert abs(center - c) < 1e-6, "the reference needs the axis on a whole column"
    left = max(0, 2 * (COLS // 2 - c))
    right = max(0, 2 * (c - COLS // 2))
    deg = np.rad2deg(theta)
    out = []
    for r in rows:
        sino = np.pad(lines[:, r], ((0, 0), (left, right)))  # axis at len // 2
        assert (c + left) == sino.shape[1] // 2
        out.append(iradon(sino.T, deg, output_size=COLS, filter_name="shepp-logan", circle=False))
    return np.stack(out).astype(np.float32)


def test_reconstruction_rmse_no_worse_than_iradon(tile):
    theta, lines, truth = tile
    rows = np.linspace(8, TILE_ROWS - 9, 8).astype(int)
    center = truth.axis_column_px
    rec = reconstruct(lines, theta, center=center)[rows]  # the pipeline's defaults
    ref = iradon_slices(lines, theta, center, rows)
    mu = truth.mu[0][rows]
    inside = scored_cylinder(truth)

    def rmse(a):
        return float(np.sqrt(np.mean((a[:, inside] - mu[:, inside]) ** 2)))

    err_rec, err_ref = rmse(rec), rmse(ref)
    nmc = float(mu.max())
    print(
        f"\nRMSE vs phantom (mu/px): reconstruct {err_rec:.3e}, iradon {err_ref:.3e} "
        f"(ratio {err_rec / err_ref:.4f}; NMC811 mu {nmc:.3e})"
    )
    # Measured: ratio 0.999; RMSE ~31 % of NMC811's mu (photon noise at 1000 photons,
    # and the truncation offset of local tomography, in both).
    assert err_rec <= RMSE_RATIO_LIMIT * err_ref, (err_rec, err_ref)


# ------------------------------------------------------------------------ (c) stitching


def test_stitch_offsets_within_half_a_voxel(mosaic):
    tiles, truth = mosaic
    _, offsets = stitch_vertical(
        [volume for _, volume in tiles], overlap_px=int(MOSAIC_ROWS - max(MOSAIC_STEPS_VOX))
    )
    true_z = truth.offsets_vox
    z_errors = offsets[:, 0] - true_z
    print(
        f"\nstitch offsets (vox) {np.round(offsets, 3).tolist()}, true z {np.round(true_z, 3)}"
        f", z errors {np.round(z_errors, 3).tolist()}"
    )
    np.testing.assert_allclose(truth.steps_vox, MOSAIC_STEPS_VOX, atol=1e-9)
    # Measured: z errors <= 0.003 voxel; lateral shifts (truly 0) <= 0.03 voxel.
    assert np.all(np.abs(z_errors) < STEP_TOLERANCE_VOX), offsets
    assert np.all(np.abs(offsets[:, 1:]) < STEP_TOLERANCE_VOX), offsets


# ------------------------------------------------------------------------ (d) particles


def scored_particles(table, truth, rows):
    """Measured particles entirely inside the scored region, judged as the truth is:
    ``rho + r <= R - margin`` and ``row_margin <= row -/+ r <= rows - 1 - row_margin``,
    with the centroid and the equivalent radius in place of the sphere's centre and
    radius (``sim_devices.tomo_truth``)."""
    half = float(truth.attrs["slice_center_px"])
    radius = float(truth.attrs["seen_radius_px"])
    margin = float(truth.attrs["margin_px"])
    row_margin = float(truth.attrs["row_margin_px"])
    r = table["equivalent_diameter_voxels"] / 2
    rho = np.hypot(table["centroid_y"] - half, table["centroid_x"] - half)
    z = table["centroid_z"]
    keep = (rho + r <= radius - margin) & (z - r >= row_margin) & (z + r <= rows - 1 - row_margin)
    return {key: value[keep] for key, value in table.items()}


def test_particle_count_and_mean_diameter_within_5_percent(tile):
    """Particles entirely inside the scored region, measured and true alike: the
    cylinder every projection sees, 8 voxels clear of its edge (the truncation rim of
    local tomography, see ``sim_devices.tomo_truth``), and 2 voxels clear of the
    first and last rows.

    ``label_particles`` runs on the cylinder every projection sees (``mask``: particles
    cut by its edge or by the first or last row are dropped as unmeasurable); the
    survivors and the true spheres are then held to the same criterion
    (:func:`scored_particles`), so neither side gains the particles near the edge.

    No size cut: the smallest NMC811 particle (1 um) spans 3.8 voxels of 0.26 um,
    above both the ~2-voxel resolution of FBP and the equivalent diameter of the
    stitcher's ``min_size`` (20 voxels: 3.4 voxels), so every scored particle is
    resolvable at this pixel size.
    """
    theta, lines, truth = tile
    rec = reconstruct(lines, theta, center=find_center(lines, theta))
    half = int(truth.attrs["slice_center_px"])
    yy, xx = np.ogrid[-half : COLS - half, -half : COLS - half]
    seen = yy**2 + xx**2 <= float(truth.attrs["seen_radius_px"]) ** 2
    _, table = label_particles(
        rec,
        min_size=MIN_SIZE_VOX,
        min_distance=MIN_DISTANCE_VOX,
        mask=np.broadcast_to(seen, rec.shape),
    )
    table = scored_particles(table, truth, TILE_ROWS)
    inside = truth.particles["inside_tile"][:, 0]
    true_d = truth.particles["diameter_vox"][inside]
    cut = np.cbrt(6 * MIN_SIZE_VOX / np.pi)
    assert true_d.min() > cut  # the size cut above removes no true particle
    count, true_count = len(table["label"]), int(inside.sum())
    mean_d, true_mean_d = table["equivalent_diameter_voxels"].mean(), true_d.mean()
    print(
        f"\nparticles: {count} vs {true_count} true ({100 * (count / true_count - 1):+.1f} %), "
        f"mean diameter {mean_d:.2f} vs {true_mean_d:.2f} voxels "
        f"({100 * (mean_d / true_mean_d - 1):+.1f} %)"
    )
    # Measured: count -0.7 %, mean diameter -1.1 % (a few touching particles not
    # split, a fraction of a voxel of edge blur).
    assert abs(count - true_count) <= PARTICLE_TOLERANCE * true_count
    assert mean_d == pytest.approx(true_mean_d, rel=PARTICLE_TOLERANCE)


def test_segmentation_kernels_match_their_references(tile):
    """The numba distance transform, seed search and watershed of ``label_particles``
    against scipy's and scikit-image's, on a thresholded reconstruction of the tab."""
    theta, lines, truth = tile
    rec = reconstruct(lines[:, 32:96], theta, center=truth.axis_column_px)
    grey = ndimage.gaussian_filter(rec, 0.7)
    solid = grey > segment.half_level_threshold(grey)
    for spacing in ((1.0, 1.0, 1.0), (2.0, 0.5, 0.7)):
        np.testing.assert_allclose(
            segment._distance_transform(solid, np.array(spacing)),
            ndimage.distance_transform_edt(solid, sampling=spacing),
            atol=1e-5,
        )
    height = ndimage.gaussian_filter(segment._distance_transform(solid, np.ones(3)), 0.5)
    components = ndimage.label(solid)[0]
    expected = peak_local_max(height, footprint=ball(3), labels=components, exclude_border=False)
    found = segment._local_maxima(height, components, ball(3))
    assert len(expected) > 100
    assert sorted(map(tuple, found)) == sorted(map(tuple, expected))
    markers = np.zeros(solid.shape, np.int32)
    markers[tuple(expected.T)] = np.arange(1, len(expected) + 1)
    reference = watershed(-height, markers, mask=solid)
    ours = segment._watershed(-height, markers, solid)
    agreement = np.mean(ours[solid] == reference[solid])
    print(f"\nwatershed: {100 * agreement:.2f} % of solid voxels as scikit-image's")
    # Heights quantised to 1/16 voxel and FIFO ties: only boundary voxels may differ.
    # Measured: 99.1 %.
    assert agreement > 0.98
    assert np.all((ours > 0) == solid)
