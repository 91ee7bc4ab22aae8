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
import threading
import time

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO
from ophyd.status import Status

from multiscope.devices.bundle import InstrumentBundle
from multiscope.devices.motor import Motor
from multiscope.devices.process import (
    ACTUATION_TIMEOUT_S,
    InstrumentRefusedError,
    ProcessCommand,
    explained,
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


class Emission(Device):
    """The laser's emission: ``set("On")`` / ``set("Off")`` with put-completion.

    The instrument refuses ``On`` with the enclosure open or the power over its
    limit; the status then fails with :class:`InstrumentRefusedError`. The beam
    reaches the sheet only while a cut runs (``firing``). A paused run must not leave
    emission on: :meth:`pause` switches it off once a cut in progress has ended (the
    instrument finishes the cut) and :meth:`resume` puts it back if it was on.
    """

    command = Cpt(EpicsSignal, "laser:emission", string=True, put_complete=True,
                  kind="normal")  # fmt: skip
    firing = Cpt(EpicsSignalRO, "laser:firing_RBV", kind="normal")
    cutting = Cpt(EpicsSignalRO, "cut:busy_RBV", kind="omitted")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")

    #: Longest a pause waits for a cut to end before switching emission off anyway (s).
    MAX_CUT_WAIT_S = 600.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._was_on = False
        self._switching: threading.Thread | None = None

    @property
    def is_on(self) -> bool:
        """True when emission is on."""
        return str(self.command.get()) == "On"

    def set(self, value) -> Status:
        """Emission ``"On"`` or ``"Off"``; a refusal carries the instrument's reason."""
        if value not in ("On", "Off"):
            raise ValueError(f"{self.name}: emission must be 'On' or 'Off', not {value!r}")
        status = self.command.set(value, timeout=ACTUATION_TIMEOUT_S)
        return explained(status, self.refusal, f"{self.name} {value}")

    def _off_after_cut(self) -> None:
        deadline = time.monotonic() + self.MAX_CUT_WAIT_S
        try:
            while int(self.cutting.get(use_monitor=False) or 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.command.set("Off", timeout=ACTUATION_TIMEOUT_S).wait(ACTUATION_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - the safe state switches it off on exit
            logger.warning("%s: could not switch emission off on pause: %s", self.name, error)

    def pause(self) -> None:
        """Switch emission off once any cut in progress has ended (without waiting here)."""
        try:
            self._was_on = self.is_on
        except Exception:  # noqa: BLE001 - an IOC that is gone emits nothing
            self._was_on = False
            return
        if self._was_on:
            self._switching = threading.Thread(target=self._off_after_cut, daemon=True,
                                               name=f"{self.name}-off-on-pause")  # fmt: skip
            self._switching.start()

    def resume(self) -> None:
        """Switch emission back on if the pause switched it off."""
        if self._switching is not None:
            self._switching.join(self.MAX_CUT_WAIT_S)
            self._switching = None
        if self._was_on:
            self.set("On").wait(ACTUATION_TIMEOUT_S)
        self._was_on = False


class LaserSource(Device):
    """Power, pulses, cutting speed, spot and kerf, and the limits the instrument enforces."""

    power_W = Cpt(EpicsSignal, "laser:power_W", kind="normal")
    power_limit_W = Cpt(EpicsSignalRO, "laser:power_limit_W_RBV", kind="config")
    min_power_W = Cpt(EpicsSignalRO, "laser:min_power_W_RBV", kind="config")
    rep_rate_kHz = Cpt(EpicsSignal, "laser:rep_rate_kHz", kind="config")
    pulse_width_ns = Cpt(EpicsSignal, "laser:pulse_width_ns", kind="config")
    pulse_energy_uJ = Cpt(EpicsSignalRO, "laser:pulse_energy_uJ_RBV", kind="config")
    speed_mm_s = Cpt(EpicsSignal, "laser:speed_mm_s", kind="normal")
    spot_um = Cpt(EpicsSignalRO, "laser:spot_um_RBV", kind="config")
    kerf_um = Cpt(EpicsSignalRO, "laser:kerf_um_RBV", kind="config")


class Enclosure(Device):
    """The enclosure's interlock (``Closed``: the laser may emit) and the argon-box flag."""

    interlock = Cpt(EpicsSignalRO, "enclosure:interlock_RBV", string=True, kind="normal")
    argon = Cpt(EpicsSignal, "enclosure:argon", string=True, kind="config")
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

    path_x_um = Cpt(EpicsSignal, "path:x_um", kind="omitted")
    path_y_um = Cpt(EpicsSignal, "path:y_um", kind="omitted")
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
    row_y_um = Cpt(EpicsSignal, "piece:row_y_um", kind="normal")
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
