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

:class:`MotorAxis` serves the motor record's fields with the record's semantics for
what clients use (put completion at DMOV 1, LVIO, STOP/SPMG, tweaks, RLV, user/dial
calibration, MSTA; decision 0024), so pyepics' ``epics.Motor`` and ophyd's
``EpicsMotor`` drive it unchanged. The arithmetic is :mod:`sim_devices.motor_record`.
Motion runs in dial coordinates: what the owning IOC renders and checks
(``position``, ``target``, ``guard``, ``follow``) is where the axis physically is.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections import deque
from dataclasses import dataclass

from caproto import SkipWrite
from caproto.server import PVGroup, pvproperty

from multiscope.compat import server_monitor_batch_seconds
from sim_devices.motor_record import (
    dial_limits_from_user,
    direction_sign,
    limit_violation,
    status_word,
    user_limits,
)
from sim_devices.refusal import RefusableDouble

__all__ = ["COMPLETION_SETTLE_S", "MotorAxis", "TrackedAxis", "Trajectory"]

#: Seconds a put with completion waits after the move so its monitors are sent first.
COMPLETION_SETTLE_S = 0.02


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


class _Setpoint(RefusableDouble):
    """VAL: the putter decides; caproto's control-limit check would refuse the put.

    The motor record accepts a target outside the soft limits and answers with LVIO
    (no move); VAL keeps the limits as its control limits, which is where ophyd reads
    them, so caproto's own check of a put against them is skipped here.
    """

    async def verify_value(self, value):
        if self.putter is not None:
            return await self.putter(self, value)
        return value


