"""Motor axis: ophyd's ``EpicsMotor`` with a finite move timeout and named limit errors.

Bare ``EpicsMotor`` moves have no timeout, so a dead IOC hangs a run
(docs/stack-facts.md, fault row 1). :class:`Motor` gives every move a timeout of
``distance / VELO + 2 * ACCL + margin`` seconds, and refuses targets outside the
soft limits before anything moves, naming the axis.
"""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd.utils import LimitError

__all__ = ["Motor", "LimitError", "PositionTrigger"]


class Motor(EpicsMotor):
    """An ``EpicsMotor`` whose moves fail within a bounded time.

    Parameters
    ----------
    prefix : str
        Motor record name, e.g. ``DEMO:m1``.
    name : str
        ophyd name (also the readback's data key).
    move_margin : float, optional
        Seconds added to the computed motion time before a move fails. 5 s: long
        enough for an IOC host or a client that is busy (a 0.3 s tilt of the
        simulated PFIB-SEM stage took over 2.3 s on the loaded 2-core test machine),
        short enough that a dead IOC ends a run well within 10 s.
    **kwargs
        Passed to ``EpicsMotor``.
    """

    def __init__(self, prefix: str = "", *, name: str, move_margin: float = 5.0, **kwargs):
        super().__init__(prefix, name=name, **kwargs)
        self.move_margin = float(move_margin)

    def move_timeout(self, position: float) -> float:
        """Seconds allowed for a move from the current position to ``position``."""
        velocity = abs(float(self.velocity.get()))
        accel = abs(float(self.acceleration.get()))
        distance = abs(float(position) - float(self.position))
        travel = distance / velocity if velocity > 0 else 0.0
        return travel + 2.0 * accel + self.move_margin

    def check_value(self, pos: float) -> None:
        """Raise ``LimitError`` naming this axis if ``pos`` is outside the soft limits."""
        low, high = self.limits
        if low != high and not low <= pos <= high:
            raise LimitError(f"{self.name}: target {pos} outside soft limits [{low}, {high}]")
        super().check_value(pos)

    def move(self, position, wait: bool = True, timeout: float | None = None, **kwargs):
        """Move to ``position``; the returned status fails after :meth:`move_timeout`."""
        self.check_value(position)
        if timeout is None:
            timeout = self.move_timeout(position)
        return super().move(position, wait=wait, timeout=timeout, **kwargs)


class PositionTrigger(Device):
    """Position compare of a motion controller: a start pulse at an axis position.

    Prefix e.g. ``TXM:sample:rotation_trigger:``. Armed by the device it triggers
    (a camera in ``TriggerMode`` External), it fires once when the axis passes
    ``fire_at`` increasing, so an acquisition starts where the axis is, not when
    a client notices it (the pulse never crosses the network).
    """

    fire_at = Cpt(EpicsSignal, "Position", kind="config")  # axis position (axis units)
    pulses = Cpt(EpicsSignalRO, "Pulses_RBV", kind="omitted")  # pulses fired so far
