"""Verbs of the PFIB-SEM: go to a pose safely, mill one slice, infiltrate pores with Pt.

Moves between poses are planned by :func:`multiscope.analysis.fibsem_geometry.
plan_pose_move` from the stage's *current* state, read from the instrument: retract,
tilt flat before a large rotation, rotate, tilt, translate, insert, then verify that
the stage is where the pose says (the instrument's own ``stage.pose`` reading too).
The instrument checks the same collision rules again and refuses what breaks them.

Destructive steps (a milling cut, a polish cut, a Pt deposition) are never replayed:

* the instrument numbers the cuts: slice ``k`` (polish ``k``) is cut only when
  ``k - 1`` were, so a repeated command is refused there whatever sent it (a
  deposition is not numbered: it is never sent twice by the plans, below);
* while a cut runs the RunEngine keeps no messages to replay (``rewindable`` off
  between a checkpoint before the cut and one after it), so nothing rewinds into
  it: a pause during a cut (one Ctrl-C, deferred, or two, immediate) lets the
  instrument finish the cut or the deposition (``ProcessCommand.stop`` ignores a
  pause's stop and its ``resume`` waits for the process to end) and the resumed run
  goes on after it;
* an abort (or a stop, a failure) stops the cut: the instrument counts it,
  part-milled, and ``slice_and_view(..., resume=uid)`` continues with the next one.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from bluesky import plan_stubs as bps
from bluesky.utils import plan

from multiscope.analysis.fibsem_geometry import (
    ChamberGeometry,
    ChamberLimits,
    Pose,
    StageState,
    named_poses,
    plan_pose_move,
)
from multiscope.plan_stubs.destructive import not_replayed as _not_replayed

__all__ = [
    "Chamber",
    "PoseError",
    "deposit_pt",
    "go_to_pose",
    "mill_slice",
    "polish_cut",
    "read_stage_state",
    "set_ion_beam",
]


class PoseError(RuntimeError):
    """The stage did not reach a pose, or the move to it would break a collision rule."""


@dataclass
class Chamber:
    """The stage and the insertables of one chamber, with its geometry and rules.

    Attributes
    ----------
    stage : ChamberStage
    insertables : dict
        ``{"cbs": ..., "eds": ..., "needle": ...}`` (names of
        :data:`multiscope.analysis.fibsem_geometry.INSERTABLES`) to
        :class:`~multiscope.devices.fibsem.Insertable` devices.
    geometry, limits
        The chamber's configuration (poses and collision rules).
    tolerance_deg : float
        How close tilt and rotation must end to a pose's.
    """

    stage: object
    insertables: dict
    geometry: ChamberGeometry = field(default_factory=ChamberGeometry)
    limits: ChamberLimits = field(default_factory=ChamberLimits)
    tolerance_deg: float = 0.05

    @property
    def poses(self) -> dict[str, Pose]:
        """The named poses of this geometry."""
        return named_poses(self.geometry)


@plan
def read_stage_state(chamber: Chamber):
    """The stage's state as the instrument reports it (a :class:`StageState`)."""
    stage = chamber.stage
    values = {}
    for axis in ("tilt", "rot", "x", "y", "z"):
        values[axis] = float((yield from bps.rd(getattr(stage, axis))))
    inserted = set()
    for name, device in chamber.insertables.items():
        if str((yield from bps.rd(device.state))) == "Inserted":
            inserted.add(name)
    return StageState(values["tilt"], values["rot"], values["x"], values["y"], values["z"],
                      frozenset(inserted))  # fmt: skip


def _move_group(pairs: Iterable[tuple[object, object]]):
    """Set every (device, value) of ``pairs`` and wait for all."""
    args = [item for pair in pairs for item in pair]
    if args:
        yield from bps.mv(*args)


