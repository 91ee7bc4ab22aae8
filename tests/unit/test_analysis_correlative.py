"""Correlative maps (seed 004's processing): normalisation, Lanczos resampling onto the EDS
grid, cross-modal registration, covariance, line profiles; checked against constructions
whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from multiscope.analysis.correlative import (
    covariance,
    covariance_map,
    line_profile,
    normalize_log,
    normalize_minmax,
    register,
    resample,
    to_uint8,
)

EDS_PIXEL_UM = 0.0814  # seed 004: 216 x 352 px at 81.4 nm
SIMS_PIXEL_UM = 0.072  # seed 004: 500 px over 36 um


def test_normalize_minmax_and_log():
    x = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(normalize_minmax(x), [[0, 0.25], [0.5, 1.0]])
    assert not normalize_minmax(np.full((3, 3), 7.0)).any()
    counts = np.array([0.0, 1.0, 10.0, 100.0, 1000.0])
    # x* = log10 x / log10 max x; no counts map to 0 as a count of 1 does.
    np.testing.assert_allclose(normalize_log(counts), [0, 0, 1 / 3, 2 / 3, 1])
    assert np.isnan(normalize_log([np.nan, 10.0])[0])
    with pytest.raises(ValueError, match="negative"):
        normalize_log([-1.0, 5.0])
    with pytest.raises(ValueError, match="above 1"):
        normalize_log([0.2, 0.9])
    np.testing.assert_array_equal(to_uint8([-0.5, 0.0, 0.5, 1.0, 2.0, np.nan]),
                                  [0, 0, 128, 255, 255, 0])  # fmt: skip
    assert to_uint8([0.5]).dtype == np.uint8


def _field(y_um, x_um):
    """A smooth test scene in physical coordinates (um)."""
    return np.sin(2 * np.pi * y_um / 3.1) * np.cos(2 * np.pi * x_um / 2.3) + 0.1 * x_um


def _render(fn, shape, pixel_um):
    """Sample ``fn`` at the pixel centres of a field whose outer edge is at 0 um."""
    y = (np.arange(shape[0]) + 0.5) * pixel_um
    x = (np.arange(shape[1]) + 0.5) * pixel_um
    return fn(y[:, None], x[None, :])


@pytest.mark.parametrize(("pixel", "new_pixel"), [(SIMS_PIXEL_UM, EDS_PIXEL_UM), (0.1, 0.05)])
def test_resample_keeps_the_physical_pixel_and_the_field_edges(pixel, new_pixel):
    shape = (500, 420)
    image = _render(_field, shape, pixel)
    out = resample(image, pixel, new_pixel)
    expected_shape = (round(shape[0] * pixel / new_pixel), round(shape[1] * pixel / new_pixel))
    assert out.shape == expected_shape
    truth = _render(_field, out.shape, new_pixel)  # same outer edge, new pixels
    inner = (slice(5, -5), slice(5, -5))  # the kernel clamps at the field's edges
    error = np.abs(out[inner] - truth[inner]).max()
    assert error < 0.01, error  # of a signal spanning ~2.9


def test_resample_preserves_a_constant_and_refuses_nonsense():
    np.testing.assert_allclose(resample(np.full((50, 60), 3.0), 0.072, 0.0814), 3.0)
    with pytest.raises(ValueError, match="> 0"):
        resample(np.ones((5, 5)), 0.0, 1.0)
    with pytest.raises(ValueError, match="2-D"):
        resample(np.ones(5), 1.0, 1.0)


# -- registration across modalities --------------------------------------------------------
# A composite-cathode face: LLZTO grains (Zr and Li), LCO particles (Li, no Zr), carbon.


def _scene(seed):
    rng = np.random.default_rng(seed)
    grains = [(rng.uniform(0, 12), rng.uniform(0, 12), rng.uniform(1.0, 2.2), 1)
              for _ in range(10)]  # fmt: skip
    grains += [(rng.uniform(0, 12), rng.uniform(0, 12), rng.uniform(0.3, 1.2), 2)
               for _ in range(14)]  # fmt: skip

    def phase(y, x):
        label = np.zeros(np.broadcast(y, x).shape, dtype=np.int8)
        for cy, cx, r, kind in grains:
            label[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = kind
        return label

    return phase


def _modality(phase, shape, pixel_um, origin_um, intensities, counts, rng, oversample=3):
    """Area-averaged map of ``phase`` whose first pixel centre sits at ``origin_um``."""
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    out = np.zeros(shape)
    for dy in sub:
        for dx in sub:
            y = origin_um[0] + (np.arange(shape[0])[:, None] + dy) * pixel_um
            x = origin_um[1] + (np.arange(shape[1])[None, :] + dx) * pixel_um
            out += np.asarray(intensities)[phase(y, x)]
    mean = out / oversample**2
    return rng.poisson(mean * counts).astype(float)


@pytest.mark.parametrize("seed", range(1, 13))
def test_register_eds_zr_against_sims_li_to_a_fraction_of_an_eds_pixel(seed):
    rng = np.random.default_rng(100 + seed)
    phase = _scene(seed)
    eds_origin = (1.0, 1.5)
    # Offsets of either sign (1-2 um): the SIMS field reaches past the EDS field's sides.
    signs = rng.choice([-1.0, 1.0], 2)
    offset = signs * rng.uniform(1.0, 2.0, 2)
    sims_origin = (eds_origin[0] + offset[0], eds_origin[1] + offset[1])
    # Zr La: LLZTO only. 6Li+: LLZTO and LCO with matrix-dependent yields (not concentration).
    eds = _modality(phase, (110, 120), EDS_PIXEL_UM, eds_origin, [0.05, 1.0, 0.05], 30, rng)
    sims = _modality(phase, (125, 125), SIMS_PIXEL_UM, sims_origin, [0.02, 0.35, 1.0], 60, rng)
    dy, dx = register(eds, sims, EDS_PIXEL_UM, SIMS_PIXEL_UM)
    true = (sims_origin[0] - eds_origin[0], sims_origin[1] - eds_origin[1])
    error_px = np.hypot(dy - true[0], dx - true[1]) / EDS_PIXEL_UM
    assert error_px < 0.5, (dy, dx, true, error_px)  # the bound: < 0.5 EDS pixel


@pytest.fixture(scope="module")
def seed_004_phantom():
    from serial_runs import phantom

    return phantom()


@pytest.mark.parametrize("face", range(4))
def test_register_the_simulators_zr_la_against_6li_to_a_fraction_of_an_eds_pixel(
    seed_004_phantom, face
):
    """The seed's own pair as the PFIB-SEM simulator renders it: Zr La (~3 counts per
    pixel, LLZTO only) against 6Li+ (~4, bright in LCO, moderate in LLZTO), 1-2 um
    field offsets of either sign. Matching gradients missed by ~10 EDS pixels here."""
    from serial_runs import EDS_ORIGIN, EDS_PX, EDS_SHAPE, LINES, SIMS_PX, SIMS_SHAPE

    from sim_devices.physics.serial_render import eds_maps, sims_maps

    rng = np.random.default_rng(50 + face)
    depth = 0.3 + 0.4 * face
    eds_origin = (EDS_ORIGIN[0] + rng.uniform(-1, 1), EDS_ORIGIN[1] + rng.uniform(-1, 1))
    offset = rng.choice([-1.0, 1.0], 2) * rng.uniform(1.0, 2.0, 2)
    sims_origin = (eds_origin[0] + offset[0], eds_origin[1] + offset[1])
    eds = eds_maps(seed_004_phantom, depth, EDS_SHAPE, EDS_PX, eds_origin, lines=LINES, rng=rng)
    sims = sims_maps(seed_004_phantom, depth, SIMS_SHAPE, SIMS_PX, sims_origin, rng=rng)
    found = register(eds["Zr La"].astype(float), sims["6Li+"].astype(float), EDS_PX, SIMS_PX)
    # The SIMS map's first pixel centre lies half a pixel inside its field's corner.
    true = offset + (SIMS_PX - EDS_PX) / 2.0
    error_px = np.hypot(*(np.asarray(found) - true)) / EDS_PX
    assert error_px < 0.5, (found, true, error_px)  # the bound: < 0.5 EDS pixel


def test_register_same_grid_matches_scikit_image_sign():
    from skimage.registration import phase_cross_correlation

    rng = np.random.default_rng(7)
    scene = _render(_field, (140, 140), 0.1) + 0.05 * rng.standard_normal((140, 140))
    reference, moving = scene[10:110, 10:110], scene[17:117, 4:104]
    dy, dx = register(reference, moving, 0.1, 0.1, min_overlap=0.5)
    expected = phase_cross_correlation(reference, moving, upsample_factor=20)[0]
    np.testing.assert_allclose([dy / 0.1, dx / 0.1], expected, atol=0.1)
    np.testing.assert_allclose([dy / 0.1, dx / 0.1], [7, -6], atol=0.1)


def test_covariance_maps_and_profiles():
    rng = np.random.default_rng(0)
    a, b = rng.random((30, 40)), rng.random((30, 40))
    b = b + 0.5 * a
    assert covariance(a, b) == pytest.approx(np.cov(a.ravel(), b.ravel())[0, 1])
    cmap = covariance_map(a, b)
    assert cmap.mean() == pytest.approx(covariance(a, b) * (a.size - 1) / a.size)
    a_nan = a.copy()
    a_nan[0, 0] = np.nan
    assert np.isnan(covariance_map(a_nan, b)[0, 0])
    assert np.isfinite(covariance(a_nan, b))
    ramp = np.add.outer(np.arange(20.0), 10 * np.arange(30.0))
    np.testing.assert_allclose(line_profile(ramp, (2, 3), (2, 13)), 2 + 10 * np.arange(3, 14))
    np.testing.assert_allclose(line_profile(ramp, (0, 0), (4, 0), num=3), [0, 2, 4])


def test_nan_outside_a_field_stays_local():
    image = _render(_field, (60, 70), 0.1)
    image[:, :5] = np.nan  # a drifted slice's uncovered edge
    out = resample(image, 0.1, 0.2)
    assert np.isnan(out[:, :2]).all() and np.isfinite(out[:, 4:]).all()
    truth = _render(_field, out.shape, 0.2)
    assert np.abs(out[5:-5, 6:-5] - truth[5:-5, 6:-5]).max() < 0.02


def test_register_ignores_nan_borders_and_refuses_no_overlap():
    rng = np.random.default_rng(4)
    phase = _scene(4)
    eds = _modality(phase, (110, 120), EDS_PIXEL_UM, (1.0, 1.5), [0.05, 1.0, 0.05], 30, rng)
    sims = _modality(phase, (125, 125), SIMS_PIXEL_UM, (2.0, 2.0), [0.02, 0.35, 1.0], 60, rng)
    sims[:, :4] = np.nan
    eds[-3:, :] = np.nan
    dy, dx = register(eds, sims, EDS_PIXEL_UM, SIMS_PIXEL_UM)
    assert np.hypot(dy - 1.0, dx - 0.5) / EDS_PIXEL_UM < 0.5, (dy, dx)
    with pytest.raises(ValueError, match="no overlap"):
        register(np.full((20, 20), np.nan), sims, EDS_PIXEL_UM, SIMS_PIXEL_UM)
