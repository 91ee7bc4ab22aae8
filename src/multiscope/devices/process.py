"""Requests an instrument may refuse, and processes it runs to their end (any instrument).

A refused put completes over Channel Access with ``ECA_PUTFAIL``, which ophyd's
put-completion reports as a success; the instruments publish their reason in
``interlock:message_RBV`` (set on a refusal, cleared on every accepted request).
:func:`explained` turns a put's status into one that fails with
:class:`InstrumentRefusedError` carrying that reason. :class:`ProcessCommand` is a
numbered or sized process (a milling cut, a deposition, a laser cut) started by one
put with completion, stopped at once by the safe state, finished by the instrument
when the RunEngine pauses (decision 0016).

:class:`RefusableSignal` (made by :func:`refusable`) is a setting the instrument may
refuse (a power, a speed, a path): put with completion, its refusal explained.
:class:`OffWhilePaused` is a source (an ion beam, laser emission) that a paused run
switches off once the process it serves has ended.

The PFIB-SEM (:mod:`multiscope.devices.fibsem`), the laser mill
(:mod:`multiscope.devices.laser`) and the lab XRM (:mod:`multiscope.devices.xrm`)
share them.
"""

from __future__ import annotations

import logging
import math
import threading

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO
from ophyd import FormattedComponent as FCpt
from ophyd.status import Status

__all__ = [
    "ACTUATION_TIMEOUT_S",
    "PROCESS_MARGIN_S",
    "InstrumentRefusedError",
    "OffWhilePaused",
    "ProcessCommand",
    "ProcessStillRunningError",
    "RefusableSignal",
    "explained",
    "process_limit_s",
    "refusable",
    "refusal_reason",
    "wait_until_idle",
]

logger = logging.getLogger(__name__)

#: Seconds allowed for an insertion or a retraction, a beam blank, a heater switch.
ACTUATION_TIMEOUT_S = 10.0
#: Seconds added to a cut's or a deposition's computed duration before it fails.
PROCESS_MARGIN_S = 30.0


class InstrumentRefusedError(RuntimeError):
    """The instrument refused a request (the message is the instrument's reason)."""


class ProcessStillRunningError(RuntimeError):
    """A process ran past the time its duration allows when a paused run was resumed."""


def process_limit_s(duration_s: float, time_scale_signal) -> float:
    """Wall seconds a process of ``duration_s`` instrument seconds may take here.

    The duration scaled by the instrument's clock (``sys:time_scale``; 1 when the
    instrument has none), with room: 1.5 times, plus :data:`PROCESS_MARGIN_S`.
    """
    try:
        scale = float(time_scale_signal.get())
    except Exception:  # noqa: BLE001 - an instrument without a simulated clock
        scale = 1.0
    if not math.isfinite(scale) or scale <= 0:
        scale = 1.0
    duration = float(duration_s)
    if not math.isfinite(duration) or duration < 0:
        duration = 0.0
    return duration * scale * 1.5 + PROCESS_MARGIN_S


def wait_until_idle(busy_signals, timeout_s: float) -> bool:
    """Wait until every one of ``busy_signals`` reads 0; False if ``timeout_s`` ran out.

    Woken by the signals' monitors (no polling): each is subscribed first, then read
    from the instrument, so no change between the two is missed.
    """
    latest: dict[str, int] = {}
    idle = threading.Event()
    lock = threading.Lock()

    def update(signal, value) -> None:
        with lock:
            latest[signal.name] = int(value or 0)
            if len(latest) == len(busy_signals) and not any(latest.values()):
                idle.set()

    def changed(value=None, obj=None, **_) -> None:
        update(obj, value)

    tokens = [(signal, signal.subscribe(changed, run=False)) for signal in busy_signals]
    try:
        for signal in busy_signals:
            update(signal, signal.get(use_monitor=False))
        return idle.wait(max(float(timeout_s), 0.0))
    finally:
        for signal, token in tokens:
            signal.unsubscribe(token)


def refusal_reason(
    message_signal, what: str, error: BaseException | None, error_class=InstrumentRefusedError
) -> InstrumentRefusedError:
    """An :class:`InstrumentRefusedError` (or ``error_class``) for ``what``, with the reason."""
    try:
        reason = str(message_signal.get(use_monitor=False) or "").strip()
    except Exception as read_error:  # noqa: BLE001 - the reason is a courtesy
        reason = f"(reason unreadable: {read_error})"
    detail = reason or (str(error) if error is not None else "no reason given")
    return error_class(f"{what} refused by the instrument: {detail}")


