"""Suspenders that also trip when their signal disconnects, and a watchdog that bounds a run.

bluesky's threshold suspenders only react to value changes, so a beam-current
IOC that dies never trips them (docs/stack-facts.md, fault row 5). Here a lost connection
counts as "below the floor" until the signal reconnects with a good value.

A suspension waits for the beam however long it takes, and a plan waiting on a
device whose IOC died may wait as long. :class:`RunWatchdog` ends such a run as
``fail`` with a reason (decision 0009): a device the plan used that stays
disconnected longer than ``disconnect_timeout_s``, or a suspension longer than
``max_suspension_s``.
"""

from __future__ import annotations

import asyncio
import math
import time

from bluesky.preprocessors import msg_mutator
from bluesky.suspenders import SuspendFloor

from multiscope.compat import SuspenderHooks, suspender_justification, throw_into_run

__all__ = [
    "DeviceDisconnectedError",
    "RunWatchdog",
    "RunWatchdogError",
    "SuspendFloorOrDisconnect",
    "SuspendedTooLongError",
]


class SuspendFloorOrDisconnect(SuspenderHooks, SuspendFloor):
    """Suspend when the signal drops below ``suspend_thresh`` or disconnects.

    Parameters
    ----------
    signal : ophyd.Signal
        The signal to watch, e.g. the ring current.
    suspend_thresh : float
        Suspend below this value.
    resume_thresh : float, optional
        Resume at or above this value (defaults to ``suspend_thresh``).
    **kwargs
        As for :class:`bluesky.suspenders.SuspendFloor` (``sleep``, ``pre_plan``...).
    """

    def __init__(self, signal, suspend_thresh, *, resume_thresh=None, **kwargs):
        super().__init__(signal, suspend_thresh, resume_thresh=resume_thresh, **kwargs)
        self._connected = True

    def install(self, RE, *, event_type=None):
        super().install(RE, event_type=event_type)
        self.signal.subscribe(self._on_connection, event_type="meta", run=False)

    def remove(self):
        self.signal.clear_sub(self._on_connection)
        super().remove()

    def _on_connection(self, *, connected=None, **kwargs):
        if connected is None:
            return
        was_connected, self._connected = self._connected, bool(connected)
        if was_connected and not self._connected:
            self(value=None)

    def _value_is_bad(self, value) -> bool:
        if not self._connected or value is None:
            return True
        try:
            return math.isnan(float(value))
        except (TypeError, ValueError):
            return True

    def should_suspend(self, value) -> bool:
        """Suspend on a bad value (disconnected, None, NaN) or below the floor."""
        return self._value_is_bad(value) or super().should_suspend(value)

    def should_resume(self, value) -> bool:
        """Resume on a good value at or above the resume threshold."""
        return not self._value_is_bad(value) and super().should_resume(value)

    def justification(self) -> str:
        """Why the run is held: the disconnect, or the floor."""
        if not self._connected:
            return f"Signal {self.signal.name} is disconnected (treated as below the floor)."
        return super().justification()


class RunWatchdogError(RuntimeError):
    """The watchdog ended the run; the message is the stop document's ``reason``."""


class DeviceDisconnectedError(RunWatchdogError):
    """A device the plan used stayed disconnected longer than the limit."""


class SuspendedTooLongError(RunWatchdogError):
    """A suspension (e.g. no beam) lasted longer than the limit."""


