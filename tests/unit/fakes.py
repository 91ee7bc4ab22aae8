"""In-process fake devices for plan unit tests (no IOC): readable, movable, triggerable.

Also a fake TXM energy axis (``ophyd.sim.make_fake_device``) whose motors arrive as
soon as they are put, a fake fly-scan rotation, sample and flyer, and the
run-document helpers the plan tests share.
"""

import numpy as np
from event_model import compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device, Signal, SoftPositioner
from ophyd.sim import SynSignal, make_fake_device
from ophyd.status import Status

from multiscope.analysis.optics import focal_length_mm, lens_distances_mm
from multiscope.devices.txm import TXMEnergy

D_UM, DR_NM = 120.0, 30.0  # the simulated TXM's zone plate


class CamSettings(Device):
    acquire_time = Cpt(Signal, value=0.1, kind="config")


class FakeCamera(Device):
    FRAME_SHAPE = (4, 4)

    image = Cpt(SynSignal, func=lambda: np.ones(FakeCamera.FRAME_SHAPE), kind="hinted")
    cam = Cpt(CamSettings)

    def trigger(self):
        return self.image.trigger()


class FakeStage(Device):
    x = Cpt(SoftPositioner, limits=(-500, 500), init_pos=0.0)
    theta = Cpt(SoftPositioner, limits=(-720, 720), init_pos=0.0)


class FakeShutter(Signal):
    def set(self, value, **kwargs):
        if value not in ("open", "close"):
            raise ValueError(value)
        return super().set(value, **kwargs)


def defocus_blur_px(defocus_um, pixel_um=0.26):
    """Blur sigma (px) beyond half the depth of focus (11.6 um), as the simulated IOC's."""
    return max(0.0, defocus_um - 11.6) * 0.5 * 0.0026 / pixel_um


def thin_lens(energy_keV, magnification=50.0):
    """(zp_z, det_z) mm of the simulated TXM's zone plate in thin-lens focus (analysis.optics)."""
    p, q = lens_distances_mm(focal_length_mm(D_UM, DR_NM, energy_keV), magnification)
    return p, p + q


def instant_motor(motor, position, limits, velocity=5.0):
    """A fake Motor at ``position`` with limits, that 'arrives' as soon as it is put."""
    motor.user_readback.sim_put(position)
    motor.user_setpoint.sim_put(position)
    motor.user_setpoint.sim_set_limits(limits)
    motor.velocity.sim_put(velocity)
    motor.acceleration.sim_put(0.1)
    motor.motor_done_move.sim_put(1)
    motor.user_readback.alarm_severity = 0  # read by EpicsMotor at the end of a move; no fake

    def arrive(value, *args, **kwargs):
        motor.user_setpoint.sim_put(value)
        motor.user_readback.sim_put(value)
        motor.motor_done_move.sim_put(0)
        motor.motor_done_move.sim_put(1)

    motor.user_setpoint.sim_set_putter(arrive)
    return motor


def fake_txm_energy(energy_keV=8.0, zp_xy_um=(0.0, 0.0), pixel_nm=260.0):
    """A fake TXMEnergy at ``energy_keV`` in thin-lens focus, zone plate x/y at ``zp_xy_um``.

    ``pixel_nm``: the effective pixel (binning 4, 2x objective, M = 50 by default).
    """
    device = make_fake_device(TXMEnergy)("TXM:", name="energy")
    device.zp_diameter_um.sim_put(D_UM)
    device.zp_outermost_zone_nm.sim_put(DR_NM)
    device.pixel_size.sim_put(pixel_nm)
    zp_z, det_z = thin_lens(energy_keV)
    instant_motor(device.mono, energy_keV, (5.0, 15.0), 1.0)
    instant_motor(device.zp_z, zp_z, (5.0, 60.0), 5.0)
    instant_motor(device.det_z, det_z, (300.0, 2500.0), 100.0)
    instant_motor(device.zp_x, zp_xy_um[0], (-500.0, 500.0), 100.0)  # um
    instant_motor(device.zp_y, zp_xy_um[1], (-500.0, 500.0), 100.0)
    return device


def event_streams(documents):
    """{stream: [event data]} for every run in ``documents`` ((name, doc) pairs)."""
    names = {doc["uid"]: doc["name"] for name, doc in documents if name == "descriptor"}
    streams = {}
    for name, doc in documents:
        if name == "event":
            streams.setdefault(names[doc["descriptor"]], []).append(doc["data"])
    return streams


# -- fly scans ----------------------------------------------------------------------
class FakeRotation(SoftPositioner):
    """A rotation with the motor-record fields a fly scan sets (VELO, ACCL)."""

    def __init__(self, *, name, **kwargs):
        super().__init__(name=name, limits=(-720, 720), init_pos=0.0, **kwargs)
        self.velocity = Signal(name=f"{name}_velocity", value=90.0)
        self.acceleration = Signal(name=f"{name}_acceleration", value=0.05)


class FakeSample:
    def __init__(self):
        self.x = SoftPositioner(name="sample_x", limits=(-500, 500), init_pos=0.0)
        self.theta = FakeRotation(name="sample_theta")


class FakeFlyer:
    """Records what the plan asks; publishes its ``num_frames`` frames when collected."""

    def __init__(self, camera, *, fail_complete=False):
        self.camera = camera
        self.name = camera.name
        self.parent = None
        self.num_frames = 0
        self.frame_period_s = 0.0
        self.fail_complete = fail_complete
        self.calls = []
        self.velocity_at_kickoff = None
        self._collected = 0
        self._bundles = {}

    def attribute_key(self, attribute):
        return f"{self.camera.name}_{attribute}"

    def describe_collect(self):
        keys = {"camera_image": [1, *FakeCamera.FRAME_SHAPE], "camera_theta": []}
        return {
            key: {"source": "fake", "dtype": "array" if shape else "number",
                  "shape": shape, "external": "STREAM:"}
            for key, shape in keys.items()
        }  # fmt: skip

    def kickoff(self):
        self.calls.append("kickoff")
        self._bundles = {
            key: compose_stream_resource(
                mimetype="application/x-hdf5", uri="file://localhost/tmp/fake.h5",
                data_key=key, parameters={"dataset": "/entry/data/data"},
            )
            for key in self.describe_collect()
        }  # fmt: skip
        status = Status(obj=self)
        status.set_finished()
        return status

    def complete(self):
        self.calls.append("complete")
        status = Status(obj=self)
        if self.fail_complete:
            status.set_exception(RuntimeError("camera IOC disconnected"))
        else:
            status.set_finished()
        return status

    def get_index(self):
        return self.num_frames

    def collect_asset_docs(self, index=None):
        self.calls.append("collect")
        if self._collected >= self.num_frames:
            return
        upto = self.num_frames
        if self._collected == 0:
            for bundle in self._bundles.values():
                yield "stream_resource", bundle.stream_resource_doc
        for bundle in self._bundles.values():
            indices = {"start": self._collected, "stop": upto}
            yield "stream_datum", bundle.compose_stream_datum(indices=indices)
        self._collected = upto

    def stop(self, *, success=False):
        self.calls.append("stop")
