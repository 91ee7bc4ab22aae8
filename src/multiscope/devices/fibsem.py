"""The plasma FIB-SEM: stage, insertables, ion and electron columns, milling, Pt deposition.

PV names follow ``docs/fibsem.md`` ("The instrument's PVs"): one IOC serves the whole
chamber under one prefix. The classes here are the devices only; where the stage
goes, in which order, and what may be inserted there is decided from
:mod:`multiscope.analysis.fibsem_geometry` by the plan stubs
(:mod:`multiscope.plan_stubs.fibsem`) and checked again by the instrument.

Every request the instrument may refuse (a move, an insertion, a cut, a deposition,
an acquisition) fails its status with :class:`InstrumentRefusedError`, carrying the
instrument's own reason (``interlock:message_RBV``), not a bare put failure.

The milling commands are *destructive*: :class:`Mill` cuts slice ``k`` only when the
instrument has milled ``k - 1`` (a replayed or repeated command is refused by the
instrument), and the plan stubs never let the RunEngine replay them
(``plan_stubs.fibsem.mill_slice``).
"""

from __future__ import annotations

import logging

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO
from ophyd import FormattedComponent as FCpt
from ophyd.status import Status

from multiscope.devices.areadetector import StreamingCamera
from multiscope.devices.bundle import InstrumentBundle
from multiscope.devices.motor import Motor
from multiscope.devices.process import (
    ACTUATION_TIMEOUT_S,
    InstrumentRefusedError,
    OffWhilePaused,
    ProcessCommand,
    explained,
    refusal_reason,
)

__all__ = [
    "PARTS",
    "ChamberStage",
    "PFIBSEM",
    "EDSDetector",
    "ElectronColumn",
    "GasInjection",
    "Insertable",
    "InstrumentRefusedError",
    "IonColumn",
    "Mill",
    "ProcessCommand",
    "SEMDetector",
    "SIMSDetector",
    "refusal_reason",
]

logger = logging.getLogger(__name__)


class ChamberStage(Device):
    """The five-axis stage: ``x``, ``y``, ``z`` (um), ``tilt``, ``rot`` (deg), and its pose.

    ``pose`` is the instrument's own reading of where the stage is (``mill``, ``sem``,
    ``sims``, ``eucentric`` or ``none``).
    """

    x = Cpt(Motor, "stage:x", kind="normal")
    y = Cpt(Motor, "stage:y", kind="normal")
    z = Cpt(Motor, "stage:z", kind="normal")
    tilt = Cpt(Motor, "stage:tilt", kind="hinted")
    rot = Cpt(Motor, "stage:rot", kind="hinted")
    pose = Cpt(EpicsSignalRO, "stage:pose_RBV", string=True, kind="normal")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")


class Insertable(Device):
    """A detector or needle driven in under the pole piece: ``set("in")`` / ``set("out")``.

    The command puts with completion (finished when in place); the instrument refuses
    an insertion its collision rules forbid, and the status then fails with
    :class:`InstrumentRefusedError`.
    """

    command = FCpt(EpicsSignal, "{prefix}{_what}", string=True, put_complete=True,
                   kind="omitted")  # fmt: skip
    state = FCpt(EpicsSignalRO, "{prefix}{_what}_RBV", string=True, kind="normal")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")

    _values = {"in": "Inserted", "inserted": "Inserted", 1: "Inserted",
               "out": "Retracted", "retracted": "Retracted", 0: "Retracted"}  # fmt: skip

    def __init__(self, prefix: str = "", *, what: str, name: str, **kwargs):
        self._what = what
        super().__init__(prefix, name=name, **kwargs)

    @property
    def inserted(self) -> bool:
        """True when the instrument reports it inserted."""
        return str(self.state.get()) == "Inserted"

    def set(self, value) -> Status:
        """Insert (``"in"``) or retract (``"out"``); fails after a bounded time."""
        key = value.lower() if isinstance(value, str) else value
        if key not in self._values:
            raise ValueError(f"{self.name}: value must be 'in' or 'out', not {value!r}")
        target = self._values[key]
        status = self.command.set(target, timeout=ACTUATION_TIMEOUT_S)
        return explained(status, self.refusal, f"{self.name} -> {target}")


