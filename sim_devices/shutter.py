"""A simulated beam shutter: open/close command with a readback and actuation time."""

from __future__ import annotations

import asyncio

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

__all__ = ["Shutter"]


class Shutter(PVGroup):
    """A two-position shutter (``{prefix}`` e.g. ``DEMO:shutter:``).

    PVs
    ---
    Command
        ``Cmd`` (Close/Open): put-completion when the blades have moved.
    Status
        ``Pos-Sts`` (Closed/Open/Moving), ``Open-Sts`` (0/1, 1 when fully open).
    Configuration
        ``ActTime`` (s): actuation time.

    Parameters
    ----------
    actuation_time : float
        Seconds the blades take to move.
    is_open : bool
        Initial state.
    """

    command = pvproperty(
        name="Cmd",
        dtype=ChannelType.ENUM,
        enum_strings=("Close", "Open"),
        value="Close",
        doc="Open or close; the put completes when the shutter has moved",
    )
    position = pvproperty(
        name="Pos-Sts",
        dtype=ChannelType.ENUM,
        enum_strings=("Closed", "Open", "Moving"),
        value="Closed",
        read_only=True,
        doc="Blade position",
    )
    is_open = pvproperty(name="Open-Sts", value=0, read_only=True, doc="1 when fully open, else 0")
    actuation_time = pvproperty(name="ActTime", value=0.05, precision=3, doc="Actuation time (s)")

    def __init__(self, *args, actuation_time: float = 0.05, is_open: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._initial = (float(actuation_time), bool(is_open))

    @property
    def open(self) -> bool:
        """True when fully open (the owning IOC's scene reads this)."""
        return bool(self.is_open.value)

    @actuation_time.startup
    async def actuation_time(self, instance, async_lib):
        """Apply the constructor's defaults."""
        act, opened = self._initial
        await instance.write(act)
        await self.command.write("Open" if opened else "Close", verify_value=False)
        await self.position.write("Open" if opened else "Closed")
        await self.is_open.write(int(opened))

    @command.putter
    async def command(self, instance, value):
        """Move the blades; return only when they have arrived."""
        want_open = value in (1, "Open")
        if want_open == self.open and self.position.value != "Moving":
            return value
        await self.is_open.write(0)
        await self.position.write("Moving")
        await asyncio.sleep(max(0.0, float(self.actuation_time.value)))
        await self.position.write("Open" if want_open else "Closed")
        await self.is_open.write(int(want_open))
        return value
