"""Verbs of the laser mill: load a tool path, bring the table to its start, cut once.

A laser cut is destructive (decision 0016):

* the instrument numbers the cuts: cut ``k`` is made only when ``k - 1`` were, so a
  repeated command is refused there whatever sent it;
* emission on, the cut and emission off are one step the RunEngine never replays
  (:func:`~multiscope.plan_stubs.destructive.not_replayed`, the checkpoint before
  emission goes on), so a pause during a cut lets the instrument finish it
  (emission is switched off once it has ended,
  :meth:`~multiscope.devices.laser.Emission.pause`) and the resumed run goes on
  after it, emission off;
* an abort, a stop or a failure stops the cut (the safe state): the instrument
  counts it, part-cut, and never makes it again.
"""

import math

import numpy as np
from bluesky import plan_stubs as bps
from bluesky.utils import plan

from multiscope.analysis.laser_path import ToolPath
from multiscope.plan_stubs.destructive import not_replayed

__all__ = [
    "CutIncompleteError",
    "PathLoadError",
    "cut_along_path",
    "load_path",
    "move_to_path_start",
    "set_emission",
]


class PathLoadError(RuntimeError):
    """The instrument did not take the path as sent (vertices or length differ)."""


class CutIncompleteError(RuntimeError):
    """The cut ended part-way (stopped): it is counted and never made again."""


@plan
def load_path(cut, path: ToolPath):
    """Load ``path``'s vertices (table um) and check the instrument's reading of it.

    The x vertices, then the y vertices, each put with completion (the instrument
    reads the path once both are in); then its vertex count and length are checked.

    Raises
    ------
    PathLoadError
        If the instrument reads another number of vertices or another length.
    """
    # x, then y, each put completed before the next: the instrument recomputes the
    # path from both at each put, so y must arrive once x has been taken.
    yield from bps.mv(cut.path_x_um, np.asarray(path.x_um, dtype=float))
    yield from bps.mv(cut.path_y_um, np.asarray(path.y_um, dtype=float))
    vertices = int((yield from bps.rd(cut.path_vertices)))
    length = float((yield from bps.rd(cut.path_length_um)))
    if vertices != len(path.x_um) or not math.isclose(length, path.length_um, rel_tol=1e-6):
        raise PathLoadError(
            f"the instrument read {vertices} vertices, {length:.3f} um; sent "
            f"{len(path.x_um)}, {path.length_um:.3f} um"
        )


@plan
def move_to_path_start(table, path: ToolPath):
    """Move the table (x and y together) to the path's first vertex."""
    x0, y0 = path.start_um
    yield from bps.mv(table.x, x0, table.y, y0)


@plan
def set_emission(emission, state: str):
    """Emission ``"On"`` or ``"Off"`` (put-completion; the device itself is set, so the
    RunEngine switches it off during a pause)."""
    if state not in ("On", "Off"):
        raise ValueError(f"emission must be 'On' or 'Off', not {state!r}")
    yield from bps.mv(emission, state)


@plan
def cut_along_path(emission, cut, cut_number: int):
    """Switch emission on, make cut ``cut_number`` along the loaded path, switch it off.

    The three are one step the RunEngine never replays (a checkpoint before emission
    goes on, none until it is off again): a pause inside it, one Ctrl-C or two, lets
    the instrument finish the cut, switches emission off once the cut has ended
    (:meth:`~multiscope.devices.laser.Emission.pause`) and the resumed run goes on
    after the cut, with emission off; it is never switched on again for a cut that
    has ended. The enclosure must be closed and the table at the path's start; the
    instrument refuses otherwise, and refuses a number that is not its count + 1.

    Raises
    ------
    CutIncompleteError
        If the instrument reports the cut stopped part-way.
    """

    def emit_and_cut():
        yield from set_emission(emission, "On")
        yield from bps.mv(cut.start, int(cut_number))
        yield from set_emission(emission, "Off")

    yield from not_replayed(emit_and_cut())
    if not int((yield from bps.rd(cut.last_complete))):
        fraction = float((yield from bps.rd(cut.fraction)))
        raise CutIncompleteError(
            f"cut {cut_number} stopped at {fraction:.0%} of its path: it is counted and is "
            "never made again; cut the sample elsewhere"
        )