@plan
def go_to_pose(chamber: Chamber, pose: str, *, insert: Iterable[str] = (),
               position_um: tuple[float, float, float] | None = None):  # fmt: skip
    """Move safely to the named ``pose`` and insert ``insert``; verify the stage got there.

    Parameters
    ----------
    chamber : Chamber
    pose : {"eucentric", "mill", "sem", "sims"}
    insert : iterable of str
        Insertables wanted in at the pose (``"cbs"``, ``"eds"``, ``"needle"``).
    position_um : (x, y, z), optional
        Stage translation at the pose (default: stay).

    Raises
    ------
    PoseError
        If the move would break a collision rule (nothing moves), or the stage did not
        end at the pose.
    """
    poses = chamber.poses
    if pose not in poses:
        raise PoseError(f"unknown pose {pose!r}; the poses are {sorted(poses)}")
    here = yield from read_stage_state(chamber)
    try:
        steps = plan_pose_move(here, poses[pose], insert=frozenset(insert),
                               position_um=position_um, limits=chamber.limits)  # fmt: skip
    except ValueError as error:
        raise PoseError(str(error)) from None
    stage = chamber.stage
    for step in steps:
        after = step.after
        yield from _move_group(
            (chamber.insertables[name], "out") for name in sorted(here.inserted - after.inserted)
        )
        if after.rotation_deg != here.rotation_deg:
            yield from bps.mv(stage.rot, after.rotation_deg)
        if after.tilt_deg != here.tilt_deg:
            yield from bps.mv(stage.tilt, after.tilt_deg)
        yield from _move_group(
            (getattr(stage, axis), getattr(after, f"{axis}_um"))
            for axis in ("x", "y", "z")
            if getattr(after, f"{axis}_um") != getattr(here, f"{axis}_um")
        )
        yield from _move_group(
            (chamber.insertables[name], "in") for name in sorted(after.inserted - here.inserted)
        )
        here = after
    yield from _verify_pose(chamber, poses[pose])


@plan
def _verify_pose(chamber: Chamber, pose: Pose):
    """Raise :class:`PoseError` unless tilt, rotation and the instrument's pose agree."""
    now = yield from read_stage_state(chamber)
    turn = abs((now.rotation_deg - pose.rotation_deg + 180.0) % 360.0 - 180.0)
    off = max(abs(now.tilt_deg - pose.tilt_deg), turn)
    if not math.isfinite(off) or off > chamber.tolerance_deg:
        raise PoseError(
            f"stage at tilt {now.tilt_deg:.3f}, rotation {now.rotation_deg:.3f} deg: not at "
            f"{pose.name!r} (tilt {pose.tilt_deg:g}, rotation {pose.rotation_deg:g}) within "
            f"{chamber.tolerance_deg:g} deg"
        )
    reported = str((yield from bps.rd(chamber.stage.pose)))
    if reported != pose.name:
        raise PoseError(f"the instrument reads pose {reported!r}, not {pose.name!r}")


@plan
def set_ion_beam(ion_column, state: str):
    """Put the ion beam ``"On"`` or ``"Blanked"`` (put-completion).

    The column itself is set, so the RunEngine blanks it during a pause
    (:meth:`~multiscope.devices.fibsem.IonColumn.pause`).
    """
    if state not in ("On", "Blanked"):
        raise ValueError(f"ion beam state must be 'On' or 'Blanked', not {state!r}")
    yield from bps.mv(ion_column, state)


@plan
def mill_slice(mill, slice_number: int):
    """Mill slice ``slice_number`` (1-based), once: never replayed by a rewind.

    The stage must be at ``mill`` and the ion beam on; the instrument refuses
    otherwise, and refuses a number that is not its count + 1.
    """
    yield from _not_replayed(bps.mv(mill.cut, int(slice_number)))


@plan
def polish_cut(mill, polish_number: int):
    """Make polish cut ``polish_number`` (of ``mill.polish_um``), once."""
    yield from _not_replayed(bps.mv(mill.polish, int(polish_number)))


@plan
def deposit_pt(gis, thickness_um: float):
    """Deposit ``thickness_um`` of Pt on the face, once (needle in, heated, beam on)."""
    yield from _not_replayed(bps.mv(gis.deposition, float(thickness_um)))