class MotorAxis(PVGroup):
    """One motor record axis (``record='motor'``), served as ``{prefix}`` + fields.

    The fields a client uses behave as the EPICS motor record documents them
    (docs/decisions/0024-motor-record-semantics.md; :mod:`sim_devices.motor_record`).

    Position
        ``{prefix}`` / ``.VAL``: user target; ``.DVAL``: dial target; ``.RBV`` /
        ``.DRBV``: user / dial readback; ``user = DIR * dial + OFF``. A put to VAL
        (DVAL, ``.RLV`` relative, ``.TWF``/``.TWR`` by ``.TWV``) moves the axis and
        completes, for a put with completion, when the move is done (DMOV 1).
    Status
        ``.DMOV``: done moving (pulses 0 -> 1 on every move, even zero-length),
        ``.MOVN``: moving, ``.TDIR``: direction of the last move, ``.MSTA``: status
        word (DIRECTION, DONE, MOVING, HOMED), ``.LVIO``: the last target was outside
        the soft limits (then the axis does not move and VAL returns to the previous
        target), ``.HLS``/``.LLS``: limit switches (none here, always 0).
    Configuration
        ``.VELO`` (EGU/s), ``.ACCL`` (s to reach VELO), ``.EGU``, ``.PREC``,
        ``.HLM``/``.LLM`` user and ``.DHLM``/``.DLLM`` dial soft limits, ``.OFF``,
        ``.DIR`` (Pos/Neg), ``.FOFF`` (Variable/Frozen), ``.MRES``.
    Commands
        ``.STOP``: stop; VAL becomes where the axis stopped. ``.SPMG``: Stop (as STOP;
        new targets wait), Pause (stop; the target stays and waits), Move (go, then
        back to Pause), Go (normal). ``.SET``: ``Set`` makes a VAL put redefine the
        user position without moving (OFF changes; with FOFF Frozen, the dial does).

    Parameters
    ----------
    velocity, acceleration : float
        Defaults for VELO (EGU/s) and ACCL (s).
    limits : tuple of float
        Soft limits (LLM, HLM); in dial coordinates too (OFF 0, DIR Pos at start).
    position : float
        Initial position.
    egu : str
        Engineering units.
    precision : int
        Display precision.
    tick_hz : float
        Readback update rate while moving.
    guard : callable, optional
        ``guard(axis, dial_target)`` (may be async) is called before a move starts;
        it raises :class:`sim_devices.refusal.RefusedError` to refuse the move.
    """

    motor = pvproperty(
        value=0.0,
        name="",
        record="motor",
        dtype=_Setpoint,  # a guard's RefusedError fails the put cleanly
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
        # Set by an owning IOC to hear of a soft-limit violation (sim_devices.refusal).
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
        self._halt = asyncio.Event()  # a STOP or a pause ends the running move
        self._idle = asyncio.Event()  # set while DMOV is 1: puts with completion wait on it
        self._idle.set()
        self._target = float(position)  # dial target (DVAL)
        self._pending = False  # a target not reached yet (moving, or held by SPMG)

    # -- state the owning IOC reads -------------------------------------------------

    @property
    def fields(self):
        """The motor record's field group (``.RBV``, ``.VELO``, ...)."""
        return self.motor.field_inst

    @property
    def position(self) -> float:
        """Where the axis is: its dial readback (the user readback at OFF 0, DIR Pos)."""
        return float(self.fields.dial_readback_value.value)

    @property
    def target(self) -> float:
        """Where the axis is going, or went: its dial target (DVAL)."""
        return self._target

    @property
    def moving(self) -> bool:
        """True while a move is in progress."""
        return self._move_task is not None and not self._move_task.done()

    @property
    def limits(self) -> tuple[float, float]:
        """Soft limits in user coordinates (LLM, HLM)."""
        return (float(self.fields.user_low_limit.value), float(self.fields.user_high_limit.value))

    @property
    def _calibration(self) -> tuple[int, float]:
        """(sign, offset) of ``user = sign * dial + offset``."""
        fields = self.fields
        return direction_sign(fields.user_direction.value), float(fields.user_offset.value)

    def _user(self, dial: float) -> float:
        sign, offset = self._calibration
        return sign * dial + offset

    def _dial(self, user: float) -> float:
        sign, offset = self._calibration
        return (user - offset) * sign

    # -- hooks ----------------------------------------------------------------------

    @motor.startup
    async def motor(self, instance, async_lib):
        """Write the defaults into the record fields."""
        fields = self.fields
        d = self._defaults
        # The calibration first: every user value is computed through it.
        await fields.user_offset.write(0.0, verify_value=False)
        await fields.user_direction.write("Pos", verify_value=False)
        await fields.offset_freeze_switch.write("Variable")
        await fields.set_use_switch.write("Use")
        await fields.stop_pause_move_go.write("Go", verify_value=False)
        await instance.write_metadata(precision=d["precision"])
        await fields.display_precision.write(d["precision"])
        # Tables (BestEffortCallback) format the readback with its own precision.
        await fields.user_readback_value.write_metadata(precision=d["precision"])
        await fields.velocity.write(d["velocity"])
        await fields.seconds_to_velocity.write(d["acceleration"])
        await fields.motor_step_size.write(1e-6)
        await fields.engineering_units.write(d["egu"])
        await fields.dial_low_limit.write(d["limits"][0])
        await fields.dial_high_limit.write(d["limits"][1])
        await self._publish_limits()
        await instance.write(d["position"], verify_value=False)
        await self._publish_target(d["position"])
        await self._publish_readback(d["position"])
        await fields.limit_violation.write(0)
        await fields.motor_is_moving.write(0)
        await self._set_done(True)
        await self._publish_status(done=True)

    @motor.putter
    async def motor(self, instance, value):
        """A VAL put: move there (completes at DMOV 1), or redefine it in Set mode."""
        if self.fields.set_use_switch.value == "Set":
            await self._redefine_user(float(value))
            raise SkipWrite
        await self.request(self._dial(float(value)))
        raise SkipWrite  # VAL was written by request(), or kept (LVIO)

    @motor.fields.dial_desired_value.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """A DVAL put: as VAL in dial coordinates (Set mode: redefine the dial)."""
        group = fields.parent.group
        if group.fields.set_use_switch.value == "Set":
            await group._redefine_dial(float(value))
        else:
            await group.request(float(value))
        raise SkipWrite

    @motor.fields.relative_value.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """RLV: move by ``value`` from the target; RLV reads back 0."""
        group = fields.parent.group
        if value:
            await group.request(group._target + float(value) * group._calibration[0])
        return 0.0

    @motor.fields.tweak_motor_forward.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """TWF: move by +TWV (user); TWF reads back 0."""
        await fields.parent.group._tweak(value, +1)
        return 0

    @motor.fields.tweak_motor_reverse.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """TWR: move by -TWV (user); TWR reads back 0."""
        await fields.parent.group._tweak(value, -1)
        return 0

    @motor.fields.stop.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """A STOP put: end any move where it is; STOP reads back 0."""
        if value:
            await fields.parent.group.stop()
        return 0

    @motor.fields.stop_pause_move_go.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """SPMG: Stop and Pause halt the axis; Move and Go start a held target."""
        group = fields.parent.group
        if value == "Stop":
            await group.stop()
        elif value == "Pause":
            await group._halt_move()
        elif group._pending and not group.moving:
            group._start_move(mode=value)
        return value

    @motor.fields.user_offset.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """OFF: the user coordinates shift (VAL, RBV, HLM, LLM); the axis stays."""
        group = fields.parent.group
        await instance.write(float(value), verify_value=False)
        await group._recalibrate()
        raise SkipWrite

    @motor.fields.user_direction.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """DIR: the user axis turns round; VAL stays unless the offset is frozen."""
        group = fields.parent.group
        user = float(group.motor.value)
        await instance.write(value, verify_value=False)
        if group.fields.offset_freeze_switch.value != "Frozen":
            sign = direction_sign(value)
            await group.fields.user_offset.write(user - sign * group._target, verify_value=False)
        await group._recalibrate()
        raise SkipWrite

    @motor.fields.user_high_limit.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """HLM: sets the dial limit it stands for (DHLM, or DLLM with DIR Neg)."""
        group = fields.parent.group
        await group._set_user_limits(group.limits[0], float(value))
        raise SkipWrite

    @motor.fields.user_low_limit.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """LLM: sets the dial limit it stands for (DLLM, or DHLM with DIR Neg)."""
        group = fields.parent.group
        await group._set_user_limits(float(value), group.limits[1])
        raise SkipWrite

    @motor.fields.dial_high_limit.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """DHLM: the user limits follow."""
        await instance.write(float(value), verify_value=False)
        await fields.parent.group._publish_limits()
        raise SkipWrite

    @motor.fields.dial_low_limit.putter
    async def motor(fields, instance, value):  # noqa: N805 - caproto passes the field group
        """DLLM: the user limits follow."""
        await instance.write(float(value), verify_value=False)
        await fields.parent.group._publish_limits()
        raise SkipWrite

    @motor.shutdown
    async def motor(self, instance, async_lib):
        """Stop any move when the server shuts down."""
        await self._cancel_move()

    # -- requests -------------------------------------------------------------------

    async def request(self, target: float) -> None:
        """Move to dial ``target``; return when it is done and its monitors are out."""
        await self._request(target)
        # The record posts the final readback, DMOV and LVIO before a put's completion;
        # caproto sends a put's reply at once but passes monitors through two tasks and
        # a batching delay: let them go first (twice that delay did not suffice on a
        # loaded machine; a completion only ends a move, 20 ms more is nothing to it).
        await asyncio.sleep(max(2.0 * server_monitor_batch_seconds(), COMPLETION_SETTLE_S))

    async def _request(self, target: float) -> None:
        """Move to dial ``target`` as the record does; return when the move is done.

        Outside the soft limits: LVIO 1, DMOV pulses, VAL stays at the last target and
        the axis does not move. Under SPMG Stop or Pause the target waits for Go.
        """
        fields = self.fields
        low, high = float(fields.dial_low_limit.value), float(fields.dial_high_limit.value)
        if limit_violation(target, self._target, low, high):
            await fields.limit_violation.write(1)
            if self.report_refusal is not None:
                await self.report_refusal(
                    f"{self.motor.pvname}: target {self._user(target):g} outside soft "
                    f"limits [{self.limits[0]:g}, {self.limits[1]:g}]: not moved (LVIO)"
                )
            if not self._pending:  # the record blinks DMOV; a move under way goes on
                await self._set_done(False)
                await self._set_done(True)
            return
        if self.guard is not None and inspect.isawaitable(refusal := self.guard(self, target)):
            await refusal
        if int(fields.limit_violation.value):
            await fields.limit_violation.write(0)
        self._pending = True
        await self._publish_target(target)
        await self._set_done(False)
        if fields.stop_pause_move_go.value in ("Go", "Move"):
            self._start_move(mode=fields.stop_pause_move_go.value)
        await self._idle.wait()

    async def stop(self) -> None:
        """STOP (and SPMG Stop): halt; the target becomes where the axis stopped."""
        self._pending = False
        await self._halt_move()
        await self._publish_target(self.position)
        if not int(self.fields.done_moving_to_value.value):
            await self._set_done(True)

    async def _tweak(self, value, direction: int) -> None:
        if value:
            step = direction * float(self.fields.tweak_step_size.value)
            await self.request(self._target + step * self._calibration[0])

    # -- calibration ----------------------------------------------------------------

    async def _redefine_user(self, user: float) -> None:
        """Set mode: the user position becomes ``user`` without a move."""
        fields = self.fields
        sign, offset = self._calibration
        await self._set_done(False)
        if fields.offset_freeze_switch.value == "Frozen":
            dial = (user - offset) * sign  # the dial is redefined, the offset kept
            await self._publish_target(dial)
            await self._publish_readback(dial)
        else:
            await fields.user_offset.write(user - sign * self._target, verify_value=False)
            await self._recalibrate()
        await self._set_done(True)

    async def _redefine_dial(self, dial: float) -> None:
        """Set mode, DVAL: the dial position becomes ``dial``; the user one stays."""
        sign = self._calibration[0]
        await self.fields.user_offset.write(
            float(self.motor.value) - sign * dial, verify_value=False
        )
        await self._publish_target(dial)
        await self._publish_readback(dial)
        await self._publish_limits()

    async def _recalibrate(self) -> None:
        """After OFF or DIR changed: user target, readback and limits follow the dial."""
        await self._publish_target(self._target)
        await self._publish_readback(self.position)
        await self._publish_limits()

    async def _set_user_limits(self, low: float, high: float) -> None:
        sign, offset = self._calibration
        dial_low, dial_high = dial_limits_from_user(low, high, sign, offset)
        await self.fields.dial_low_limit.write(dial_low, verify_value=False)
        await self.fields.dial_high_limit.write(dial_high, verify_value=False)
        await self._publish_limits()

    async def _publish_limits(self) -> None:
        """User limits from the dial ones; VAL's control limits (where ophyd reads them)."""
        fields = self.fields
        dial_low, dial_high = (
            float(fields.dial_low_limit.value),
            float(fields.dial_high_limit.value),
        )
        low, high = user_limits(dial_low, dial_high, *self._calibration)
        # VAL's first: ophyd reads them again when it sees HLM or LLM change.
        await self.motor.write_metadata(
            lower_ctrl_limit=low, upper_ctrl_limit=high, lower_disp_limit=low, upper_disp_limit=high
        )
        await fields.user_low_limit.write(low, verify_value=False)
        await fields.user_high_limit.write(high, verify_value=False)
        # As the record: a target the new limits exclude is a limit violation (the
        # next move clears it).
        if limit_violation(self._target, self._target, dial_low, dial_high):
            await fields.limit_violation.write(1)

    # -- motion ---------------------------------------------------------------------

    async def follow(self, position: float, *, settled: bool = False) -> None:
        """Report dial ``position``: the controller moved the axis itself (a traced path).

        The readback follows and the record reports moving (DMOV 0, MOVN 1), as a
        real one does during a coordinated move; ``settled`` ends it: the position
        becomes the target, as where the move ended, then DMOV 1, MOVN 0 (no move
        is started, no limit is checked).
        """
        fields = self.fields
        if not settled and int(fields.done_moving_to_value.value) == 1:
            await self._set_done(False)
            await fields.motor_is_moving.write(1)
            await self._publish_status(done=False)
        await self._publish_readback(float(position))
        if settled:
            await self._publish_target(float(position))
            await fields.motor_is_moving.write(0)
            await self._set_done(True)
            await self._publish_status(done=True)

    async def _publish_target(self, dial: float) -> None:
        """DVAL and VAL (with LDVL and LVAL: the last target, restored after an LVIO)."""
        self._target = float(dial)
        user = self._user(self._target)
        fields = self.fields
        await self.motor.write(user, verify_value=False)
        await fields.dial_desired_value.write(self._target, verify_value=False)
        await fields.last_user_des_val.write(user)
        await fields.last_dial_des_val.write(self._target)

    async def _publish_readback(self, position: float) -> None:
        fields = self.fields
        await fields.dial_readback_value.write(position)
        await fields.user_readback_value.write(self._user(position))

    async def _publish_status(self, *, done: bool) -> None:
        positive = int(self.fields.direction_of_travel.value) == 1
        await self.fields.motor_status.write(
            status_word(positive=positive, done=done, moving=not done)
        )

    async def _set_done(self, done: bool) -> None:
        """DMOV; puts with completion waiting on the move return when it is 1."""
        await self.fields.done_moving_to_value.write(int(done))
        if done:
            self._idle.set()
        else:
            self._idle.clear()

    def _start_move(self, *, mode: str = "Go") -> None:
        """Start (or retarget) the move to the target from where the axis is."""
        if self.moving:
            self._move_task.cancel()  # superseded: the new move goes on from here
        self._halt.clear()
        fields = self.fields
        trajectory = Trajectory(
            start=self.position,
            target=self._target,
            velocity=float(fields.velocity.value),
            accel_time=float(fields.seconds_to_velocity.value),
        )
        self._move_task = asyncio.get_running_loop().create_task(
            self._run_move(trajectory, then_pause=mode == "Move")
        )

    async def _halt_move(self) -> None:
        """End the running move where the axis is (it leaves DMOV to the caller)."""
        task = self._move_task
        if task is not None and not task.done():
            self._halt.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _cancel_move(self) -> None:
        task = self._move_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._move_task = None

    async def _run_move(self, trajectory: Trajectory, *, then_pause: bool = False) -> None:
        fields = self.fields
        dwell = 1.0 / self.tick_hz
        t0 = time.monotonic()
        halted = superseded = False
        await fields.direction_of_travel.write(1 if trajectory.target >= trajectory.start else 0)
        await fields.motor_is_moving.write(1)
        await self._publish_status(done=False)
        try:
            while True:
                elapsed = time.monotonic() - t0
                if self._halt.is_set():
                    halted = True
                    break
                if elapsed >= trajectory.duration:
                    break
                await self._publish_readback(trajectory.position(elapsed))
                # Wake at the next tick or exactly at arrival, whichever is first: waiting
                # for a whole tick after arrival would add up to 1/tick_hz to every move.
                remaining = max(trajectory.duration - elapsed, 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._halt.wait(), min(dwell, remaining))
            if not halted:
                await self._publish_readback(trajectory.target)
        except asyncio.CancelledError:
            superseded = True  # a new target replaced this move: no DMOV pulse
            raise
        finally:
            if not superseded:
                await fields.motor_is_moving.write(0)
                await self._publish_status(done=True)
                if not halted:  # arrived: the move is done
                    self._pending = False
                    if then_pause:  # SPMG Move: go once, then hold
                        await fields.stop_pause_move_go.write("Pause", verify_value=False)
                    await self._set_done(True)


@dataclass
class _Segment:
    """One recorded move: its start time, its profile and, once it ended, when and where."""

    t_start: float
    trajectory: Trajectory
    t_end: float | None = None
    end_position: float | None = None


class TrackedAxis(MotorAxis):
    """A :class:`MotorAxis` that answers "where was it at time t".

    Same PVs as ``MotorAxis``. It keeps its last few (dial) trajectories, so a frame can
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

    async def _run_move(self, trajectory: Trajectory, *, then_pause: bool = False) -> None:
        segment = self.record_move(trajectory, time.monotonic())
        try:
            await super()._run_move(trajectory, then_pause=then_pause)
        finally:
            segment.end_position = self.position
            segment.t_end = time.monotonic()

    async def _publish_readback(self, position: float) -> None:
        await super()._publish_readback(position)
        self._published = True
        if self.on_position is not None:
            await self.on_position(self)
