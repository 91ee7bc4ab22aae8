"""The simulated Xe+ PFIB-SEM IOC with EDS and SIMS: serial sectioning over Channel Access.

This module is the IOC only: PVs, interlocks, timing and the state file. What a cut
does to the sample and what each detector sees is the pure
:mod:`sim_devices.physics.fibsem_scene` (drift, thickness errors, Pt, field geometry).
The PV interface is documented in ``docs/fibsem.md`` ("PVs of the simulated PFIB-SEM
IOC").

* Every stage move and insertion is checked with
  :func:`multiscope.analysis.fibsem_geometry.violations` from the current state; a
  refused request fails its put (nothing moves) and ``interlock:message_RBV`` says why
  (empty after a success).
* Milling (``mill:slice``, ``mill:polish``) completes its put when the cut ends:
  ``mill:time_RBV`` instrument seconds, ``sys:time_scale`` wall seconds each. A cut is
  counted when it starts (written to the state file first), so a crash or a stop never
  lets the same slice be milled twice.
* The three detectors (``SEM:``, ``EDS:``, ``SIMS:``) render every channel of one
  acquisition at its first frame and return one channel per frame (``NumImages`` =
  number of channels, attribute ``channel``); one acquisition lasts ``AcquireTime``
  instrument seconds whatever its number of channels.

Run::

    python -m sim_devices.fibsem --prefix PFIB: --port 5073 [--phantom assb|nmc|tab] [--seed 0]
        [--tab-width-um 80] [--time-scale 0.01] [--state-file PATH] [--sem-shape 384 512]

``--phantom tab --seed S --tab-width-um W`` sections the tab the TXM IOC images with
the same ``--seed`` and ``--tab-width-um`` (one sample, one ground truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from textwrap import dedent

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, PvpropertyChar, SubGroup, pvproperty

from multiscope.analysis.fibsem_geometry import StageState, named_poses, violations
from sim_devices.areadetector import FrameContext, SimAreaDetector
from sim_devices.motor import MotorAxis, TrackedAxis
from sim_devices.physics.fibsem_scene import (
    DEFAULT_SIZE_UM,
    PT_INFILTRATION_UM,
    SPUTTER_YIELD_UM3_PER_NC,
    FibsemScene,
    FieldGeometry,
    SampleState,
    mill_time_s,
)
from sim_devices.physics.serial_phantom import DEFAULT_TAB_WIDTH_UM
from sim_devices.physics.serial_render import EDS_LINES
from sim_devices.refusal import (
    MessageRefusals,
    RefusableChar,
    RefusableDouble,
    RefusableEnum,
    RefusableInteger,
)
from sim_devices.server import default_state_file, ioc_argument_parser, run_from_args

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "FibsemIOC", "main"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "PFIB:"
DEFAULT_PORT = 5073
DEFAULT_TIME_SCALE = 0.01  # wall s per instrument s
POSE_TOLERANCE_DEG = 0.05
MAX_THICKNESS_UM = 1.0
MAX_ROCK_DEG = 10.0  # the plan's bound too
ACTUATION_S = 0.05  # wall s an insertable or the beam blanker takes
DEPTH_MEASUREMENT_SIGMA_UM = 0.01  # the SEM's depth measurement on the trench wall
GIS_HOT_C, GIS_COLD_C, GIS_TAU_S = 45.0, 22.0, 30.0  # heater target, room, time constant (instr.)
GIS_READY_C = 44.0
DEPOSIT_UM_PER_S = 0.02  # Pt growth rate (instrument), 1 um in 50 s
DEFAULT_LINES = ",".join(EDS_LINES)
INSERT_STATES = ("Retracted", "Inserted")


# Writable PVs are Refusable: a putter raising RefusedError fails the put with
# ECA_PUTFAIL (sim_devices.refusal) instead of closing the client's channel.
def _float(name, value, doc, *, units="", precision=3, read_only=False):
    return pvproperty(name=name, value=float(value), precision=precision, units=units,
                      dtype=float if read_only else RefusableDouble, read_only=read_only,
                      doc=doc)  # fmt: skip


def _long(name, value, doc, *, read_only=False):
    return pvproperty(name=name, value=int(value), read_only=read_only, doc=doc,
                      dtype=ChannelType.LONG if read_only else RefusableInteger)  # fmt: skip


def _text(name, value, doc, *, read_only=False):
    return pvproperty(name=name, value=value, max_length=256, string_encoding="utf-8",
                      dtype=PvpropertyChar if read_only else RefusableChar,
                      read_only=read_only, doc=doc)  # fmt: skip


def _enum(name, states, value, doc, *, read_only=False):
    return pvproperty(name=name, enum_strings=states, value=value, read_only=read_only,
                      dtype=ChannelType.ENUM if read_only else RefusableEnum, doc=doc)  # fmt: skip


def _axis(cls, prefix, *, velocity, limits, egu, doc):
    return SubGroup(cls, prefix=prefix, velocity=velocity, acceleration=0.05, limits=limits,
                    position=0.0, egu=egu, precision=4, doc=doc)  # fmt: skip


class FibsemIOC(MessageRefusals, PVGroup):
    """Xe+ PFIB-SEM chamber with CBS/TLD, EDS and SIMS (see the module docstring).

    The PVs are listed in ``docs/fibsem.md`` ("PVs of the simulated PFIB-SEM IOC").

    Parameters
    ----------
    phantom : {"assb", "nmc", "tab"}
        The sample (:func:`~sim_devices.physics.serial_phantom.make_serial_phantom`).
    seed : int
        Phantom, cut errors, drift and detector noise.
    tab_width_um : float, optional
        The ``"tab"`` phantom's width (default ``make_tab``'s, 80 um); only for it.
    time_scale : float
        Wall seconds per instrument second (cuts, deposition, exposures, heating).
    state_file : path, optional
        The sample state file (default :func:`default_state_file`); read if it exists
        (it must hold the same phantom, seed and size), written after every change.
    sem_shape : (int, int)
        SEM frame shape (ny, nx).
    size_um : (float, float, float)
        Phantom extent; the default holds every field.
    """

    # -- stage and insertions ---------------------------------------------------------
    stage_x = _axis(MotorAxis, "stage:x", velocity=5000.0, limits=(-50_000.0, 50_000.0),
                    egu="um", doc="Stage x (um)")  # fmt: skip
    stage_y = _axis(MotorAxis, "stage:y", velocity=5000.0, limits=(-50_000.0, 50_000.0),
                    egu="um", doc="Stage y (um)")  # fmt: skip
    stage_z = _axis(MotorAxis, "stage:z", velocity=5000.0, limits=(0.0, 10_000.0), egu="um",
                    doc="Stage z (um)")  # fmt: skip
    stage_tilt = _axis(TrackedAxis, "stage:tilt", velocity=180.0, limits=(-10.0, 60.0),
                       egu="deg", doc="Stage tilt (deg)")  # fmt: skip
    stage_rot = _axis(TrackedAxis, "stage:rot", velocity=540.0, limits=(-360.0, 360.0),
                      egu="deg", doc="Stage rotation (deg)")  # fmt: skip
    pose = pvproperty(name="stage:pose_RBV", value="eucentric", dtype=ChannelType.STRING,
                      read_only=True, doc="Named pose within 0.05 deg, else none")  # fmt: skip
    cbs_insert = _enum("cbs:insert", INSERT_STATES, "Retracted", "CBS detector; put-completion")
    cbs_insert_rbv = _enum("cbs:insert_RBV", INSERT_STATES, "Retracted", "CBS position",
                           read_only=True)  # fmt: skip
    eds_insert = _enum("eds:insert", INSERT_STATES, "Retracted", "EDS detector; put-completion")
    eds_insert_rbv = _enum("eds:insert_RBV", INSERT_STATES, "Retracted", "EDS position",
                           read_only=True)  # fmt: skip
    gis_needle = _enum("gis:needle", INSERT_STATES, "Retracted", "GIS needle; put-completion")
    gis_needle_rbv = _enum("gis:needle_RBV", INSERT_STATES, "Retracted", "GIS needle position",
                           read_only=True)  # fmt: skip
    message = _text("interlock:message_RBV", "", "Why the last request was refused",
                    read_only=True)  # fmt: skip
    # -- ion column, milling, deposition ----------------------------------------------
    ion_voltage = _float("ion:voltage", 30.0, "Ion beam energy", units="kV")
    ion_current = _float("ion:current", 1.0, "Milling / SIMS current", units="nA", precision=4)
    ion_beam = _enum("ion:beam", ("Blanked", "On"), "Blanked", "Ion beam; put-completion")
    mill_width = _float("mill:width_um", 40.0, "Pattern x extent", units="um")
    mill_height = _float("mill:height_um", 20.0, "Pattern y extent", units="um")
    mill_thickness = _float("mill:thickness_um", 0.06, "Slice thickness", units="um", precision=4)
    mill_max_thickness = _float("mill:max_thickness_um", MAX_THICKNESS_UM, "Largest slice",
                                units="um", read_only=True)  # fmt: skip
    mill_rock = _float("mill:rock_deg", 0.0, "Rocking polish: a pass at +rock and at -rock",
                       units="deg")  # fmt: skip
    mill_yield = _float("mill:sputter_um3_per_nC_RBV", 2.0, "Sample sputter yield",
                        units="um3/nC", read_only=True)  # fmt: skip
    mill_time = _float("mill:time_RBV", 0.0, "One slice's duration", units="s", read_only=True)
    mill_slice = _long("mill:slice", 0, "Put k: mill slice k (k = slices + 1)")
    mill_polish = _long("mill:polish", 0, "Put k: polish cut k (k = polishes + 1)")
    mill_polish_um = _float("mill:polish_um", 0.2, "Depth of a polish cut", units="um",
                            precision=4)  # fmt: skip
    mill_stop = _long("mill:stop", 0, "1 stops a cut now")
    mill_busy = _long("mill:busy_RBV", 0, "1 while cutting", read_only=True)
    mill_slices = _long("mill:slices_RBV", 0, "Slices started; persists", read_only=True)
    mill_polishes = _long("mill:polishes_RBV", 0, "Polish cuts started; persists",
                          read_only=True)  # fmt: skip
    mill_depth = _float("mill:face_depth_RBV", 0.0, "Nominal face depth", units="um",
                        precision=4, read_only=True)  # fmt: skip
    mill_last_complete = _long("mill:last_complete_RBV", 1, "0 when the last cut was stopped",
                               read_only=True)  # fmt: skip
    gis_heat = _enum("gis:heat", ("Off", "On"), "Off", "Pt precursor heater")
    gis_temperature = _float("gis:temperature_RBV", GIS_COLD_C, "Precursor temperature",
                             units="C", read_only=True)  # fmt: skip
    gis_deposit = _float("gis:deposit_um", 0.0, "Deposit this much Pt; put-completion",
                         units="um")  # fmt: skip
    gis_busy = _long("gis:busy_RBV", 0, "1 while depositing", read_only=True)
    gis_stop = _long("gis:stop", 0, "1 ends a deposition now")
    gis_infiltration = _float("gis:infiltration_um", PT_INFILTRATION_UM,
                              "Depth Pt fills open pores", units="um", read_only=True)  # fmt: skip
    gis_filled_to = _float("gis:filled_to_RBV", 0.0, "Deepest nominal depth with Pt in pores",
                           units="um", read_only=True)  # fmt: skip
    gis_cap = _float("gis:cap_um_RBV", 0.0, "Pt left on the face", units="um", precision=4,
                     read_only=True)  # fmt: skip
    # -- electron column and detector settings ----------------------------------------
    sem_kv = _float("sem:kv", 5.0, "Electron beam energy", units="kV")
    sem_current = _float("sem:current_na", 1.6, "Electron beam current", units="nA")
    sem_wd = _float("sem:wd_mm", 4.0, "Working distance", units="mm")
    sem_dwell = _float("sem:dwell_us", 3.0, "Dwell per pixel", units="us")
    sem_pixel = _float("sem:pixel_nm", 50.0, "SEM pixel size", units="nm")
    sem_shift_x = _float("sem:beam_shift_x_um", 0.0, "Beam shift x (SEM, EDS)", units="um",
                         precision=4)  # fmt: skip
    sem_shift_y = _float("sem:beam_shift_y_um", 0.0, "Beam shift y (SEM, EDS)", units="um",
                         precision=4)  # fmt: skip
    eds_lines = _text("eds:lines", DEFAULT_LINES, "EDS lines, comma separated")
    eds_binning = _long("eds:binning", 1, "EDS binning (1, 2, 4)")
    eds_pixel = _float("eds:pixel_nm", 81.4, "EDS pixel size", units="nm")
    sims_masses = pvproperty(name="sims:masses", value="6Li+,7Li+", dtype=ChannelType.STRING,
                             doc="SIMS masses, comma separated")  # fmt: skip
    sims_pixel = _float("sims:pixel_nm", 72.0, "SIMS pixel size", units="nm")
    time_scale_pv = _float("sys:time_scale", DEFAULT_TIME_SCALE, "Wall s per instrument s",
                           precision=4, read_only=True)  # fmt: skip
    # -- ground truth -----------------------------------------------------------------
    truth_phantom = pvproperty(name="truth:phantom", value="assb", dtype=ChannelType.STRING,
                               read_only=True, doc="Phantom kind")  # fmt: skip
    truth_seed = _long("truth:seed", 0, "Phantom seed", read_only=True)
    truth_size = pvproperty(name="truth:size_um", value=list(DEFAULT_SIZE_UM), max_length=3,
                            read_only=True, doc="Phantom x, y, z extent (um)")  # fmt: skip
    truth_tab_width = _float("truth:tab_width_um", math.nan, "The tab's width (tab phantom)",
                             units="um", read_only=True)  # fmt: skip
    truth_depth = _float("truth:depth_um", 0.0, "True face depth", units="um", precision=4,
                         read_only=True)  # fmt: skip
    measured_depth = _float("mill:measured_depth_RBV", math.nan,
                            "Milled depth measured on the trench at eucentric (um)",
                            units="um", precision=4, read_only=True)  # fmt: skip
    truth_drift_x = _float("truth:drift_x_um", 0.0, "True drift x", units="um", precision=4,
                           read_only=True)  # fmt: skip
    truth_drift_y = _float("truth:drift_y_um", 0.0, "True drift y", units="um", precision=4,
                           read_only=True)  # fmt: skip

    def __init__(self, *args, phantom: str = "assb", seed: int = 0,
                 time_scale: float = DEFAULT_TIME_SCALE, state_file: str | Path | None = None,
                 sem_shape=(384, 512), size_um=DEFAULT_SIZE_UM,
                 tab_width_um: float | None = None, **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.time_scale = float(time_scale)
        self._depth_rng = np.random.default_rng([int(seed), 7])
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.state_file = (
            Path(state_file) if state_file else default_state_file("fibsem", self.prefix)
        )
        if phantom == "tab" and tab_width_um is None:
            tab_width_um = DEFAULT_TAB_WIDTH_UM
        width = None if tab_width_um is None else float(tab_width_um)
        self.state = SampleState(kind=phantom, seed=int(seed), size_um=tuple(size_um),
                                 tab_width_um=width)  # fmt: skip
        if self.state_file.exists():
            saved = SampleState.load(self.state_file)
            sample = (self.state.kind, self.state.seed, self.state.size_um, width)
            if (saved.kind, saved.seed, tuple(saved.size_um), saved.tab_width_um) != sample:
                raise SystemExit(
                    f"state file {self.state_file} holds sample {saved.kind!r} seed {saved.seed}"
                    f" size {saved.size_um} tab width {saved.tab_width_um}, not {phantom!r} "
                    f"seed {seed} size {size_um} tab width {width}: give another --state-file "
                    "for another sample"
                )
            self.state = saved
        geometry = FieldGeometry(sem_shape=(int(sem_shape[0]), int(sem_shape[1])))
        self.scene = FibsemScene.build(phantom, seed, size_um, tab_width_um=width)
        self.scene.geometry = geometry
        self.sputter_yield = SPUTTER_YIELD_UM3_PER_NC[phantom]
        self._poses = named_poses()
        self._cut_stop = asyncio.Event()
        self._deposit_stop = asyncio.Event()
        self._rendered: dict[str, tuple[list[np.ndarray], dict]] = {}
        self._heater_task: asyncio.Task | None = None
        self._in_motion: set[str] = set()  # insertables moving in or out
        self.detectors = {}
        for name, shape, guard in (("SEM", geometry.sem_shape, self._guard_sem),
                                   ("EDS", geometry.eds_shape, self._guard_eds),
                                   ("SIMS", geometry.sims_shape, self._guard_sims)):  # fmt: skip
            detector = SimAreaDetector(prefix=f"{self.prefix}{name}:", scene=getattr(
                self, f"_scene_{name.lower()}"), shape=shape, ioc=self, seed=int(seed),
                time_scale=self.time_scale, acquire_guard=guard)  # fmt: skip
            self.detectors[name] = detector
            self.pvdb.update(detector.pvdb)
        self._set_channel_clocks()
        for axis in (self.stage_x, self.stage_y, self.stage_z, self.stage_tilt, self.stage_rot):
            axis.guard, axis.report_refusal = self._guard_stage, self.report_refusal
        for axis in (self.stage_tilt, self.stage_rot):
            axis.on_position = self._axis_moved

    # -- state ------------------------------------------------------------------------

    def inserted(self) -> frozenset[str]:
        """What is inserted, or moving (in or out): a moving insertable counts as in."""
        readbacks = {"cbs": self.cbs_insert_rbv, "eds": self.eds_insert_rbv,
                     "needle": self.gis_needle_rbv}  # fmt: skip
        return frozenset(name for name, rbv in readbacks.items()
                         if rbv.value == "Inserted" or name in self._in_motion)  # fmt: skip

    def stage_states(self) -> tuple[StageState, StageState]:
        """The stage for the collision rules: at its readbacks, and at its setpoints.

        A request is checked from both: an axis on its way (e.g. tilting to 58 deg)
        must not meet an insertion made while it moves.
        """
        axes = (self.stage_tilt, self.stage_rot, self.stage_x, self.stage_y, self.stage_z)
        inserted = self.inserted()
        at = StageState(*(axis.position for axis in axes), inserted)
        going = StageState(*(axis.target for axis in axes), inserted)
        return at, going

    def pose_name(self) -> str:
        """The named pose the stage is at (tilt and rotation within 0.05 deg), else none."""
        tilt, rot = self.stage_tilt.position, self.stage_rot.position
        for name, pose in self._poses.items():
            turn = abs((rot - pose.rotation_deg + 180.0) % 360.0 - 180.0)
            if abs(tilt - pose.tilt_deg) <= POSE_TOLERANCE_DEG and turn <= POSE_TOLERANCE_DEG:
                return name
        return "none"

    async def _axis_moved(self, axis) -> None:
        name = self.pose_name()
        if self.pose.value != name:
            await self.pose.write(name)
            await self._measure_depth(name)

    async def _measure_depth(self, pose: str) -> None:
        """At ``eucentric`` the SEM sees the trench's side wall: the milled depth, measured
        (the true depth, foreshortening corrected, with the measurement's scatter)."""
        if pose != "eucentric":
            value = math.nan
        else:
            scatter = self._depth_rng.normal(0.0, DEPTH_MEASUREMENT_SIGMA_UM)
            value = self.state.true_depth_um + float(scatter)
        await self.measured_depth.write(value)

    async def _check(self, what: str, change: dict) -> None:
        """Refuse ``change`` (StageState fields) if a cut runs or ``violations()`` forbid it."""
        if int(self.mill_busy.value):
            await self.refuse(f"{what}: a cut is running: the stage and the insertables stay put")
        problems: list[str] = []
        for start in self.stage_states():
            target = replace(self.stage_states()[1], **change)
            problems += [p for p in violations(start, target) if p not in problems]
        if problems:
            await self.refuse(f"{what}: " + "; ".join(problems))
        await self.accepted()

    async def _guard_stage(self, axis, value) -> None:
        names = {id(self.stage_x): "x_um", id(self.stage_y): "y_um", id(self.stage_z): "z_um",
                 id(self.stage_tilt): "tilt_deg", id(self.stage_rot): "rotation_deg"}  # fmt: skip
        name = names[id(axis)]
        await self._check(f"{axis.prefix.removeprefix(self.prefix)} {float(value):g}",
                          {name: float(value)})  # fmt: skip

    async def _insert(self, key: str, value, readback) -> str:
        want = "Inserted" if value in (1, "Inserted") else "Retracted"
        others = set(self.inserted()) - {key}
        inserted = others | {key} if want == "Inserted" else others
        await self._check(f"{key} {want.lower()}", {"inserted": frozenset(inserted)})
        if readback.value != want:
            self._in_motion.add(key)
            try:
                await asyncio.sleep(ACTUATION_S)
                await readback.write(want)
            finally:
                self._in_motion.discard(key)
        return want

    @cbs_insert.putter
    async def cbs_insert(self, instance, value):
        """Insert or retract the CBS detector (put-completion when in place)."""
        return await self._insert("cbs", value, self.cbs_insert_rbv)

    @eds_insert.putter
    async def eds_insert(self, instance, value):
        """Insert or retract the EDS detector (put-completion when in place)."""
        return await self._insert("eds", value, self.eds_insert_rbv)

    @gis_needle.putter
    async def gis_needle(self, instance, value):
        """Insert or retract the GIS needle (put-completion when in place); retracting it
        ends a deposition."""
        if value in (0, "Retracted") and int(self.gis_busy.value):
            self._deposit_stop.set()
        return await self._insert("needle", value, self.gis_needle_rbv)

    @gis_stop.putter
    async def gis_stop(self, instance, value):
        """1 ends a deposition now (the Pt deposited so far stays)."""
        if int(value) == 1 and int(self.gis_busy.value):
            self._deposit_stop.set()
        return 0

    # -- startup: publish the (reloaded) state ------------------------------------------

    @message.startup
    async def message(self, instance, async_lib):
        """Publish the sample state (read from the state file) and the derived PVs."""
        st = self.state
        await self.truth_phantom.write(st.kind)
        await self.truth_seed.write(st.seed)
        await self.truth_size.write(list(st.size_um))
        await self.truth_tab_width.write(math.nan if st.tab_width_um is None else st.tab_width_um)
        await self.mill_yield.write(self.sputter_yield)
        await self.time_scale_pv.write(self.time_scale)
        await self._publish_state()
        await self._update_mill_time()
        self.state.save(self.state_file)

    async def _publish_state(self) -> None:
        st = self.state
        for pv, value in ((self.mill_slices, st.slices), (self.mill_polishes, st.polishes),
                          (self.mill_depth, st.face_depth_um),
                          (self.mill_last_complete, int(st.last_complete)),
                          (self.gis_filled_to, st.filled_to_um), (self.gis_cap, st.cap_um),
                          (self.truth_depth, st.true_depth_um),
                          (self.truth_drift_x, st.drift_x_um),
                          (self.truth_drift_y, st.drift_y_um)):  # fmt: skip
            await pv.write(value)

    async def _save(self) -> None:
        await asyncio.to_thread(self.state.save, self.state_file)
        await self._publish_state()

    # -- milling ----------------------------------------------------------------------

    def _cut_time(self, depth_um: float, **override) -> float:
        """One cut's duration (instrument s); a rocking polish makes it in two passes.

        Seed 003's rocking polish mills each slice from two beam tilts, +rock and
        -rock, advancing the cut at each: twice the dose of one pass. The simulated
        face has no curtaining for the second pass to remove, so only the time shows it.
        """
        values = {"width": self.mill_width.value, "height": self.mill_height.value,
                  "current": self.ion_current.value, "rock": self.mill_rock.value,
                  **override}  # fmt: skip
        passes = 2 if float(values["rock"]) > 0 else 1
        return passes * mill_time_s(values["width"], values["height"], depth_um,
                                    self.sputter_yield, values["current"])  # fmt: skip

    async def _update_mill_time(self, **override) -> None:
        thickness = override.pop("thickness", self.mill_thickness.value)
        await self.mill_time.write(self._cut_time(thickness, **override))

    @mill_width.putter
    async def mill_width(self, instance, value):
        """Pattern width: the cut duration follows."""
        await self._update_mill_time(width=value)
        return value

    @mill_height.putter
    async def mill_height(self, instance, value):
        """Pattern height: the cut duration follows."""
        await self._update_mill_time(height=value)
        return value

    @mill_thickness.putter
    async def mill_thickness(self, instance, value):
        """Slice thickness: 0 < t <= mill:max_thickness_um."""
        if not 0.0 < float(value) <= MAX_THICKNESS_UM:
            await self.refuse(f"mill:thickness_um {value} outside (0, {MAX_THICKNESS_UM}] um")
        await self.accepted()
        await self._update_mill_time(thickness=value)
        return value

    @mill_rock.putter
    async def mill_rock(self, instance, value):
        """Rocking polish angle: 0 (none) to MAX_ROCK_DEG; the cut duration follows."""
        if not 0.0 <= float(value) <= MAX_ROCK_DEG:
            await self.refuse(f"mill:rock_deg {value} outside [0, {MAX_ROCK_DEG}] deg")
        await self.accepted()
        await self._update_mill_time(rock=value)
        return value

    @ion_current.putter
    async def ion_current(self, instance, value):
        """Ion current: the cut duration follows."""
        if not float(value) > 0.0:
            await self.refuse(f"ion:current {value} nA must be > 0")
        await self.accepted()
        await self._update_mill_time(current=value)
        return value

    @ion_beam.putter
    async def ion_beam(self, instance, value):
        """Blank or unblank; blanking during a cut stops it (counted, incomplete)."""
        want = "On" if value in (1, "On") else "Blanked"
        if want == "Blanked" and int(self.mill_busy.value):
            self._cut_stop.set()
        if want == "Blanked" and int(self.gis_busy.value):
            self._deposit_stop.set()
        if want != instance.value:
            await asyncio.sleep(ACTUATION_S / 2)
        return want

    @mill_stop.putter
    async def mill_stop(self, instance, value):
        """1 stops a running cut now and blanks the beam."""
        if int(value) == 1 and int(self.mill_busy.value):
            self._cut_stop.set()
            await self.ion_beam.write("Blanked")
        return 0

    async def _cut(self, k: int, polish: bool) -> int:
        kind = "polish" if polish else "slice"
        done = self.state.polishes if polish else self.state.slices
        reasons = []
        if int(self.mill_busy.value):
            reasons.append("a cut is running")
        if int(k) != done + 1:
            reasons.append(f"{kind} {k} is not the next one ({done} made: put {done + 1})")
        if self.pose_name() != "mill":
            reasons.append(f"the stage is at {self.pose_name()!r}, not at 'mill'")
        if self.ion_beam.value != "On":
            reasons.append("the ion beam is blanked")
        if self.inserted():
            reasons.append(f"{sorted(self.inserted())} inserted: retract first")
        if reasons:
            await self.refuse(f"mill:{kind} {k} refused: " + "; ".join(reasons))
        await self.accepted()
        depth = float(self.mill_polish_um.value if polish else self.mill_thickness.value)
        duration = self._cut_time(depth)
        self._cut_stop.clear()
        self.state.start_cut(polish=polish)  # counted (and saved) before the beam mills
        await self._save()
        await self.mill_busy.write(1)
        start = time.monotonic()
        try:
            await asyncio.wait_for(self._cut_stop.wait(), duration * self.time_scale)
            fraction = (time.monotonic() - start) / (duration * self.time_scale)
        except TimeoutError:
            fraction = 1.0
        self.state.finish_cut(depth, fraction, polish=polish)
        await self._save()
        await self.mill_busy.write(0)
        return int(k)

    @mill_slice.putter
    async def mill_slice(self, instance, value):
        """Mill slice ``value``; completes when the cut ends (see ``_cut`` for refusals)."""
        return await self._cut(int(value), polish=False)

    @mill_polish.putter
    async def mill_polish(self, instance, value):
        """Polish cut ``value`` of ``mill:polish_um``; completes when the cut ends."""
        return await self._cut(int(value), polish=True)

    # -- gas injection ----------------------------------------------------------------

    @gis_heat.putter
    async def gis_heat(self, instance, value):
        """Heat the precursor to 45 C (or let it cool); the temperature follows."""
        want = "On" if value in (1, "On") else "Off"
        if self._heater_task is None or self._heater_task.done():
            self._heater_task = asyncio.get_running_loop().create_task(self._heater())
        return want

    async def _heater(self) -> None:
        tick = 0.02  # wall s
        while True:
            target = GIS_HOT_C if self.gis_heat.value == "On" else GIS_COLD_C
            temp = float(self.gis_temperature.value)
            if abs(temp - target) < 0.01:
                if temp != target:
                    await self.gis_temperature.write(target)
                return
            step = 1.0 - math.exp(-tick / self.time_scale / GIS_TAU_S)
            await self.gis_temperature.write(temp + (target - temp) * max(step, 0.05))
            await asyncio.sleep(tick)

    @gis_deposit.putter
    async def gis_deposit(self, instance, value):
        """Deposit ``value`` um of Pt (needle in, heated, beam On); completes when done."""
        reasons = []
        if not float(value) > 0:
            reasons.append("the thickness must be > 0")
        if self.gis_needle_rbv.value != "Inserted":
            reasons.append("the GIS needle is retracted")
        if float(self.gis_temperature.value) < GIS_READY_C:
            reasons.append(f"the precursor is at {self.gis_temperature.value:.1f} C, not "
                           f"{GIS_READY_C:g} C (gis:heat On)")  # fmt: skip
        if self.ion_beam.value != "On":
            reasons.append("the ion beam is blanked")
        if int(self.mill_busy.value):
            reasons.append("a cut is running")
        if int(self.gis_busy.value):
            reasons.append("a deposition is running")
        if reasons:
            await self.refuse(f"gis:deposit_um {value} refused: " + "; ".join(reasons))
        await self.accepted()
        # Deposits at DEPOSIT_UM_PER_S until done; blanking the beam, retracting the
        # needle or gis:stop end it early with what was deposited so far.
        self._deposit_stop.clear()
        await self.gis_busy.write(1)
        wall = float(value) / DEPOSIT_UM_PER_S * self.time_scale
        t0 = time.monotonic()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deposit_stop.wait(), wall)
            share = min(1.0, (time.monotonic() - t0) / wall) if wall > 0 else 1.0
            self.state.deposit(float(value) * share, float(self.gis_infiltration.value))
            await self._save()
        finally:
            await self.gis_busy.write(0)
        return value

    # -- detectors --------------------------------------------------------------------

    async def _guard_detector(self, name: str, pose: str, extra: list[str]) -> None:
        reasons = list(extra)
        if self.pose_name() != pose:
            reasons.insert(0, f"the stage is at {self.pose_name()!r}, not at {pose!r}")
        if int(self.mill_busy.value):
            reasons.append("a cut is running")
        if reasons:
            await self.refuse(f"{name} acquisition refused: " + "; ".join(reasons))
        await self.accepted()

    async def _guard_sem(self, detector) -> None:
        await self._guard_detector("SEM", "sem", [])

    async def _guard_eds(self, detector) -> None:
        extra = [] if self.eds_insert_rbv.value == "Inserted" else ["the EDS detector is retracted"]
        unknown = [line for line in self.lines() if line not in EDS_LINES]
        if unknown:
            extra.append(f"unknown EDS line(s) {unknown}; known: {list(EDS_LINES)}")
        await self._guard_detector("EDS", "sem", extra)

    async def _guard_sims(self, detector) -> None:
        extra = [] if self.ion_beam.value == "On" else ["the ion beam is blanked"]
        await self._guard_detector("SIMS", "sims", extra)

    def lines(self) -> list[str]:
        """The EDS lines of ``eds:lines`` in order."""
        return _split(self.eds_lines.value)

    def masses(self) -> list[str]:
        """The SIMS masses of ``sims:masses`` in order."""
        return _split(self.sims_masses.value)

    def _set_channel_clocks(self, lines=None, masses=None) -> None:
        # One acquisition is one scan of AcquireTime: its N channel frames share it.
        lines = self.lines() if lines is None else lines
        masses = self.masses() if masses is None else masses
        channels = {"SEM": 2, "EDS": len(lines) or 1, "SIMS": len(masses) or 1}
        for name, n in channels.items():
            self.detectors[name].time_scale = self.time_scale / n

    @eds_lines.putter
    async def eds_lines(self, instance, value):
        """The EDS lines; one frame per line."""
        lines = _split(value)
        unknown = [line for line in lines if line not in EDS_LINES]
        if unknown or not lines:
            await self.refuse(f"eds:lines {value!r}: unknown line(s) {unknown}; known: "
                              f"{list(EDS_LINES)}")  # fmt: skip
        await self.accepted()
        self._set_channel_clocks(lines=lines)
        return value

    @sims_masses.putter
    async def sims_masses(self, instance, value):
        """The SIMS masses; one frame per mass."""
        self._set_channel_clocks(masses=_split(value))
        return value

    @eds_binning.putter
    async def eds_binning(self, instance, value):
        """EDS binning: 1, 2 or 4."""
        if int(value) not in (1, 2, 4):
            await self.refuse(f"eds:binning {value}: 1, 2 or 4")
        await self.accepted()
        return int(value)

    def _attributes(self) -> dict[str, float]:
        st = self.state
        return {"face_depth_um": st.face_depth_um, "true_depth_um": st.true_depth_um,
                "drift_x_um": st.drift_x_um, "drift_y_um": st.drift_y_um,
                "tilt_deg": self.stage_tilt.position,
                "rotation_deg": self.stage_rot.position}  # fmt: skip

    def _field_attributes(self, shape, pixel_um: float, beam_shift_um) -> dict[str, float]:
        """Ground truth of a field: its true origin on the face (um) and its pixel."""
        y0, x0 = self.scene.field_origin_um(self.state, shape, pixel_um, beam_shift_um)
        return {"origin_y_um": float(y0), "origin_x_um": float(x0), "pixel_um": pixel_um}

    def _channel_frame(self, name: str, ctx: FrameContext, render, field: dict):
        """Render every channel at an acquisition's first frame; return this frame's."""
        if ctx.image_index == 0 or name not in self._rendered:
            self._rendered[name] = (render(ctx), {**self._attributes(), **field})
        frames, attrs = self._rendered[name]
        channel = ctx.image_index % len(frames)
        return frames[channel], {**attrs, "channel": channel}

    def _beam_shift(self) -> tuple[float, float]:
        return (float(self.sem_shift_x.value), float(self.sem_shift_y.value))

    def _scene_sem(self, ctx: FrameContext):
        def render(ctx):
            images = self.scene.sem(self.state, ctx.shape, float(self.sem_pixel.value) / 1e3,
                                    beam_shift_um=self._beam_shift(),
                                    dwell_us=float(self.sem_dwell.value),
                                    current_nA=float(self.sem_current.value),
                                    rng=ctx.rng)  # fmt: skip
            return [images["cbs"], images["tld"]]

        field = self._field_attributes(ctx.shape, float(self.sem_pixel.value) / 1e3,
                                       self._beam_shift())  # fmt: skip
        return self._channel_frame("SEM", ctx, render, field)

    def _scene_eds(self, ctx: FrameContext):
        def render(ctx):
            b = int(self.eds_binning.value)
            shape = (-(-ctx.shape[0] // b), -(-ctx.shape[1] // b))
            maps = self.scene.eds(self.state, shape, float(self.eds_pixel.value) * b / 1e3,
                                  lines=self.lines(), live_time_s=ctx.exposure_time,
                                  beam_shift_um=self._beam_shift(), rng=ctx.rng)  # fmt: skip
            return [m.repeat(b, 0).repeat(b, 1)[: ctx.shape[0], : ctx.shape[1]]
                    for m in maps.values()]  # fmt: skip

        b = int(self.eds_binning.value)
        field = self._field_attributes((-(-ctx.shape[0] // b), -(-ctx.shape[1] // b)),
                                       float(self.eds_pixel.value) * b / 1e3,
                                       self._beam_shift())  # fmt: skip
        return self._channel_frame("EDS", ctx, render, field)

    def _scene_sims(self, ctx: FrameContext):
        def render(ctx):
            maps = self.scene.sims(self.state, ctx.shape, float(self.sims_pixel.value) / 1e3,
                                   masses=self.masses(), frame_time_s=ctx.exposure_time,
                                   current_na=float(self.ion_current.value),
                                   rng=ctx.rng)  # fmt: skip
            return list(maps.values())

        field = self._field_attributes(ctx.shape, float(self.sims_pixel.value) / 1e3,
                                       (0.0, 0.0))  # fmt: skip
        return self._channel_frame("SIMS", ctx, render, field)


def _split(text) -> list[str]:
    return [item.strip() for item in str(text).split(",") if item.strip()]


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, build the phantom and serve the PFIB-SEM IOC until SIGTERM."""
    parser = ioc_argument_parser(dedent(__doc__ or ""), default_prefix=DEFAULT_PREFIX,
                                 default_port=DEFAULT_PORT)  # fmt: skip
    parser.add_argument("--phantom", choices=sorted(SPUTTER_YIELD_UM3_PER_NC), default="assb",
                        help="the sample (default %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="phantom and noise seed")
    parser.add_argument("--tab-width-um", type=float, default=None,
                        help=f"the tab phantom's width (default {DEFAULT_TAB_WIDTH_UM:g} um, "
                             "as the TXM IOC's)")  # fmt: skip
    parser.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                        help="wall s per instrument s (default %(default)s)")  # fmt: skip
    parser.add_argument(
        "--state-file",
        default=None,
        help="sample state file (default <data dir>/sim/fibsem-<prefix>.json)",
    )
    parser.add_argument("--sem-shape", type=int, nargs=2, metavar=("NY", "NX"),
                        default=(384, 512), help="SEM frame shape (default 384 512)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.tab_width_um is not None and args.phantom != "tab":
        parser.error(f"--tab-width-um is for --phantom tab, not {args.phantom}")
    ioc = FibsemIOC(prefix=args.prefix, phantom=args.phantom, seed=args.seed,
                    time_scale=args.time_scale, state_file=args.state_file,
                    sem_shape=tuple(args.sem_shape), tab_width_um=args.tab_width_um)  # fmt: skip
    # Compile the renderers' kernels now, not in the first acquisition.
    ioc.scene.sem(ioc.state, (16, 16), 0.05, rng=np.random.default_rng(0))
    run_from_args(ioc.pvdb, args)


if __name__ == "__main__":
    main()