class IonColumn(OffWhilePaused, Device):
    """The Xe+ plasma column: ``voltage`` (kV), ``current`` (nA), ``beam`` (``On``/``Blanked``).

    A paused run must not leave the ion beam on the sample (for hours, if nobody comes
    back): :meth:`pause` blanks it as soon as a cut or a Pt deposition in progress has
    ended (blanking earlier would stop it part-way), and :meth:`resume` puts it back
    on if it was (:class:`~multiscope.devices.process.OffWhilePaused`).
    """

    voltage = Cpt(EpicsSignal, "ion:voltage", kind="config")
    current = Cpt(EpicsSignal, "ion:current", kind="config")
    beam = Cpt(EpicsSignal, "ion:beam", string=True, put_complete=True, kind="normal")
    cutting = Cpt(EpicsSignalRO, "mill:busy_RBV", kind="omitted")
    depositing = Cpt(EpicsSignalRO, "gis:busy_RBV", kind="omitted")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")

    #: Longest a pause waits for a cut to end before blanking anyway (s).
    MAX_CUT_WAIT_S = 3600.0
    OFF_VALUE = "Blanked"

    def set(self, value) -> Status:
        """Put the beam ``"On"`` or ``"Blanked"``; a refusal carries the instrument's reason.

        Plans set the column itself (not its ``beam`` signal), so that the RunEngine
        knows the column and calls :meth:`pause` and :meth:`resume`.
        """
        if value not in ("On", "Blanked"):
            raise ValueError(f"{self.name}: beam must be 'On' or 'Blanked', not {value!r}")
        status = self.beam.set(value, timeout=ACTUATION_TIMEOUT_S)
        return explained(status, self.refusal, f"{self.name} beam {value}")

    def _switch(self):
        return self.beam

    def _busy_signals(self) -> list:
        """A cut or a Pt deposition (the beam must stay on until it ends)."""
        return [self.cutting, self.depositing]

    def _process_limit_s(self) -> float:
        return self.MAX_CUT_WAIT_S


def _cut_s(mill, _number) -> float:
    # Also the longest a resume waits for a cut in progress (``_number`` None).
    return float(mill.cut_time_s.get())


def _polish_s(mill, _number) -> float:
    thickness = max(float(mill.thickness_um.get()), 1e-6)
    return float(mill.cut_time_s.get()) * float(mill.polish_um.get()) / thickness


