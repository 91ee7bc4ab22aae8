"""Tomography plans for the TXM: step tomography with dark and flat policies.

A tomogram is one run with three streams, as at every tomography beamline
(each contiguous block of frames in its own detector file, see
:mod:`multiscope.plan_stubs.frames`):

===========  ===================================================================
``dark``     frames with the shutter closed (detector offset and dark current)
``flat``     frames with the sample moved out of the beam (flat field)
``primary``  projections, one event per rotation angle (``sample_theta``)
===========  ===================================================================

The start document carries a ``tomo`` block (geometry and acquisition
parameters) that the live reconstruction reads; see ``docs/txm.md``. Every
argument is checked, and the duration estimated, before the first message.

Examples
--------
>>> RE(tomo_scan(camera, sample, shutter, num_projections=361, exposure_s=0.05,
...              flat_policy="both", sample_id="NMC811 tab 3"))  # doctest: +SKIP
"""

import contextlib
import logging
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import short_uid
from ophyd.utils.errors import InvalidState

from ..checks import signal_value
from ..contracts import TomoBlock
from ..plan_stubs.frames import acquire_frame, take_darks, take_flats
from ..plan_stubs.safe_state import safe_state_decorator, txm_safe_state
from .preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    estimate_moves_s,
    field_of_view_um,
    format_duration,
    require_camera,
    require_duration_within,
    require_int,
    require_number,
    require_out_of_field,
    require_parts,
    require_positioner,
    require_positions_within_limits,
    require_shutter,
    sample_md,
)

__all__ = [
    "FLAT_POLICIES",
    "DARK_POLICIES",
    "FLY_FLAT_POLICIES",
    "MAX_THETA_VELOCITY_DEG_S",
    "TomoSchedule",
    "fly_tomo_scan",
    "tomo_schedule",
    "tomo_scan",
]

logger = logging.getLogger(__name__)

FLAT_POLICIES = ("start", "end", "both", "every", "none")
DARK_POLICIES = ("start", "end", "both", "none")

# Per-frame overhead of a triggered acquisition over CA beyond the exposure
# (trigger, file write, event): measured ~13 ms for 64 x 64 frames (docs/benchmarks.md).
_FRAME_OVERHEAD_S = 0.015


