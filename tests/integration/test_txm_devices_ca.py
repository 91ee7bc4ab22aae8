"""TXM devices over real Channel Access against the simulated TXM IOC.

The energy pseudo axis must put the zone plate and detector at the thin-lens focus
(``analysis.optics``) and agree with the IOC's own ground truth within a depth of
focus; an energy outside the optics' range must be refused with no axis moving.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import acquire, start_sim_ioc
from ophyd import EpicsSignalRO
from ophyd.utils import LimitError
from scipy import ndimage
from waiting import wait_until

from multiscope import simctl
from multiscope.analysis.optics import depth_of_focus_um, focal_length_mm, lens_distances_mm
from multiscope.devices.motor import Motor
from multiscope.instruments import txm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def txm_ioc(ca_port_pool, tmp_path_factory):
    """The TXM IOC under a unique prefix, for this module."""
    _, ioc = start_sim_ioc(ca_port_pool, tmp_path_factory.mktemp("txm"), "txm")
    yield ioc
    simctl.stop_ioc(ioc.pid)


@pytest.fixture(scope="module")
def devices(txm_ioc, tmp_path_factory):
    made = txm.devices(txm_ioc.prefix)
    made["camera"].write_path_template.put(str(tmp_path_factory.mktemp("txm-frames")))
    for device in made.values():
        device.wait_for_connection(timeout=10)
    return made


@pytest.fixture
def energy(devices):
    device = devices["energy"]
    device.calibration.put({})  # thin lens only
    device.set(8.0).wait(device.move_timeout(8.0) + 5)
    return device


def _motors(devices) -> dict[str, Motor]:
    """Every motor axis of every TXM device, keyed by its ophyd name."""
    found = {}
    for device in devices.values():
        if isinstance(device, Motor):
            found[device.name] = device
            continue
        for walk in device.walk_components():
            if issubclass(walk.item.cls, Motor):
                motor = getattr(device, walk.dotted_name)
                found[motor.name] = motor
    return found


def _thin_lens(energy, energy_keV):
    diameter = energy.zp_diameter_um.get()
    zone = energy.zp_outermost_zone_nm.get()
    p, q = lens_distances_mm(focal_length_mm(diameter, zone, energy_keV), 50.0)
    return p, p + q


def test_every_device_connects_and_reads(devices):
    for name, device in devices.items():
        assert device.read() is not None, name
        assert device.read_configuration() is not None, name
    assert devices["zone_plate"].diameter.get() > 0
    assert devices["objective"].pixel_size.get() > 0


def test_energy_move_keeps_focus(energy, txm_ioc):
    truth = EpicsSignalRO(f"{txm_ioc.prefix}truth:focus_zp_z", name="truth_focus_zp_z")
    truth.wait_for_connection(timeout=5)
    for target in (8.0, 8.35):
        status = energy.set(target)
        status.wait(energy.move_timeout(target) + 5)
        assert status.success
        zp_z, det_z = _thin_lens(energy, target)
        assert energy.mono.position == pytest.approx(target, abs=1e-3)
        assert energy.zp_z.position == pytest.approx(zp_z, abs=1e-3)
        assert energy.det_z.position == pytest.approx(det_z, abs=1e-2)
        assert energy.position.energy == pytest.approx(target, abs=1e-3)
        # The IOC's own idea of focus at this energy and det:z: it recomputes its truth
        # PVs with every readback, before the moves report done, so a fresh read is current.
        dof_mm = depth_of_focus_um(energy.zp_outermost_zone_nm.get(), target) * 1e-3
        assert abs(truth.get(use_monitor=False) - energy.zp_z.position) < dof_mm


@pytest.mark.parametrize("bad", [4.0, 16.0, 100.0])
def test_out_of_range_energy_refused_with_no_motion(energy, devices, bad):
    motors = _motors(devices)
    assert {"energy_mono", "energy_zp_z", "energy_det_z", "sample_theta"} <= set(motors)
    before = {name: (m.position, m.user_setpoint.get()) for name, m in motors.items()}
    with pytest.raises(LimitError, match="energy"):
        energy.set(bad)
    # Refused before any put: every setpoint, read afresh from the IOC (after anything
    # sent before on the same circuit), is where it was, so no axis can be moving.
    for name, motor in motors.items():
        assert motor.motor_done_move.get(use_monitor=False) == 1, name
        position, setpoint = before[name]
        assert motor.position == pytest.approx(position, abs=1e-6), name
        assert motor.user_setpoint.get(use_monitor=False) == pytest.approx(setpoint), name


def test_verbs_in_run_engine(energy, devices):
    from bluesky import RunEngine

    from multiscope.plan_stubs import txm as stubs

    sample, objective, shutter = devices["sample"], devices["objective"], devices["shutter"]

    def verbs():
        yield from stubs.move_energy(energy, 8.2)
        yield from stubs.set_field_of_view(objective, "high_resolution")
        yield from stubs.sample_out(sample, 300.0)
        yield from stubs.sample_in(sample, 0.0)
        yield from stubs.open_shutter(shutter)
        yield from stubs.close_shutter(shutter)
        yield from stubs.set_field_of_view(objective, "large")

    RE = RunEngine({})
    RE(verbs())
    assert energy.mono.position == pytest.approx(8.2, abs=1e-3)
    assert energy.zp_z.position == pytest.approx(_thin_lens(energy, 8.2)[0], abs=1e-3)
    assert sample.x.position == pytest.approx(0.0, abs=1e-3)
    assert objective.magnification.get(use_monitor=False) == "2x"
    assert shutter.blade_position.get(use_monitor=False).lower().startswith("clos")


def _sharpness(frame: np.ndarray) -> float:
    """Variance of the (slightly smoothed) Laplacian of the mean-normalised frame."""
    return float(ndimage.gaussian_laplace(frame / frame.mean(), 1.0).var())


def test_image_is_sharpest_where_the_energy_move_put_the_zone_plate(energy, devices):
    """After an energy move, a through-focus scan of the zone plate peaks at the position
    the pseudo axis chose, within one scan step.

    The step is two depths of focus (48 um at 8.35 keV): the simulated blur is zero
    within +-DOF/2 and grows as NA (|defocus| - DOF/2) / 2, so at 130 nm pixels one
    DOF of defocus blurs by < 0.2 px, below what photon noise lets a sharpness metric
    see; two DOF per step is the finest through-focus scan that resolves focus here.
    """
    camera, shutter, sample = devices["camera"], devices["shutter"], devices["sample"]
    shutter.set("open").wait(10)
    sample.x.set(0.0).wait(10)
    sample.theta.set(0.0).wait(30)
    target = 8.35  # from 8 keV: the focus moves by ~1 mm, ~45 depths of focus
    energy.set(target).wait(energy.move_timeout(target) + 5)
    chosen = energy.zp_z.position
    step_mm = 2 * depth_of_focus_um(energy.zp_outermost_zone_nm.get(), target) * 1e-3
    offsets = np.arange(-5, 6)
    scores = []
    try:
        for k in offsets:
            energy.zp_z.set(chosen + k * step_mm).wait(10)
            scores.append(_sharpness(acquire(camera, 0.05)[0][0]))
    finally:
        energy.zp_z.set(chosen).wait(10)
    scores = np.asarray(scores)
    best = int(offsets[np.argmax(scores)])
    assert abs(best) <= 1, f"sharpest at {best} steps from the chosen focus: {scores}"
    # The scan resolves focus at all: five steps (10 DOF) out is clearly blurred.
    assert max(scores[0], scores[-1]) < 0.8 * scores.max(), scores


# ------------------------------------------------------------- position-triggered start
def _fly(devices, fire_at_deg, num_frames=5, exposure_s=0.02, period_s=0.05):
    """A staged camera whose FlyingCamera starts on the rotation's position trigger."""
    from multiscope.devices.flyers import FlyingCamera

    camera, sample = devices["camera"], devices["sample"]
    camera.cam.acquire_time.set(exposure_s).wait(5)
    flyer = FlyingCamera(
        camera, num_frames=num_frames, frame_period_s=period_s,
        start_trigger=sample.rotation_trigger,
    )  # fmt: skip
    camera.stage()
    flyer.prepare({"start_position": fire_at_deg, "start_timeout_s": 10.0}).wait(5)
    return camera, sample, flyer


