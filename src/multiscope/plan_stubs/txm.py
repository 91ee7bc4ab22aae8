"""TXM verbs: one action each, never opening a run (compose them inside plans).

Every stub checks its arguments when the generator starts, before its first
message, so a bad argument raises before anything moves (docs/stack-facts.md, fault row 10);
errors name the parameter. Every move has a finite timeout.

Examples
--------
>>> from bluesky import plan_stubs as bps                             # doctest: +SKIP
>>> yield from set_field_of_view(objective, "high_resolution")        # doctest: +SKIP
>>> yield from move_energy(energy, 8.35)                               # doctest: +SKIP
>>> yield from sample_out(sample, out_x_um=3000)                        # doctest: +SKIP
"""

from collections.abc import Generator
from typing import Any

from bluesky import plan_stubs as bps
from bluesky.protocols import Movable
from bluesky.utils import Msg, plan

from multiscope.checks import require_number
from multiscope.devices.txm import FIELD_OF_VIEW_MODES

__all__ = [
    "DEFAULT_SHUTTER_TIMEOUT_S",
    "close_shutter",
    "move_energy",
    "open_shutter",
    "sample_in",
    "sample_out",
    "set_field_of_view",
]

# Backstop for the plan's wait; the shutter's own status also fails after its timeout.
DEFAULT_SHUTTER_TIMEOUT_S = 10.0

PlanGenerator = Generator[Msg, Any, Any]


def _timeout(value) -> float:
    timeout = require_number("timeout", value)
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 s, got {timeout}")
    return timeout


def _checked(name: str, positioner, target: float) -> None:
    # The device's own check (soft limits, optics range, calibration) names the axis;
    # re-raise naming the plan argument too.
    try:
        positioner.check_value(target)
    except ValueError as error:
        raise type(error)(f"{name}={target}: {error}; nothing was moved") from error


@plan
def move_energy(energy_device: Movable, energy_keV: float) -> PlanGenerator:
    """Move the TXM energy (mono, zone plate and detector together, in focus).

    Parameters
    ----------
    energy_device : TXMEnergy
        The energy pseudo positioner (``check_value`` and ``set``).
    energy_keV : float
        Target energy (keV). Refused before any motion if outside the optics'
        range, outside the focus calibration, or needing a real axis past its limits.
    """
    energy_keV = require_number("energy_keV", energy_keV)
    _checked("energy_keV", energy_device, energy_keV)
    # the device's move carries its own finite timeout (slowest axis + margin)
    return (yield from bps.mv(energy_device, energy_keV))


@plan
def set_field_of_view(objective, mode: str) -> PlanGenerator:
    """Select a field-of-view mode: ``"large"`` (2x, ~65 nm) or ``"high_resolution"`` (8x).

    Parameters
    ----------
    objective : Objective
        The device whose ``magnification`` enum selects the scintillator objective.
    mode : str
        A key of :data:`multiscope.devices.txm.FIELD_OF_VIEW_MODES`.
    """
    if mode not in FIELD_OF_VIEW_MODES:
        raise ValueError(f"mode must be one of {sorted(FIELD_OF_VIEW_MODES)}, got {mode!r}")
    return (yield from bps.mv(objective.magnification, FIELD_OF_VIEW_MODES[mode]["objective"]))


@plan
def sample_out(sample, out_x_um: float) -> PlanGenerator:
    """Move the sample across the beam to ``out_x_um`` (um), e.g. for flat fields."""
    out_x_um = require_number("out_x_um", out_x_um)
    _checked("out_x_um", sample.x, out_x_um)
    return (yield from bps.mv(sample.x, out_x_um))


@plan
def sample_in(sample, x_um: float) -> PlanGenerator:
    """Move the sample back into the beam at ``x_um`` (um)."""
    x_um = require_number("x_um", x_um)
    _checked("x_um", sample.x, x_um)
    return (yield from bps.mv(sample.x, x_um))


@plan
def open_shutter(shutter: Movable, timeout: float = DEFAULT_SHUTTER_TIMEOUT_S) -> PlanGenerator:
    """Open the shutter and wait at most ``timeout`` seconds."""
    timeout = _timeout(timeout)
    return (yield from bps.mv(shutter, "open", timeout=timeout))


@plan
def close_shutter(shutter: Movable, timeout: float = DEFAULT_SHUTTER_TIMEOUT_S) -> PlanGenerator:
    """Close the shutter and wait at most ``timeout`` seconds."""
    timeout = _timeout(timeout)
    return (yield from bps.mv(shutter, "close", timeout=timeout))
