"""The safe state: what a plan that changes the beamline puts back on *every* exit.

A plan opens the shutter, moves the sample out for flats, spins the rotation at a
fly speed, changes the exposure, arms the camera. Whatever ends it (success, an
exception, ``RE.abort()``, ``RE.stop()``), the instrument must be left safe:
shutter closed, acquisition stopped, speeds and camera settings as they were,
sample back at its in-beam position. Code after a plan's last step runs on
success only; this module's cleanup runs in a ``finally``
(:func:`bluesky.preprocessors.finalize_wrapper`), so it runs on every exit that
lets a plan clean up. ``RE.halt()`` does not (see ``docs/txm.md``, "Safe state";
:func:`go_safe` puts the instrument in its safe state afterwards).

The pieces (decision 0010):

==================  ==============================================================
:class:`SafeStep`   the protocol: ``name``, ``record()`` (a plan, at the start: read
                    what to put back) and ``restore()`` (a plan, on every exit)
:class:`SetTo`      a fixed safe value: shutter closed, acquisition off (next: an ion
                    beam blanked, a gas needle retracted, a laser's emission off)
:class:`Stop`       stop a moving axis or a flying detector
:class:`Restore`    the value read at the start, put back: a speed, an exposure, an
                    in-beam position
:class:`SafeState`  the ordered steps of one run; every step is attempted, each within
                    a finite timeout, a failing one logged and the next one tried
==================  ==============================================================

:func:`safe_state_wrapper` (and :data:`safe_state_decorator`) wraps a plan in one;
:func:`txm_safe_state` builds the TXM's from the devices a plan uses,
:func:`fibsem_safe_state` the PFIB-SEM's (ion beam blanked, cut stopped, needle and
detectors retracted), :func:`laser_safe_state` the laser mill's (cut stopped,
emission off, table stopped), :func:`xrm_safe_state` the lab XRM's (source shutter
closed). Another instrument composes its own from the same steps.

Examples
--------
>>> safe = txm_safe_state(shutter, camera=camera, sample=sample)       # doctest: +SKIP
>>> @bpp.run_decorator(md=md)                                           # doctest: +SKIP
... @safe_state_decorator(safe)
... def run():
...     yield from bps.mv(shutter, "open")
...     ...
>>> fib_safe = SafeState([SetTo(fib.blank, "Blanked", name="blank ion beam"),
...                       SetTo(gis.needle, "Retracted", name="retract needle")])  # doctest: +SKIP
>>> RE.halt()  # no cleanup: put it safe by hand                        # doctest: +SKIP
>>> RE(go_safe(txm_safe_state(shutter, camera=camera, sample=sample)))  # doctest: +SKIP
"""

import logging
import math
from collections.abc import Generator, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import FailedStatus, Msg, make_decorator, short_uid

__all__ = [
    "DEFAULT_STEP_TIMEOUT_S",
    "Restore",
    "SafeState",
    "SafeStateError",
    "SafeStep",
    "SetTo",
    "Stop",
    "fibsem_safe_state",
    "go_safe",
    "laser_safe_state",
    "safe_state_decorator",
    "safe_state_wrapper",
    "txm_safe_state",
    "xrm_safe_state",
]

logger = logging.getLogger(__name__)

PlanGenerator = Generator[Msg, Any, Any]

#: Longest wait for one step's device (s): a dead IOC must not keep the shutter open.
DEFAULT_STEP_TIMEOUT_S = 10.0


class SafeStateError(RuntimeError):
    """A plan succeeded but part of the instrument could not be put in its safe state."""


@runtime_checkable
class SafeStep(Protocol):
    """One action towards the safe state.

    ``record`` runs when the wrapped plan starts (read what ``restore`` will put
    back; nothing for a fixed safe value); ``restore`` runs on every exit and must
    end within a finite time. Both are plans (generators of messages). A step with
    ``after_success = False`` (optional attribute) runs only after a failure or an
    interruption: stopping what may still move.
    """

    name: str

    def record(self) -> PlanGenerator: ...

    def restore(self) -> PlanGenerator: ...


def _set_and_wait(obj, value, timeout_s: float) -> PlanGenerator:
    """Set ``obj`` and wait for it, at most ``timeout_s`` (the wait fails after that)."""
    group = short_uid("safe_state")
    yield from bps.abs_set(obj, value, group=group)
    yield from bps.wait(group=group, timeout=timeout_s)


def _label(obj) -> str:
    return getattr(obj, "name", None) or repr(obj)


