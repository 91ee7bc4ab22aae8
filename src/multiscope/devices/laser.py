"""The laser mill: x-y table and focus, the laser, the enclosure, the path, numbered cuts.

PV names follow ``docs/laser.md`` ("The instrument's PVs"): one IOC serves the mill
under one prefix. The tool path is computed by :mod:`multiscope.analysis.laser_path`
and loaded by the plan stubs (:mod:`multiscope.plan_stubs.laser`); the instrument
checks again what it will cut.

Every request the instrument may refuse (emission on, a power, a speed, a cut) fails
its status with :class:`~multiscope.devices.process.InstrumentRefusedError`, carrying
the instrument's reason (``interlock:message_RBV``). A cut is destructive:
:class:`LaserCut` cuts number ``k`` only when the instrument has made ``k - 1``
(decision 0016), and the plan stubs never let the RunEngine replay it.
"""

from __future__ import annotations

import logging

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO
from ophyd.status import Status

from multiscope.devices.bundle import InstrumentBundle
from multiscope.devices.motor import Motor
from multiscope.devices.process import (
    ACTUATION_TIMEOUT_S,
    InstrumentRefusedError,
    OffWhilePaused,
    ProcessCommand,
    explained,
    process_limit_s,
    refusable,
)

__all__ = [
    "PARTS",
    "Emission",
    "Enclosure",
    "InstrumentRefusedError",
    "LaserCut",
    "LaserMill",
    "LaserSource",
    "Piece",
    "Table",
]

logger = logging.getLogger(__name__)


class Table(Device):
    """The x-y table under the beam (um, table coordinates) and the focus ``z`` (um)."""

    x = Cpt(Motor, "table:x", kind="hinted")
    y = Cpt(Motor, "table:y", kind="hinted")
    z = Cpt(Motor, "focus:z", kind="normal")


class Emission(OffWhilePaused, Device):
    """The laser's emission: ``set("On")`` / ``set("Off")`` with put-completion.

    The instrument refuses ``On`` with the enclosure open or the power over its
    limit; the status then fails with :class:`InstrumentRefusedError`. The beam
    reaches the sheet only while a cut runs (``firing``). A paused run must not leave
    emission on: :meth:`pause` switches it off once a cut in progress has ended (the
    instrument finishes the cut; :class:`~multiscope.devices.process.OffWhilePaused`).
    :meth:`resume` puts it back on only if no cut has been made since it was
    switched on (the pause came between emission on and the cut's start): never for
    a cut that has ended, which is not made again.
    """

    command = Cpt(EpicsSignal, "laser:emission", string=True, put_complete=True,
                  kind="normal")  # fmt: skip
    firing = Cpt(EpicsSignalRO, "laser:firing_RBV", kind="normal")
    cutting = Cpt(EpicsSignalRO, "cut:busy_RBV", kind="omitted")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")
    cut_count = Cpt(EpicsSignalRO, "cut:count_RBV", kind="omitted")
    cut_time_s = Cpt(EpicsSignalRO, "path:time_s_RBV", kind="omitted")
    time_scale = Cpt(EpicsSignalRO, "sys:time_scale", kind="omitted")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The instrument's cut count when emission was last asked on: a larger count
        # on resume means the cut it was switched on for has been made.
        self._count_at_on: int | None = None

    def set(self, value) -> Status:
        """Emission ``"On"`` or ``"Off"``; a refusal carries the instrument's reason."""
        if value not in ("On", "Off"):
            raise ValueError(f"{self.name}: emission must be 'On' or 'Off', not {value!r}")
        if value == "On":
            self._count_at_on = int(self.cut_count.get(use_monitor=False))
        status = self.command.set(value, timeout=ACTUATION_TIMEOUT_S)
        return explained(status, self.refusal, f"{self.name} {value}")

    def cut_limit_s(self) -> float:
        """Longest a pause waits for a cut to end before switching emission off anyway (s).

        The loaded path's duration on the instrument's clock, as the cut's own status.
        """
        try:
            duration = float(self.cut_time_s.get(use_monitor=False))
        except Exception:  # noqa: BLE001 - no duration: the margin alone
            duration = 0.0
        return process_limit_s(duration, self.time_scale)

    def _switch(self):
        return self.command

    def _busy_signals(self) -> list:
        return [self.cutting]

    def _process_limit_s(self) -> float:
        return self.cut_limit_s()

    def _on_again_after_pause(self) -> bool:
        """No cut has been made since emission was asked on (so its cut is still to come)."""
        if self._count_at_on is None:
            return False
        return int(self.cut_count.get(use_monitor=False)) == self._count_at_on


