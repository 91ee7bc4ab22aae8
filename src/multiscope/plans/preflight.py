"""Argument checks every plan runs before it emits a single message.

A plan calls these at the top of its generator, so a bad argument raises before
the RunEngine opens a run or moves anything (RELIABILITY.md row 10). Errors
name the parameter and say what would have been acceptable.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "PlanArgumentError",
    "require_int",
    "require_number",
    "require_positions_within_limits",
    "estimate_move_time",
    "format_duration",
]


class PlanArgumentError(ValueError):
    """A plan argument is invalid; raised before any motion."""


def require_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as int, or raise naming ``name`` if it is not an integer in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PlanArgumentError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise PlanArgumentError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise PlanArgumentError(f"{name} must be <= {maximum}, got {value}")
    return value


def require_number(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PlanArgumentError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise PlanArgumentError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if exclusive_minimum and value <= minimum:
            raise PlanArgumentError(f"{name} must be > {minimum}, got {value}")
        if not exclusive_minimum and value < minimum:
            raise PlanArgumentError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise PlanArgumentError(f"{name} must be <= {maximum}, got {value}")
    return value


def _limits_of(positioner) -> tuple[float, float] | None:
    """The positioner's soft limits, or None when it has none ((0, 0) means none in EPICS)."""
    limits = getattr(positioner, "limits", None)
    if limits is None:
        return None
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
    limits = _limits_of(positioner)
    if limits is None:
        return
    low, high = limits
    bad = positions[(positions < low) | (positions > high)]
    if bad.size:
        raise PlanArgumentError(
            f"{name}: {positioner.name} target(s) {bad[:5].tolist()} outside its limits "
            f"[{low}, {high}]; nothing was moved"
        )


def estimate_move_time(
    positioner, positions: Sequence[float], *, start: float | None = None
) -> float:
    """Seconds to visit ``positions`` in order at the positioner's velocity (0 if unknown)."""
    velocity = getattr(positioner, "velocity", None)
    try:
        speed = float(velocity.get()) if velocity is not None else 0.0
    except Exception:  # a disconnected velocity PV must not break an estimate
        speed = 0.0
    if speed <= 0 or len(positions) == 0:
        return 0.0
    path = np.asarray(([start] if start is not None else []) + list(positions), dtype=float)
    return float(np.abs(np.diff(path)).sum() / speed)


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