def explained(status, message_signal, what: str, error_class=InstrumentRefusedError) -> Status:
    """A status that finishes with ``status``; a refusal carries the instrument's reason.

    ``error_class`` is the instrument's refusal error (a subclass of
    :class:`InstrumentRefusedError`, e.g. the XRM's).

    A refused put completes with ``ECA_PUTFAIL``, which ophyd reports as a success
    (its put-completion callback ignores the status), so a completed put is checked
    against ``interlock:message_RBV``: the instrument sets it on a refusal and
    clears it on every accepted request.
    """
    outer = Status(obj=getattr(status, "obj", None))

    def finished(inner):
        if not inner.success:
            outer.set_exception(
                refusal_reason(message_signal, what, inner.exception(), error_class)
            )
            return
        try:
            reason = str(message_signal.get(use_monitor=False) or "").strip()
        except Exception:  # noqa: BLE001 - an unreadable reason is no refusal
            reason = ""
        if reason:
            outer.set_exception(error_class(f"{what} refused by the instrument: {reason}"))
        else:
            outer.set_finished()

    status.add_callback(finished)
    return outer


class RefusableSignal(EpicsSignal):
    """A setting the instrument may refuse (a power, a speed, a path's vertices).

    ``set`` puts with completion: it finishes when the instrument has taken the value
    or refused it, within ``write_timeout`` (:data:`ACTUATION_TIMEOUT_S` by default),
    and a refusal fails with :class:`InstrumentRefusedError` carrying the
    instrument's reason (``message_pv``). Without completion a refused value never
    reaches the readback and the set would wait for it without end.
    """

    def __init__(self, read_pv, *, message_pv: str, put_complete: bool = True,
                 write_timeout: float = ACTUATION_TIMEOUT_S, **kwargs):  # fmt: skip
        super().__init__(read_pv, put_complete=put_complete, write_timeout=write_timeout,
                         **kwargs)  # fmt: skip
        self._refusal = EpicsSignalRO(message_pv, name=f"{self.name}_refusal", string=True)

    def set(self, value, **kwargs) -> Status:
        """Put ``value`` with completion; a refusal carries the instrument's reason."""
        try:
            shown = f"{float(value):g}"
        except (TypeError, ValueError):
            shown = f"({len(value)} values)" if hasattr(value, "__len__") else repr(value)
        return explained(super().set(value, **kwargs), self._refusal, f"{self.name} {shown}")


def refusable(suffix: str, *, kind="normal", **kwargs) -> Cpt:
    """A component: a :class:`RefusableSignal` at ``suffix``, the instrument's reason
    in its ``interlock:message_RBV`` (both after the device's prefix)."""
    return Cpt(RefusableSignal, suffix, message_pv="interlock:message_RBV",
               add_prefix=("suffix", "write_pv", "message_pv"), kind=kind,
               **kwargs)  # fmt: skip


class ProcessCommand(Device):
    """One numbered or sized process the instrument runs to its end: a cut, a deposition.

    ``set(value)`` puts ``value`` with completion; the status finishes when the
    instrument has finished the process, fails after the process's duration (scaled
    by the instrument's clock, ``sys:time_scale``) plus a margin, and a refusal
    carries the instrument's reason. ``stop()`` (the RunEngine calls it when a run
    is aborted) ends the process at once through ``stop_pv`` when there is one; a
    pause lets the instrument finish it.

    Parameters
    ----------
    pv : str
        The command PV (after the chamber prefix).
    duration : callable
        ``duration(parent, value)``: the process's length in instrument seconds.
    stop_pv : str, optional
        PV that ends the process (1).
    busy_pv : str, optional
        PV that reads 1 while the process runs (a resume waits for it).
    """

    command = FCpt(EpicsSignal, "{prefix}{_pv}", put_complete=True, kind="omitted")
    time_scale = Cpt(EpicsSignalRO, "sys:time_scale", kind="omitted")
    refusal = Cpt(EpicsSignalRO, "interlock:message_RBV", string=True, kind="omitted")

    def __init__(self, prefix="", *, pv: str, duration, stop_pv: str = "", busy_pv: str = "",
                 name: str, **kwargs):  # fmt: skip
        self._pv, self._duration, self._stop_pv = pv, duration, stop_pv
        super().__init__(prefix, name=name, **kwargs)
        self._stopper = EpicsSignal(f"{prefix}{stop_pv}", name=f"{name}_stop") if stop_pv else None
        self._busy = EpicsSignalRO(f"{prefix}{busy_pv}", name=f"{name}_busy") if busy_pv else None

    def timeout_for(self, value) -> float:
        """Seconds a process of ``value`` may take here before its status fails."""
        return process_limit_s(self._duration(self.parent, value), self.time_scale)

    def set(self, value) -> Status:
        """Start the process; finished when the instrument has finished it."""
        status = self.command.set(value, timeout=self.timeout_for(value))
        return explained(status, self.refusal, f"{self.name} {value}")

    def stop(self, *, success: bool = False) -> None:
        """End the process now, unless called with ``success=True``.

        The RunEngine calls ``stop(success=True)`` on everything a run moved when it
        pauses and again at every run's end: a cut paused in the middle would leave a
        step in the face, so then the instrument finishes it (a resumed run waits for
        it, :meth:`resume`). The safe state's stop (``stop()``, after a failure, an
        abort or a stop) ends it at once; the instrument counts it, part-milled.
        """
        if success:
            return
        if self._stopper is not None:
            self._stopper.put(1)

    def pause(self) -> None:
        """Nothing to do: a process in progress is finished by the instrument."""

    def resume(self) -> None:
        """Before a paused run goes on: wait for a process still running to end.

        Raises
        ------
        ProcessStillRunningError
            If it still runs after the time its duration allows (:meth:`timeout_for`):
            the run is not resumed (the plan would read a process that has not
            ended). ``RE.abort()`` then stops it (the safe state); ``RE.resume()``
            waits again.
        """
        if self._busy is None:
            return
        limit = self.timeout_for(None)
        if not wait_until_idle([self._busy], limit):
            raise ProcessStillRunningError(
                f"{self.name}: the instrument still runs the process {limit:.0f} s after "
                "the resume, longer than its duration allows; the run was not resumed: "
                "RE.abort() stops it (safe state), RE.resume() waits again"
            )


