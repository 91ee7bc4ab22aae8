"""A simulated storage-ring beam current, settable so tests can dump the beam."""

from __future__ import annotations

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

__all__ = ["RingCurrent", "ring_status"]

STORED_THRESHOLD_MA = 1.0


def ring_status(current_ma: float) -> str:
    """Ring state implied by the current: ``Stored`` above 1 mA, else ``No Beam``."""
    return "Stored" if current_ma > STORED_THRESHOLD_MA else "No Beam"


class RingCurrent(PVGroup):
    """Ring current (``{prefix}`` e.g. ``DEMO:ring:``).

    PVs
    ---
    Readback
        ``current`` (mA, read-only), ``status`` (No Beam/Stored).
    Test controls
        ``current:SP`` (mA): the current the simulated ring holds,
        ``dump``: put 1 to lose the beam (current 0), ``inject``: put 1 to
        refill to the last non-zero setpoint.

    Parameters
    ----------
    current : float
        Initial current (mA).
    """

    current = pvproperty(
        name="current", value=0.0, units="mA", precision=2, read_only=True, doc="Ring current"
    )
    status = pvproperty(
        name="status",
        dtype=ChannelType.ENUM,
        enum_strings=("No Beam", "Stored"),
        value="No Beam",
        read_only=True,
        doc="Ring state from the current",
    )
    setpoint = pvproperty(
        name="current:SP", value=0.0, units="mA", precision=2, doc="Simulated current (mA)"
    )
    dump = pvproperty(name="dump", value=0, doc="Put 1: beam dump (current drops to 0)")
    inject = pvproperty(name="inject", value=0, doc="Put 1: refill to the last fill current")

    def __init__(self, *args, current: float = 400.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._fill_current = float(current)

    @property
    def value(self) -> float:
        """Current in mA (scenes scale intensity with it)."""
        return float(self.current.value)

    async def _set_current(self, value: float) -> None:
        await self.current.write(value)
        await self.status.write(ring_status(value))

    @setpoint.startup
    async def setpoint(self, instance, async_lib):
        """Start with the constructor's current."""
        await instance.write(self._fill_current, verify_value=False)
        await self._set_current(self._fill_current)

    @setpoint.putter
    async def setpoint(self, instance, value):
        """Set the current directly (tests drop it below a suspender floor)."""
        value = max(0.0, float(value))
        if value > 0:
            self._fill_current = value
        await self._set_current(value)
        return value

    @dump.putter
    async def dump(self, instance, value):
        """Lose the beam."""
        if value:
            await self.setpoint.write(0.0, verify_value=False)
            await self._set_current(0.0)
        return 0

    @inject.putter
    async def inject(self, instance, value):
        """Refill the ring."""
        if value:
            await self.setpoint.write(self._fill_current, verify_value=False)
            await self._set_current(self._fill_current)
        return 0
