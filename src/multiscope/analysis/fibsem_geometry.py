"""PFIB-SEM chamber geometry: named stage poses from the columns and the holder, and the
collision rules every stage or insertion move is checked against.

Geometry (the plane normal to the stage's tilt axis; angles from the electron column,
positive towards the ion column):

* the electron beam comes down the electron column (0 deg); the ion column sits at
  ``sem_fib_deg`` (52 deg); the SIMS detector ``fib_sims_deg`` (56 deg) beyond it;
* the holder is pre-tilted by ``holder_pretilt_deg`` (36 deg): at stage tilt 0 the
  electrode's top surface lies at 36 deg to the horizontal and the cross-section face
  (the face that is milled and imaged, normal to the top surface) has its normal at
  ``pretilt - 90`` = -54 deg;
* stage tilt ``T`` turns everything on the stage by ``T`` towards the ion column;
  stage rotation (about the stage normal, applied under the tilt) by 180 deg mirrors
  the face normal to ``90 - pretilt`` = +54 deg.

The named poses follow (seed 004's positions 1-4):

=============  ==========  ========  ==========================================
pose           stage tilt  rotation  condition
=============  ==========  ========  ==========================================
``eucentric``  0           0         top surface at the pre-tilt (36 deg) to
                                     the horizontal, at the eucentric height
``mill``       16          0         face parallel to the ion beam:
                                     ``T = sem_fib - pretilt``
``sem``        54          0         face normal to the electron beam (SEM, EDS):
                                     ``T = 90 - pretilt``
``sims``       0           180       face turned to the ion beam (2 deg off
                                     normal incidence)
=============  ==========  ========  ==========================================

A move between poses is a planned sequence (:func:`plan_pose_move`): retract what
must be retracted, tilt flat before a large rotation, rotate, tilt, translate;
:func:`violations` checks every step (and any single request) against the chamber's
collision rules (:class:`ChamberLimits`), in the client and again in the IOC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

__all__ = [
    "INSERTABLES",
    "ChamberGeometry",
    "ChamberLimits",
    "Pose",
    "StageState",
    "Step",
    "face_normal_deg",
    "ion_incidence_deg",
    "named_poses",
    "plan_pose_move",
    "violations",
]

INSERTABLES = ("cbs", "eds", "needle")  # what can be driven in under the pole piece


@dataclass(frozen=True)
class ChamberGeometry:
    """Fixed angles of the chamber and the holder (degrees).

    Defaults are seed 004's Xe+ PFIB-SEM: 52 deg between the electron and the ion
    columns, 56 deg between the ion column and the SIMS detector, a 36 deg holder.
    """

    sem_fib_deg: float = 52.0
    fib_sims_deg: float = 56.0
    holder_pretilt_deg: float = 36.0


@dataclass(frozen=True)
class Pose:
    """A named stage pose: where the stage goes, and why."""

    name: str
    tilt_deg: float
    rotation_deg: float
    purpose: str
    surface_tilt_deg: float  # the electrode's top surface to the horizontal


def face_normal_deg(geometry: ChamberGeometry, tilt_deg: float, rotation_deg: float) -> float:
    """Angle (deg, from the electron column) of the cross-section face's normal.

    Exact for rotations of 0 and 180 deg (the face normal stays in the tilt plane);
    other rotations raise ``ValueError``: no pose uses them.
    """
    turned = rotation_deg % 360.0
    if math.isclose(turned, 0.0, abs_tol=1e-9) or math.isclose(turned, 360.0, abs_tol=1e-9):
        at_zero = geometry.holder_pretilt_deg - 90.0
    elif math.isclose(turned, 180.0, abs_tol=1e-9):
        at_zero = 90.0 - geometry.holder_pretilt_deg
    else:
        raise ValueError(
            f"face normal in the tilt plane only at rotation 0 or 180, not {rotation_deg}"
        )
    return at_zero + tilt_deg


def ion_incidence_deg(geometry: ChamberGeometry, tilt_deg: float, rotation_deg: float) -> float:
    """Angle (deg) between the ion beam and the face normal: 0 = normal incidence, 90 = grazing."""
    return abs(face_normal_deg(geometry, tilt_deg, rotation_deg) - geometry.sem_fib_deg)


def named_poses(geometry: ChamberGeometry = ChamberGeometry()) -> dict[str, Pose]:  # noqa: B008
    """The four poses of slice and view, computed from ``geometry`` (see the module table)."""
    pretilt, fib = geometry.holder_pretilt_deg, geometry.sem_fib_deg
    mill_tilt = fib - pretilt  # face normal at fib - 90: the ion beam runs along the face
    sem_tilt = 90.0 - pretilt  # face normal along the electron beam
    return {
        "eucentric": Pose("eucentric", 0.0, 0.0, "eucentric height, holder at its pre-tilt",
                          pretilt),
        "mill": Pose("mill", mill_tilt, 0.0, "face parallel to the ion beam (milling)",
                     pretilt + mill_tilt),
        "sem": Pose("sem", sem_tilt, 0.0, "face normal to the electron beam (SEM, EDS)",
                    pretilt + sem_tilt),
        "sims": Pose("sims", 0.0, 180.0, "face turned to the ion beam (SIMS)", pretilt),
    }  # fmt: skip


@dataclass(frozen=True)
class ChamberLimits:
    """The collision matrix of the chamber (configuration; degrees).

    Attributes
    ----------
    tilt_range_deg
        Stage tilt soft limits.
    x_range_um, y_range_um, z_range_um
        Stage travel soft limits.
    max_tilt_inserted_deg
        Above this tilt the holder reaches what hangs under the pole piece: nothing
        may be inserted (CBS, EDS, gas needle).
    flat_for_rotation_deg
        A rotation larger than ``small_rotation_deg`` is made only with the tilt
        within this of flat.
    small_rotation_deg
        Rotations up to this may be made at any tilt (still with nothing inserted).
    exclusive
        Pairs that may not be inserted together (CBS and EDS share the space under
        the pole piece).
    """

    tilt_range_deg: tuple[float, float] = (-10.0, 60.0)
    x_range_um: tuple[float, float] = (-50_000.0, 50_000.0)
    y_range_um: tuple[float, float] = (-50_000.0, 50_000.0)
    z_range_um: tuple[float, float] = (0.0, 10_000.0)
    max_tilt_inserted_deg: float = 56.0
    flat_for_rotation_deg: float = 1.0
    small_rotation_deg: float = 5.0
    exclusive: tuple[tuple[str, str], ...] = (("cbs", "eds"),)


@dataclass(frozen=True)
class StageState:
    """Stage and insertion state the rules are checked against."""

    tilt_deg: float = 0.0
    rotation_deg: float = 0.0
    x_um: float = 0.0
    y_um: float = 0.0
    z_um: float = 0.0
    inserted: frozenset[str] = field(default_factory=frozenset)


def _rotation_change(a: float, b: float) -> float:
    return abs((b - a + 180.0) % 360.0 - 180.0)


def violations(
    state: StageState,
    target: StageState,
    limits: ChamberLimits = ChamberLimits(),  # noqa: B008
) -> list[str]:
    """Why going from ``state`` to ``target`` in one move is unsafe; empty if it is safe.

    One move changes any of tilt, rotation, translation and insertions at once; the
    rules hold at both ends and during the move (a rotation happens with whatever is
    inserted at either end).
    """
    problems: list[str] = []
    numbers = {"tilt": target.tilt_deg, "rotation": target.rotation_deg, "x": target.x_um,
               "y": target.y_um, "z": target.z_um}  # fmt: skip
    bad = [name for name, value in numbers.items() if not math.isfinite(value)]
    if bad:
        return [f"{', '.join(bad)} must be finite numbers (got {numbers})"]
    ranges = {"tilt": (limits.tilt_range_deg, "deg"), "x": (limits.x_range_um, "um"),
              "y": (limits.y_range_um, "um"), "z": (limits.z_range_um, "um")}  # fmt: skip
    for name, ((low, high), unit) in ranges.items():
        if not low <= numbers[name] <= high:
            problems.append(
                f"{name} {numbers[name]:g} {unit} is outside the stage's [{low:g}, {high:g}]"
            )
    unknown = set(target.inserted) - set(INSERTABLES)
    if unknown:
        problems.append(f"unknown insertable(s) {sorted(unknown)}; known: {list(INSERTABLES)}")
    for first, second in limits.exclusive:
        if {first, second} <= set(target.inserted):
            problems.append(f"{first.upper()} and {second.upper()} may not be inserted together")
    present = set(state.inserted) | set(target.inserted)
    highest_tilt = max(state.tilt_deg, target.tilt_deg)
    if present and highest_tilt > limits.max_tilt_inserted_deg:
        problems.append(
            f"tilt {highest_tilt:g} deg with {sorted(present)} inserted: above "
            f"{limits.max_tilt_inserted_deg:g} deg nothing may be inserted"
        )
    turn = _rotation_change(state.rotation_deg, target.rotation_deg)
    if turn > 1e-6 and present:
        problems.append(f"rotating {turn:g} deg with {sorted(present)} inserted: retract first")
    if turn > limits.small_rotation_deg:
        steepest = max(abs(state.tilt_deg), abs(target.tilt_deg))
        if steepest > limits.flat_for_rotation_deg:
            problems.append(
                f"rotating {turn:g} deg at tilt {steepest:g} deg: tilt flat "
                f"(within {limits.flat_for_rotation_deg:g} deg) before a large rotation"
            )
    return problems


@dataclass(frozen=True)
class Step:
    """One move of a planned sequence: what changes, and the state after it."""

    what: str
    after: StageState


def plan_pose_move(
    state: StageState,
    pose: Pose,
    *,
    position_um: tuple[float, float, float] | None = None,
    insert: frozenset[str] | set[str] = frozenset(),
    limits: ChamberLimits = ChamberLimits(),  # noqa: B008
) -> list[Step]:
    """The safe sequence of moves from ``state`` to ``pose`` (then insert ``insert``).

    Retract everything, tilt flat if a large rotation follows, rotate, tilt to the
    pose, translate to ``position_um`` (x, y, z) if given, insert what the pose
    needs. Every step is checked with :func:`violations`.

    Raises
    ------
    ValueError
        If the target itself breaks a rule (e.g. EDS inserted above the tilt limit),
        naming the rule; nothing should then move.
    """
    insert = frozenset(insert)
    x, y, z = position_um if position_um is not None else (state.x_um, state.y_um, state.z_um)
    final = StageState(pose.tilt_deg, pose.rotation_deg, x, y, z, insert)
    refused = violations(replace(final, inserted=frozenset()), final, limits)
    if refused:
        raise ValueError(
            f"pose {pose.name!r} with {sorted(insert)} inserted: " + "; ".join(refused)
        )
    steps: list[Step] = []
    here = state

    def go(what: str, after: StageState) -> None:
        nonlocal here
        if after == here:
            return
        problems = violations(here, after, limits)
        if problems:  # a bug in this planner, never a user error
            raise AssertionError(f"planned step {what!r} is unsafe: {'; '.join(problems)}")
        steps.append(Step(what, after))
        here = after

    go("retract " + ", ".join(sorted(here.inserted)), replace(here, inserted=frozenset()))
    turn = _rotation_change(here.rotation_deg, pose.rotation_deg)
    if turn > limits.small_rotation_deg and abs(here.tilt_deg) > limits.flat_for_rotation_deg:
        go("tilt flat for the rotation", replace(here, tilt_deg=0.0))
    if turn > 1e-6:
        go(f"rotate to {pose.rotation_deg:g} deg", replace(here, rotation_deg=pose.rotation_deg))
    go(f"tilt to {pose.tilt_deg:g} deg", replace(here, tilt_deg=pose.tilt_deg))
    go("translate", replace(here, x_um=x, y_um=y, z_um=z))
    go("insert " + ", ".join(sorted(insert)), replace(here, inserted=insert))
    return steps
