"""A simulated motor record axis that ophyd's ``EpicsMotor`` drives unchanged.

Motion follows a trapezoidal velocity profile (accelerate over ``ACCL`` seconds,
cruise at ``VELO``, decelerate) sampled at a fast tick (200 Hz by default; caproto's
``fake_motor_record`` example ticks at 10 Hz and caps scans at ~10 points/s)::

    velocity
      ^     ___________
      |    /           \\
      |   /             \\
      +--+---------------+--> time
         0  ACCL      duration

The profile is the pure class :class:`Trajectory`, unit-tested without a network.
:class:`TrackedAxis` is the same axis that also remembers its recent trajectories,
so an IOC whose frames depend on motion (the TXM's fly scans) can ask where the
axis was at any recent time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections import deque
from dataclasses import dataclass

from caproto.server import PVGroup, pvproperty

from multiscope.compat import cannot_exceed_limits
from sim_devices.refusal import RefusableDouble

__all__ = ["MotorAxis", "TrackedAxis", "Trajectory", "check_target"]


@dataclass(frozen=True)
class Trajectory:
    """A one-axis trapezoidal move from ``start`` to ``target``.

    Parameters
    ----------
    start, target : float
        Positions in engineering units.
    velocity : float
        Cruise speed (EGU/s); zero or negative means an instantaneous move.
    accel_time : float
        Seconds to reach ``velocity`` from rest (the motor record's ``ACCL``).
    """

    start: float
    target: float
    velocity: float
    accel_time: float = 0.0

    @property
    def distance(self) -> float:
        """Absolute length of the move."""
        return abs(self.target - self.start)

    @property
    def _accel(self) -> float:
        return self.velocity / self.accel_time if self.accel_time > 0 else math.inf

    @property
    def duration(self) -> float:
        """Seconds from start to arrival."""
        if self.velocity <= 0 or self.distance == 0:
            return 0.0
        if math.isinf(self._accel):
            return self.distance / self.velocity
        ramp_distance = self.velocity * self.accel_time  # accelerate + decelerate
        if self.distance >= ramp_distance:
            return self.distance / self.velocity + self.accel_time
        # Triangular profile: never reaches cruise speed.
        return 2.0 * math.sqrt(self.distance / self._accel)

    def position(self, t: float) -> float:
        """Position ``t`` seconds after the start (clamped to the end points)."""
        total = self.duration
        if t <= 0:
            return self.start
        if t >= total:
            return self.target
        sign = 1.0 if self.target >= self.start else -1.0
        accel = self._accel
        if math.isinf(accel):
            return self.start + sign * self.velocity * t
        t_ramp = min(self.accel_time, total / 2.0)
        peak = accel * t_ramp
        if t < t_ramp:
            travelled = 0.5 * accel * t * t
        elif t <= total - t_ramp:
            travelled = 0.5 * accel * t_ramp**2 + peak * (t - t_ramp)
        else:
            remaining = total - t
            travelled = self.distance - 0.5 * accel * remaining * remaining
        return self.start + sign * travelled


def check_target(value: float, low: float, high: float) -> None:
    """Refuse ``value`` outside [low, high] as caproto's records do (``CannotExceedLimits``).

    As in the motor record, ``low == high`` means no soft limits.
    """
    if low != high and not low <= value <= high:
        raise cannot_exceed_limits(f"Target {value} outside soft limits [{low}, {high}]")


class MotorAxis(PVGroup):
    """One motor record axis (``record='motor'``), served as ``{prefix}`` + fields.

    PVs (``{prefix}`` is the group prefix, e.g. ``DEMO:m1``)

    Position
        ``{prefix}`` / ``.VAL``: user setpoint (control limits follow HLM/LLM;
        puts outside them are refused), ``.RBV``: user readback, ``.DRBV``: dial
        readback.
    Status
        ``.DMOV``: done moving (pulses 0 -> 1 on every move, even zero-length),
        ``.MOVN``: moving, ``.TDIR``: direction of last move, ``.HLS``/``.LLS``:
        limit switches (always 0 here).
    Configuration
        ``.VELO`` (EGU/s), ``.ACCL`` (s to reach VELO), ``.EGU``, ``.HLM``/``.LLM``
        soft limits, ``.MRES``.
    Commands
        ``.STOP``: stop now (the setpoint is set to where the axis stopped),
        ``.SET``: ``Set`` makes a VAL put redefine the position without moving.

    Parameters
    ----------
    velocity, acceleration : float
        Defaults for VELO (EGU/s) and ACCL (s).
    limits : tuple of float
        Soft limits (LLM, HLM).
    position : float
        Initial position.
    egu : str
        Engineering units.
    precision : int
        Display precision.
    tick_hz : float
        Readback update rate while moving.
    guard : callable, optional
        ``guard(axis, target)`` (may be async) is called before a VAL put moves the
        axis; it raises :class:`sim_devices.refusal.RefusedError` to refuse the move.
    """

    motor = pvproperty(
        value=0.0,
        name="",
        record="motor",
        dtype=RefusableDouble,  # a guard's RefusedError fails the put cleanly
        precision=4,
        doc="Motor record: VAL is the user setpoint; fields carry readback and status",
    )

    def __init__(
        self,
        *args,
        velocity: float = 1.0,
        acceleration: float = 0.05,
        limits: tuple[float, float] = (-10.0, 10.0),
        position: float = 0.0,
        egu: str = "mm",
        precision: int = 4,
        tick_hz: float = 200.0,
        guard=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.guard = guard
        # Set by an owning IOC to hear of a soft-limit refusal (sim_devices.refusal).
        self.report_refusal = None
        self._defaults = {
            "velocity": float(velocity),
            "acceleration": float(acceleration),
            "limits": (float(limits[0]), float(limits[1])),
            "position": float(position),
            "egu": egu,
            "precision": int(precision),
        }
        self.tick_hz = float(tick_hz)
        self._move_task: asyncio.Task | None = None
        self._stop_requested = asyncio.Event()

    # -- state the owning IOC reads -------------------------------------------------

    @property
    def fields(self):
        """The motor record's field group (``.RBV``, ``.VELO``, ...)."""
        return self.motor.field_inst

    @property
    def position(self) -> float:
        """Current readback position (EGU)."""
        return float(self.fields.user_readback_value.value)

    @property
    def moving(self) -> bool:
        """True while a move is in progress."""
        return self._move_task is not None and not self._move_task.done()

    @property
    def limits(self) -> tuple[float, float]:
        """Soft limits (LLM, HLM)."""
        return (float(self.fields.user_low_limit.value), float(self.fields.user_high_limit.value))

    # -- hooks ----------------------------------------------------------------------

    @motor.startup
    async def motor(self, instance, async_lib):
        """Write the defaults into the record fields."""
        fields = self.fields
        d = self._defaults
        await instance.write_metadata(precision=d["precision"])
        # Tables (BestEffortCallback) format the readback with its own precision.
        await fields.user_readback_value.write_metadata(precision=d["precision"])
        await fields.velocity.write(d["velocity"])
        await fields.seconds_to_velocity.write(d["acceleration"])
        await fields.motor_step_size.write(1e-6)
        await fields.engineering_units.write(d["egu"])
        await self._apply_limits(*d["limits"])
        await instance.write(d["position"], verify_value=False)
        await self._publish_readback(d["position"])
        await fields.done_moving_to_value.write(1)
        await fields.motor_is_moving.write(0)

    @motor.putter
    async def motor(self, instance, value):
        """A VAL put: check the soft limits, then start the move (or redefine position)."""
        value = float(value)
        fields = self.fields
        if fields.set_use_switch.value == "Set":
            await self._publish_readback(value)
            return value
        check_target(value, *self.limits)
        if self.guard is not None and inspect.isawaitable(refusal := self.guard(self, value)):
            await refusal
        await self._cancel_move()
        self._stop_requested.clear()
        await fields.direction_of_travel.write(1 if value >= self.position else 0)
        await fields.done_moving_to_value.write(0)
        await fields.motor_is_moving.write(1)
        trajectory = Trajectory(
            start=self.position,
            target=value,
            velocity=float(fields.velocity.value),
            accel_time=float(fields.seconds_to_velocity.value),
        )
        self._move_task = asyncio.get_running_loop().create_task(self._run_move(trajectory))
        return value

    @motor.fields.stop.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """A STOP put: end any move where it is; STOP reads back 0."""
        group = fields.parent.group
        if value:
            group._stop_requested.set()
        return 0

    @motor.fields.user_high_limit.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """HLM: the setpoint's upper control limit follows it."""
        group = fields.parent.group
        await group._apply_limits(group.limits[0], float(value), write_fields=False)
        return value

    @motor.fields.user_low_limit.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """LLM: the setpoint's lower control limit follows it."""
        group = fields.parent.group
        await group._apply_limits(float(value), group.limits[1], write_fields=False)
        return value

    @motor.shutdown
    async def motor(self, instance, async_lib):
        """Stop any move when the server shuts down."""
        await self._cancel_move()

    # -- motion ---------------------------------------------------------------------

    async def follow(self, position: float, *, settled: bool = False) -> None:
        """Report ``position``: the controller moved the axis itself (a traced path).

        The readback follows and the record reports moving (DMOV 0, MOVN 1), as a
        real one does during a coordinated move; ``settled`` ends it: the position
        becomes the setpoint, as where the move ended, then DMOV 1, MOVN 0 (no move
        is started, no limit is checked).
        """
        fields = self.fields
        if not settled and int(fields.done_moving_to_value.value) == 1:
            await fields.done_moving_to_value.write(0)
            await fields.motor_is_moving.write(1)
        await self._publish_readback(float(position))
        if settled:
            await self.motor.write(float(position), verify_value=False)
            await fields.motor_is_moving.write(0)
            await fields.done_moving_to_value.write(1)

    async def _apply_limits(self, low: float, high: float, *, write_fields: bool = True):
        if write_fields:
            await self.fields.user_low_limit.write(low, verify_value=False)
            await self.fields.user_high_limit.write(high, verify_value=False)
        # ophyd's EpicsMotor reads limits from the setpoint's control limits.
        await self.motor.write_metadata(
            lower_ctrl_limit=low,
            upper_ctrl_limit=high,
            lower_disp_limit=low,
            upper_disp_limit=high,
        )

    async def _publish_readback(self, position: float) -> None:
        fields = self.fields
        await fields.user_readback_value.write(position)
        await fields.dial_readback_value.write(position)

    async def _cancel_move(self) -> None:
        task = self._move_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._move_task = None

    async def _run_move(self, trajectory: Trajectory) -> None:
        fields = self.fields
        dwell = 1.0 / self.tick_hz
        t0 = time.monotonic()
        stopped = False
        superseded = False
        try:
            while True:
                elapsed = time.monotonic() - t0
                if self._stop_requested.is_set():
                    stopped = True
                    break
                if elapsed >= trajectory.duration:
                    break
                await self._publish_readback(trajectory.position(elapsed))
                # Wake at the next tick or exactly at arrival, whichever is first: waiting
                # for a whole tick after arrival would add up to 1/tick_hz to every move.
                remaining = max(trajectory.duration - elapsed, 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), min(dwell, remaining))
            if stopped:
                # As the motor record does: the setpoint becomes where it stopped.
                await self.motor.write(self.position, verify_value=False)
            else:
                await self._publish_readback(trajectory.target)
        except asyncio.CancelledError:
            # A new target replaced this move: stay "moving", no DMOV pulse.
            superseded = True
            raise
        finally:
            self._stop_requested.clear()
            if not superseded:
                await fields.motor_is_moving.write(0)
                await fields.done_moving_to_value.write(1)