class SetTo:
    """Put ``obj`` to a fixed safe ``value`` on exit (shutter ``"close"``, acquire ``0``).

    Parameters
    ----------
    obj : Movable
        Anything ``set`` accepts (a shutter, a signal, a positioner).
    value
        Its safe value.
    name : str, optional
        What the step does, for logs (default ``"<obj> to <value>"``).
    timeout_s : float
        Longest wait for ``obj`` to get there.
    """

    def __init__(self, obj, value, *, name: str = "", timeout_s: float = DEFAULT_STEP_TIMEOUT_S):
        self.obj, self.value, self.timeout_s = obj, value, float(timeout_s)
        self.name = name or f"{_label(obj)} to {value!r}"

    def record(self) -> PlanGenerator:
        return
        yield  # a plan that records nothing

    def restore(self) -> PlanGenerator:
        yield from _set_and_wait(self.obj, self.value, self.timeout_s)


class Stop:
    """Stop ``obj`` after a failure or an interruption (a rotation, a flying detector).

    Its own ``stop()``, at once; not after success, when nothing is left moving.
    """

    after_success = False

    def __init__(self, obj, *, name: str = ""):
        self.obj = obj
        self.name = name or f"stop {_label(obj)}"

    def record(self) -> PlanGenerator:
        return
        yield  # a plan that records nothing

    def restore(self) -> PlanGenerator:
        yield from bps.stop(self.obj)


class Restore:
    """Put back on exit the value ``obj`` had when the plan started (speed, exposure, position).

    A value already there (within ``tolerance`` for numbers) is left alone, so the
    success path costs a read. A positioner with a ``move_timeout`` (our
    :class:`~multiscope.devices.motor.Motor`) gets at least that long.

    Parameters
    ----------
    obj : Readable and Movable
        A signal or a positioner (``bps.rd`` reads one value of it).
    name : str, optional
        What the step does, for logs (default ``"restore <obj>"``).
    tolerance : float
        Numbers this close to the recorded one count as restored.
    timeout_s : float
        Longest wait for ``obj`` to get back.
    """

    def __init__(self, obj, *, name: str = "", tolerance: float = 1e-6,
                 timeout_s: float = DEFAULT_STEP_TIMEOUT_S):  # fmt: skip
        self.obj, self.tolerance, self.timeout_s = obj, float(tolerance), float(timeout_s)
        self.name = name or f"restore {_label(obj)}"
        self.recorded: list = []  # [value] once recorded: None is a valid value

    def record(self) -> PlanGenerator:
        self.recorded = [(yield from bps.rd(self.obj))]

    def _there(self, value) -> bool:
        (wanted,) = self.recorded
        try:
            return math.isclose(float(value), float(wanted), rel_tol=0, abs_tol=self.tolerance)
        except (TypeError, ValueError):  # enums as strings, arrays...
            return value == wanted

    def restore(self) -> PlanGenerator:
        if not self.recorded:
            logger.info("safe state: %s skipped (nothing recorded)", self.name)
            return
        (wanted,) = self.recorded
        if self._there((yield from bps.rd(self.obj))):
            return
        timeout_s = self.timeout_s
        move_timeout = getattr(self.obj, "move_timeout", None)
        if callable(move_timeout):  # a long way back may take longer than the default
            timeout_s = max(timeout_s, float(move_timeout(wanted)) + 1.0)
        yield from _set_and_wait(self.obj, wanted, timeout_s)


def _stray_failure(error: Exception, step) -> bool:
    """True if ``error`` is another device's earlier status failing during ``step``.

    The RunEngine delivers a failed status at the next message, whatever the plan
    is doing: an interrupted acquisition failing during the cleanup is no fault of
    the step it lands in.
    """
    if not isinstance(error, FailedStatus) or not error.args:
        return False
    status = error.args[0]
    culprit = getattr(status, "obj", None) or getattr(status, "device", None)
    own = getattr(step, "obj", None)
    while own is not None:
        if culprit is own:
            return False
        own = getattr(own, "parent", None)
    return culprit is not None


