"""Imaging chain: zone-plate optics, defocus blur, noise, flat field, drift."""

import dataclasses

import numpy as np
import pytest

from sim_devices.physics import (
    DetectorGeometry,
    DetectorModel,
    DriftModel,
    ZonePlate,
    defocus_blur_sigma_um,
    depth_of_focus_um,
    expected_photons,
    focal_length_mm,
    image_distance_mm,
    in_focus_object_distance_mm,
    magnification,
    object_defocus_um,
    render_dark,
    render_flat,
    render_frame,
    wavelength_nm,
)

SMALL = DetectorGeometry(rows=128, cols=128, pixel_size_um=0.064)


def test_wavelength_and_focal_length():
    assert wavelength_nm(8.0) == pytest.approx(0.15498, rel=1e-4)
    # f = 60e-6 m * 30e-9 m / 1.55e-10 m = 11.6 mm
    assert focal_length_mm(60.0, 30.0, 8.0) == pytest.approx(11.61, rel=2e-3)
    assert ZonePlate().focal_length_mm(8.0) == focal_length_mm(60.0, 30.0, 8.0)
    # f scales with E: changing energy moves the focus.
    assert focal_length_mm(60.0, 30.0, 10.0) / focal_length_mm(60.0, 30.0, 8.0) == pytest.approx(
        1.25
    )


def test_lens_equation_and_magnification():
    f, p = 11.6, 12.0
    q = image_distance_mm(f, p)
    assert 1 / p + 1 / q == pytest.approx(1 / f)
    assert magnification(p, q) == pytest.approx(q / p)
    assert magnification(p, q) == pytest.approx(29.0, rel=1e-9)  # q = f p / (p - f)
    assert in_focus_object_distance_mm(f, q) == pytest.approx(p)
    assert object_defocus_um(f, p, q) == pytest.approx(0.0, abs=1e-9)
    assert object_defocus_um(f, p + 0.010, q) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        image_distance_mm(f, 11.0)


def test_depth_of_focus_matches_review():
    # Spence 2021: 30 nm resolution at 8 keV -> DOF ~23 um.
    assert depth_of_focus_um(30.0, 8.0) == pytest.approx(23.0, abs=0.5)


def test_blur_sigma_zero_in_focus_and_monotonic():
    dof = depth_of_focus_um(30.0, 8.0)
    assert defocus_blur_sigma_um(0.0, 30.0, 8.0) == 0.0
    assert defocus_blur_sigma_um(0.49 * dof, 30.0, 8.0) == 0.0
    sig = [defocus_blur_sigma_um(d, 30.0, 8.0) for d in np.linspace(0.5 * dof, 500, 30)]
    assert np.all(np.diff(sig) > 0)
    assert defocus_blur_sigma_um(-200.0, 30.0, 8.0) == defocus_blur_sigma_um(200.0, 30.0, 8.0)


def _edge_width(img):
    # 10-90 % width of a vertical step edge, from the mean column profile.
    prof = img.mean(axis=0)
    prof = (prof - prof.min()) / (prof.max() - prof.min())
    return np.count_nonzero((prof > 0.1) & (prof < 0.9))


def test_rendered_blur_grows_with_defocus():
    model = DetectorModel(geometry=SMALL, flat_rms=0.0, beam_falloff=0.0)
    p = np.zeros((128, 128), np.float32)
    p[:, 64:] = 2.0
    widths = []
    for d in (0.0, 10.0, 200.0, 400.0, 800.0):
        widths.append(_edge_width(expected_photons(p, 1.0, model, d, 8.0)))
    assert widths[0] == widths[1] == 0  # step stays sharp inside the DOF
    assert widths[2] < widths[3] < widths[4]


def test_poisson_statistics_after_dark_subtraction():
    model = DetectorModel(geometry=SMALL, read_noise_adu=0.0, dark_current_adu_per_s=0.0)
    rng = np.random.default_rng(1)
    p = np.full((128, 128), 0.7, np.float32)
    a = render_frame(p, 0.5, rng, model).astype(np.float64) - model.dark_offset_adu
    b = render_frame(p, 0.5, rng, model).astype(np.float64) - model.dark_offset_adu
    mean = 0.5 * (a + b).mean()
    var = np.var(a - b) / 2  # difference removes the fixed flat-field pattern
    assert mean == pytest.approx(5000 * 0.5 * np.exp(-0.7) * model.flat_field().mean(), rel=0.01)
    assert var == pytest.approx(mean, rel=0.05)
    # Read noise adds in quadrature.
    noisy = dataclasses.replace(model, read_noise_adu=20.0)
    c = render_frame(p, 0.5, rng, noisy).astype(np.float64)
    d = render_frame(p, 0.5, rng, noisy).astype(np.float64)
    assert np.var(c - d) / 2 == pytest.approx(mean + 400.0, rel=0.05)


def test_dark_flat_and_saturation():
    model = DetectorModel(geometry=SMALL)
    rng = np.random.default_rng(2)
    dark = render_dark(2.0, rng, model)
    assert dark.dtype == np.uint16
    assert dark.mean() == pytest.approx(model.dark_offset_adu + 2.0, abs=0.5)
    assert dark.std() == pytest.approx(np.sqrt(3.0**2 + 2.0), rel=0.1)
    flat = render_flat(1.0, rng, model).astype(float) - model.dark_offset_adu
    assert flat.max() < 5000 * 1.1 and flat.mean() > 5000 * 0.7
    hot = render_flat(100.0, rng, model)  # 5e5 photons/pixel saturates the 16-bit ADC
    assert hot.max() == 65535 and hot.dtype == np.uint16


def test_flat_field_fixed_per_seed_and_a_few_percent():
    m0 = DetectorModel(geometry=SMALL, seed=3)
    m1 = DetectorModel(geometry=SMALL, seed=4)
    f0 = m0.flat_field()
    np.testing.assert_array_equal(f0, DetectorModel(geometry=SMALL, seed=3).flat_field())
    assert not np.array_equal(f0, m1.flat_field())
    assert f0.max() == pytest.approx(1.0)
    assert 0.65 < f0.min() < 0.95  # beam profile 20 % at the corners + 3 % pattern
    assert not f0.flags.writeable


def test_drift_off_by_default_and_reproducible():
    assert np.all(DriftModel().offset_um(123.0) == 0.0)
    drift = DriftModel(rms_um=(0.5, 0.5, 0.2), seed=5)
    t = np.arange(0.0, 3600.0, 1.0)
    off = drift.offset_um(t)
    assert off.shape == (t.size, 3)
    np.testing.assert_array_equal(off, DriftModel(rms_um=(0.5, 0.5, 0.2), seed=5).offset_um(t))
    assert np.allclose(off[0], 0.0)
    step = np.abs(np.diff(off, axis=0)).max()
    assert step < 0.5 * 0.064  # sub-pixel per 1 s frame at 64 nm pixels
    assert off[:, 0].std() > 0.1  # but it does wander over an hour


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError):
        render_frame(np.zeros((4, 4)), 1.0, np.random.default_rng(), DetectorModel(geometry=SMALL))
