"""Suspenders that also trip when their signal disconnects.

bluesky's threshold suspenders only react to value changes, so a beam-current
IOC that dies never trips them (RELIABILITY.md row 5). Here a lost connection
counts as "below the floor" until the signal reconnects with a good value.
"""

from __future__ import annotations

import math

from bluesky.suspenders import SuspendFloor

__all__ = ["SuspendFloorOrDisconnect"]


class SuspendFloorOrDisconnect(SuspendFloor):
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
        self._sig.subscribe(self._on_connection, event_type="meta", run=False)

    def remove(self):
        self._sig.clear_sub(self._on_connection)
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

    def _should_suspend(self, value):
        return self._value_is_bad(value) or super()._should_suspend(value)

    def _should_resume(self, value):
        return not self._value_is_bad(value) and super()._should_resume(value)

    def _get_justification(self):
        if not self._connected:
            return f"Signal {self._sig.name} is disconnected (treated as below the floor)."
        return super()._get_justification()
