"""General scans used by every instrument: validated wrappers of bluesky's own plans.

They differ from :func:`bluesky.plans.scan` and :func:`bluesky.plans.count` only
in what happens before the first message: every argument is checked (types,
ranges, soft limits) and the duration is estimated and recorded in the start
document, so a mistake costs nothing and the progress display knows the total.
"""

import logging
from collections.abc import Sequence
from functools import partial

from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky.protocols import Movable, Readable

from ..plan_stubs.frames import keyed_reading
from .preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    estimate_moves_s,
    format_duration,
    require_duration_within,
    require_int,
    require_number,
    require_positioner,
    require_positions_within_limits,
    sample_md,
)

__all__ = ["line_scan", "count_frames", "estimate_exposure"]

logger = logging.getLogger(__name__)

# Per-point cost of a step scan over Channel Access beyond motion and exposure
# (measured ~7 ms per event on 2 cores, docs/stack-facts.md, speed facts); rounded up.
_POINT_OVERHEAD_S = 0.01


def estimate_exposure(detectors: Sequence[Readable]) -> float:
    """Longest exposure (s) among area detectors, 0 when none can be read."""
    longest = 0.0
    for det in detectors:
        cam = getattr(det, "cam", None)
        acquire_time = getattr(cam, "acquire_time", None)
        if acquire_time is None:
            continue
        try:
            images = float(cam.num_images.get()) if hasattr(cam, "num_images") else 1.0
            longest = max(longest, float(acquire_time.get()) * max(images, 1.0))
        except Exception:  # estimate only; a disconnected detector fails later, in the plan
            continue
    return longest


def _check_detectors(detectors) -> list:
    if isinstance(detectors, Readable) or not isinstance(detectors, Sequence):
        raise PlanArgumentError("detectors must be a list of readable devices")
    detectors = list(detectors)
    for det in detectors:
        if not isinstance(det, Readable):
            raise PlanArgumentError(f"detectors: {det!r} is not readable")
    return detectors


def line_scan(
    detectors: Sequence[Readable],
    motor: Movable,
    start: float,
    stop: float,
    num: int,
    *,
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """Step ``motor`` from ``start`` to ``stop`` in ``num`` points, reading ``detectors`` at each.

    Parameters
    ----------
    detectors : list of Readable
        Devices read at every point (cameras are triggered first).
    motor : Movable
        The axis to step (a pseudo axis such as the TXM's ``energy`` too); its soft
        limits are checked before any motion.
    start, stop : float
        First and last position, in the motor's units.
    num : int
        Number of points (>= 1).
    sample_id : str
        The sample (:func:`~multiscope.plans.preflight.sample_md`); ``""`` keeps the
        session's (``RE.md["sample_id"]``), if any.
    max_duration_s : float
        Longest estimated run accepted (s); default
        :data:`~multiscope.plans.preflight.MAX_RUN_DURATION_S`.
    md : dict, optional
        Metadata merged over the plan's own.

    Yields
    ------
    msg : Msg
        Messages for the RunEngine.

    Raises
    ------
    PlanArgumentError
        Before any message, for a bad argument, a point outside the limits or a
        run estimated beyond ``max_duration_s``.
    """
    detectors = _check_detectors(detectors)
    if not isinstance(motor, Movable):
        raise PlanArgumentError(f"motor must be movable, got {motor!r}")
    require_positioner("motor", motor)
    start = require_number("start", start)
    stop = require_number("stop", stop)
    num = require_int("num", num, minimum=1)
    sample = sample_md(sample_id)
    # From the sizes alone: bluesky builds the point list, which takes a minute for 10**7.
    estimate = estimate_moves_s(motor, [start, stop]) + num * (
        estimate_exposure(detectors) + _POINT_OVERHEAD_S
    )
    require_duration_within("line_scan", estimate, max_duration_s)
    # The points are evenly spaced: inside the limits if the ends are.
    require_positions_within_limits("start/stop", motor, [start, stop])
    logger.info("line_scan of %d points: estimated %s", num, format_duration(estimate))
    _md = {
        "plan_name": "line_scan",
        "estimated_duration_s": round(estimate, 3),
        **sample,
    }
    _md.update(md or {})
    per_step = partial(bps.one_nd_step, take_reading=keyed_reading())
    return (yield from bp.scan(detectors, motor, start, stop, num, per_step=per_step, md=_md))


def count_frames(
    detectors: Sequence[Readable],
    num: int = 1,
    *,
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """Read ``detectors`` ``num`` times without moving anything.

    Parameters
    ----------
    detectors : list of Readable
        Devices to trigger and read.
    num : int
        Number of readings (>= 1).
    sample_id : str
        The sample (:func:`~multiscope.plans.preflight.sample_md`); ``""`` keeps the
        session's (``RE.md["sample_id"]``), if any.
    max_duration_s : float
        Longest estimated run accepted (s), as :func:`line_scan`.
    md : dict, optional
        Metadata merged over the plan's own.
    """
    detectors = _check_detectors(detectors)
    num = require_int("num", num, minimum=1)
    sample = sample_md(sample_id)
    estimate = num * (estimate_exposure(detectors) + _POINT_OVERHEAD_S)
    require_duration_within("count_frames", estimate, max_duration_s)
    _md = {"plan_name": "count_frames", "estimated_duration_s": round(estimate, 3), **sample}
    _md.update(md or {})
    per_shot = partial(bps.one_shot, take_reading=keyed_reading())
    return (yield from bp.count(detectors, num, per_shot=per_shot, md=_md))