def test_position_trigger_starts_the_frames_where_the_rotation_passes(devices):
    theta = devices["sample"].theta
    theta.set(0.0).wait(theta.move_timeout(0.0) + 5)
    velocity = theta.velocity.get()
    camera, sample, flyer = _fly(devices, fire_at_deg=10.0)
    try:
        flyer.prepare({"start_position": 30.0}).wait(5)  # a second prepare moves the pulse
        assert sample.rotation_trigger.fire_at.get(use_monitor=False) == 30.0
        pulses = sample.rotation_trigger.pulses.get()
        captured = camera.hdf1.num_captured.get(use_monitor=False)
        flyer.kickoff().wait(5)
        assert camera.cam.trigger_mode.get(as_string=True) == "External"
        # Armed, the rotation at rest: waiting for the pulse, no frame.
        wait_until(
            lambda: camera.cam.detector_state.get(as_string=True) == "Waiting",
            timeout=10,
            message=lambda: f"not armed: {camera.cam.detector_state.get(as_string=True)}",
        )
        assert camera.hdf1.num_captured.get(use_monitor=False) == captured
        theta.set(60.0).wait(theta.move_timeout(60.0) + 5)
        flyer.complete().wait(10)
        docs = list(flyer.collect_asset_docs())
    finally:
        camera.unstage()
    assert sample.rotation_trigger.pulses.get() == pulses + 1
    assert camera.cam.trigger_mode.get(as_string=True) == "Internal"  # restored
    resource = next(
        d for n, d in docs if n == "stream_resource" and d["data_key"].endswith("theta")
    )
    with h5py.File(resource["uri"].removeprefix("file://localhost"), "r") as f:
        angles = f["/entry/instrument/NDAttributes/theta"][captured : captured + 5]
    # The first exposure starts at the crossing: its middle is half an exposure later.
    assert angles[0] == pytest.approx(30.0 + velocity * 0.5 * 0.02, abs=0.01)
    np.testing.assert_allclose(np.diff(angles), velocity * 0.05, atol=0.01)


def test_stop_while_armed_ends_with_no_frames(devices):
    theta = devices["sample"].theta
    theta.set(0.0).wait(theta.move_timeout(0.0) + 5)
    camera, sample, flyer = _fly(devices, fire_at_deg=500.0)  # never reached
    try:
        pulses = sample.rotation_trigger.pulses.get()
        flyer.kickoff().wait(5)
        flyer.stop()
        with pytest.raises(RuntimeError, match="after 0 of 5 frames"):
            flyer.complete().wait(5)
        assert camera.cam.acquire.get(use_monitor=False) == 0
    finally:
        camera.unstage()
    assert sample.rotation_trigger.pulses.get() == pulses
    assert camera.cam.trigger_mode.get(as_string=True) == "Internal"
