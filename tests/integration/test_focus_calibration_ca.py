"""Focus calibration with zone-plate x/y over Channel Access (simulated TXM, binning 4, 128 x 128).

The IOC's zone-plate z travel is tilted (``--zp-tilt-mrad``): refocusing across the
Ni K-edge carries the zone plate sideways and walks the image by tens of pixels.
``focus_calibration`` must find the focus (the sample sits 150 um off the thin-lens
object plane) and the zone-plate x/y that keep the image where it is at the first
calibration energy; the calibrated energy axis must then hold the image within
``TOLERANCE_PX`` of it (ground truth: ``truth:zp_shift_x_px`` / ``_y_px``) at energies
between the calibration points, in focus, while without the x/y part it walks.
"""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from conftest import finished_run, run_focus_calibration, txm_session
from ophyd import EpicsSignalRO

from multiscope.analysis.focus import image_displacement_px, normalized_variance
from multiscope.analysis.optics import FocusCalibration
from multiscope.plan_stubs.frames import take_frames

pytestmark = pytest.mark.integration

TILT_MRAD = (8.0, -5.0)  # x, y: ~28 px and ~17 px of walk over 8.23-8.53 keV
CALIBRATION_KEV = [8.23, 8.33, 8.43, 8.53]
CHECK_KEV = [8.25, 8.28, 8.31, 8.333, 8.36, 8.40, 8.47, 8.52]  # between the calibration points
TOLERANCE_PX = 0.5
SHAPE = (128, 128)


@pytest.fixture(scope="module")
def txm(ca_port_pool, tmp_path_factory):
    """A TXM session on an IOC with a tilted zone-plate travel and no energy jumps."""
    extra_args = ["--binning", "4", "--shape", *map(str, SHAPE), "--energy-drift-px", "0",
                  "--zp-tilt-mrad", *map(str, TILT_MRAD)]  # fmt: skip
    with txm_session(ca_port_pool, tmp_path_factory, "focus", extra_args) as (session, running):
        truth = {
            key: EpicsSignalRO(f"{running.prefix}truth:{key}", name=f"truth_{key}")
            for key in ("focus_zp_z", "zp_shift_x_px", "zp_shift_y_px")
        }
        for signal in truth.values():
            signal.wait_for_connection(timeout=10)
        yield session, truth


def _image_shifts(energy, truth, energies):
    """True image shift (columns, rows) px at each energy, moved by the energy axis."""
    shifts = []
    for e in energies:
        energy.set(e).wait(60)
        # Current: the IOC recomputes its truth PVs with every readback, before a move is done.
        shifts.append([truth[k].get(use_monitor=False) for k in ("zp_shift_x_px", "zp_shift_y_px")])
    return np.asarray(shifts)


def _frames_calibrated_and_in_focus(energy, camera, shutter, truth, energies):
    """At each energy: a frame where the energy axis puts the optics, one at the true focus."""

    @bpp.run_decorator(md={"purpose": "calibrated vs in-focus references"})
    def plan():
        yield from bps.mv(shutter, "open")
        for e in energies:
            yield from bps.mv(energy, e)
            yield from take_frames(camera, 1, "calibrated", also_read=[energy])
            focus = yield from bps.rd(truth["focus_zp_z"])
            yield from bps.mv(energy.zp_z, focus)
            yield from take_frames(camera, 1, "focus", also_read=[energy])
        yield from bps.mv(shutter, "close")

    return plan()


