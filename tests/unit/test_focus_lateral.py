"""Zone-plate x/y in the focus calibration: the simulator's travel tilt, the registration
and correction functions, and the plan on in-process fakes (no IOC).

Ground truth: the scene's own image shift (:meth:`TXMScene.zp_image_shift_px`) and,
for the fakes, a camera whose image moves with a known tilted zone-plate travel.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from bluesky import RunEngine
from fakes import FakeCamera, FakeShutter, defocus_blur_px, fake_txm_energy, thin_lens
from fakes import event_streams as _streams
from scipy import ndimage

from multiscope.analysis.focus import image_displacement_px, zone_plate_correction_um
from multiscope.devices.txm import TXMEnergy
from multiscope.plans.calibration import focus_calibration
from multiscope.plans.preflight import PlanArgumentError
from sim_devices.physics import make_tab
from sim_devices.physics.txm_scene import ZP_TILT_REFERENCE_Z_MM, TXMScene, TXMState, in_focus

SHAPE = (96, 96)
ORIENTATION = TXMEnergy.zp_image_orientation


@pytest.fixture(scope="module")
def tab():
    return make_tab(seed=5, n_particles=400)


def _frame(scene, state, seed=0):
    """A flat-corrected frame (the fixed flat pattern does not move with the image)."""
    frame, _ = scene.render(state, 0.5, SHAPE, np.random.default_rng(seed))
    return frame.astype(float) / scene.detector_model(state, SHAPE).flat_field()


# -- simulator ------------------------------------------------------------------------------


def test_tilt_moves_the_zone_plate_and_the_image_as_zp_xy_do(tab):
    tilted = TXMScene(tab=tab, seed=5, photons_per_s=2e5, zp_travel_tilt_mrad=(8.0, -5.0))
    straight = TXMScene(tab=tab, seed=5, photons_per_s=2e5)
    at_edge = in_focus(TXMState(binning=4), 8.333)
    assert at_edge.zp_z_mm == pytest.approx(ZP_TILT_REFERENCE_Z_MM)
    assert tilted.zp_transverse_um(at_edge) == pytest.approx((0.0, 0.0), abs=1e-9)
    above = in_focus(TXMState(binning=4), 8.433)  # zp:z 0.30 mm further
    dz = above.zp_z_mm - ZP_TILT_REFERENCE_Z_MM
    x, y = tilted.zp_transverse_um(above)
    assert (x, y) == pytest.approx((8.0 * dz, -5.0 * dz), rel=1e-12)
    # The tilt acts exactly as the same zp:x/y offset on a straight travel.
    same = replace(above, zp_xy_um=(x, y))
    assert tilted.zp_image_shift_px(above) == pytest.approx(straight.zp_image_shift_px(same))
    assert tilted.axis_offset_px(above) == pytest.approx(straight.axis_offset_px(same))
    assert tilted.illumination(above) == pytest.approx(straight.illumination(same))
    np.testing.assert_array_equal(
        tilted.line_integrals(above, SHAPE), straight.line_integrals(same, SHAPE)
    )
    # The truth shift is what a frame shows: +x to smaller columns, +y to larger rows.
    shift_x, shift_y = tilted.zp_image_shift_px(above)
    assert shift_x < -5 and shift_y < -3  # (1 + 1/M) * 2.4 um / 0.26 um, -1.5 um / 0.26 um
    rows, cols = image_displacement_px(_frame(straight, above), _frame(tilted, above, 1))
    # Registration of a field shifted by ~6-9 px reads ~1-2 % short (its Hann window
    # and the content entering at the borders; measured on noise-free line integrals).
    assert (cols, rows) == pytest.approx((shift_x, shift_y), rel=0.03)
    assert np.allclose(straight.zp_image_shift_px(above), 0.0)


# -- analysis -------------------------------------------------------------------------------


def test_displacement_survives_a_contrast_change():
    rng = np.random.default_rng(3)
    particles = ndimage.gaussian_filter((rng.random((128, 128)) > 0.97).astype(float), 2.0) * 40
    below = 1000.0 * np.exp(-0.3 * particles)
    above = 1000.0 * np.exp(-1.5 * particles)  # five times the absorption, as across an edge
    moved = ndimage.shift(above, (2.6, -4.3), order=3, mode="nearest")
    noisy = rng.poisson(np.clip(moved, 1, None)).astype(float)
    assert image_displacement_px(below, noisy) == pytest.approx((2.6, -4.3), abs=0.05)


def test_zone_plate_correction_puts_the_image_back():
    pixel, magnification = 0.26, 50.0
    move = np.array([3.0, -1.5])  # um of zone plate
    gain = (1 + 1 / magnification) / pixel
    displacement = gain * np.asarray(ORIENTATION) @ move  # what that move does to the image
    np.testing.assert_allclose(
        zone_plate_correction_um(displacement, pixel, magnification, ORIENTATION), -move
    )
    with pytest.raises(ValueError, match="positive"):
        zone_plate_correction_um(displacement, 0.0, magnification, ORIENTATION)


# -- plan on fakes --------------------------------------------------------------------------

PIXEL_NM = 260.0
TILT = (8.0, -5.0)  # um of zone plate per mm of zp:z


@pytest.fixture
def energy():
    return fake_txm_energy(8.3, zp_xy_um=(4.0, -2.0), pixel_nm=PIXEL_NM)


def true_shift_px(energy):
    """(rows, cols) image shift of the effective zone-plate offset (um) now."""
    dz = energy.zp_z.position - thin_lens(8.3)[0]
    x = energy.zp_x.position + TILT[0] * dz
    y = energy.zp_y.position + TILT[1] * dz
    gain = (1 + 1 / 50.0) / (PIXEL_NM / 1e3)
    return gain * np.asarray(ORIENTATION) @ np.array([x, y])


@pytest.fixture
def camera(energy):
    camera = FakeCamera(name="camera")  # the image follows the effective zone plate
    rng = np.random.default_rng(0)
    pattern = ndimage.gaussian_filter(rng.random((80, 80)), 1.5)
    pattern = 1000 * np.exp(-3 * (pattern - pattern.min()))

    def render():
        defocus_um = abs(energy.zp_z.position - thin_lens(energy.mono.position)[0]) * 1e3
        sigma = defocus_blur_px(defocus_um)
        image = ndimage.gaussian_filter(pattern, sigma) if sigma > 0.05 else pattern
        # contrast changes with energy, as across an absorption edge
        image = image ** (1 + 3 * (energy.mono.position - 8.3))
        return ndimage.shift(image, true_shift_px(energy), order=3, mode="nearest")

    camera.image.sim_set_func(render)
    return camera


def test_plan_calibrates_zone_plate_xy_so_the_image_stays(camera, energy):
    RE, documents = RunEngine({}), []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    shutter = FakeShutter(name="shutter", value="close")
    energies = [8.3, 8.4, 8.5]
    RE(focus_calibration(camera, energy, shutter, energies, zp_z_range_mm=0.4, zp_z_step_mm=0.1))
    start = next(doc for name, doc in documents if name == "start")
    lateral = start["focus_calibration"]["lateral"]
    assert (lateral["zp_x0_um"], lateral["zp_y0_um"]) == (4.0, -2.0)
    streams = _streams(documents)
    assert len(streams["primary"]) == 27 and len(streams["lateral"]) == 3
    found = streams["focus"]
    # the zone plate that cancels the tilt: zp0 - tilt * (zp_z(E) - zp_z(first))
    for data in found:
        dz = data["focus_zp_z_mm"] - found[0]["focus_zp_z_mm"]
        assert data["focus_zp_x_mm"] * 1e3 == pytest.approx(4.0 - TILT[0] * dz, abs=0.02)
        assert data["focus_zp_y_mm"] * 1e3 == pytest.approx(-2.0 - TILT[1] * dz, abs=0.02)
        assert data["focus_pixel_size_um"] == pytest.approx(0.26)
    assert found[-1]["focus_shift_x_px"] < -5  # a real walk to correct
    calibration = energy.focus_calibration()
    assert calibration.offsets["zp_x"] == pytest.approx([d["focus_zp_x_mm"] for d in found])
    residual = streams["lateral_residual"]
    assert [d["focus_energy_keV"] for d in residual] == energies
    # up to 0.06 px measured, after an 18 px walk (registration reads ~1 % short)
    assert all(abs(d["focus_residual_x_px"]) < 0.1 and abs(d["focus_residual_y_px"]) < 0.1
               for d in residual)  # fmt: skip
    # Between calibration energies the calibrated axis holds the image too.
    energy.set(8.3).wait(5)
    reference = true_shift_px(energy)
    for e in (8.36, 8.45):
        energy.set(e).wait(5)
        assert true_shift_px(energy) == pytest.approx(reference, abs=0.1)


def test_plan_without_lateral_leaves_zone_plate_xy_alone(camera, energy):
    RE, documents = RunEngine({}), []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    RE(focus_calibration(camera, energy, FakeShutter(name="shutter", value="close"), [8.3, 8.4],
                         lateral=False))  # fmt: skip
    start = next(doc for name, doc in documents if name == "start")
    assert start["focus_calibration"]["lateral"] is None
    assert set(energy.focus_calibration().offsets) == {"zp_z", "det_z"}
    assert (
        "lateral" not in _streams(documents)
        and "focus_zp_x_mm" not in _streams(documents)["focus"][0]
    )
    assert (energy.zp_x.position, energy.zp_y.position) == (4.0, -2.0)


@pytest.mark.parametrize(
    ("kwargs", "unset", "fragment"),
    [
        ({"lateral": "yes"}, None, "lateral must be True or False"),
        ({"check_lateral": 1}, None, "check_lateral must be True or False"),
        ({}, "zp_y", "needs energy.zp_y with a position"),
    ],
)
def test_plan_refuses_lateral_arguments_before_any_document(camera, energy, kwargs, unset,
                                                            fragment):  # fmt: skip
    RE, documents = RunEngine({}), []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    if unset:
        getattr(energy, unset).user_readback.sim_put(float("nan"))
    with pytest.raises(PlanArgumentError, match=fragment):
        RE(focus_calibration(camera, energy, FakeShutter(name="shutter", value="close"),
                             [8.3, 8.4], **kwargs))  # fmt: skip
    assert documents == []