class Mill(Device):
    """Milling with the ion beam: the pattern, one slice per command, polish cuts.

    ``cut.set(k)`` mills slice ``k`` (the instrument refuses unless it has milled
    exactly ``k - 1``, the stage is at ``mill``, the beam is on and nothing is
    inserted); ``polish.set(k)`` makes polish cut ``k`` of ``polish_um``; their
    ``stop()`` ends a cut at once (the slice is then counted, part-milled). The
    counters and the face depth are the instrument's and survive a crash of the
    client or a restart of the instrument.
    """

    width_um = Cpt(EpicsSignal, "mill:width_um", kind="config")
    height_um = Cpt(EpicsSignal, "mill:height_um", kind="config")
    thickness_um = Cpt(EpicsSignal, "mill:thickness_um", kind="config")
    max_thickness_um = Cpt(EpicsSignalRO, "mill:max_thickness_um", kind="config")
    rock_deg = Cpt(EpicsSignal, "mill:rock_deg", kind="config")
    polish_um = Cpt(EpicsSignal, "mill:polish_um", kind="config")
    sputter_yield = Cpt(EpicsSignalRO, "mill:sputter_um3_per_nC_RBV", kind="config")
    cut_time_s = Cpt(EpicsSignalRO, "mill:time_RBV", kind="config")

    cut = Cpt(ProcessCommand, "", pv="mill:slice", duration=_cut_s, stop_pv="mill:stop",
              busy_pv="mill:busy_RBV",
              kind="omitted")  # fmt: skip
    polish = Cpt(ProcessCommand, "", pv="mill:polish", duration=_polish_s,
                 stop_pv="mill:stop", busy_pv="mill:busy_RBV", kind="omitted")  # fmt: skip

    busy = Cpt(EpicsSignalRO, "mill:busy_RBV", kind="omitted")
    slices_milled = Cpt(EpicsSignalRO, "mill:slices_RBV", kind="normal")
    polishes_done = Cpt(EpicsSignalRO, "mill:polishes_RBV", kind="normal")
    face_depth_um = Cpt(EpicsSignalRO, "mill:face_depth_RBV", kind="hinted")
    # The depth the SEM measures on the trench wall at the eucentric pose (NaN elsewhere).
    measured_depth_um = Cpt(EpicsSignalRO, "mill:measured_depth_RBV", kind="normal")
    last_complete = Cpt(EpicsSignalRO, "mill:last_complete_RBV", kind="normal")


class ElectronColumn(Device):
    """The SEM column and its scan: kV, current, working distance, dwell, pixel, beam shift."""

    kv = Cpt(EpicsSignal, "sem:kv", kind="config")
    current_na = Cpt(EpicsSignal, "sem:current_na", kind="config")
    wd_mm = Cpt(EpicsSignal, "sem:wd_mm", kind="config")
    dwell_us = Cpt(EpicsSignal, "sem:dwell_us", kind="config")
    pixel_nm = Cpt(EpicsSignal, "sem:pixel_nm", kind="config")
    beam_shift_x_um = Cpt(EpicsSignal, "sem:beam_shift_x_um", kind="normal")
    beam_shift_y_um = Cpt(EpicsSignal, "sem:beam_shift_y_um", kind="normal")


def _deposit_s(gis, thickness_um) -> float:
    # ``None``: the longest a resume waits for a deposition in progress (10 um).
    return float(10.0 if thickness_um is None else thickness_um) / gis.MIN_RATE_UM_S


class GasInjection(Device):
    """Pt gas injection: the needle, the precursor heater, ``deposition.set(thickness_um)``.

    A deposition needs the needle in, the heater on and the ion beam on; it fills the
    face's open pores down to ``infiltration_um`` below the face (``filled_to_um``)
    and leaves a cap on the face (``cap_um``) that a polish cut removes.
    """

    #: Slowest deposition rate (um/s) a deposition's wait allows (a limit, not a model).
    MIN_RATE_UM_S = 0.002

    needle = FCpt(Insertable, "{prefix}", what="gis:needle", kind="normal")
    heat = Cpt(EpicsSignal, "gis:heat", string=True, put_complete=True, kind="config")
    temperature = Cpt(EpicsSignalRO, "gis:temperature_RBV", kind="normal")
    infiltration_um = Cpt(EpicsSignalRO, "gis:infiltration_um", kind="config")
    deposition = Cpt(ProcessCommand, "", pv="gis:deposit_um", duration=_deposit_s,
                     stop_pv="gis:stop", busy_pv="gis:busy_RBV", kind="omitted")  # fmt: skip
    filled_to_um = Cpt(EpicsSignalRO, "gis:filled_to_RBV", kind="normal")
    cap_um = Cpt(EpicsSignalRO, "gis:cap_um_RBV", kind="normal")


