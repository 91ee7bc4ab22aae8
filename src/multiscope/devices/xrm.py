"""The lab X-ray microscope (XRM): source, objective turret, geometry, sample stage, camera.

PV names follow ``docs/xrm.md`` ("PVs of the simulated XRM IOC"); one IOC serves the
instrument under one prefix. Geometry (``docs/xrm.md``, "Geometry")::

    source --- SOD --- sample --------- ODD --------- scintillator + objective + camera

The pixel at the sample is ``camera pixel x binning / (M_geo x objective)``, ``M_geo =
(SOD + ODD) / SOD`` (:func:`multiscope.analysis.optics.xrm_pixel_size_um`);
:class:`XRMGeometry` is a pseudo positioner whose ``pixel_size`` (um) moves the SOD
(and the ODD when the SOD would leave its travel) for the objective and binning in
use.

Every request the instrument may refuse (an objective not in the turret, an SOD below
the minimum, a change while the camera acquires) fails with :class:`XRMRefusedError`
carrying the instrument's reason (``interlock:message_RBV``); the turret refuses an
unknown objective before any put.
"""

from __future__ import annotations

import logging

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, PseudoPositioner, PseudoSingle
from ophyd.pseudopos import pseudo_position_argument, real_position_argument
from ophyd.utils import LimitError

from multiscope.analysis.optics import xrm_geometry_for_pixel, xrm_pixel_size_um
from multiscope.devices.areadetector import StreamingCamera
from multiscope.devices.bundle import InstrumentBundle
from multiscope.devices.motor import Motor
from multiscope.devices.process import InstrumentRefusedError, explained, refusable

__all__ = [
    "OBJECTIVE_NAMES",
    "PARTS",
    "SOURCE_FILTERS",
    "ObjectiveTurret",
    "XRM",
    "XRMCamera",
    "XRMGeometry",
    "XRMRefusedError",
    "XRMSampleStage",
    "XRaySource",
    "SampleChanger",
]

logger = logging.getLogger(__name__)

#: The turret's objectives (name -> optical magnification).
OBJECTIVE_NAMES = {"0.4x": 0.4, "4x": 4.0, "20x": 20.0}
SOURCE_FILTERS = tuple(f"LE{k}" for k in range(1, 7)) + tuple(f"HE{k}" for k in range(1, 7))
#: The bundle's parts (:class:`XRM`), each a device of its own.
PARTS = ("source", "shutter", "turret", "geometry", "sample", "camera", "sample_changer")


class XRMRefusedError(InstrumentRefusedError):
    """The XRM refused a request (the message says why)."""


class XRaySource(Device):
    """The X-ray tube: ``kv``, ``power`` (W), ``filter`` (LE1..HE6), ``on``; its effective energy.

    The shutter in front of it is its own device (:class:`~multiscope.devices.shutter.Shutter`
    at ``source:shutter:``), so the safe state closes it without touching the tube.
    """

    # Put with completion; a refusal fails at once with the instrument's reason.
    kv = refusable("source:kv", kind="config")
    power = refusable("source:power", kind="config")
    filter = refusable("source:filter", string=True, kind="config")
    on = refusable("source:on", string=True, kind="config")
    energy = Cpt(EpicsSignalRO, "source:energy_RBV", kind="normal")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")


class ObjectiveTurret(Device):
    """The objective turret: ``set("4x")``; anything not in :data:`OBJECTIVE_NAMES` is refused."""

    objective = Cpt(EpicsSignal, "objective:mag", string=True, kind="config")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")

    @staticmethod
    def name_of(value) -> str:
        """The turret's name for ``value`` (``"4x"``, ``4``, ``0.4``), or XRMRefusedError."""
        for name, magnification in OBJECTIVE_NAMES.items():
            if value == name or (not isinstance(value, str) and value == magnification):
                return name
        raise XRMRefusedError(
            f"objective {value!r} is not in the turret {tuple(OBJECTIVE_NAMES)}: refused"
        )

    def set(self, value):
        """Turn to objective ``value``; refused at once if the turret lacks it."""
        name = self.name_of(value)
        return explained(
            self.objective.set(name), self.refusal, f"objective {name}", XRMRefusedError
        )

    @property
    def magnification(self) -> float:
        """Optical magnification of the objective in the beam."""
        return OBJECTIVE_NAMES[str(self.objective.get())]