class RunWatchdog:
    """End a run as ``fail`` when a device it used stays disconnected, or it stays suspended.

    Installed on a RunEngine, it records every device a plan sends a message to (a
    preprocessor) and checks, every ``poll_s`` while the RunEngine runs, whether one
    of them is disconnected and whether a suspender is tripped. Past a limit it
    throws a :class:`RunWatchdogError` into the plan: the plan's cleanup runs
    (unstage, close the shutter), the run closes with ``exit_status`` ``fail`` and
    the error as ``reason``, and ``RE(...)`` raises it. A paused RunEngine is the
    user's to end and is left alone.

    Parameters
    ----------
    disconnect_timeout_s : float or None
        Longest time a used device may stay disconnected; None: no limit. Devices
        gated by a suspender (the beam current) belong in ``ignore``: losing them
        suspends the run, which ``max_suspension_s`` bounds.
    max_suspension_s : float or None
        Longest suspension; None: no limit.
    ignore : iterable of ophyd devices
        Devices whose disconnects the watchdog does not count.
    poll_s : float
        Seconds between checks.
    """

    def __init__(
        self,
        *,
        disconnect_timeout_s: float | None = 30.0,
        max_suspension_s: float | None = 1800.0,
        ignore=(),
        poll_s: float = 0.2,
    ):
        self.disconnect_timeout_s = disconnect_timeout_s
        self.max_suspension_s = max_suspension_s
        self.poll_s = poll_s
        self._ignored = {id(device) for device in ignore}
        self._used: dict[int, object] = {}  # id(root device) -> device, touched in the RE loop
        self._down_since: dict[int, float] = {}
        self._suspended_since: float | None = None
        self._fired = False
        self._rewindable = True  # the RunEngine's setting when the plan started
        self._RE = None
        self._task = None

    def install(self, RE) -> None:
        """Track the devices of every plan ``RE`` runs and start checking."""
        self._RE = RE
        RE.preprocessors.append(self._track)
        self._task = asyncio.run_coroutine_threadsafe(self._watch(), RE.loop)

    def remove(self) -> None:
        """Stop checking and tracking."""
        if self._task is not None:
            self._task.cancel()
        if self._RE is not None and self._track in self._RE.preprocessors:
            self._RE.preprocessors.remove(self._track)
        self._RE = self._task = None

    def _track(self, plan):
        self._used.clear()  # a new plan: only what it uses counts
        self._rewindable = self._RE.rewindable if self._RE is not None else True

        def record(msg):
            device = getattr(msg.obj, "root", None)
            if hasattr(device, "connected") and id(device) not in self._ignored:
                self._used[id(device)] = device
            return msg

        return msg_mutator(plan, record)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            error = self.check(time.monotonic())
            if error is not None:
                self._fail(error)

    def check(self, now: float) -> RunWatchdogError | None:
        """The error that should end the run at monotonic time ``now``, if any."""
        RE = self._RE
        if RE is None or RE.state != "running":
            # Idle, or paused by the user: start afresh when a plan runs again.
            self._down_since.clear()
            self._suspended_since = None
            if self._fired and RE is not None and RE.state == "idle":
                # Failed inside a suspension, the run never reached the step where bluesky
                # makes the RunEngine rewindable again: later pauses would replay nothing.
                RE.rewindable = self._rewindable
            self._fired = False
            return None
        if self._fired:  # the run is cleaning up; let it
            return None
        if self.disconnect_timeout_s is not None:
            for key, device in list(self._used.items()):
                if device.connected:
                    self._down_since.pop(key, None)
                    continue
                down = now - self._down_since.setdefault(key, now)
                if down >= self.disconnect_timeout_s:
                    return DeviceDisconnectedError(
                        f"{device.name} disconnected for {down:.1f} s (limit "
                        f"{self.disconnect_timeout_s:g} s): is its IOC running?"
                    )
        tripped = [suspender for suspender in RE.suspenders if suspender.tripped]
        if not tripped:
            self._suspended_since = None
        elif self.max_suspension_s is not None:
            if self._suspended_since is None:
                self._suspended_since = now
            suspended = now - self._suspended_since
            if suspended >= self.max_suspension_s:
                why = "; ".join(suspender_justification(s) for s in tripped)
                return SuspendedTooLongError(
                    f"suspended for {suspended:.0f} s (limit {self.max_suspension_s:g} s): {why}"
                )
        return None

    def _fail(self, error: RunWatchdogError) -> None:
        """Throw ``error`` into the running plan (on the RunEngine's loop)."""
        self._fired = True
        # As bluesky does for a failed status; nothing once the run is closing
        # (multiscope.compat.throw_into_run, decision 0009).
        throw_into_run(self._RE, error)