class SafeState:
    """The ordered steps that put an instrument in its safe state.

    Built per run (:class:`Restore` steps remember what they read), from the
    devices the plan uses. Order matters: what protects the sample and the
    detector first (close the shutter), then what stops (acquisition, motion),
    then what restores.

    Parameters
    ----------
    steps : iterable of SafeStep
    """

    def __init__(self, steps: Iterable[SafeStep]):
        self.steps = list(steps)
        for step in self.steps:
            if not isinstance(step, SafeStep):
                raise TypeError(f"{step!r} is not a SafeStep (name, record(), restore())")

    def __add__(self, other: "SafeState") -> "SafeState":
        return SafeState([*self.steps, *other.steps])

    @property
    def names(self) -> list[str]:
        """What each step does, in order."""
        return [step.name for step in self.steps]

    def record(self) -> PlanGenerator:
        """Read, for every step, what it will put back (run it before changing anything)."""
        for step in self.steps:
            yield from step.record()

    def restore(self, *, succeeded: bool = False) -> PlanGenerator:
        """Attempt every step; return ``[(step name, exception)]`` of those that failed.

        A failing step (a dead IOC, a device that never gets there within its
        timeout) is logged and the next one tried: one dead device must not keep
        the shutter open or the rotation spinning. A step that another device's
        failure interrupted (an aborted acquisition's status) is tried once more.
        After a plan that ``succeeded``
        the steps with ``after_success = False`` (stops) are left out.
        """
        failures = []
        for step in self.steps:
            if succeeded and not getattr(step, "after_success", True):
                continue
            for attempt in (1, 2):
                try:
                    yield from step.restore()
                except Exception as error:  # log and go on: the next step may still succeed
                    if attempt == 1 and _stray_failure(error, step):
                        logger.warning("safe state: %s again (%r landed in it)", step.name, error)
                        continue
                    logger.error("safe state: %s failed: %r", step.name, error)
                    failures.append((step.name, error))
                break
        return failures


def safe_state_wrapper(plan, safe_state: SafeState) -> PlanGenerator:
    """Run ``plan`` with ``safe_state`` recorded first and restored on every exit.

    Built on :func:`bluesky.preprocessors.finalize_wrapper`: the restore runs after
    success, an exception, ``RE.abort()`` and ``RE.stop()`` (which the RunEngine
    throws into the plan), not after ``RE.halt()`` (which closes the plan without
    a chance to clean up). Put it inside ``run_decorator`` so the run's stop
    document is emitted once the instrument is safe.

    A step that fails is logged; after a successful plan that raises
    :class:`SafeStateError` (the run then ends ``fail``: it did not leave the
    instrument safe), after a failed one the plan's own exception stands.
    """
    outcome = {"succeeded": False}

    def body():
        yield from safe_state.record()
        result = yield from plan
        outcome["succeeded"] = True
        return result

    def final():
        failures = yield from safe_state.restore(succeeded=outcome["succeeded"])
        if failures and outcome["succeeded"]:
            failed = ", ".join(f"{name} ({error!r})" for name, error in failures)
            raise SafeStateError(f"the plan ended but the safe state failed: {failed}")

    return (yield from bpp.finalize_wrapper(body(), final))


#: ``@safe_state_decorator(safe_state)`` on a generator function: :func:`safe_state_wrapper`.
safe_state_decorator = make_decorator(safe_state_wrapper)


def go_safe(safe_state: SafeState) -> PlanGenerator:
    """Put the instrument in its safe state now, e.g. after ``RE.halt()`` (a plan).

    Fixed values and stops apply; :class:`Restore` steps have nothing recorded
    and are skipped (the speed and positions a halted plan started from are not
    known). Raises :class:`SafeStateError` naming any step that failed.
    """
    failures = yield from safe_state.restore()
    if failures:
        failed = ", ".join(f"{name} ({error!r})" for name, error in failures)
        raise SafeStateError(f"safe state failed: {failed}")


def txm_safe_state(
    shutter,
    *,
    camera=None,
    sample=None,
    flyer=None,
    positions: Sequence[str] = ("x",),
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
) -> SafeState:
    """The TXM's safe state for a plan using these devices (any may be a simplified fake).

    In order: close ``shutter``; stop ``flyer`` and the camera's acquisition
    (``cam.acquire`` 0, also a camera armed for a start pulse); stop the rotation
    ``sample.theta`` and restore its speed; restore the camera's exposure, period
    and trigger mode; move ``sample``'s ``positions`` axes back where they were
    (``x``: the in-beam position). Only the parts a device has are included.

    Parameters
    ----------
    shutter : Movable
        ``set("close")``.
    camera : StreamingCamera, optional
    sample : SampleStage, optional
    flyer : FlyingCamera, optional
        The plan's flying camera.
    positions : sequence of str
        Axes of ``sample`` put back (``("x", "z")`` for a grid).
    timeout_s : float
        Longest wait per step.
    """
    steps: list[SafeStep] = [SetTo(shutter, "close", name=f"close {_label(shutter)}",
                                   timeout_s=timeout_s)]  # fmt: skip
    cam = getattr(camera, "cam", None)
    if flyer is not None:
        steps.append(Stop(flyer, name=f"stop {_label(flyer)} flying"))
    if getattr(cam, "acquire", None) is not None:
        steps.append(SetTo(cam.acquire, 0, name=f"stop {_label(camera)} acquisition",
                           timeout_s=timeout_s))  # fmt: skip
    theta = getattr(sample, "theta", None)
    if theta is not None:
        steps.append(Stop(theta, name=f"stop {_label(theta)}"))
        if getattr(theta, "velocity", None) is not None:
            steps.append(Restore(theta.velocity, name=f"restore {_label(theta)} speed",
                                 timeout_s=timeout_s))  # fmt: skip
    for setting in ("acquire_time", "acquire_period", "trigger_mode"):
        signal = getattr(cam, setting, None)
        if signal is not None:
            steps.append(Restore(signal, name=f"restore {_label(camera)} {setting}",
                                 timeout_s=timeout_s))  # fmt: skip
    for axis in positions:
        positioner = getattr(sample, axis, None) if sample is not None else None
        if positioner is not None:
            steps.append(Restore(positioner, name=f"{_label(positioner)} back",
                                 tolerance=1e-3, timeout_s=timeout_s))  # fmt: skip
    return SafeState(steps)