def test_calibrated_zone_plate_xy_holds_the_image_in_focus(txm):
    session, truth = txm
    d = session.devices
    camera, energy, sample, shutter = d["camera"], d["energy"], d["sample"], d["shutter"]
    energy.calibration.put({})
    sample.y.set(150.0).wait(10)  # a real zp_z correction to find, as in test_xanes_plans_ca
    zp_xy0 = (energy.zp_x.position, energy.zp_y.position)
    try:
        run = run_focus_calibration(session, camera, energy, shutter, CALIBRATION_KEV, 0.1)
        start = run.metadata["start"]
        lateral = start["focus_calibration"]["lateral"]
        assert lateral["zp_x0_um"] == pytest.approx(zp_xy0[0])
        found = run["focus"].read()
        calibration = energy.focus_calibration()
        assert calibration.energies_keV == CALIBRATION_KEV
        for axis in ("zp_x", "zp_y"):
            assert calibration.offsets[axis] == pytest.approx(
                np.asarray(found[f"focus_{axis}_mm"], float).tolist()
            )
        print(
            "measured image shift x (px):",
            np.round(np.asarray(found["focus_shift_x_px"], float), 3).tolist(),
        )
        print(
            "measured image shift y (px):",
            np.round(np.asarray(found["focus_shift_y_px"], float), 3).tolist(),
        )
        print("zone plate x (um):", np.round(np.asarray(found["focus_zp_x_mm"]) * 1e3, 3).tolist())
        print("zone plate y (um):", np.round(np.asarray(found["focus_zp_y_mm"]) * 1e3, 3).tolist())
        # The documents carry the frames: the shifts are recomputed from the catalog.
        frames = np.asarray(run["lateral"].read()["camera_image"], float).reshape(-1, *SHAPE)
        for i, frame in enumerate(frames):
            rows, cols = image_displacement_px(frames[0], frame)
            assert (cols, rows) == pytest.approx(
                (float(found["focus_shift_x_px"][i]), float(found["focus_shift_y_px"][i])),
                abs=1e-9,
            )
        residual = run["lateral_residual"].read()
        residual_px = np.hypot(
            np.asarray(residual["focus_residual_x_px"], float),
            np.asarray(residual["focus_residual_y_px"], float),
        )
        print("residual after correction, measured (px):", np.round(residual_px, 3).tolist())
        assert np.all(residual_px < TOLERANCE_PX), residual_px

        # Ground truth: the image at every energy against the first calibration energy.
        reference = _image_shifts(energy, truth, CALIBRATION_KEV[:1])[0]
        calibrated = _image_shifts(energy, truth, CHECK_KEV) - reference
        error_px = np.hypot(*calibrated.T)
        print("calibrated: true image offset (px):", np.round(error_px, 3).tolist())
        assert np.all(error_px < TOLERANCE_PX), error_px

        # ... in focus: as sharp as a frame at the IOC's true focus (within 5 %).
        (ref_uid,) = session.RE(
            _frames_calibrated_and_in_focus(energy, camera, shutter, truth, CHECK_KEV)
        )
        refs = finished_run(session, ref_uid)
        sharp = normalized_variance(np.asarray(refs["calibrated"].read()["camera_image"], float)
                                    .reshape(-1, *SHAPE))  # fmt: skip
        focused = normalized_variance(np.asarray(refs["focus"].read()["camera_image"], float)
                                      .reshape(-1, *SHAPE))  # fmt: skip
        ratio = sharp / focused
        print("sharpness / in-focus:", np.round(ratio, 4).tolist())
        assert np.all(np.abs(ratio - 1) < 0.05), ratio

        # Control: the same calibration without zone-plate x/y, the zone plate back at
        # its start; the tilt walks the image by tens of pixels.
        focus_only = FocusCalibration(
            calibration.energies_keV,
            {k: v for k, v in calibration.offsets.items() if k in ("zp_z", "det_z")},
        )
        energy.calibration.put(focus_only)
        energy.zp_x.set(zp_xy0[0]).wait(10)
        energy.zp_y.set(zp_xy0[1]).wait(10)
        reference = _image_shifts(energy, truth, CALIBRATION_KEV[:1])[0]
        walk_px = np.hypot(*(_image_shifts(energy, truth, CHECK_KEV) - reference).T)
        print("without x/y calibration: true image offset (px):", np.round(walk_px, 2).tolist())
        assert walk_px.max() > 20 * TOLERANCE_PX
    finally:
        energy.calibration.put({})
        energy.zp_x.set(zp_xy0[0]).wait(10)
        energy.zp_y.set(zp_xy0[1]).wait(10)
        sample.y.set(0.0).wait(10)