class LaserSource(Device):
    """Power, pulses, cutting speed, spot and kerf, and the limits the instrument enforces."""

    power_W = refusable("laser:power_W", kind="normal")
    power_limit_W = Cpt(EpicsSignalRO, "laser:power_limit_W_RBV", kind="config")
    min_power_W = Cpt(EpicsSignalRO, "laser:min_power_W_RBV", kind="config")
    rep_rate_kHz = refusable("laser:rep_rate_kHz", kind="config")
    pulse_width_ns = Cpt(EpicsSignal, "laser:pulse_width_ns", kind="config")
    pulse_energy_uJ = Cpt(EpicsSignalRO, "laser:pulse_energy_uJ_RBV", kind="config")
    speed_mm_s = refusable("laser:speed_mm_s", kind="normal")
    spot_um = Cpt(EpicsSignalRO, "laser:spot_um_RBV", kind="config")
    kerf_um = Cpt(EpicsSignalRO, "laser:kerf_um_RBV", kind="config")


class Enclosure(Device):
    """The enclosure's interlock (``Closed``: the laser may emit) and the argon-box flag."""

    interlock = Cpt(EpicsSignalRO, "enclosure:interlock_RBV", string=True, kind="normal")
    argon = refusable("enclosure:argon", string=True, kind="config")
    message = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")

    @property
    def closed(self) -> bool:
        """True when the interlock reads ``Closed``."""
        return str(self.interlock.get(use_monitor=False)) == "Closed"


def _cut_s(cut, _number) -> float:
    # Also the longest a resume waits for a cut in progress (``_number`` None).
    return float(cut.path_time_s.get())


class LaserCut(Device):
    """The path (vertices in table um) and the numbered cut along it.

    ``start.set(k)`` makes cut ``k`` (the instrument refuses unless it has made
    ``k - 1``, emission is on, the enclosure closed, the power within its limit and
    the table at the path's start); ``start.stop()`` ends it at once (counted,
    part-cut). The count survives a restart of the client or the instrument.
    """

    path_x_um = refusable("path:x_um", kind="omitted")
    path_y_um = refusable("path:y_um", kind="omitted")
    path_vertices = Cpt(EpicsSignalRO, "path:n_RBV", kind="config")
    path_length_um = Cpt(EpicsSignalRO, "path:length_um_RBV", kind="normal")
    path_time_s = Cpt(EpicsSignalRO, "path:time_s_RBV", kind="config")
    path_intact = Cpt(EpicsSignalRO, "path:intact_fraction_RBV", kind="normal")
    start = Cpt(ProcessCommand, "", pv="cut:start", duration=_cut_s, stop_pv="cut:stop",
                busy_pv="cut:busy_RBV", kind="omitted")  # fmt: skip
    busy = Cpt(EpicsSignalRO, "cut:busy_RBV", kind="omitted")
    count = Cpt(EpicsSignalRO, "cut:count_RBV", kind="normal")
    last_complete = Cpt(EpicsSignalRO, "cut:last_complete_RBV", kind="normal")
    fraction = Cpt(EpicsSignalRO, "cut:fraction_RBV", kind="normal")


class Piece(Device):
    """The piece the last complete cut freed, measured by the instrument (um, um^2).

    ``row_y_um`` picks the row (table y) whose width ``row_width_um`` reports: the
    plans put the middle of the tab there.
    """

    count = Cpt(EpicsSignalRO, "piece:count_RBV", kind="normal")
    area_um2 = Cpt(EpicsSignalRO, "piece:area_um2_RBV", kind="normal")
    width_um = Cpt(EpicsSignalRO, "piece:width_um_RBV", kind="normal")
    length_um = Cpt(EpicsSignalRO, "piece:length_um_RBV", kind="normal")
    x_um = Cpt(EpicsSignalRO, "piece:x_um_RBV", kind="normal")
    y_um = Cpt(EpicsSignalRO, "piece:y_um_RBV", kind="normal")
    row_y_um = refusable("piece:row_y_um", kind="normal")
    row_width_um = Cpt(EpicsSignalRO, "piece:row_width_um_RBV", kind="hinted")
    removed_um2 = Cpt(EpicsSignalRO, "map:removed_um2_RBV", kind="normal")


#: The parts of a :class:`LaserMill`, as the session names them.
PARTS = ("table", "emission", "source", "enclosure", "cut", "piece")


class LaserMill(InstrumentBundle):
    """The mill as one object for plans: ``cut_tab(laser, ...)``.

    It holds the instrument's devices as attributes (:data:`PARTS`), not as ophyd
    components, so their names and data keys stay their own (``piece_row_width_um``)
    and a session has each device once. It reads nothing itself.
    """

    PARTS = PARTS

    def __init__(self, prefix: str = "", *, name: str = "laser", **parts):
        super().__init__(prefix, name=name, **parts)
