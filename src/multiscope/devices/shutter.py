"""Beam shutter: a two-position settable (``"open"``/``"close"``) with a timeout."""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO
from ophyd.status import Status

__all__ = ["Shutter"]


class Shutter(Device):
    """Shutter with a put-completing command PV (``Cmd``) and status readbacks.

    ``set("open")`` / ``set("close")`` (also 1/0) return a status that finishes
    when the shutter has moved, or fails after ``timeout`` seconds.
    """

    # command
    command = Cpt(EpicsSignal, "Cmd", string=True, put_complete=True, kind="omitted")

    # status
    blade_position = Cpt(EpicsSignalRO, "Pos-Sts", string=True, kind="hinted")
    is_open = Cpt(EpicsSignalRO, "Open-Sts", kind="normal")

    # configuration
    actuation_time = Cpt(EpicsSignal, "ActTime", kind="config")

    _commands = {"open": "Open", 1: "Open", "close": "Close", 0: "Close"}

    def __init__(self, prefix: str = "", *, name: str, timeout: float = 5.0, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.timeout = float(timeout)

    def set(self, value) -> Status:
        """Open or close; the status fails after ``self.timeout`` seconds."""
        key = value.lower() if isinstance(value, str) else value
        if key not in self._commands:
            raise ValueError(f"{self.name}: shutter value must be 'open' or 'close', not {value!r}")
        return self.command.set(self._commands[key], timeout=self.timeout)
