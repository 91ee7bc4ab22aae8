"""Tomography plans for the TXM: step tomography with dark and flat policies.

A tomogram is one run with three streams, as at every tomography beamline:

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

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from .preflight import (
    PlanArgumentError,
    estimate_move_time,
    format_duration,
    require_int,
    require_number,
    require_positions_within_limits,
)

__all__ = ["FLAT_POLICIES", "DARK_POLICIES", "TomoSchedule", "tomo_schedule", "tomo_scan"]

logger = logging.getLogger(__name__)

FLAT_POLICIES = ("start", "end", "both", "every", "none")
DARK_POLICIES = ("start", "end", "both", "none")

# Per-frame overhead of a triggered acquisition over CA beyond the exposure
# (trigger, file write, event): measured ~13 ms for 64 x 64 frames (docs/benchmarks.md).
_FRAME_OVERHEAD_S = 0.015


@dataclass(frozen=True)
class TomoSchedule:
    """The order of a tomogram's acquisitions, fixed before anything moves.

    Attributes
    ----------
    angles_deg : ndarray
        Rotation angles of the projections (deg).
    flats_before : tuple of int
        Projection indices before which a flat set is taken (``num_projections``
        means after the last projection).
    darks_before : tuple of int
        As ``flats_before`` for dark sets.
    """

    angles_deg: np.ndarray
    flats_before: tuple[int, ...]
    darks_before: tuple[int, ...]

    @property
    def num_flat_sets(self) -> int:
        return len(self.flats_before)

    @property
    def num_dark_sets(self) -> int:
        return len(self.darks_before)


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

    angles = start_deg + angle_range_deg * np.arange(num_projections) / num_projections

    def positions(policy: str) -> tuple[int, ...]:
        chosen = {
            "start": [0],
            "end": [num_projections],
            "both": [0, num_projections],
            "none": [],
            "every": list(range(0, num_projections, flat_every or 1)) + [num_projections],
        }[policy]
        return tuple(sorted(set(chosen)))

    return TomoSchedule(angles, positions(flat_policy), positions(dark_policy))


def _exposure_signal(camera):
    cam = getattr(camera, "cam", None)
    return getattr(cam, "acquire_time", None)


def _theta_speed(rotation) -> float:
    velocity = getattr(rotation, "velocity", None)
    try:
        return float(velocity.get()) if velocity is not None else 0.0
    except Exception:  # estimate only
        return 0.0


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
        How far ``sample.x`` moves for flats (um, non-zero; the stage's limits are checked).
    pixel_size_um, energy_keV, center_guess_px : float, optional
        Geometry recorded in the ``tomo`` metadata block for the reconstruction.
    sample_id : str
        Sample identifier recorded in the metadata.
    md : dict, optional
        Metadata merged over the plan's own.

    Raises
    ------
    PlanArgumentError
        Before any message, for any invalid argument or a target outside a limit.
    """
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
    for name, value in (("pixel_size_um", pixel_size_um), ("energy_keV", energy_keV)):
        if value is not None:
            require_number(name, value, minimum=0, exclusive_minimum=True)
    if center_guess_px is not None:
        require_number("center_guess_px", center_guess_px)
    if not isinstance(sample_id, str):
        raise PlanArgumentError(f"sample_id must be a string, got {sample_id!r}")
    require_positions_within_limits("angles", sample.theta, schedule.angles_deg)
    x_in = float(sample.x.position)
    if schedule.num_flat_sets:
        require_positions_within_limits("sample_out_offset_um", sample.x, [x_in + offset])
    exposure_signal = _exposure_signal(camera)

    frames = (
        num_projections + num_darks * schedule.num_dark_sets + num_flats * schedule.num_flat_sets
    )
    theta_speed = _theta_speed(sample.theta)
    rotation_s = angle_range_deg / theta_speed if theta_speed > 0 else 0.0
    out_in_s = 2 * schedule.num_flat_sets * estimate_move_time(sample.x, [x_in + offset, x_in])
    estimate = frames * (exposure_s + _FRAME_OVERHEAD_S) + rotation_s + out_in_s
    logger.info(
        "tomo_scan: %d projections, %d frames in all, estimated %s",
        num_projections,
        frames,
        format_duration(estimate),
    )

    tomo_md = {
        "num_projections": num_projections,
        "angle_range_deg": angle_range_deg,
        "start_deg": start_deg,
        "exposure_s": exposure_s,
        "num_darks": num_darks,
        "num_flats": num_flats,
        "flat_policy": flat_policy,
        "flat_every": flat_every,
        "dark_policy": dark_policy,
        "sample_out_offset_um": offset,
        "pixel_size_um": pixel_size_um,
        "energy_keV": energy_keV,
        "center_guess_px": center_guess_px,
        "sample_id": sample_id,
        "rotation": sample.theta.name,
    }
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
        "sample_id": sample_id,
        "tomo": tomo_md,
    }  # fmt: skip
    _md.update(md or {})

    def dark_set():
        yield from bps.mv(shutter, "close")
        for _ in range(num_darks):
            yield from bps.trigger_and_read([camera], name="dark")
        yield from bps.mv(shutter, "open")

    def flat_set():
        yield from bps.mv(sample.x, x_in + offset)
        for _ in range(num_flats):
            yield from bps.trigger_and_read([camera], name="flat")
        yield from bps.mv(sample.x, x_in)

    def inner():
        if exposure_signal is not None:
            yield from bps.mv(exposure_signal, exposure_s)
        yield from bps.mv(shutter, "open")
        for index in range(num_projections + 1):
            if index in schedule.darks_before:
                yield from dark_set()
            if index in schedule.flats_before:
                yield from flat_set()
            if index == num_projections:
                break
            yield from bps.checkpoint()
            yield from bps.mv(sample.theta, float(schedule.angles_deg[index]))
            yield from bps.trigger_and_read([camera, sample.theta], name="primary")
        yield from bps.mv(shutter, "close")

    @bpp.stage_decorator([camera])
    @bpp.run_decorator(md=_md)
    def run():
        yield from inner()

    return (yield from run())
