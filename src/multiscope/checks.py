"""Argument checks and move-time estimates that every layer from the plan stubs up shares.

The plan stubs check their arguments as the plans do, and the plans estimate a
run's duration from the same move model as the stubs: one copy of each, here,
below every layer that needs it. :mod:`multiscope.plans.preflight` builds the
plans' pre-flight on these (device checks, limits, the duration ceiling).

This module sits outside the layers (decision 0001) and imports nothing from
``multiscope``.

Examples
--------
>>> require_number("exposure_s", 0.1, minimum=0, exclusive_minimum=True)
0.1
>>> require_int("num_flats", 2.5)
Traceback (most recent call last):
...
multiscope.checks.PlanArgumentError: num_flats must be an integer, got 2.5
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

__all__ = [
    "PlanArgumentError",
    "estimate_moves_s",
    "require_int",
    "require_number",
    "signal_value",
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
    """Return ``value`` as a finite float, or raise naming ``name``.

    Raises
    ------
    PlanArgumentError
        A ``ValueError``: the plan stubs' callers catch it as such.
    """
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


def signal_value(signal, default: float = 0.0) -> float:
    """A numeric signal's value, or ``default`` when absent or unreadable (estimates, checks).

    A fake, or a PV that does not answer, must never stop a valid plan at its
    estimate: the plan itself fails later, at the device, if the device is gone.
    """
    if signal is None:
        return default
    try:
        return float(signal.get())
    except Exception:  # noqa: BLE001 - an estimate only
        return default


def estimate_moves_s(
    positioner, positions: Sequence[float], *, start: float | None = None
) -> float:
    """Seconds to visit ``positions`` in order: per move, ``distance / VELO + 2 ACCL``.

    The one move-time model of the plans' duration estimates. 0 for a positioner
    without a velocity (fakes); unlike a pure distance / speed, the ramps count:
    they dominate the short moves of a XANES or focus scan.

    Parameters
    ----------
    positioner
        Anything with ``velocity`` (and optionally ``acceleration``, s) signals.
    positions : sequence of float
        Targets, in order.
    start : float, optional
        Where the positioner is before the first target; default: the first target
        (its move is not counted).
    """
    speed = abs(signal_value(getattr(positioner, "velocity", None)))
    ramp = abs(signal_value(getattr(positioner, "acceleration", None)))
    if speed <= 0 or len(positions) == 0:
        return 0.0
    path = np.asarray(([start] if start is not None else []) + list(positions), dtype=float)
    steps = np.abs(np.diff(path))
    return float(np.sum(steps / speed + 2.0 * ramp * (steps > 0)))
