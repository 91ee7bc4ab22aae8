"""Argument checks every plan runs before it emits a single message.

A plan calls these at the top of its generator, so a bad argument raises before
the RunEngine opens a run or moves anything (docs/stack-facts.md, fault row 10). Errors
name the parameter and say what would have been acceptable.

The checks, in the order a plan makes them:

1. devices, duck-typed on what the plan uses of them (:func:`require_camera`,
   :func:`require_shutter`, :func:`require_positioner`, :func:`require_parts`),
   so a wrong or missing device is a ``PlanArgumentError``, not an ``AttributeError``
   halfway through a run;
2. scalars (:func:`require_int`, :func:`require_number`);
3. the run's estimated duration against ``max_duration_s`` (default
   :data:`MAX_RUN_DURATION_S`, raised per call), from the sizes alone, before
   any point list is built (:func:`require_duration_within`);
4. the points against the soft limits, and a sample-out offset against the
   field of view (:func:`require_out_of_field`).

Every plan takes ``sample_id`` and records it through :func:`sample_md`, so the
catalog can give one sample's history across instruments
(:meth:`multiscope.catalog.Catalog.sample_history`).
"""

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np

from ..checks import PlanArgumentError, estimate_moves_s, require_int, require_number
from ..devices.txm import FIELD_OF_VIEW_MODES

__all__ = [
    "MAX_RUN_DURATION_S",
    "PlanArgumentError",
    "estimate_moves_s",
    "field_of_view_um",
    "format_duration",
    "require_camera",
    "require_duration_within",
    "require_int",
    "require_number",
    "require_out_of_field",
    "require_parts",
    "require_positioner",
    "require_positions_within_limits",
    "require_shutter",
    "sample_md",
]

#: Longest run a plan starts without being asked (s): a day. A plan refuses a longer
#: estimate unless the call passes a larger ``max_duration_s`` (``math.inf``: no limit).
MAX_RUN_DURATION_S = 24 * 3600.0

# Without a pixel size, the field is taken as the TXM's widest (binning changes the
# pixel count and the pixel size together, not the field).
_WIDEST_FIELD_UM = max(mode["field_of_view_um"] for mode in FIELD_OF_VIEW_MODES.values())


def _limits_of(name: str, positioner) -> tuple[float, float] | None:
    """The positioner's soft limits, or None when it has none ((0, 0) means none in EPICS).

    A pseudo positioner with one pseudo axis (the TXM's ``energy``) gives its limits
    as ``((low, high),)``: that axis's limits. One with several axes cannot be
    stepped as one, and is refused naming ``name``.
    """
    limits = getattr(positioner, "limits", None)
    if limits is None:
        return None
    limits = tuple(limits)
    if len(limits) == 1 and isinstance(limits[0], Sequence):
        limits = tuple(limits[0])
    if len(limits) != 2 or any(isinstance(x, Sequence) for x in limits):
        raise PlanArgumentError(
            f"{name}: {positioner.name} has {len(limits)} axes; give one of them (limits {limits})"
        )
    low, high = (float(x) for x in limits)
    if low == high == 0:
        return None
    return min(low, high), max(low, high)


def require_positions_within_limits(name: str, positioner, positions: Iterable[float]) -> None:
    """Raise naming ``name`` and the axis if any target is outside the positioner's limits."""
    positions = np.asarray(list(positions), dtype=float)
    if positions.size == 0:
        return
    if not np.all(np.isfinite(positions)):
        raise PlanArgumentError(f"{name}: positions for {positioner.name} must be finite")
    limits = _limits_of(name, positioner)
    if limits is None:
        return
    low, high = limits
    bad = positions[(positions < low) | (positions > high)]
    if bad.size:
        raise PlanArgumentError(
            f"{name}: {positioner.name} target(s) {bad[:5].tolist()} outside its limits "
            f"[{low}, {high}]; nothing was moved"
        )