class XRMGeometry(PseudoPositioner):
    """Source-object and object-detector distances, and the pixel size they give.

    Real axes ``sod``, ``odd`` (mm, motor records; the SOD's low limit is the
    instrument's minimum, ``geometry:sod_min``). Pseudo axis ``pixel_size`` (um)::

        inverse:  pixel = xrm_pixel_size_um(camera pixel, sod, odd, objective, binning)
        forward:  (sod, odd) = xrm_geometry_for_pixel(pixel, ..., odd_mm=current odd)

    The objective and binning are read from the IOC at each calculation
    (``objective:mag``, ``cam1:BinX_RBV``); ``pixel_size_rbv`` is the IOC's own value.
    """

    pixel_size = Cpt(PseudoSingle, egu="um", kind="hinted")
    sod = Cpt(Motor, "geometry:sod", kind="normal")
    odd = Cpt(Motor, "geometry:odd", kind="normal")
    # Monitored: inverse() runs in ophyd's callback thread on every readback update, and a
    # CA round trip per read there (three per update) delayed the motors' DMOV callbacks
    # past their move timeouts on a loaded machine (test_xrm, CI rehearsal).
    sod_min = Cpt(EpicsSignalRO, "geometry:sod_min", kind="config", auto_monitor=True)
    detector_pixel_um = Cpt(
        EpicsSignalRO, "geometry:detector_pixel_um", kind="config", auto_monitor=True
    )
    objective = Cpt(EpicsSignalRO, "objective:mag", string=True, kind="omitted", auto_monitor=True)
    binning = Cpt(EpicsSignalRO, "cam1:BinX_RBV", kind="omitted", auto_monitor=True)
    pixel_size_rbv = Cpt(EpicsSignalRO, "geometry:pixel_size_RBV", kind="normal")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")

    def optics(self) -> tuple[float, float, int]:
        """``(camera pixel um, objective magnification, binning)`` now."""
        objective = self.objective.get()
        if str(objective) not in OBJECTIVE_NAMES:  # an enum index (no string conversion)
            objective = tuple(OBJECTIVE_NAMES)[int(objective)]
        return (
            float(self.detector_pixel_um.get()),
            OBJECTIVE_NAMES[str(objective)],
            int(self.binning.get()),
        )

    @staticmethod
    def _travel(motor) -> tuple[float, float]:
        low, high = motor.limits
        return (float(low), float(high)) if low < high else (0.0, float("inf"))

    def travel(self) -> dict[str, tuple[float, float]]:
        """Soft limits (mm) of the SOD (low: the instrument's minimum) and the ODD."""
        low, high = self._travel(self.sod)
        return {"sod": (max(low, float(self.sod_min.get())), high), "odd": self._travel(self.odd)}

    @pseudo_position_argument
    def forward(self, pseudo_pos):
        detector, objective, binning = self.optics()
        travel = self.travel()
        try:
            sod, odd = xrm_geometry_for_pixel(
                pseudo_pos.pixel_size, detector, objective, binning,
                odd_mm=self.odd.position, sod_limits_mm=travel["sod"],
                odd_limits_mm=travel["odd"],
            )  # fmt: skip
        except ValueError as error:
            raise LimitError(str(error)) from None
        return self.RealPosition(sod=sod, odd=odd)

    @real_position_argument
    def inverse(self, real_pos):
        try:
            detector, objective, binning = self.optics()
            pixel = xrm_pixel_size_um(detector, real_pos.sod, real_pos.odd, objective, binning)
        except (ValueError, IndexError):  # optics not known (yet): no pixel size
            pixel = float("nan")
        return self.PseudoPosition(pixel_size=pixel)

    def pixel_um(self) -> float:
        """Pixel size (um) from the current readbacks, objective and binning."""
        detector, objective, binning = self.optics()
        return xrm_pixel_size_um(detector, self.sod.position, self.odd.position, objective,
                                 binning)  # fmt: skip


class XRMSampleStage(Device):
    """Sample stage, prefix e.g. ``XRM:sample:``.

    ``x``, ``y`` (mm): centring stages on the rotation (the sample point put on the
    rotation axis; they turn with it); ``z`` (mm): the sample height at the beam centre;
    ``theta`` (deg) the rotation.
    """

    x = Cpt(Motor, "x", kind="normal")
    y = Cpt(Motor, "y", kind="normal")
    z = Cpt(Motor, "z", kind="normal")
    theta = Cpt(Motor, "theta", kind="hinted")


class SampleChanger(Device):
    """Which sample is mounted (``sample:select``); refused while the camera acquires."""

    sample = Cpt(EpicsSignal, "sample:select", string=True, kind="config")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")

    def set(self, value):
        """Mount sample ``value``."""
        return explained(self.sample.set(str(value)), self.refusal, f"sample {value}",
                                XRMRefusedError)  # fmt: skip


class XRMCamera(StreamingCamera):
    """The XRM camera (2048 x 2048 sensor of 13.5 um pixels, ``cam1:`` and ``HDF1:``).

    Binning is ``cam.bin_x``/``cam.bin_y`` (1, 2, 4, 8); each frame records ``theta``
    (deg, mid-exposure), ``sample_x/y/z`` (mm), ``pixel_size_um`` and ``energy_keV``.
    """

    def used_signal_names(self) -> list[str]:
        """Also the binning: recipes set it, so it connects with the camera (a lazy PV's
        one-by-one 1 s connect at first use failed under load, in the CI rehearsal)."""
        return [*super().used_signal_names(), "cam.bin_x", "cam.bin_y"]


class XRM(InstrumentBundle):
    """The instrument as one object for plans: ``xrm_tomo_scan(xrm, "coin_survey")``.

    Holds the instrument's devices as attributes (:data:`PARTS`), not as ophyd
    components, so their names and data keys stay their own (``camera_image``,
    ``sample_theta``) and a session has each device once. It reads nothing itself.
    """

    PARTS = PARTS

    def __init__(self, prefix: str = "", *, name: str = "xrm", **parts):
        super().__init__(prefix, name=name, **parts)