@dataclass(frozen=True)
class TomoSchedule:
    """The order of a tomogram's acquisitions, fixed before anything moves.

    Its sizes are known at once; the angles and the set positions are built when
    first asked for, so a plan checks the run's duration before building them.
    Made by :func:`tomo_schedule`, which validates the fields.

    Attributes
    ----------
    num_projections : int
    angle_range_deg, start_deg : float
    flat_policy, dark_policy : str
    flat_every : int or None
    angles_deg : ndarray
        Rotation angles of the projections (deg).
    flats_before : tuple of int
        Projection indices before which a flat set is taken (``num_projections``
        means after the last projection).
    darks_before : tuple of int
        As ``flats_before`` for dark sets.
    """

    num_projections: int
    angle_range_deg: float
    start_deg: float
    flat_policy: str
    dark_policy: str
    flat_every: int | None = None

    @cached_property
    def angles_deg(self) -> np.ndarray:
        n = self.num_projections
        return self.start_deg + self.angle_range_deg * np.arange(n) / n

    @cached_property
    def flats_before(self) -> tuple[int, ...]:
        return self._set_positions(self.flat_policy)

    @cached_property
    def darks_before(self) -> tuple[int, ...]:
        return self._set_positions(self.dark_policy)

    @property
    def num_flat_sets(self) -> int:
        return self._num_sets(self.flat_policy)

    @property
    def num_dark_sets(self) -> int:
        return self._num_sets(self.dark_policy)

    def _set_positions(self, policy: str) -> tuple[int, ...]:
        n = self.num_projections
        if policy == "every":
            return (*range(0, n, self.flat_every), n)
        return {"start": (0,), "end": (n,), "both": (0, n), "none": ()}[policy]

    def _num_sets(self, policy: str) -> int:
        if policy == "every":  # 0, k, 2k... below n, and n
            return -(-self.num_projections // self.flat_every) + 1
        return {"start": 1, "end": 1, "both": 2, "none": 0}[policy]


def tomo_schedule(
    num_projections: int,
    angle_range_deg: float = 180.0,
    *,
    start_deg: float = 0.0,
    flat_policy: str = "both",
    flat_every: int | None = None,
    dark_policy: str = "start",
) -> TomoSchedule:
    """Validate the acquisition pattern and return its schedule (pure, no devices).

    Parameters
    ----------
    num_projections : int
        Projections (>= 2), equally spaced over ``angle_range_deg``; a 180 deg
        scan excludes the end point (it would repeat 0 deg mirrored), a 360 deg
        scan too.
    angle_range_deg : float
        Rotation range, in (0, 360].
    start_deg : float
        First angle.
    flat_policy : {"start", "end", "both", "every", "none"}
        When to take flats; ``"every"`` takes them at the start, every
        ``flat_every`` projections and at the end.
    flat_every : int, optional
        Required with ``flat_policy="every"``.
    dark_policy : {"start", "end", "both", "none"}
        When to take darks.
    """
    num_projections = require_int("num_projections", num_projections, minimum=2)
    angle_range_deg = require_number(
        "angle_range_deg", angle_range_deg, minimum=0, exclusive_minimum=True, maximum=360
    )
    start_deg = require_number("start_deg", start_deg)
    if flat_policy not in FLAT_POLICIES:
        raise PlanArgumentError(f"flat_policy must be one of {FLAT_POLICIES}, got {flat_policy!r}")
    if dark_policy not in DARK_POLICIES:
        raise PlanArgumentError(f"dark_policy must be one of {DARK_POLICIES}, got {dark_policy!r}")
    if flat_policy == "every":
        if flat_every is None:
            raise PlanArgumentError('flat_every is required with flat_policy="every"')
        flat_every = require_int("flat_every", flat_every, minimum=1, maximum=num_projections)
    elif flat_every is not None:
        raise PlanArgumentError('flat_every is only used with flat_policy="every"')

    return TomoSchedule(
        num_projections, angle_range_deg, start_deg, flat_policy, dark_policy, flat_every
    )


def _exposure_signal(camera):
    cam = getattr(camera, "cam", None)
    return getattr(cam, "acquire_time", None)


def step_tomogram(
    camera, sample, shutter, schedule, *, num_darks, num_flats, x_in, x_out, also_read=(),
    flat_axis=None,
):  # fmt: skip
    """The frames of one step tomogram inside an open run, shutter open (a plan fragment).

    Darks and flats where ``schedule`` puts them, one ``primary`` event per angle
    reading ``camera``, ``sample.theta`` and ``also_read``; flats read
    ``sample.theta`` and ``also_read`` too, darks ``sample.theta`` (the angles of
    DXchange's ``theta_white`` and ``theta_dark``). Projections between two
    dark/flat sets go to one detector file. Used by :func:`tomo_scan` and by the
    XANES tomograms (one per energy, in one run).

    Parameters
    ----------
    camera, sample, shutter
        As :func:`tomo_scan`.
    schedule : TomoSchedule
        Angles and where the dark and flat sets go.
    num_darks, num_flats : int
        Frames per dark / flat set.
    x_in, x_out : float
        ``flat_axis`` in the beam and out of it (flats).
    also_read : sequence of Readable
        Read with every projection and flat (e.g. the energy and its index).
    flat_axis : Movable, optional
        The axis that takes the sample out for flats; default ``sample.x`` (the XRM
        lifts its whole cells out with ``sample.z``).
    """
    flat_axis = sample.x if flat_axis is None else flat_axis
    num_projections = len(schedule.angles_deg)
    staged = False  # projections go to one file per block between dark/flat sets
    for index in range(num_projections + 1):
        if index in schedule.darks_before or index in schedule.flats_before:
            if staged:
                yield from bps.unstage(camera)
                staged = False
            # The rotation is read with darks and flats: their angles
            # (DXchange theta_dark, theta_white).
            if index in schedule.darks_before:
                yield from take_darks(camera, shutter, num_darks, also_read=[sample.theta])
            if index in schedule.flats_before:
                yield from take_flats(
                    camera, flat_axis, x_out, x_in, num_flats,
                    also_read=[sample.theta, *also_read],
                )  # fmt: skip
        if index == num_projections:
            break
        if not staged:
            yield from bps.stage(camera)
            staged = True
        yield from acquire_frame(
            camera, index, [sample.theta, *also_read], "primary",
            before=bps.mv(sample.theta, float(schedule.angles_deg[index])),
        )  # fmt: skip
    if staged:
        yield from bps.unstage(camera)


def tomo_scan(
    camera,
    sample,
    shutter,
    *,
    num_projections: int = 361,
    angle_range_deg: float = 180.0,
    start_deg: float = 0.0,
    exposure_s: float = 0.05,
    num_darks: int = 10,
    num_flats: int = 10,
    flat_policy: str = "both",
    flat_every: int | None = None,
    dark_policy: str = "start",
    sample_out_offset_um: float = 300.0,
    pixel_size_um: float | None = None,
    energy_keV: float | None = None,
    center_guess_px: float | None = None,
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """Step tomography: darks, flats and one projection per angle, in one run.

    Parameters
    ----------
    camera : StreamingCamera
        Area detector (frames to HDF5); its ``cam.acquire_time`` is set to ``exposure_s``.
    sample : SampleStage
        With ``theta`` (deg) and ``x`` (um) positioners; ``x`` moves the sample
        out of the beam for flats and back.
    shutter : Movable
        ``set("open")`` / ``set("close")``; closed for darks.
    num_projections, angle_range_deg, start_deg, flat_policy, flat_every, dark_policy
        As :func:`tomo_schedule`.
    exposure_s : float
        Exposure per frame (s), > 0.
    num_darks, num_flats : int
        Frames per dark / flat set (>= 1 when the policy takes any).
    sample_out_offset_um : float
        How far ``sample.x`` moves for flats (um): at least the field of view's
        width (the camera's columns x ``pixel_size_um``, else the TXM's widest
        field); the stage's limits are checked.
    pixel_size_um, energy_keV, center_guess_px : float, optional
        Geometry recorded in the ``tomo`` metadata block for the reconstruction.
    sample_id : str
        Sample identifier recorded in the metadata.
    max_duration_s : float
        Longest estimated run accepted (s); default
        :data:`~multiscope.plans.preflight.MAX_RUN_DURATION_S` (a day).
    md : dict, optional
        Metadata merged over the plan's own.

    Raises
    ------
    PlanArgumentError
        Before any message: a device without what the plan uses of it, any invalid
        argument, a target outside a limit, a sample-out offset inside the field of
        view, a run estimated beyond ``max_duration_s``.
    """
    _check_tomo_devices(camera, sample, shutter)
    schedule = tomo_schedule(
        num_projections,
        angle_range_deg,
        start_deg=start_deg,
        flat_policy=flat_policy,
        flat_every=flat_every,
        dark_policy=dark_policy,
    )
    exposure_s = require_number("exposure_s", exposure_s, minimum=0, exclusive_minimum=True)
    num_darks = require_int("num_darks", num_darks, minimum=1 if schedule.num_dark_sets else 0)
    num_flats = require_int("num_flats", num_flats, minimum=1 if schedule.num_flat_sets else 0)
    offset = require_number("sample_out_offset_um", sample_out_offset_um)
    if schedule.num_flat_sets and offset == 0:
        raise PlanArgumentError("sample_out_offset_um must be non-zero when flats are taken")
    _check_geometry_md(pixel_size_um, energy_keV, center_guess_px, sample_id)
    if schedule.num_flat_sets:
        _check_out_of_field(offset, camera, pixel_size_um)
    x_in = float(sample.x.position)
    if schedule.num_flat_sets:
        require_positions_within_limits("sample_out_offset_um", sample.x, [x_in + offset])
    exposure_signal = _exposure_signal(camera)

    frames = (
        num_projections + num_darks * schedule.num_dark_sets + num_flats * schedule.num_flat_sets
    )
    theta_speed = abs(signal_value(getattr(sample.theta, "velocity", None)))
    rotation_s = angle_range_deg / theta_speed if theta_speed > 0 else 0.0
    out_in_s = 2 * schedule.num_flat_sets * estimate_moves_s(sample.x, [x_in + offset, x_in])
    estimate = frames * (exposure_s + _FRAME_OVERHEAD_S) + rotation_s + out_in_s
    require_duration_within("tomo_scan", estimate, max_duration_s)
    require_positions_within_limits("angles", sample.theta, schedule.angles_deg)  # now built
    logger.info(
        "tomo_scan: %d projections, %d frames in all, estimated %s",
        num_projections,
        frames,
        format_duration(estimate),
    )

    tomo_md = TomoBlock(
        num_projections=num_projections, angle_range_deg=angle_range_deg, start_deg=start_deg,
        exposure_s=exposure_s, num_darks=num_darks, num_flats=num_flats,
        flat_policy=flat_policy, flat_every=flat_every, dark_policy=dark_policy,
        sample_out_offset_um=offset, pixel_size_um=pixel_size_um, energy_keV=energy_keV,
        center_guess_px=center_guess_px, sample_id=sample_id, rotation=sample.theta.name,
    ).to_md()  # fmt: skip
    _md = {
        "plan_name": "tomo_scan",
        "detectors": [camera.name],
        "motors": [sample.theta.name],
        "num_points": num_projections,
        "num_intervals": num_projections - 1,
        "plan_args": {"num_projections": num_projections, "angle_range_deg": angle_range_deg,
                      "exposure_s": exposure_s, "flat_policy": flat_policy},
        "hints": {"dimensions": [([sample.theta.name], "primary")]},
        "estimated_duration_s": round(estimate, 3),
        **sample_md(sample_id),
        "tomo": tomo_md,
    }  # fmt: skip
    _md.update(md or {})

    def inner():
        if exposure_signal is not None:
            yield from bps.mv(exposure_signal, exposure_s)
        yield from bps.mv(shutter, "open")
        yield from step_tomogram(
            camera, sample, shutter, schedule, num_darks=num_darks, num_flats=num_flats,
            x_in=x_in, x_out=x_in + offset,
        )  # fmt: skip
        yield from bps.mv(shutter, "close")

    # On every exit the shutter closes, the camera stops and gets its settings back and the
    # sample returns in-beam, before the stop document; the RunEngine then unstages.
    @bpp.run_decorator(md=_md)
    @safe_state_decorator(txm_safe_state(shutter, camera=camera, sample=sample))
    def run():
        yield from inner()

    return (yield from run())


# ------------------------------------------------------------------------------ fly scan

FLY_FLAT_POLICIES = ("start", "end", "both", "none")
#: Default rotation-speed ceiling (deg/s): the TXM rotation's VMAX (docs/txm.md).
MAX_THETA_VELOCITY_DEG_S = 180.0
# Default readout time added to the exposure when no frame period is given (s).
_FLY_READOUT_S = 0.005
# Without a position trigger, the camera starts ~this long after the rotation passes the
# software gate (measured 20-40 ms over CA; more on a loaded machine: decision 0008).
_KICKOFF_LATENCY_S = 0.03
# Constant-speed travel kept before the first and after the last frame (s).
_FLY_SETTLE_S = 0.1


def _check_tomo_devices(camera, sample, shutter) -> None:
    """Check the devices a tomogram uses, by what it uses of them (raises PlanArgumentError)."""
    require_camera("camera", camera)
    require_parts("sample", sample, ("x", "theta"), "a sample stage (x, theta)")
    require_positioner("sample.x", sample.x)
    require_positioner("sample.theta", sample.theta)
    require_shutter("shutter", shutter)


def _check_out_of_field(offset_um: float, camera, pixel_size_um: float | None) -> None:
    """Refuse a sample-out offset that leaves the sample in the camera's field (flats)."""
    field_um = field_of_view_um(camera, pixel_size_um)
    require_out_of_field("sample_out_offset_um", offset_um, field_um)


def _check_geometry_md(pixel_size_um, energy_keV, center_guess_px, sample_id) -> None:
    """Check the geometry and sample metadata of a tomogram (raises PlanArgumentError)."""
    for name, value in (("pixel_size_um", pixel_size_um), ("energy_keV", energy_keV)):
        if value is not None:
            require_number(name, value, minimum=0, exclusive_minimum=True)
    if center_guess_px is not None:
        require_number("center_guess_px", center_guess_px)
    sample_md(sample_id)


class _PassGate:
    """Triggerable whose status is done when ``positioner`` reaches ``threshold`` (increasing).

    The fallback for a rotation without a position trigger: the plan kicks the
    camera off when the client sees the rotation pass the gate, so the first frame
    comes a network and scheduling latency later (decision 0008).
    """

    def __init__(self, positioner, threshold: float, timeout: float):
        self.positioner = positioner
        self.threshold = float(threshold)
        self.timeout = float(timeout)
        self.name = f"{positioner.name}_gate"
        self.parent = None

    def trigger(self):
        from ophyd.status import SubscriptionStatus

        def passed(*args, value, **kwargs):
            return float(value) >= self.threshold

        self._status = SubscriptionStatus(self.positioner, passed, timeout=self.timeout)
        return self._status

    def pause(self):
        """End a pending wait: the RunEngine no longer waits for it (the sweep is replayed),
        and its timeout failing later would fail the resumed run."""
        status = getattr(self, "_status", None)
        if status is not None and not status.done:
            with contextlib.suppress(InvalidState):
                status.set_finished()

    def resume(self):
        """Nothing to do: the replayed sweep triggers the gate again."""


@dataclass(frozen=True)
class FlySweep:
    """One fly tomogram's rotation, fixed and checked before anything moves."""

    start_deg: float  # run-up start
    end_deg: float  # run-out end
    first_exposure_deg: float  # where the first exposure starts: the position trigger
    velocity: float  # deg/s
    period_s: float  # frame period
    duration_s: float  # estimated sweep time, ramp included

    @property
    def gate_deg(self) -> float:
        """Where a software gate kicks the camera off: its start latency ahead."""
        return self.first_exposure_deg - self.velocity * _KICKOFF_LATENCY_S


def fly_sweep(theta, num_projections, angle_range_deg, start_deg, exposure_s,
              frame_period_s=None, max_velocity_deg_s=None) -> FlySweep:  # fmt: skip
    """Check and fix the rotation of a fly tomogram (raises PlanArgumentError).

    Run-up: the ramp (v * ACCL / 2), settling, then the first exposure's first half
    and the camera's start latency, all before the first angle; the same margin
    after the end. The whole sweep must lie within the rotation's limits.
    """
    if frame_period_s is None:
        frame_period_s = exposure_s + _FLY_READOUT_S
    period = require_number("frame_period_s", frame_period_s, minimum=exposure_s)
    if max_velocity_deg_s is None:
        max_velocity_deg_s = MAX_THETA_VELOCITY_DEG_S
    vmax = require_number(
        "max_velocity_deg_s", max_velocity_deg_s, minimum=0, exclusive_minimum=True
    )
    velocity = angle_range_deg / (num_projections * period)
    if velocity > vmax:
        raise PlanArgumentError(
            f"rotation speed {velocity:.4g} deg/s (angle_range_deg / (num_projections * "
            f"frame_period_s)) exceeds max_velocity_deg_s {vmax:g}; take more projections "
            "or a longer frame_period_s"
        )
    accel_s = max(0.0, signal_value(getattr(theta, "acceleration", None)))
    runup = velocity * (accel_s + _FLY_SETTLE_S + exposure_s + _KICKOFF_LATENCY_S)
    first, last = start_deg - runup, start_deg + angle_range_deg + runup
    require_positions_within_limits("fly sweep", theta, [first, last])
    if getattr(theta, "velocity", None) is None:
        raise PlanArgumentError(f"{theta.name} has no velocity to set for the fly scan")
    first_exposure = start_deg - velocity * 0.5 * exposure_s
    duration = (last - first) / velocity + accel_s
    return FlySweep(first, last, first_exposure, velocity, period, duration)


def fly_camera(camera, flyer, num_frames: int, frame_period_s: float, start_trigger=None):
    """``flyer`` set to take ``num_frames`` frames every ``frame_period_s`` per kickoff.

    ``flyer=None`` makes a :class:`~multiscope.devices.flyers.FlyingCamera` of
    ``camera``, started by ``start_trigger`` (the rotation's position compare, e.g.
    ``sample.rotation_trigger``) when there is one.
    """
    if flyer is None:
        from multiscope.devices.flyers import FlyingCamera

        flyer = FlyingCamera(camera, start_trigger=start_trigger)
    flyer.num_frames = num_frames
    flyer.frame_period_s = frame_period_s
    return flyer


def fly_tomogram(camera, sample, shutter, flyer, sweep: FlySweep, schedule, *, num_darks,
                 num_flats, x_in, x_out, also_read=(), declare=True):  # fmt: skip
    """The frames of one fly tomogram inside an open run, shutter open (a plan fragment).

    Darks and flats before the sweep and after it, where ``schedule`` puts them
    (flats read ``also_read``), around :func:`fly_projections`. Used by
    :func:`fly_tomo_scan` and by the fly XANES tomograms (one per energy, in one
    run), as :func:`step_tomogram` is for step scans.
    """
    n = len(schedule.angles_deg)
    # The rotation is read with darks and flats: their angles (DXchange theta_dark, theta_white).
    flat_reads = [sample.theta, *also_read]
    if 0 in schedule.darks_before:
        yield from take_darks(camera, shutter, num_darks, also_read=[sample.theta])
    if 0 in schedule.flats_before:
        yield from take_flats(camera, sample.x, x_out, x_in, num_flats, also_read=flat_reads)
    yield from bps.checkpoint()
    yield from fly_projections(camera, sample.theta, flyer, sweep, declare=declare)
    if n in schedule.flats_before:
        yield from take_flats(camera, sample.x, x_out, x_in, num_flats, also_read=flat_reads)
    if n in schedule.darks_before:
        yield from take_darks(camera, shutter, num_darks, also_read=[sample.theta])


def fly_projections(camera, theta, flyer, sweep: FlySweep, *, declare: bool = True):
    """The projections of one fly tomogram inside an open run (a plan fragment).

    The camera staged (the projections' own file), then from a checkpoint: the
    rotation to the run-up start at its own speed, the fly speed set, the camera
    prepared and started: with a position trigger (the flyer's ``start_trigger``)
    armed before the rotation starts, to expose from ``sweep.first_exposure_deg``
    exactly; otherwise kicked off as the client sees the rotation pass
    ``sweep.gate_deg``. The frames are collected into ``primary`` once the sweep is
    complete (``declare`` the stream the first time in a run), so a pause or a
    suspension inside the sweep leaves no event of it: the flyer abandons the
    acquisition and the rewound plan runs the sweep again from its checkpoint, into
    a new file (decision 0011). The rotation's speed is restored after the sweep; on
    failure the camera and the rotation are stopped first.
    """
    velocity_signal = theta.velocity
    timeout = sweep.duration_s + 10.0
    triggered = getattr(flyer, "start_trigger", None) is not None
    saved = {}

    def restore_velocity():
        if "value" in saved:
            yield from bps.mv(velocity_signal, saved.pop("value"))

    def sweep_frames():
        if declare:
            yield from bps.declare_stream(flyer, name="primary", collect=True)
        yield from bps.stage(camera)
        saved["value"] = yield from bps.rd(velocity_signal)
        # A rewind replays the sweep from here: back to the run-up start at the
        # rotation's own speed, then at the fly speed again.
        yield from bps.checkpoint()
        yield from bps.mv(velocity_signal, saved["value"])
        yield from bps.mv(theta, sweep.start_deg)
        yield from bps.mv(velocity_signal, sweep.velocity)
        move = short_uid("fly_rotation")
        if triggered:
            start = {"start_position": sweep.first_exposure_deg, "start_timeout_s": timeout}
            yield from bps.prepare(flyer, start, wait=True)
            yield from bps.kickoff(flyer, wait=True)  # armed: frames start at the pulse
            yield from bps.abs_set(theta, sweep.end_deg, group=move)
        else:
            if hasattr(flyer, "prepare"):  # settings put now, not between gate and kickoff
                yield from bps.prepare(flyer, None, wait=True)
            yield from bps.abs_set(theta, sweep.end_deg, group=move)
            yield from bps.trigger(_PassGate(theta, sweep.gate_deg, timeout), wait=True)
            yield from bps.kickoff(flyer, wait=True)
        yield from bps.complete(flyer, wait=True)
        yield from bps.wait(group=move)
        yield from bps.collect(flyer, name="primary")
        yield from bps.unstage(camera)  # at once: its checkpoint keeps a rewind after it
        yield from restore_velocity()

    def cleanup():
        if "value" in saved:  # failed during the sweep
            yield from bps.stop(flyer)
            yield from bps.stop(theta)
        yield from restore_velocity()

    return (yield from bpp.finalize_wrapper(sweep_frames(), cleanup()))


def fly_tomo_scan(
    camera,
    sample,
    shutter,
    *,
    num_projections: int,
    angle_range_deg: float = 180.0,
    start_deg: float = 0.0,
    exposure_s: float,
    frame_period_s: float | None = None,
    num_darks: int = 10,
    num_flats: int = 10,
    flat_policy: str = "both",
    dark_policy: str = "start",
    sample_out_offset_um: float = 300.0,
    max_velocity_deg_s: float | None = None,
    pixel_size_um: float | None = None,
    energy_keV: float | None = None,
    center_guess_px: float | None = None,
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
    flyer=None,
):
    """Fly tomography: the rotation turns at constant speed while the camera free-runs.

    One run with streams ``dark`` and ``flat`` (step events, as :func:`tomo_scan`)
    and ``primary``: ``num_projections`` frames collected from the camera's file,
    one every ``frame_period_s``, each with its rotation angle at mid-exposure
    (``<camera>_theta``, recorded by the IOC), as StreamResource/StreamDatum
    documents (:class:`~multiscope.devices.flyers.FlyingCamera`). The rotation
    runs from a run-up before ``start_deg`` (acceleration and settling) to past
    the end of the range at ``angle_range_deg / (num_projections * period)``
    deg/s; its velocity is restored afterwards, also on failure.

    Parameters
    ----------
    camera : StreamingCamera
        Area detector (frames to HDF5); ``cam.acquire_time`` is set to ``exposure_s``.
    sample : SampleStage
        ``theta`` (deg; a motor with ``velocity`` and ``acceleration``) and ``x`` (um).
    shutter : Movable
        ``set("open")`` / ``set("close")``; closed for darks.
    num_projections, angle_range_deg, start_deg, dark_policy
        As :func:`tomo_schedule` (projections over ``[start, start + range)``).
    exposure_s : float
        Exposure per frame (s), > 0.
    frame_period_s : float, optional
        Time between frame starts (s), >= ``exposure_s``; default ``exposure_s`` + 5 ms.
    num_darks, num_flats : int
        Frames per dark / flat set (>= 1 when the policy takes any).
    flat_policy : {"start", "end", "both", "none"}
        When to take flats (``"every"`` would interrupt the rotation).
    sample_out_offset_um : float
        How far ``sample.x`` moves for flats (um), as :func:`tomo_scan`.
    max_velocity_deg_s : float, optional
        Fastest allowed rotation; default :data:`MAX_THETA_VELOCITY_DEG_S`.
    pixel_size_um, energy_keV, center_guess_px : float, optional
        Geometry recorded in the ``tomo`` metadata block.
    sample_id : str
        Sample identifier recorded in the metadata.
    max_duration_s : float
        Longest estimated run accepted (s), as :func:`tomo_scan`.
    md : dict, optional
        Metadata merged over the plan's own.
    flyer : FlyingCamera, optional
        The free-running camera; by default a ``FlyingCamera(camera)`` started by
        ``sample.rotation_trigger`` (if the stage has one) configured here.

    Raises
    ------
    PlanArgumentError
        Before any message: any invalid argument, a rotation faster than allowed, or
        a sweep (run-up and run-out included) or sample-out target outside a limit;
        as :func:`tomo_scan` for the devices, the field of view and the duration.
    """
    _check_tomo_devices(camera, sample, shutter)
    if flyer is not None:
        require_parts("flyer", flyer, ("kickoff", "complete", "describe_collect"),
                      "a flyer (kickoff, complete, describe_collect)")  # fmt: skip
    if flat_policy not in FLY_FLAT_POLICIES:
        raise PlanArgumentError(
            f"flat_policy must be one of {FLY_FLAT_POLICIES} for a fly scan, got {flat_policy!r}"
        )
    schedule = tomo_schedule(
        num_projections,
        angle_range_deg,
        start_deg=start_deg,
        flat_policy=flat_policy,
        dark_policy=dark_policy,
    )
    exposure_s = require_number("exposure_s", exposure_s, minimum=0, exclusive_minimum=True)
    num_darks = require_int("num_darks", num_darks, minimum=1 if schedule.num_dark_sets else 0)
    num_flats = require_int("num_flats", num_flats, minimum=1 if schedule.num_flat_sets else 0)
    offset = require_number("sample_out_offset_um", sample_out_offset_um)
    if schedule.num_flat_sets and offset == 0:
        raise PlanArgumentError("sample_out_offset_um must be non-zero when flats are taken")
    _check_geometry_md(pixel_size_um, energy_keV, center_guess_px, sample_id)
    if schedule.num_flat_sets:
        _check_out_of_field(offset, camera, pixel_size_um)
    theta = sample.theta
    sweep = fly_sweep(theta, num_projections, angle_range_deg, start_deg, exposure_s,
                      frame_period_s, max_velocity_deg_s)  # fmt: skip
    frame_period_s, velocity = sweep.period_s, sweep.velocity
    x_in = float(sample.x.position)
    if schedule.num_flat_sets:
        require_positions_within_limits("sample_out_offset_um", sample.x, [x_in + offset])
    exposure_signal = _exposure_signal(camera)

    step_frames = num_darks * schedule.num_dark_sets + num_flats * schedule.num_flat_sets
    to_start_s = estimate_moves_s(theta, [sweep.start_deg])
    out_in_s = 2 * schedule.num_flat_sets * estimate_moves_s(sample.x, [x_in + offset, x_in])
    estimate = step_frames * (exposure_s + _FRAME_OVERHEAD_S) + to_start_s + sweep.duration_s
    estimate += out_in_s
    require_duration_within("fly_tomo_scan", estimate, max_duration_s)

    flyer = fly_camera(camera, flyer, num_projections, frame_period_s,
                       getattr(sample, "rotation_trigger", None))  # fmt: skip
    logger.info(
        "fly_tomo_scan: %d projections at %.4g deg/s (%.1f Hz), %d dark/flat frames, estimated %s",
        num_projections,
        velocity,
        1.0 / frame_period_s,
        step_frames,
        format_duration(estimate),
    )

    angle_key = flyer.attribute_key("theta") if hasattr(flyer, "attribute_key") else None
    tomo_md = TomoBlock(
        num_projections=num_projections, angle_range_deg=angle_range_deg, start_deg=start_deg,
        exposure_s=exposure_s, num_darks=num_darks, num_flats=num_flats,
        flat_policy=flat_policy, flat_every=None, dark_policy=dark_policy,
        sample_out_offset_um=offset, pixel_size_um=pixel_size_um, energy_keV=energy_keV,
        center_guess_px=center_guess_px, sample_id=sample_id, rotation=theta.name,
        frame_period_s=frame_period_s, theta_velocity_deg_s=velocity,
    ).to_md()  # fmt: skip
    _md = {
        "plan_name": "fly_tomo_scan",
        "detectors": [camera.name],
        "motors": [theta.name],
        "num_points": num_projections,
        "num_intervals": num_projections - 1,
        "plan_args": {"num_projections": num_projections, "angle_range_deg": angle_range_deg,
                      "exposure_s": exposure_s, "frame_period_s": frame_period_s,
                      "flat_policy": flat_policy},
        "hints": {"dimensions": [([angle_key or theta.name], "primary")]},
        "estimated_duration_s": round(estimate, 3),
        **sample_md(sample_id),
        "tomo": tomo_md,
    }  # fmt: skip
    _md.update(md or {})

    def inner():
        if exposure_signal is not None:
            yield from bps.mv(exposure_signal, exposure_s)
        yield from bps.mv(shutter, "open")
        yield from fly_tomogram(camera, sample, shutter, flyer, sweep, schedule,
                                num_darks=num_darks, num_flats=num_flats, x_in=x_in,
                                x_out=x_in + offset)  # fmt: skip
        yield from bps.mv(shutter, "close")

    # On every exit the shutter closes, the flyer and the rotation stop, the speed and the
    # camera's settings come back and the sample returns in-beam, before the stop
    # document; the RunEngine then unstages.
    @bpp.run_decorator(md=_md)
    @safe_state_decorator(txm_safe_state(shutter, camera=camera, sample=sample, flyer=flyer))
    def run():
        yield from inner()

    return (yield from run())
