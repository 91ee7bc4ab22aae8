"""The simulated laser mill IOC: a 532 nm laser cutting tabs out of an electrode sheet.

The IOC serves the x-y table and the focus (motor records), the laser (emission,
power, pulses, cutting speed, spot), the enclosure's interlock and the argon-box
flag, a path (waveforms of vertices) and numbered cuts along it. What a cut does to
the sheet is the pure :mod:`sim_devices.physics.laser_sheet`: the kerf (a disc of
``laser:kerf_um_RBV`` swept along the path) removes material from a map of 2 um
pixels; the piece a closed cut frees is measured (``piece:*``). The PV interface is
documented in ``docs/laser.md`` ("PVs of the simulated laser mill IOC").

* A refused put changes nothing, is answered ``ECA_PUTFAIL`` (``sim_devices.refusal``)
  and ``interlock:message_RBV`` says why (empty after an accepted request).
* The laser fires (``laser:firing_RBV``) only while a cut runs, and only with the
  enclosure closed, emission on and the power within the limit; opening the
  enclosure (``sim:door``) switches emission off and stops a cut.
* ``cut:start`` takes the cut's number ``k`` and cuts only if ``k - 1`` cuts were
  made; the count is saved before the laser fires, so a stopped or interrupted cut
  is counted (part-cut, ``cut:last_complete_RBV`` 0) and never made again. The count
  and the material map live in the state file (``--state-file``, and the map beside
  it, ``<state>.map.npz``), so a restarted IOC finds them.

Run::

    python -m sim_devices.laser --prefix LASER: --port 5074 [--time-scale 0.1]
        [--state-file PATH] [--power-limit 5.0] [--pixel-um 2]
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from pathlib import Path
from textwrap import dedent

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, PvpropertyChar, SubGroup, pvproperty

from sim_devices.motor import MotorAxis
from sim_devices.physics.laser_sheet import NO_PIECE, SheetMap, arclength, point_at
from sim_devices.refusal import (
    MessageRefusals,
    RefusableDouble,
    RefusableEnum,
    RefusableInteger,
)
from sim_devices.server import default_state_file, ioc_argument_parser, run_from_args

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "LaserIOC", "main"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "LASER:"
DEFAULT_PORT = 5074
DEFAULT_TIME_SCALE = 0.1  # wall s per instrument s
SPOT_UM = 40.0  # 1/e^2 diameter
KERF_FRACTION = 0.5  # kerf / spot at the lowest power that cuts through
POWER_LIMIT_W = 5.0
#: Lowest power that cuts through the ~100 um sheet, per mm/s of cutting speed (W s/mm).
MIN_POWER_W_PER_MM_S = 0.25
#: Share of the 532 nm beam a glass lid (argon box) passes: ~4 % reflected per surface.
LID_TRANSMISSION = 0.92
MAX_SPEED_MM_S = 20.0
MAX_VERTICES = 4096
START_TOLERANCE_UM = 1.0  # the table must be this close to the path's start
ACTUATION_S = 0.05  # wall s the emission shutter takes
TICK_S = 0.02  # wall s between updates of a running cut
OPEN_CLOSED = ("Closed", "Open")
#: The table's working area (x, y), um: the sheet covers it (the table's soft limits).
SHEET_UM = (6000.0, 6000.0)


def _float(name, value, doc, *, units="", precision=3, read_only=False):
    return pvproperty(name=name, value=float(value), precision=precision, units=units,
                      dtype=float if read_only else RefusableDouble, read_only=read_only,
                      doc=doc)  # fmt: skip


def _long(name, value, doc, *, read_only=False):
    return pvproperty(name=name, value=int(value), read_only=read_only, doc=doc,
                      dtype=ChannelType.LONG if read_only else RefusableInteger)  # fmt: skip


def _enum(name, states, value, doc, *, read_only=False):
    return pvproperty(name=name, enum_strings=states, value=value, read_only=read_only,
                      dtype=ChannelType.ENUM if read_only else RefusableEnum, doc=doc)  # fmt: skip


def _vertices(name, doc):
    return pvproperty(name=name, value=[0.0], max_length=MAX_VERTICES, dtype=float,
                      doc=doc)  # fmt: skip


def _save_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class LaserIOC(MessageRefusals, PVGroup):
    """The laser mill (see the module docstring; PVs in ``docs/laser.md``).

    Parameters
    ----------
    time_scale : float
        Wall seconds per instrument second (cuts).
    state_file : path, optional
        Cut count (JSON); the map is ``<state_file>.map.npz``. Read if it exists.
    power_limit_W : float
    pixel_um : float
        The material map's pixel.
    """

    table_x = SubGroup(MotorAxis, prefix="table:x", velocity=20_000.0, acceleration=0.05,
                       limits=(0.0, SHEET_UM[0]), position=0.0, egu="um", precision=2,
                       doc="Table x (um)")  # fmt: skip
    table_y = SubGroup(MotorAxis, prefix="table:y", velocity=20_000.0, acceleration=0.05,
                       limits=(0.0, SHEET_UM[1]), position=0.0, egu="um", precision=2,
                       doc="Table y (um)")  # fmt: skip
    focus_z = SubGroup(MotorAxis, prefix="focus:z", velocity=1000.0, acceleration=0.05,
                       limits=(-2000.0, 2000.0), position=0.0, egu="um", precision=2,
                       doc="Focus z (um)")  # fmt: skip
    message = pvproperty(name="interlock:message_RBV", value="", max_length=256,
                         string_encoding="utf-8", dtype=PvpropertyChar, read_only=True,
                         doc="Why the last request was refused")  # fmt: skip
    door = _enum("sim:door", OPEN_CLOSED, "Closed", "Test control: open the enclosure")
    interlock = _enum(
        "enclosure:interlock_RBV",
        OPEN_CLOSED,
        "Closed",
        "Enclosure interlock (Open: the laser cannot emit)",
        read_only=True,
    )
    argon = _enum("enclosure:argon", ("No", "Yes"), "No",
                  "Sample sealed under argon with a glass lid (the lid takes 8 %)")  # fmt: skip
    emission = _enum("laser:emission", ("Off", "On"), "Off", "Emission; put-completion")
    firing = _long("laser:firing_RBV", 0, "1 while the beam is on the sheet", read_only=True)
    power = _float("laser:power_W", 1.0, "Average power", units="W")
    power_limit = _float("laser:power_limit_W_RBV", POWER_LIMIT_W, "Highest power allowed",
                         units="W", read_only=True)  # fmt: skip
    min_power = _float("laser:min_power_W_RBV", 0.5, "Lowest power that cuts through",
                       units="W", read_only=True)  # fmt: skip
    rep_rate = _float("laser:rep_rate_kHz", 100.0, "Pulse repetition rate", units="kHz")
    pulse_width = _float("laser:pulse_width_ns", 10.0, "Pulse width (recorded)", units="ns")
    pulse_energy = _float("laser:pulse_energy_uJ_RBV", 10.0, "Power / repetition rate",
                          units="uJ", read_only=True)  # fmt: skip
    speed = _float("laser:speed_mm_s", 2.0, "Cutting speed", units="mm/s")
    spot = _float("laser:spot_um_RBV", SPOT_UM, "Spot, 1/e^2 diameter", units="um",
                  read_only=True)  # fmt: skip
    kerf = _float("laser:kerf_um_RBV", SPOT_UM * KERF_FRACTION, "Width the cut removes",
                  units="um", read_only=True)  # fmt: skip
    path_x = _vertices("path:x_um", "Path vertices x (table um)")
    path_y = _vertices("path:y_um", "Path vertices y (table um)")
    path_n = _long("path:n_RBV", 0, "Vertices loaded (0 until x and y agree)", read_only=True)
    path_length = _float("path:length_um_RBV", 0.0, "Path length", units="um", read_only=True)
    path_time = _float("path:time_s_RBV", 0.0, "Cut duration at the speed (instrument s)",
                       units="s", read_only=True)  # fmt: skip
    path_intact = _float("path:intact_fraction_RBV", math.nan,
                         "Share of the path's kerf still holding material", precision=4,
                         read_only=True)  # fmt: skip
    cut_start = _long("cut:start", 0, "Put k: make cut k along the path (k = count + 1)")
    cut_stop = _long("cut:stop", 0, "1 stops a cut now (emission off)")
    cut_busy = _long("cut:busy_RBV", 0, "1 while cutting", read_only=True)
    cut_count = _long("cut:count_RBV", 0, "Cuts started; persists", read_only=True)
    cut_complete = _long("cut:last_complete_RBV", 1, "0 when the last cut was stopped",
                         read_only=True)  # fmt: skip
    cut_fraction = _float("cut:fraction_RBV", 0.0, "Share of the last path cut",
                          read_only=True)  # fmt: skip
    piece_count = _long("piece:count_RBV", 0, "Pieces the last cut freed", read_only=True)
    piece_area = _float("piece:area_um2_RBV", 0.0, "Largest freed piece's area", units="um2",
                        precision=1, read_only=True)  # fmt: skip
    piece_width = _float("piece:width_um_RBV", math.nan, "Its x extent", units="um",
                         read_only=True)  # fmt: skip
    piece_length = _float("piece:length_um_RBV", math.nan, "Its y extent", units="um",
                          read_only=True)  # fmt: skip
    piece_x = _float("piece:x_um_RBV", math.nan, "Its lowest x", units="um", read_only=True)
    piece_y = _float("piece:y_um_RBV", math.nan, "Its lowest y", units="um", read_only=True)
    row_y = _float("piece:row_y_um", 0.0, "Table y of the row measured", units="um")
    row_width = _float("piece:row_width_um_RBV", math.nan, "The piece's width in that row",
                       units="um", read_only=True)  # fmt: skip
    removed = _float("map:removed_um2_RBV", 0.0, "Material removed from the sheet",
                     units="um2", precision=1, read_only=True)  # fmt: skip
    pixel = _float("map:pixel_um_RBV", 2.0, "Material map pixel", units="um", read_only=True)
    map_file = pvproperty(name="map:file_RBV", value="", max_length=1024, string_encoding="utf-8",
                          dtype=PvpropertyChar, read_only=True,
                          doc="The material map file (truth)")  # fmt: skip
    time_scale_pv = _float("sys:time_scale", DEFAULT_TIME_SCALE, "Wall s per instrument s",
                           precision=4, read_only=True)  # fmt: skip

    def __init__(self, *args, time_scale: float = DEFAULT_TIME_SCALE,
                 state_file: str | Path | None = None, power_limit_W: float = POWER_LIMIT_W,
                 pixel_um: float = 2.0, **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.time_scale = float(time_scale)
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.power_limit_W = float(power_limit_W)
        self.state_file = (
            Path(state_file) if state_file else default_state_file("laser", self.prefix)
        )
        self.map_path = self.state_file.with_name(self.state_file.name + ".map.npz")
        self.count, self.last_complete = 0, True
        self.sheet = SheetMap(SHEET_UM, pixel_um)
        if self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            self.count, self.last_complete = int(saved["count"]), bool(saved["last_complete"])
        if self.map_path.exists():
            self.sheet = SheetMap.load(self.map_path)
        self._piece = NO_PIECE
        for axis in (self.table_x, self.table_y):
            axis.guard, axis.report_refusal = self._guard_table, self.report_refusal
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()  # set while no cut runs
        self._idle.set()

    # -- refusals ---------------------------------------------------------------------

    async def _guard_table(self, axis, value) -> None:
        if int(self.cut_busy.value):
            await self.refuse(f"{axis.prefix.removeprefix(self.prefix)} {value:g}: a cut is "
                              "running: the table follows the path")  # fmt: skip
        await self.accepted()

    # -- state ------------------------------------------------------------------------

    async def _save(self) -> None:
        state = json.dumps({"count": self.count, "last_complete": self.last_complete}).encode()
        await asyncio.to_thread(_save_atomically, self.state_file, state)

    async def _save_map(self) -> None:
        data = await asyncio.to_thread(self.sheet.to_bytes)
        await asyncio.to_thread(_save_atomically, self.map_path, data)

    @message.startup
    async def message(self, instance, async_lib):
        """Publish the (reloaded) state and the derived PVs; write the state file."""
        await self.time_scale_pv.write(self.time_scale)
        await self.power_limit.write(self.power_limit_W)
        await self.pixel.write(self.sheet.pixel_um)
        await self.map_file.write(str(self.map_path))
        await self.cut_count.write(self.count)
        await self.cut_complete.write(int(self.last_complete))
        await self.removed.write(self.sheet.removed_um2)
        await self._update_speed_derived(float(self.speed.value))
        await self._save()
        await self._save_map()

    # -- enclosure and laser ----------------------------------------------------------

    @door.putter
    async def door(self, instance, value):
        """Open or close the enclosure; opening cuts the emission (and a cut) at once."""
        state = "Open" if value in (1, "Open") else "Closed"
        if state == "Open" and int(self.cut_busy.value):
            # The cut's put completes (stopped): its client reads why here.
            await self.message.write(f"cut {self.count} stopped: the enclosure was opened")
        if state == "Open":
            self._stop.set()
            await self.emission.write("Off", verify_value=False)
            await self.firing.write(0)
        await self.interlock.write(state)
        return state

    @emission.putter
    async def emission(self, instance, value):
        """Emission On (refused with the enclosure open or the power over the limit), Off."""
        want = "On" if value in (1, "On") else "Off"
        if want == "On":
            reasons = []
            if self.interlock.value != "Closed":
                reasons.append("the enclosure interlock is open")
            if float(self.power.value) > self.power_limit_W:
                reasons.append(f"power {self.power.value:g} W over the {self.power_limit_W:g} W "
                               "limit")  # fmt: skip
            if reasons:
                await self.refuse("laser:emission On refused: " + "; ".join(reasons))
            await self.accepted()
        else:
            await self.accepted()
        if want == "Off" and int(self.cut_busy.value):
            # No emission, no cut: it ends here, counted part-cut; the put completes
            # once the cut has ended (a safe state that switches emission off waits).
            self._stop.set()
            await asyncio.wait_for(self._idle.wait(), 30.0)
        if want != instance.value:
            await asyncio.sleep(ACTUATION_S)
        return want

    @power.putter
    async def power(self, instance, value):
        """Average power: refused over the limit (or <= 0) and while cutting."""
        if not 0.0 < float(value) <= self.power_limit_W:
            await self.refuse(f"laser:power_W {value:g} W outside (0, {self.power_limit_W:g}] W "
                              "(the power limit)")  # fmt: skip
        if int(self.cut_busy.value):
            await self.refuse("laser:power_W: a cut is running")
        await self.accepted()
        await self.pulse_energy.write(float(value) / float(self.rep_rate.value) * 1e3)
        return float(value)

    @rep_rate.putter
    async def rep_rate(self, instance, value):
        """Repetition rate (> 0); the pulse energy follows."""
        if not float(value) > 0:
            await self.refuse(f"laser:rep_rate_kHz {value:g} must be > 0")
        await self.accepted()
        await self.pulse_energy.write(float(self.power.value) / float(value) * 1e3)
        return float(value)

    async def _update_speed_derived(self, speed: float, argon: str | None = None) -> None:
        lid = LID_TRANSMISSION if (argon or self.argon.value) == "Yes" else 1.0
        await self.min_power.write(MIN_POWER_W_PER_MM_S * speed / lid)
        await self.path_time.write(float(self.path_length.value) / (speed * 1000.0))

    @argon.putter
    async def argon(self, instance, value):
        """The argon box's glass lid on (``Yes``) or off: the lowest cutting power follows."""
        want = "Yes" if value in (1, "Yes") else "No"
        if int(self.cut_busy.value):
            await self.refuse("enclosure:argon: a cut is running")
        await self.accepted()
        await self._update_speed_derived(float(self.speed.value), argon=want)
        return want

    @speed.putter
    async def speed(self, instance, value):
        """Cutting speed in (0, 20] mm/s; the path's duration and the lowest power follow."""
        if not 0.0 < float(value) <= MAX_SPEED_MM_S:
            await self.refuse(f"laser:speed_mm_s {value:g} outside (0, {MAX_SPEED_MM_S:g}]")
        if int(self.cut_busy.value):
            await self.refuse("laser:speed_mm_s: a cut is running")
        await self.accepted()
        await self._update_speed_derived(float(value))
        return float(value)

    # -- path -------------------------------------------------------------------------

    def _path(self) -> tuple[np.ndarray, np.ndarray] | None:
        x = np.asarray(self.path_x.value, dtype=float)
        y = np.asarray(self.path_y.value, dtype=float)
        if x.size != y.size or x.size < 2:
            return None
        return x, y

    async def _path_changed(self, x=None, y=None) -> None:
        x = np.asarray(self.path_x.value if x is None else x, dtype=float)
        y = np.asarray(self.path_y.value if y is None else y, dtype=float)
        agreed = x.size == y.size and x.size >= 2
        length = float(arclength(x, y)[-1]) if agreed else 0.0
        await self.path_n.write(x.size if agreed else 0)
        await self.path_length.write(length)
        if agreed:
            await self._publish_intact(x, y)
        else:
            await self.path_intact.write(math.nan)
        await self.path_time.write(length / (float(self.speed.value) * 1000.0))

    async def _publish_intact(self, x, y) -> None:
        radius = float(self.kerf.value) / 2.0
        await self.path_intact.write(self.sheet.intact_fraction(x, y, radius))

    @path_x.putter
    async def path_x(self, instance, value):
        """Vertices' x; refused while cutting."""
        if int(self.cut_busy.value):
            await self.refuse("path:x_um: a cut is running")
        await self.accepted()
        await self._path_changed(x=value)
        return value

    @path_y.putter
    async def path_y(self, instance, value):
        """Vertices' y; refused while cutting."""
        if int(self.cut_busy.value):
            await self.refuse("path:y_um: a cut is running")
        await self.accepted()
        await self._path_changed(y=value)
        return value

    # -- cutting ----------------------------------------------------------------------

    def _cut_refusals(self, k: int, path) -> list[str]:
        reasons = []
        if int(self.cut_busy.value):
            reasons.append("a cut is running")
        if k != self.count + 1:
            reasons.append(f"cut {k} is not the next one ({self.count} made: put "
                           f"{self.count + 1})")  # fmt: skip
        if self.interlock.value != "Closed":
            reasons.append("the enclosure interlock is open")
        if self.emission.value != "On":
            reasons.append("emission is off")
        if float(self.power.value) > self.power_limit_W:
            reasons.append(f"power over the {self.power_limit_W:g} W limit")
        if float(self.power.value) < float(self.min_power.value):
            reasons.append(f"power {self.power.value:g} W below {self.min_power.value:g} W: "
                           "it would not cut through at this speed")  # fmt: skip
        if path is None or not arclength(*path)[-1] > 0:
            reasons.append("no path loaded (path:x_um and path:y_um of equal length >= 2)")
            return reasons
        x, y = path
        half = float(self.kerf.value) / 2.0
        (x0, x1), (y0, y1) = (0.0, self.sheet.size_um[0]), (0.0, self.sheet.size_um[1])
        if x.min() - half < x0 or x.max() + half > x1 or y.min() - half < y0 or y.max() + half > y1:
            reasons.append(f"the path leaves the table's working area [0, {x1:g}] x [0, {y1:g}] um")
        here = (self.table_x.position, self.table_y.position)
        if math.hypot(here[0] - x[0], here[1] - y[0]) > START_TOLERANCE_UM or (
            self.table_x.moving or self.table_y.moving
        ):
            reasons.append(f"the table is at ({here[0]:.1f}, {here[1]:.1f}) um, not at the "
                           f"path's start ({x[0]:.1f}, {y[0]:.1f})")  # fmt: skip
        return reasons

    @cut_start.putter
    async def cut_start(self, instance, value):
        """Make cut ``value`` along the path; completes when it ends (see ``_cut_refusals``)."""
        k = int(value)
        path = self._path()
        reasons = self._cut_refusals(k, path)
        if reasons:
            await self.refuse(f"cut:start {k} refused: " + "; ".join(reasons))
        await self.accepted()
        x, y = path
        radius = float(self.kerf.value) / 2.0
        length = float(arclength(x, y)[-1])
        duration = length / (float(self.speed.value) * 1000.0) * self.time_scale
        self._stop.clear()
        self._idle.clear()
        self.count, self.last_complete = k, False
        await self._save()  # counted before the laser fires: never cut twice
        await self.cut_count.write(k)
        await self.cut_complete.write(0)
        await self.cut_busy.write(1)
        await self.firing.write(1)
        done, start = 0.0, time.monotonic()
        try:
            while done < length:
                stopped = False
                try:
                    await asyncio.wait_for(self._stop.wait(), TICK_S)
                    stopped = True
                except TimeoutError:
                    pass
                now = min(length, (time.monotonic() - start) / duration * length)
                self.sheet.sweep(x, y, radius, done, now)
                done = now
                await self.table_x.follow(point_at(x, y, done)[0])
                await self.table_y.follow(point_at(x, y, done)[1])
                if stopped:
                    break
        finally:
            await self.firing.write(0)
            self.last_complete = done >= length
            end = point_at(x, y, done)
            await self.table_x.follow(end[0], settled=True)
            await self.table_y.follow(end[1], settled=True)
            await self._save()
            await self._save_map()
            await self._publish_cut(x, y, radius, done / length if length else 1.0)
            await self.cut_busy.write(0)
            self._idle.set()
        return k

    async def _publish_cut(self, x, y, radius: float, fraction: float) -> None:
        piece = self.sheet.pieces_in(x, y, radius) if self.last_complete else NO_PIECE
        self._piece = piece
        for pv, value in ((self.cut_complete, int(self.last_complete)),
                          (self.cut_fraction, fraction), (self.piece_count, piece.count),
                          (self.piece_area, piece.area_um2), (self.piece_width, piece.width_um),
                          (self.piece_length, piece.length_um), (self.piece_x, piece.x_min_um),
                          (self.piece_y, piece.y_min_um),
                          (self.removed, self.sheet.removed_um2)):  # fmt: skip
            await pv.write(value)
        await self.row_width.write(piece.row_width_um(float(self.row_y.value), self.sheet.pixel_um))
        await self._publish_intact(x, y)

    @row_y.putter
    async def row_y(self, instance, value):
        """The row (table y, um) whose width ``piece:row_width_um_RBV`` reports."""
        await self.accepted()
        await self.row_width.write(self._piece.row_width_um(float(value), self.sheet.pixel_um))
        return float(value)

    @cut_stop.putter
    async def cut_stop(self, instance, value):
        """1 stops a running cut now (emission off); reads back 0."""
        if int(value) == 1 and int(self.cut_busy.value):
            self._stop.set()
            await self.emission.write("Off", verify_value=False)
        return 0


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the laser mill IOC until SIGTERM."""
    parser = ioc_argument_parser(dedent(__doc__ or ""), default_prefix=DEFAULT_PREFIX,
                                 default_port=DEFAULT_PORT)  # fmt: skip
    parser.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                        help="wall s per instrument s (default %(default)s)")  # fmt: skip
    parser.add_argument(
        "--state-file", default=None, help="state file (default <data dir>/sim/laser-<prefix>.json)"
    )
    parser.add_argument("--power-limit", type=float, default=POWER_LIMIT_W,
                        help="highest power allowed, W (default %(default)s)")  # fmt: skip
    parser.add_argument("--pixel-um", type=float, default=2.0, help="map pixel, um")
    args = parser.parse_args(argv)
    ioc = LaserIOC(prefix=args.prefix, time_scale=args.time_scale, state_file=args.state_file,
                   power_limit_W=args.power_limit, pixel_um=args.pixel_um)  # fmt: skip
    run_from_args(ioc.pvdb, args)


if __name__ == "__main__":
    main()
