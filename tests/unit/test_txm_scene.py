"""The TXM IOC's scene without a network: optics, focus, geometry, flats, darks, timing."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from sim_devices.areadetector import FrameContext
from sim_devices.beam import CurrentHistory
from sim_devices.motor import Trajectory
from sim_devices.physics import DriftModel, depth_of_focus_um, expected_photons, make_tab
from sim_devices.physics.txm_scene import (
    DEFAULT_DET_Z_MM,
    DEFAULT_ZP_Z_MM,
    SAMPLE_OUT_UM,
    ZONE_PLATE,
    TXMScene,
    TXMState,
    focus_zp_z_mm,
    optics_of,
)
from sim_devices.txm import TXMIOC

SHAPE = (128, 128)


@pytest.fixture(scope="module")
def tab():
    # A small phantom keeps the tests fast; the geometry is what matters here.
    return make_tab(seed=5, n_particles=400)


@pytest.fixture(scope="module")
def ioc(tab):
    return TXMIOC(prefix="UT:", shape=SHAPE, seed=5, tab=tab)


def beam_on(state: TXMState, **changes) -> TXMState:
    return replace(state, shutter_open=True, ring_current_ma=400.0, **changes)


def sharpness(frame):
    return float(ndimage.gaussian_laplace(frame / frame.mean(), 1.0).var())


def test_pixel_size_is_camera_pixel_times_binning_over_total_magnification():
    nominal = optics_of(8.0, DEFAULT_ZP_Z_MM, DEFAULT_DET_Z_MM, objective=2.0, binning=2)
    assert nominal.magnification == pytest.approx(50.0)
    assert nominal.pixel_size_um == pytest.approx(6.5 * 2 / (50 * 2))  # 130 nm
    assert optics_of(8.0, DEFAULT_ZP_Z_MM, DEFAULT_DET_Z_MM, 8.0, 2).pixel_size_um == (
        pytest.approx(0.0325)
    )
    assert optics_of(8.0, DEFAULT_ZP_Z_MM, DEFAULT_DET_Z_MM, 2.0, 1).pixel_size_um == (
        pytest.approx(0.065)
    )
    p, det = 20.0, 1500.0
    o = optics_of(8.0, p, det, 2.0, 2)
    assert o.magnification == pytest.approx((det - p) / p)
    assert o.pixel_size_um == pytest.approx(6.5 * 2 / (o.magnification * 2))


def test_default_optics_are_in_focus_and_focus_follows_energy_and_detector():
    f = ZONE_PLATE.focal_length_mm(8.0)
    assert f == pytest.approx(120e-3 * 30 / (1.2398419843 / 8.0), rel=1e-6)
    assert focus_zp_z_mm(f, DEFAULT_DET_Z_MM) == pytest.approx(DEFAULT_ZP_Z_MM, abs=1e-9)
    assert optics_of(8.0, DEFAULT_ZP_Z_MM, DEFAULT_DET_Z_MM, 2.0, 2).defocus_um == (
        pytest.approx(0.0, abs=1e-6)
    )
    for energy, det in ((9.0, DEFAULT_DET_Z_MM), (8.0, 900.0), (12.0, 2000.0)):
        f = ZONE_PLATE.focal_length_mm(energy)
        p = focus_zp_z_mm(f, det)
        assert 1 / p + 1 / (det - p) == pytest.approx(1 / f, rel=1e-12)
        assert abs(optics_of(energy, p, det, 2.0, 2).defocus_um) < 1e-6
    # Higher energy, longer focal length: the zone plate moves away from the sample.
    assert focus_zp_z_mm(ZONE_PLATE.focal_length_mm(9.0), DEFAULT_DET_Z_MM) > DEFAULT_ZP_Z_MM
    # The sample moving along the beam moves the focus with it.
    f = ZONE_PLATE.focal_length_mm(8.0)
    shifted = focus_zp_z_mm(f, DEFAULT_DET_Z_MM, sample_y_um=50.0)
    assert shifted - DEFAULT_ZP_Z_MM == pytest.approx(0.05, rel=0.01)
    assert math.isnan(focus_zp_z_mm(f, 3 * f))  # too short for any real image


def test_fresh_ioc_state_is_the_nominal_in_focus_instrument(ioc):
    state = ioc.state()
    assert state.theta_deg == 0.0 and state.sample_um == (0.0, 0.0, 0.0)
    assert state.energy_keV == 8.0
    assert state.optics.defocus_um == pytest.approx(0.0, abs=1e-6)
    assert state.optics.pixel_size_um == pytest.approx(0.13)
    assert ioc.physics.axis_offset_px(state) == pytest.approx(3.7)


def test_scene_with_shutter_closed_gives_darks_and_attributes(ioc):
    ctx = FrameContext(0.1, 1, 0, SHAPE, time.time(), np.random.default_rng(0), ioc)
    frame, attrs = ioc.scene(ctx)  # in-process the shutter is closed
    assert frame.shape == SHAPE and frame.dtype == np.uint16
    assert abs(frame.mean() - 100.0) < 2 and frame.std() < 5
    assert set(attrs) == {
        "theta", "sample_x", "sample_y", "sample_z", "energy", "ring_current", "drift_x_px",
        "drift_y_px",
    }  # fmt: skip
    assert attrs["energy"] == 8.0
    assert attrs["ring_current"] == 400.0
    assert attrs["drift_x_px"] == attrs["drift_y_px"] == 0.0  # no energy drift at 8 keV


def test_sample_out_gives_a_flat(ioc):
    state = beam_on(ioc.state(), sample_um=(SAMPLE_OUT_UM, 0.0, 0.0))
    for theta in (0.0, 45.0, 90.0):
        p = ioc.physics.line_integrals(replace(state, theta_deg=theta), SHAPE)
        assert not p.any()
    frame, _ = ioc.physics.render(state, 0.1, SHAPE, np.random.default_rng(1))
    model = ioc.physics.detector_model(state, SHAPE)
    expected = 100.0 + model.flat_field().mean() * ioc.physics.photons_per_s * 0.1
    assert frame.mean() == pytest.approx(expected, rel=0.01)
    inside, _ = ioc.physics.render(beam_on(ioc.state()), 0.1, SHAPE, np.random.default_rng(1))
    assert inside.mean() < 0.8 * frame.mean()


def test_projection_at_180_mirrors_the_one_at_0_about_the_axis(tab):
    pixel = 0.13
    scene = TXMScene(tab=tab, axis_offset_um=3.5 * pixel)  # 2 x offset = 7 px: exact mirror
    state = beam_on(TXMState())
    p0 = scene.line_integrals(state, SHAPE)
    p180 = scene.line_integrals(replace(state, theta_deg=180.0), SHAPE)
    cols = SHAPE[1]
    c = np.arange(10, cols - 10)
    np.testing.assert_allclose(p180[:, c], p0[:, cols - 1 + 7 - c], atol=2e-3)
    assert scene.axis_offset_px(state) == pytest.approx(3.5)
    # The x stage carries the axis; the ground truth is quoted at sample:x = 0.
    moved = replace(state, sample_um=(13.0, 0.0, 0.0))
    assert scene.axis_offset_px(moved) == pytest.approx(3.5 + 100.0)
    assert scene.axis_offset_px(moved, with_sample_x=False) == pytest.approx(3.5)


def test_sample_z_moves_the_image_up(ioc):
    state = beam_on(ioc.state(), theta_deg=90.0)
    p = ioc.physics.line_integrals(state, SHAPE)
    up = ioc.physics.line_integrals(replace(state, sample_um=(0.0, 0.0, 1.3)), SHAPE)
    np.testing.assert_allclose(up[:-10], p[10:], atol=2e-3)  # 1.3 um = 10 rows of 130 nm


def test_defocus_blurs_beyond_the_depth_of_focus(ioc):
    def noise_free(state):
        scene = ioc.physics
        p = scene.line_integrals(state, SHAPE)
        model = scene.detector_model(state, SHAPE)
        return expected_photons(p, 1.0, model, state.optics.defocus_um, state.energy_keV)

    state = beam_on(ioc.state())
    sharp = sharpness(noise_free(state))
    within = replace(state, zp_z_mm=DEFAULT_ZP_Z_MM + 0.4e-3 * depth_of_focus_um(30, 8.0))
    assert sharpness(noise_free(within)) == pytest.approx(sharp, rel=0.02)  # M changes a bit
    blurred = replace(state, zp_z_mm=DEFAULT_ZP_Z_MM + 0.3)
    assert blurred.optics.defocus_um == pytest.approx(300, rel=0.05)
    assert sharpness(noise_free(blurred)) < 0.3 * sharp


def test_ni_k_edge_raises_attenuation(ioc):
    state = beam_on(ioc.state(), theta_deg=90.0)
    below = ioc.physics.line_integrals(replace(state, energy_keV=8.30), SHAPE).mean()
    above = ioc.physics.line_integrals(replace(state, energy_keV=8.36), SHAPE).mean()
    assert above > 2.0 * below


def test_illumination_follows_ring_current_and_alignment(ioc):
    state = beam_on(ioc.state())
    assert ioc.physics.illumination(state) == pytest.approx(1.0)
    assert ioc.physics.illumination(replace(state, ring_current_ma=200.0)) == pytest.approx(0.5)
    assert ioc.physics.illumination(replace(state, condenser=(0.3, 0.0, 0.0, 0.0))) < 0.05
    assert ioc.physics.illumination(replace(state, phase_ring_in=True)) == pytest.approx(0.75)
    dark, _ = ioc.physics.render(
        replace(state, ring_current_ma=0.0), 0.1, SHAPE, np.random.default_rng(3)
    )
    assert dark.mean() < 105


def test_a_frame_receives_the_mean_ring_current_over_its_exposure(tab):
    """A dump late in an exposure leaves the frame almost fully exposed; early, almost dark."""
    ioc = TXMIOC(prefix="UT3:", shape=SHAPE, tab=tab)
    ioc.state = lambda t=None: beam_on(TXMIOC.state(ioc, t))  # the shutter open
    end = time.monotonic()
    exposure = 0.2

    def frame_after_dump_at(fraction):
        ioc.beam = CurrentHistory(400.0)
        ioc.beam.record(end - exposure * (1.0 - fraction), 0.0)
        ctx = FrameContext(exposure, 1, 0, SHAPE, time.time(), np.random.default_rng(5), ioc,
                           end_monotonic=end)  # fmt: skip
        return ioc.scene(ctx)

    full, full_attrs = frame_after_dump_at(1.0)  # the dump after the frame
    late, late_attrs = frame_after_dump_at(0.95)
    early, early_attrs = frame_after_dump_at(0.05)
    assert full_attrs["ring_current"] == pytest.approx(400.0)
    assert late_attrs["ring_current"] == pytest.approx(380.0)
    assert early_attrs["ring_current"] == pytest.approx(20.0)
    dark = 100.0  # the camera's dark level (counts)
    assert (late.mean() - dark) == pytest.approx(0.95 * (full.mean() - dark), rel=0.05)
    assert (early.mean() - dark) == pytest.approx(0.05 * (full.mean() - dark), rel=0.2)


def test_current_history_means_a_piecewise_constant_current():
    history = CurrentHistory(400.0, keep_s=5.0)
    assert history.mean(0.0, 1.0) == 400.0
    history.record(10.0, 0.0)
    history.record(11.0, 300.0)
    assert history.mean(9.5, 10.5) == pytest.approx(200.0)
    assert history.mean(10.5, 11.5) == pytest.approx(150.0)
    assert history.mean(9.0, 12.0) == pytest.approx(700.0 / 3.0)
    assert history.mean(10.5, 10.5) == 0.0  # an empty span: the current at that time
    history.record(20.0, 100.0)  # forgets changes older than 5 s, not the value then
    assert history.mean(16.0, 17.0) == pytest.approx(300.0)
    assert history.latest == 100.0


def test_theta_is_taken_at_mid_exposure_from_the_trajectory(tab):
    ioc = TXMIOC(prefix="UT2:", shape=SHAPE, tab=tab)
    axis = ioc.sample_theta
    now = time.monotonic()
    first = axis.record_move(Trajectory(0.0, 10.0, 10.0), now - 10.0)
    first.t_end, first.end_position = now - 9.0, 10.0
    axis.record_move(Trajectory(10.0, 100.0, 30.0), now - 1.0)  # still moving
    assert axis.position_at(now - 20.0) == 0.0
    assert axis.position_at(now - 9.5) == pytest.approx(5.0)
    assert axis.position_at(now - 5.0) == 10.0  # at rest between the moves
    assert axis.position_at(now - 0.5) == pytest.approx(25.0)
    # The exposure ends now, on the acquisition's monotonic clock (as the camera passes
    # it: converting from the Unix timestamp reads two clocks, and a thread switch
    # between the reads, under load, moved the angle by more than the tolerance).
    end = time.monotonic()
    ctx = FrameContext(0.2, 1, 0, SHAPE, time.time(), np.random.default_rng(0), ioc,
                       end_monotonic=end)  # fmt: skip
    _, attrs = ioc.scene(ctx)
    assert attrs["theta"] == pytest.approx(10.0 + 30.0 * (0.9 + end - now), abs=0.01)


def test_binning_changes_frame_shape_and_pixel_size(tab):
    ioc = TXMIOC(prefix="UT3:", shape=SHAPE, tab=tab)
    assert ioc.sensor_shape == (256, 256)
    asyncio.run(ioc.set_binning(1))
    assert ioc.camera.shape == (256, 256)
    assert ioc.optics_pixel_size.value == pytest.approx(65.0)
    assert ioc.truth_axis_offset_px.value == pytest.approx(7.4)
    with pytest.raises(ValueError):
        asyncio.run(ioc.set_binning(3))


def test_drift_moves_the_sample_slowly_and_reproducibly(tab):
    scene = TXMScene(tab=tab, drift=DriftModel(rms_um=(1.0, 1.0, 1.0), seed=2))
    assert scene.center_um(TXMState(time_s=0.0)) == pytest.approx((0.0, 0.0, 125.0))
    later = np.array(scene.center_um(TXMState(time_s=600.0)))
    assert 0.05 < np.abs(later - (0.0, 0.0, 125.0)).max() < 5.0
    again = TXMScene(tab=tab, drift=DriftModel(rms_um=(1.0, 1.0, 1.0), seed=2))
    assert again.center_um(TXMState(time_s=600.0)) == pytest.approx(tuple(later))


def test_aligned_phase_ring_adds_edge_contrast(ioc):
    state = beam_on(ioc.state(), theta_deg=90.0)
    absorption = ioc.physics.line_integrals(state, SHAPE)
    zernike = ioc.physics.line_integrals(replace(state, phase_ring_in=True), SHAPE)
    misaligned = replace(state, phase_ring_in=True, phase_ring_xy_um=(100.0, 0.0))

    def edges(p):
        return float(np.abs(ndimage.laplace(p)).mean())

    assert edges(zernike) > 1.5 * edges(absorption)
    assert edges(ioc.physics.line_integrals(misaligned, SHAPE)) == pytest.approx(
        edges(absorption), rel=1e-6
    )