def fibsem_safe_state(
    ion_column,
    *,
    mill=None,
    insertables: Sequence = (),
    cameras: Sequence = (),
    gis=None,
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
) -> SafeState:
    """The PFIB-SEM's safe state for a plan using these devices.

    In order: stop a cut or a Pt deposition in progress (after a failure or an
    interruption: the instrument counts a cut part-milled), blank the ion beam, stop every camera's
    acquisition, retract every insertable (the gas needle, the CBS and EDS
    detectors; retracting is allowed in any pose), switch the Pt heater off.

    Parameters
    ----------
    ion_column : IonColumn
        ``beam`` set to ``"Blanked"``.
    mill : Mill, optional
        Its cut and polish are stopped.
    insertables : sequence of Insertable
        Each ``set("out")``.
    cameras : sequence of StreamingCamera
        Each ``cam.acquire`` 0.
    gis : GasInjection, optional
        Its deposition stopped, heater off (its needle belongs in ``insertables``).
    timeout_s : float
        Longest wait per step.
    """
    steps: list[SafeStep] = []
    if mill is not None:
        for process in ("cut", "polish"):
            if getattr(mill, process, None) is not None:
                steps.append(Stop(getattr(mill, process), name=f"stop the {process}"))
    if getattr(gis, "deposition", None) is not None:
        steps.append(Stop(gis.deposition, name="stop the Pt deposition"))
    steps.append(SetTo(ion_column.beam, "Blanked", name="blank the ion beam", timeout_s=timeout_s))
    for camera in cameras:
        cam = getattr(camera, "cam", None)
        if getattr(cam, "acquire", None) is not None:
            steps.append(SetTo(cam.acquire, 0, name=f"stop {_label(camera)} acquisition",
                               timeout_s=timeout_s))  # fmt: skip
    for device in insertables:
        steps.append(SetTo(device, "out", name=f"retract {_label(device)}", timeout_s=timeout_s))
    if gis is not None and getattr(gis, "heat", None) is not None:
        steps.append(SetTo(gis.heat, "Off", name="Pt heater off", timeout_s=timeout_s))
    return SafeState(steps)


def laser_safe_state(
    emission,
    *,
    cut=None,
    table=None,
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
) -> SafeState:
    """The laser mill's safe state for a plan using these devices.

    In order: stop a cut in progress (after a failure or an interruption: the
    instrument counts it part-cut and never makes it again), switch emission off
    (on every exit), stop the table's axes (after a failure or an interruption).

    Parameters
    ----------
    emission : Emission
        ``set("Off")``.
    cut : LaserCut, optional
        Its ``start`` process is stopped.
    table : Table, optional
        Its ``x`` and ``y`` are stopped.
    timeout_s : float
        Longest wait per step.
    """
    steps: list[SafeStep] = []
    if getattr(cut, "start", None) is not None:
        steps.append(Stop(cut.start, name="stop the laser cut"))
    steps.append(SetTo(emission, "Off", name="laser emission off", timeout_s=timeout_s))
    for axis in ("x", "y"):
        positioner = getattr(table, axis, None) if table is not None else None
        if positioner is not None:
            steps.append(Stop(positioner, name=f"stop {_label(positioner)}"))
    return SafeState(steps)


def xrm_safe_state(
    shutter, *, camera=None, sample=None, timeout_s: float = DEFAULT_STEP_TIMEOUT_S
) -> SafeState:
    """The lab XRM's safe state: the TXM's steps on the XRM's devices, no position restored.

    In order: close the source ``shutter`` (no X-rays reach the sample or the room
    behind it; the tube itself stays on, as a lab source does between scans), stop
    the camera's acquisition, stop the rotation ``sample.theta`` and restore its speed,
    restore the camera's exposure, period and trigger mode. The sample stays where
    the plan put it (its volume of interest; flats lift it along z, which needs no
    undoing to be safe).
    """
    return txm_safe_state(shutter, camera=camera, sample=sample, positions=(),
                          timeout_s=timeout_s)  # fmt: skip
