"""Transmission X-ray microscope (TXM): optics stages, camera and the energy pseudo axis.

Geometry (along the beam; ``docs/txm.md`` is the PV contract)::

                               |<--- p --->|<------------- q ------------->|
    source -> condenser -> sample ------ zone plate -------------------- scintillator
               (cond:)      z = 0        zp:z = p         (phase ring)   + objective
                            sample:       order-sorting   phase_ring:    + camera
                            x y z theta   aperture:                      det:z = p + q

    thin lens 1/p + 1/q = 1/f,  f = D dr / lambda,  X-ray magnification M = q / p

Units: mm for ``cond:x/y/z`` (``pitch`` mrad), ``zp:z`` and ``det:z``; um for
``zp:x/y``, ``aperture:``, ``phase_ring:`` and ``sample:x/y/z``; degrees for
``sample:theta``; keV for energy; ``zp:diameter`` in um and ``zp:dr`` in nm.

:class:`TXMEnergy` is the energy pseudo axis: a new energy moves the monochromator,
and the zone plate and detector to the thin-lens focus at the configured
magnification (plus a measured :class:`~multiscope.analysis.optics.FocusCalibration`
correction, when one is set), so the image stays in focus at the same pixel size;
when the calibration holds the zone plate's transverse ``zp_x``/``zp_y`` it also
moves the zone plate sideways, so the field stays put on the detector (decision
0007). Every target is checked before anything moves.

Examples
--------
With a 60 um zone plate of 30 nm outermost zones at M = 50:

>>> from multiscope.instruments import txm
>>> energy = txm.energy("TXM:")                          # doctest: +SKIP
>>> energy.wait_for_connection()                          # doctest: +SKIP
>>> energy.forward(8.35)                                  # doctest: +SKIP
TXMEnergyRealPos(mono=8.35, zp_z=12.36..., det_z=630.61..., zp_x=0.0, zp_y=0.0)
>>> energy.set(8.35).wait()                               # doctest: +SKIP
>>> energy.calibration.put(calibration.to_dict())         # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections import OrderedDict

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, PseudoPositioner, PseudoSingle, Signal
from ophyd.pseudopos import pseudo_position_argument, real_position_argument
from ophyd.utils import LimitError

from multiscope.analysis.optics import FocusCalibration, focal_length_mm, lens_distances_mm
from multiscope.compat import SubsetConcurrentMove
from multiscope.devices.areadetector import StreamingCamera
from multiscope.devices.motor import Motor, PositionTrigger

__all__ = [
    "CAMERA_PIXEL_UM",
    "DETECTOR_PIXELS",
    "FIELD_OF_VIEW_MODES",
    "NOMINAL_MAGNIFICATION",
    "Aperture",
    "CalibrationSignal",
    "Condenser",
    "EnergyAxis",
    "LimitError",
    "Objective",
    "PhaseRing",
    "SampleStage",
    "TXMCamera",
    "TXMEnergy",
    "ZonePlate",
    "effective_pixel_size_nm",
    "field_of_view_modes",
]

# -- field of view -------------------------------------------------------------------

CAMERA_PIXEL_UM = 6.5  # sCMOS pixel behind the scintillator objective
DETECTOR_PIXELS = 1024
NOMINAL_MAGNIFICATION = 50.0  # X-ray magnification q / p


def effective_pixel_size_nm(
    objective: float,
    magnification: float = NOMINAL_MAGNIFICATION,
    binning: int = 1,
    camera_pixel_um: float = CAMERA_PIXEL_UM,
) -> float:
    """Pixel size at the sample (nm): camera pixel x binning / (X-ray M x objective).

    >>> effective_pixel_size_nm(objective=2)
    65.0
    """
    if objective <= 0 or magnification <= 0 or binning < 1:
        raise ValueError("objective and magnification must be positive, binning >= 1")
    return camera_pixel_um * 1e3 * binning / (magnification * objective)


def _mode(objective: str, nominal_pixel_nm: float) -> dict:
    power = float(objective.rstrip("x"))
    pixel = effective_pixel_size_nm(power)
    return {
        "objective": objective,
        "nominal_pixel_nm": nominal_pixel_nm,
        "pixel_size_nm": pixel,  # exact value at M = 50, binning 1
        "field_of_view_um": round(DETECTOR_PIXELS * pixel * 1e-3, 2),
    }


#: Field-of-view modes of the 1024 px camera at X-ray magnification 50 (docs/stack-facts.md).
FIELD_OF_VIEW_MODES: dict[str, dict] = {
    "large": _mode("2x", 65.0),  # ~66 um field
    "high_resolution": _mode("8x", 16.0),  # ~17 um field
}


def field_of_view_modes() -> dict[str, dict]:
    """A copy of :data:`FIELD_OF_VIEW_MODES` (callers may modify it freely)."""
    return copy.deepcopy(FIELD_OF_VIEW_MODES)


# -- optics stages -------------------------------------------------------------------


class Condenser(Device):
    """Capillary condenser, prefix e.g. ``TXM:cond:``."""

    # position (mm)
    x = Cpt(Motor, "x", kind="normal")
    y = Cpt(Motor, "y", kind="normal")
    z = Cpt(Motor, "z", kind="normal")
    # angle (mrad)
    pitch = Cpt(Motor, "pitch", kind="normal")


class ZonePlate(Device):
    """Fresnel zone-plate objective, prefix e.g. ``TXM:zp:``.

    ``z`` is the distance p from the sample (mm); :class:`TXMEnergy` moves the same
    axis to keep focus, so move ``z`` by hand only for alignment. It also moves
    ``x``/``y`` when its focus calibration holds them (decision 0007).
    """

    # transverse centring (um)
    x = Cpt(Motor, "x", kind="normal")
    y = Cpt(Motor, "y", kind="normal")
    # distance from the sample, p (mm)
    z = Cpt(Motor, "z", kind="hinted")

    # lens parameters (fixed by the installed zone plate)
    diameter = Cpt(EpicsSignalRO, "diameter", kind="config")  # D (um)
    outermost_zone = Cpt(EpicsSignalRO, "dr", kind="config")  # dr (nm)


class Aperture(Device):
    """Order-sorting aperture (um), prefix e.g. ``TXM:aperture:``."""

    x = Cpt(Motor, "x", kind="normal")
    y = Cpt(Motor, "y", kind="normal")


class PhaseRing(Device):
    """Zernike phase ring (um), prefix e.g. ``TXM:phase_ring:``; ``inserted`` is Out/In."""

    # centring (um)
    x = Cpt(Motor, "x", kind="normal")
    y = Cpt(Motor, "y", kind="normal")
    # phase contrast on/off (enum "Out"/"In")
    inserted = Cpt(EpicsSignal, "in", string=True, kind="config")


class SampleStage(Device):
    """Sample stage, prefix e.g. ``TXM:sample:``.

    ``x`` across the beam, ``y`` along it, ``z`` vertical (um); ``theta`` is the
    tomography rotation (deg, soft limits -720..720, velocity settable for fly scans);
    ``rotation_trigger`` its position compare (the start pulse of a fly scan's camera).
    """

    # translations (um)
    x = Cpt(Motor, "x", kind="normal")
    y = Cpt(Motor, "y", kind="normal")
    z = Cpt(Motor, "z", kind="normal")
    # rotation (deg)
    theta = Cpt(Motor, "theta", kind="hinted")
    rotation_trigger = Cpt(PositionTrigger, "rotation_trigger:", kind="omitted")


class Objective(Device):
    """Scintillator objective and the effective pixel size, prefix e.g. ``TXM:``."""

    # setting (enum "2x"/"8x"); plans change it with set_field_of_view
    magnification = Cpt(EpicsSignal, "objective:mag", string=True, kind="config")
    # derived by the IOC from the current optics (nm at the sample)
    pixel_size = Cpt(EpicsSignalRO, "optics:pixel_size", kind="normal")


class TXMCamera(StreamingCamera):
    """The TXM camera (1024 x 1024, ``cam1:`` and ``HDF1:``).

    Binning is the driver's ``cam.bin_x`` / ``cam.bin_y`` (``cam1:BinX``/``BinY``
    with ``_RBV``, from ophyd's ``CamBase``); the simulator starts at binning 2. Each
    frame's ``theta``, ``sample_x/y/z`` and ``energy`` are recorded by the IOC under
    :meth:`StreamingCamera.attribute_path`.
    """


# -- energy pseudo axis ----------------------------------------------------------------


class CalibrationSignal(Signal):
    """Soft signal holding a :meth:`FocusCalibration.to_dict` (``{}``: thin lens only).

    ``put`` accepts that dict, a :class:`FocusCalibration` or its JSON text, and
    refuses an invalid calibration at once (not at the next energy move). ``get``
    returns the dict; ``read`` reports it as JSON text, because a dict has no
    event-model data type.
    """

    def __init__(self, *, value=None, **kwargs):
        super().__init__(value={} if value is None else self._normalise(value), **kwargs)

    @staticmethod
    def _normalise(value) -> dict:
        if isinstance(value, FocusCalibration):
            return value.to_dict()
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise TypeError(f"calibration must be a FocusCalibration dict, not {value!r}")
        if not value:
            return {}
        return FocusCalibration.from_dict(value).to_dict()  # validates

    def put(self, value, **kwargs):
        """Store a validated calibration dict."""
        super().put(self._normalise(value), **kwargs)

    def read(self):
        """The calibration as JSON text (data type ``string``)."""
        reading = super().read()
        reading[self.name]["value"] = json.dumps(reading[self.name]["value"], sort_keys=True)
        return reading

    def describe(self):
        """Describe the JSON text reading."""
        return OrderedDict(
            [(self.name, {"source": "SIM:" + self.name, "dtype": "string", "shape": []})]
        )


class EnergyAxis(PseudoSingle):
    """The ``energy`` pseudo axis (keV), limited to the monochromator's soft limits.

    The limits are read from the mono each time (never cached), so the optics'
    energy range is whatever the mono allows now.
    """

    @property
    def limits(self):
        """Soft limits (keV) of the parent's ``mono``; ``(0, 0)`` when it has none."""
        limits = self.parent.mono.limits
        return (0.0, 0.0) if limits is None else tuple(limits)


def _has_limits(limits) -> bool:
    # ophyd's convention: (0, 0) -- or any low >= high -- means "no soft limits"
    return limits is not None and limits[0] < limits[1]


class TXMEnergy(SubsetConcurrentMove, PseudoPositioner):
    """Energy (keV) that keeps the zone plate and detector in focus at constant magnification.

    Pseudo axis ``energy``; real axes ``mono`` (``mono:energy``, keV), ``zp_z``
    (``zp:z``, mm), ``det_z`` (``det:z``, mm) and the zone plate's transverse
    ``zp_x``, ``zp_y`` (``zp:x``, ``zp:y``, um)::

        forward(E):  mono = E
                     zp_z  = p(E)      + calibration offset "zp_z" at E
                     det_z = p(E)+q(E) + calibration offset "det_z" at E
                     zp_x  = 1000 * calibration "zp_x" at E (mm -> um)  if calibrated,
                             else the current position (not moved)
                     zp_y  = likewise
                     with (p, q) = lens_distances_mm(focal_length_mm(D, dr, E), M)
        inverse:     E = mono

    ``D`` and ``dr`` are read from the IOC (``zp:diameter``, ``zp:dr``) at each
    calculation; ``M`` (``magnification``) and the focus ``calibration`` are soft
    configuration signals that plans set. The calibration stores every axis in mm
    (:class:`~multiscope.analysis.optics.FocusCalibration`); its ``zp_x``/``zp_y``
    are absolute transverse positions (the thin lens puts the zone plate on the
    axis, 0), converted here to the motors' um (:attr:`ZP_XY_UM_PER_MM`). Without
    them the zone plate's transverse axes are never commanded, so a hand alignment
    stays (decision 0007).

    Before anything moves, :meth:`check_value` (called by ``set``/``move``) refuses,
    with one :class:`~ophyd.utils.LimitError` naming each failing parameter: an energy
    outside the mono's soft limits (the optics' range; a mono without limits refuses
    every energy), an energy the calibration does not cover (when one is set), and
    any commanded real-axis target outside that axis's soft limits. Moves fail after
    the longest commanded real-axis :meth:`Motor.move_timeout` plus ``move_margin``
    seconds.

    :attr:`zp_image_orientation` is the instrument's image response to the zone
    plate's transverse axes, which the focus calibration uses to turn an image
    shift into a zone-plate correction (``pixel_size``, nm, gives the pixel).

    Parameters
    ----------
    prefix : str
        Instrument prefix, e.g. ``TXM:``.
    name : str
        ophyd name.
    move_margin : float, optional
        Seconds added to the slowest real axis's move timeout.
    **kwargs
        Passed to ``PseudoPositioner``.
    """

    # pseudo axis (keV)
    energy = Cpt(EnergyAxis, egu="keV", kind="hinted")

    # real axes
    mono = Cpt(Motor, "mono:energy", kind="normal")  # keV
    zp_z = Cpt(Motor, "zp:z", kind="normal")  # p, mm from the sample
    det_z = Cpt(Motor, "det:z", kind="normal")  # p + q, mm from the sample
    # transverse zone plate (um): commanded only when the calibration holds them
    zp_x = Cpt(Motor, "zp:x", kind="normal")
    zp_y = Cpt(Motor, "zp:y", kind="normal")
    # effective pixel at the sample (nm) from the IOC's current optics; read by plans
    pixel_size = Cpt(EpicsSignalRO, "optics:pixel_size", kind="omitted")

    #: Real axes the calibration may or may not hold; others are always commanded.
    TRANSVERSE_AXES = ("zp_x", "zp_y")
    #: The calibration's mm per the zone plate's transverse motor unit (um).
    ZP_XY_UM_PER_MM = 1000.0
    #: Image displacement (rows, columns) per +1 of (``zp_x``, ``zp_y``), in units of
    #: ``(1 + 1/M) / pixel``: ``+zp:x`` moves the image to smaller columns (as the sample
    #: moving by ``-x``), ``+zp:y`` to larger rows (down); ``docs/txm.md``.
    zp_image_orientation = ((0.0, 1.0), (-1.0, 0.0))

    # configuration
    magnification = Cpt(Signal, value=NOMINAL_MAGNIFICATION, kind="config")  # X-ray q / p
    zp_diameter_um = Cpt(EpicsSignalRO, "zp:diameter", kind="config")
    zp_outermost_zone_nm = Cpt(EpicsSignalRO, "zp:dr", kind="config")
    calibration = Cpt(CalibrationSignal, kind="config")

    def __init__(self, prefix: str = "", *, name: str, move_margin: float = 2.0, **kwargs):
        if not kwargs.get("concurrent", True):
            # The concurrent move leaves uncalibrated transverse axes alone; sequential would not
            raise ValueError("TXMEnergy moves its real axes concurrently only")
        super().__init__(prefix, name=name, **kwargs)
        self.move_margin = float(move_margin)

    # -- calculation ------------------------------------------------------------------

    def focus_calibration(self) -> FocusCalibration:
        """The current :class:`FocusCalibration` (empty: thin lens only)."""
        return FocusCalibration.from_dict(self.calibration.get())

    def _optics(self) -> tuple[float, float, float]:
        """(D um, dr nm, M), each checked positive and finite."""
        values = {
            "zp_diameter_um": self.zp_diameter_um.get(),
            "zp_outermost_zone_nm": self.zp_outermost_zone_nm.get(),
            "magnification": self.magnification.get(),
        }
        for key, value in values.items():
            if not _positive(value):
                raise ValueError(f"{self.name}: {key} = {value!r} must be a positive number")
        return tuple(float(v) for v in values.values())

    @pseudo_position_argument
    def forward(self, pseudo_pos):
        """Real positions (mono keV, zp_z mm, det_z mm) in focus at ``pseudo_pos.energy``."""
        energy = float(pseudo_pos.energy)
        diameter, zone, magnification = self._optics()
        p, q = lens_distances_mm(focal_length_mm(diameter, zone, energy), magnification)
        calibration = self.focus_calibration()
        transverse = {
            axis: (
                float(calibration.offset(axis, energy)) * self.ZP_XY_UM_PER_MM
                if axis in calibration.offsets
                else _hold_position(getattr(self, axis))
            )
            for axis in self.TRANSVERSE_AXES
        }
        return self.RealPosition(
            mono=energy,
            zp_z=float(p + calibration.offset("zp_z", energy)),
            det_z=float(p + q + calibration.offset("det_z", energy)),
            **transverse,
        )

    def commanded_axes(self) -> tuple[str, ...]:
        """Real axes an energy move commands now: all but uncalibrated transverse ones."""
        offsets = self.focus_calibration().offsets
        return tuple(
            real.attr_name
            for real in self.real_positioners
            if real.attr_name not in self.TRANSVERSE_AXES or real.attr_name in offsets
        )

    def _commanded(self, real_pos) -> list:
        commanded = self.commanded_axes()
        return [
            (real, target)
            for real, target in zip(self.real_positioners, real_pos, strict=True)
            if real.attr_name in commanded
        ]

    @real_position_argument
    def inverse(self, real_pos):
        """The energy is the monochromator's."""
        return self.PseudoPosition(energy=real_pos.mono)

    # -- checks before motion ---------------------------------------------------------

    @pseudo_position_argument
    def check_value(self, pseudo_pos):
        """Refuse, before any motion, a target the optics or any real axis cannot reach.

        Accepts what ``set`` accepts (a bare energy in keV, a tuple or a PseudoPosition).

        Raises
        ------
        LimitError
            Naming every failing parameter (``energy``, ``zp_z``, ``det_z``, ...) with
            the value and the limits it broke.
        ValueError
            If the zone-plate parameters or the magnification are not positive.
        """
        energy = pseudo_pos.energy
        prefix = f"{self.name}: refused before any motion:"
        if not _positive(energy):
            raise LimitError(f"{prefix} energy = {energy!r} keV is not a positive number")
        energy = float(energy)

        low, high = self.energy.limits
        if not _has_limits((low, high)):
            raise LimitError(
                f"{prefix} energy {energy} keV: {self.mono.name} has no soft limits, "
                "so the optics' energy range is unknown"
            )
        if not low <= energy <= high:
            raise LimitError(
                f"{prefix} energy {energy} keV outside the optics' range "
                f"[{low}, {high}] keV ({self.mono.name} soft limits)"
            )

        calibration = self.focus_calibration()
        if not calibration.covers_energy(energy):
            cal_low, cal_high = calibration.covers
            raise LimitError(
                f"{prefix} energy {energy} keV not covered by the focus calibration "
                f"[{cal_low}, {cal_high}] keV (calibrate there, or clear the calibration)"
            )

        problems = []
        for real, target in self._commanded(self.forward(pseudo_pos)):
            attr = real.attr_name
            if not math.isfinite(target):
                problems.append(f"{attr} target {target} is not finite")
                continue
            limits = real.limits
            if _has_limits(limits) and not limits[0] <= target <= limits[1]:
                problems.append(
                    f"{attr} target {target:.6g} outside soft limits [{limits[0]}, {limits[1]}]"
                )
        if problems:
            raise LimitError(f"{prefix} energy {energy} keV needs " + "; ".join(problems))

    # -- motion -----------------------------------------------------------------------

    @pseudo_position_argument
    def move_timeout(self, pseudo_pos) -> float:
        """Seconds allowed for a move to ``pseudo_pos``: slowest real axis + ``move_margin``."""
        return max(
            real.move_timeout(target) for real, target in self._commanded(self.forward(pseudo_pos))
        ) + float(self.move_margin)

    def commanded_moves(self, real_pos) -> list:
        """The real axes a move starts, at once: an uncalibrated zp_x/zp_y is left alone."""
        return self._commanded(real_pos)

    @pseudo_position_argument
    def move(self, position, wait: bool = True, timeout: float | None = None, moved_cb=None):
        """Check, then move every real axis at once; the status fails after a finite timeout."""
        self.check_value(position)  # refuse before the timeout needs any calculation
        if timeout is None:
            timeout = self.move_timeout(position)
        return super().move(position, wait=wait, timeout=timeout, moved_cb=moved_cb)


def _hold_position(motor) -> float:
    """Where an axis that must not move is: its readback (fakes: the setpoint)."""
    position = motor.position
    if position is None:
        position = motor.user_setpoint.get()
    return float(position)


def _positive(value) -> bool:
    # numbers only: a string such as "8" must not pass as an energy
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value)) and float(value) > 0