def format_duration(seconds: float) -> str:
    """Human-readable duration, e.g. ``'1 h 02 min'``, ``'3 min 05 s'``, ``'12.0 s'``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# -- devices ------------------------------------------------------------------------


def _describe(device) -> str:
    return "None" if device is None else f"{type(device).__name__} {getattr(device, 'name', '')!r}"


def require_parts(name: str, device, parts: Sequence[str], what: str):
    """Return ``device``, or raise naming ``name`` if it lacks any of the dotted ``parts``.

    ``parts`` are the attributes the plan uses (``"cam.acquire_time"``,
    ``"energy.limits"``); ``what`` says what the device should have been.
    """
    missing = []
    for dotted in parts:
        obj = device
        for attribute in dotted.split("."):
            obj = getattr(obj, attribute, None)
            if obj is None:
                missing.append(dotted)
                break
    if device is None or missing:
        lacking = "" if device is None else f"; it has no {', '.join(missing)}"
        raise PlanArgumentError(f"{name} must be {what}, got {_describe(device)}{lacking}")
    return device


def require_camera(name: str, camera):
    """Return ``camera`` if it is an area detector a plan can take frames with.

    Triggered, read, staged (a file per block of frames) and exposed for
    ``cam.acquire_time``: a signal such as the beam current is refused rather
    than "taking" no frames.
    """
    require_parts(
        name, camera,
        ("name", "trigger", "read", "describe", "stage", "unstage", "cam.acquire_time"),
        "a camera (trigger, read, stage and cam.acquire_time)",
    )  # fmt: skip
    return camera


def require_shutter(name: str, shutter):
    """Return ``shutter`` if it can be set to ``"open"`` and ``"close"`` (and is not read-only)."""
    require_parts(name, shutter, ("name", "set"), 'a shutter (set("open") / set("close"))')
    if getattr(shutter, "write_access", True) is False:
        raise PlanArgumentError(f"{name} must be a shutter, got read-only {_describe(shutter)}")
    return shutter


def require_positioner(name: str, positioner):
    """Return ``positioner`` if it can be moved (``set``) and has a ``position``."""
    require_parts(name, positioner, ("name", "set", "position"), "a positioner (set, position)")
    return positioner


# -- duration and field of view ------------------------------------------------------


def require_duration_within(
    plan_name: str, estimate_s: float, max_duration_s: float = MAX_RUN_DURATION_S
) -> float:
    """Return ``max_duration_s`` if the run's ``estimate_s`` is within it, else raise.

    The estimate comes from the run's sizes (points, frames, exposure), before any
    point list is built, so a run of days is refused at once. ``max_duration_s``
    (s, > 0; ``math.inf`` for no limit) is the plan's keyword of that name.
    """
    if isinstance(max_duration_s, bool) or not isinstance(max_duration_s, numbers.Real):
        raise PlanArgumentError(f"max_duration_s must be a number, got {max_duration_s!r}")
    limit = float(max_duration_s)
    if math.isnan(limit) or limit <= 0:
        raise PlanArgumentError(f"max_duration_s must be > 0 (or math.inf), got {limit}")
    if estimate_s > limit:
        raise PlanArgumentError(
            f"{plan_name} is estimated at {format_duration(estimate_s)}, beyond "
            f"max_duration_s = {format_duration(limit)}: make it smaller, or pass "
            f"max_duration_s={math.ceil(estimate_s)} (or more) to run it"
        )
    return limit


def field_of_view_um(camera, pixel_size_um: float | None) -> float:
    """Width of ``camera``'s field at the sample (um): its pixel count x ``pixel_size_um``.

    The pixel count is ``cam.array_size.array_size_x`` (binning applied, as the
    pixel size). Without either, the TXM's widest field (the ``large`` mode's),
    which holds whatever the binning.
    """
    if pixel_size_um is None:
        return _WIDEST_FIELD_UM
    try:
        columns = float(camera.cam.array_size.array_size_x.get())
    except Exception:  # a fake or a disconnected camera: the widest field
        return _WIDEST_FIELD_UM
    if not math.isfinite(columns) or columns <= 0:
        return _WIDEST_FIELD_UM
    return columns * float(pixel_size_um)


def require_out_of_field(name: str, offset_um: float, field_um: float) -> float:
    """Return ``offset_um`` if moving the sample by it clears a field ``field_um`` wide.

    Flats taken with the sample still in the field are not flats: the offset
    must be at least the field's width (whatever the sample's own width).
    """
    if abs(offset_um) < field_um:
        raise PlanArgumentError(
            f"{name} = {offset_um:g} um leaves the sample in the field of view "
            f"({field_um:.4g} um wide): flats need |{name}| >= {field_um:.4g}"
        )
    return offset_um


#: Longest sample id (characters): it is typed, printed in tables and used in file names.
MAX_SAMPLE_ID_LENGTH = 64


def sample_md(sample_id: str) -> dict[str, str]:
    """The start-document entry naming the sample of a run, after checking the id.

    An empty id adds nothing, so a sample set for the session (``RE.md["sample_id"]``)
    stays the run's: a plan's own metadata would otherwise override it.

    Parameters
    ----------
    sample_id : str
        ``""`` or 1 to :data:`MAX_SAMPLE_ID_LENGTH` printable characters without
        surrounding blanks (e.g. ``"tab-3"``).

    Returns
    -------
    dict
        ``{"sample_id": sample_id}``, or ``{}`` for ``""``.

    Raises
    ------
    PlanArgumentError
        For anything else.
    """
    if not isinstance(sample_id, str):
        raise PlanArgumentError(f"sample_id must be a string, got {sample_id!r}")
    if not sample_id:
        return {}
    if (
        len(sample_id) > MAX_SAMPLE_ID_LENGTH
        or sample_id != sample_id.strip()
        or not sample_id.isprintable()
    ):
        raise PlanArgumentError(
            f"sample_id {sample_id!r} must be 1 to {MAX_SAMPLE_ID_LENGTH} printable "
            "characters without leading or trailing blanks (e.g. 'tab-3')"
        )
    return {"sample_id": sample_id}
