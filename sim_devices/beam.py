"""A simulated storage-ring beam current, settable so tests can dump the beam."""

from __future__ import annotations

import bisect
import threading

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

__all__ = ["CurrentHistory", "RingCurrent", "ring_status"]

STORED_THRESHOLD_MA = 1.0


def ring_status(current_ma: float) -> str:
    """Ring state implied by the current: ``Stored`` above 1 mA, else ``No Beam``."""
    return "Stored" if current_ma > STORED_THRESHOLD_MA else "No Beam"


class CurrentHistory:
    """The ring current over time, for the charge a frame's exposure received.

    A detector integrates the flux over its exposure: a beam lost in the last
    milliseconds of a frame leaves it almost fully exposed, one lost early leaves it
    almost dark. :meth:`mean` is that average (piecewise-constant between the
    recorded changes). Thread-safe: a CA monitor thread records, the render reads.

    Parameters
    ----------
    current_ma : float
        The current before any change is recorded.
    keep_s : float
        Changes older than this (monotonic seconds) are forgotten, but the value
        in force at the cut-off is kept.
    """

    def __init__(self, current_ma: float, keep_s: float = 600.0):
        self.keep_s = float(keep_s)
        self._times: list[float] = [float("-inf")]
        self._values: list[float] = [float(current_ma)]
        self._lock = threading.Lock()

    @property
    def latest(self) -> float:
        """The current now (mA)."""
        return self._values[-1]

    def record(self, t: float, current_ma: float) -> None:
        """The current became ``current_ma`` at monotonic time ``t`` (in time order)."""
        with self._lock:
            t = max(float(t), self._times[-1])
            self._times.append(t)
            self._values.append(float(current_ma))
            cut = bisect.bisect_right(self._times, t - self.keep_s) - 1
            if cut > 0:  # keep the value in force at the cut-off as the first entry
                del self._times[:cut]
                del self._values[:cut]
                self._times[0] = float("-inf")

    def mean(self, t0: float, t1: float) -> float:
        """Mean current (mA) over ``[t0, t1]``; the value at ``t1`` if the span is empty."""
        with self._lock:
            times, values = list(self._times), list(self._values)
        if not t1 > t0:
            return values[bisect.bisect_right(times, t1) - 1]
        i = bisect.bisect_right(times, t0) - 1
        charge, t = 0.0, t0
        while i < len(times):
            end = times[i + 1] if i + 1 < len(times) else t1
            end = min(end, t1)
            if end > t:
                charge += values[i] * (end - t)
                t = end
            if t >= t1:
                break
            i += 1
        return charge / (t1 - t0)


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