@dataclass
class _Segment:
    """One recorded move: its start time, its profile and, once it ended, when and where."""

    t_start: float
    trajectory: Trajectory
    t_end: float | None = None
    end_position: float | None = None


class TrackedAxis(MotorAxis):
    """A :class:`MotorAxis` that answers "where was it at time t".

    Same PVs as ``MotorAxis``. It keeps its last few trajectories, so a frame can
    use the position at the middle of its exposure even during a fly scan, and it
    calls ``on_position(axis)`` (an async callable, set by the owning IOC) after
    every readback update, so derived PVs follow the motion.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._segments: deque[_Segment] = deque(maxlen=16)
        self._published = False
        self.on_position = None

    @property
    def position(self) -> float:
        """Readback (EGU); the configured start position before the server runs."""
        if not self._published:
            return self._defaults["position"]
        return super().position

    def record_move(self, trajectory: Trajectory, t_start: float) -> _Segment:
        """Remember a move starting at ``t_start`` (``time.monotonic()``)."""
        segment = _Segment(t_start, trajectory)
        self._segments.append(segment)
        return segment

    def position_at(self, t: float) -> float:
        """Position at monotonic time ``t`` from the recorded trajectories."""
        segments = list(self._segments)
        if not segments:
            return self.position
        for i in range(len(segments) - 1, -1, -1):
            seg = segments[i]
            if t < seg.t_start:
                continue
            if seg.t_end is not None and t >= seg.t_end:
                # At rest after this move; the latest one defers to the readback (SET).
                if i == len(segments) - 1:
                    return self.position
                return float(seg.end_position)
            return seg.trajectory.position(t - seg.t_start)
        return segments[0].trajectory.start

    async def _run_move(self, trajectory: Trajectory) -> None:
        segment = self.record_move(trajectory, time.monotonic())
        try:
            await super()._run_move(trajectory)
        finally:
            segment.end_position = self.position
            segment.t_end = time.monotonic()

    async def _publish_readback(self, position: float) -> None:
        await super()._publish_readback(position)
        self._published = True
        if self.on_position is not None:
            await self.on_position(self)
