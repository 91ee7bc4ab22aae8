"""Storage-ring beam current and ring status, read-only to plans."""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignalRO

__all__ = ["BeamCurrent"]


class BeamCurrent(Device):
    """Ring current (mA) and ring status, e.g. prefix ``DEMO:ring:``.

    ``current`` is the signal to watch with a suspender (``SuspendFloor``).
    Suspenders only see value changes, so a disconnect must be treated as a
    trip by the caller (docs/stack-facts.md).
    """

    # readbacks
    current = Cpt(EpicsSignalRO, "current", auto_monitor=True, kind="hinted")
    status = Cpt(EpicsSignalRO, "status", string=True, auto_monitor=True, kind="normal")