class _ChannelCamera(StreamingCamera):
    """A scanned-beam detector whose channels are the frames of one acquisition.

    One acquisition (one scan of the field) writes one frame per channel, in the
    order of the instrument's channel list; ``num_images`` follows that list. The
    instrument refuses an acquisition at the wrong pose: the trigger then fails with
    :class:`InstrumentRefusedError`.
    """

    refusal = FCpt(EpicsSignalRO, "{_chamber}interlock:message_RBV", string=True,
                   kind="omitted")  # fmt: skip

    def __init__(self, prefix: str = "", *, chamber_prefix: str, name: str, **kwargs):
        self._chamber = chamber_prefix
        super().__init__(prefix, name=name, **kwargs)

    def channels(self) -> tuple[str, ...]:
        """Names of the frames of one acquisition, in order."""
        raise NotImplementedError

    def stage(self):
        """Frames per acquisition = the channels mapped, then stage as any camera."""
        self.images_per_trigger.put(len(self.channels()))
        return super().stage()

    def trigger(self):
        """Acquire every channel once; a refusal carries the instrument's reason."""
        return explained(super().trigger(), self.refusal, f"{self.name} acquisition")


class SEMDetector(_ChannelCamera):
    """The two backscatter detectors of one SEM scan: frames CBS then TLD."""

    CHANNELS = ("cbs", "tld")

    def channels(self) -> tuple[str, ...]:
        """``("cbs", "tld")``: the ring detector and the through-lens detector."""
        return self.CHANNELS


class EDSDetector(_ChannelCamera):
    """EDS element maps: one frame per line of ``lines``; ``AcquireTime`` is the live time."""

    lines = FCpt(EpicsSignal, "{_chamber}eds:lines", string=True, kind="config")
    binning = FCpt(EpicsSignal, "{_chamber}eds:binning", kind="config")
    pixel_nm = FCpt(EpicsSignalRO, "{_chamber}eds:pixel_nm", kind="config")

    def channels(self) -> tuple[str, ...]:
        """The lines mapped, as the instrument lists them (``"Co La"``, ``"Zr La"``...)."""
        return tuple(s.strip() for s in str(self.lines.get()).split(",") if s.strip())


class SIMSDetector(_ChannelCamera):
    """SIMS mass maps: one frame per mass of ``masses``; ``AcquireTime`` is the map's time."""

    masses = FCpt(EpicsSignal, "{_chamber}sims:masses", string=True, kind="config")
    pixel_nm = FCpt(EpicsSignalRO, "{_chamber}sims:pixel_nm", kind="config")

    def channels(self) -> tuple[str, ...]:
        """The masses mapped (``"6Li+"``, ``"7Li+"``...)."""
        return tuple(s.strip() for s in str(self.masses.get()).split(",") if s.strip())


#: The parts of a :class:`PFIBSEM`, as the session names them.
PARTS = ("stage", "cbs", "eds_detector", "ion_column", "mill", "electron_column", "gis",
         "sem", "eds", "sims")  # fmt: skip


class PFIBSEM(InstrumentBundle):
    """The whole chamber as one object for plans: ``slice_and_view(pfib, ...)``.

    It holds the instrument's devices as attributes (:data:`PARTS`), not as ophyd
    components, so their names and data keys stay their own (``sem_image``,
    ``mill_face_depth_um``) and a session has each device once. It reads nothing
    itself.

    Parameters
    ----------
    prefix : str
        The chamber's PV prefix (its parts' too).
    name : str
    **parts
        Every name of :data:`PARTS`, the device serving it.
    """

    PARTS = PARTS

    def __init__(self, prefix: str = "", *, name: str = "pfib", **parts):
        super().__init__(prefix, name=name, **parts)

    @property
    def insertables(self) -> dict:
        """What can be inserted under the pole piece, by the collision rules' names."""
        return {"cbs": self.cbs, "eds": self.eds_detector, "needle": self.gis.needle}

    @property
    def cameras(self) -> tuple:
        """The three detectors that write frames: SEM (CBS + TLD), EDS, SIMS."""
        return (self.sem, self.eds, self.sims)