class OffWhilePaused:
    """Mixin for a device (before :class:`ophyd.Device`) whose source a pause switches off.

    A paused run must not leave a source on (an ion beam on the face, laser
    emission), for hours if nobody comes back. :meth:`pause` switches it off as soon
    as every process it serves has ended (earlier would stop one part-way: the
    instrument finishes it), from a thread, so the RunEngine is not held.
    :meth:`resume` waits for that, then puts the source back on only if it was on
    and :meth:`_on_again_after_pause` says so.

    A subclass gives ``set`` (switching with put-completion, refusals explained),
    :meth:`_switch` (the put-completion signal it sets), ``ON_VALUE`` and
    ``OFF_VALUE``, :meth:`_busy_signals` (1 while a process runs) and
    :meth:`_process_limit_s` (the longest a process may still run).
    """

    #: The switch's value when the source is on, and when it is off.
    ON_VALUE = "On"
    OFF_VALUE = "Off"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_before_pause = False
        self._switching_off: threading.Thread | None = None
        self._pause_limit_s = 0.0

    def _switch(self):
        """The signal that switches the source (put-completion)."""
        raise NotImplementedError

    def _busy_signals(self) -> list:
        """Signals reading 1 while a process the source serves runs."""
        raise NotImplementedError

    def _process_limit_s(self) -> float:
        """The longest a pause waits for a process to end before switching off anyway."""
        raise NotImplementedError

    def _on_again_after_pause(self) -> bool:
        """Whether a resume puts the source back on (it was on at the pause)."""
        return True

    @property
    def is_on(self) -> bool:
        """True when the source is on."""
        return str(self._switch().get()) == self.ON_VALUE

    def _off_once_idle(self, limit_s: float) -> None:
        try:
            if not wait_until_idle(self._busy_signals(), limit_s):
                logger.warning("%s: a process still runs after %.0f s: switching off now",
                               self.name, limit_s)  # fmt: skip
            self._switch().set(self.OFF_VALUE, timeout=ACTUATION_TIMEOUT_S).wait(
                ACTUATION_TIMEOUT_S
            )
        except Exception as error:  # noqa: BLE001 - the safe state switches it off on exit
            logger.warning("%s: could not switch %s on pause: %s", self.name,
                           self.OFF_VALUE, error)  # fmt: skip

    def pause(self) -> None:
        """Switch off once any process in progress has ended (without waiting here)."""
        try:
            self._on_before_pause = self.is_on
        except Exception:  # noqa: BLE001 - an IOC that is gone has nothing on
            self._on_before_pause = False
            return
        if self._on_before_pause:
            self._pause_limit_s = self._process_limit_s()
            self._switching_off = threading.Thread(
                target=self._off_once_idle, args=(self._pause_limit_s,), daemon=True,
                name=f"{self.name}-off-on-pause",
            )  # fmt: skip
            self._switching_off.start()

    def resume(self) -> None:
        """Once switched off, put the source back on if it was and should be."""
        if self._switching_off is not None:
            self._switching_off.join(self._pause_limit_s + 2 * ACTUATION_TIMEOUT_S)
            self._switching_off = None
        if self._on_before_pause and self._on_again_after_pause():
            # The device's own set: a refusal fails the resume with the instrument's reason.
            self.set(self.ON_VALUE).wait(ACTUATION_TIMEOUT_S)
        self._on_before_pause = False
