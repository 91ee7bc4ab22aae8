"""PFIB-SEM poses from the chamber geometry (seed 004's numbers) and the collision rules."""

from __future__ import annotations

import pytest

from multiscope.analysis.fibsem_geometry import (
    ChamberGeometry,
    ChamberLimits,
    StageState,
    face_normal_deg,
    ion_incidence_deg,
    named_poses,
    plan_pose_move,
    violations,
)


def test_poses_come_out_of_the_geometry_as_in_seed_004():
    geometry = ChamberGeometry()  # 52 deg columns, 56 deg to SIMS, 36 deg holder
    poses = named_poses(geometry)
    assert list(poses) == ["eucentric", "mill", "sem", "sims"]
    # Position 1: eucentric, the holder's surface at 36 deg to the horizontal.
    assert poses["eucentric"].surface_tilt_deg == pytest.approx(36.0)
    assert (poses["eucentric"].tilt_deg, poses["eucentric"].rotation_deg) == (0.0, 0.0)
    # Position 2: tilted 16 deg: the face parallel to the ion beam.
    assert poses["mill"].tilt_deg == pytest.approx(16.0)
    assert ion_incidence_deg(geometry, poses["mill"].tilt_deg, 0.0) == pytest.approx(90.0)
    # Position 3: tilted 54 deg: the face normal to the electron beam.
    assert poses["sem"].tilt_deg == pytest.approx(54.0)
    assert face_normal_deg(geometry, poses["sem"].tilt_deg, 0.0) == pytest.approx(0.0)
    # Position 4: rotated 180 deg: the face turned to the ion beam.
    assert poses["sims"].rotation_deg == pytest.approx(180.0)
    assert ion_incidence_deg(geometry, poses["sims"].tilt_deg, 180.0) == pytest.approx(2.0)


def test_other_geometries_move_the_poses_with_them():
    poses = named_poses(ChamberGeometry(sem_fib_deg=54.0, holder_pretilt_deg=45.0))
    assert poses["mill"].tilt_deg == pytest.approx(9.0)
    assert poses["sem"].tilt_deg == pytest.approx(45.0)
    with pytest.raises(ValueError, match="rotation 0 or 180"):
        face_normal_deg(ChamberGeometry(), 10.0, 90.0)


@pytest.mark.parametrize(
    ("state", "target", "message"),
    [
        (StageState(), StageState(tilt_deg=65.0), "outside the stage"),
        (StageState(), StageState(inserted=frozenset({"cbs", "eds"})), "not be inserted together"),
        (StageState(tilt_deg=54.0), StageState(tilt_deg=58.0, inserted=frozenset({"eds"})),
         "nothing may be inserted"),
        (StageState(tilt_deg=58.0), StageState(tilt_deg=58.0, inserted=frozenset({"needle"})),
         "nothing may be inserted"),
        (StageState(inserted=frozenset({"needle"})),
         StageState(rotation_deg=180.0, inserted=frozenset({"needle"})), "retract first"),
        (StageState(inserted=frozenset({"eds"})), StageState(rotation_deg=2.0), "retract first"),
        (StageState(tilt_deg=16.0), StageState(tilt_deg=16.0, rotation_deg=180.0),
         "tilt flat"),
        (StageState(), StageState(inserted=frozenset({"laser"})), "unknown insertable"),
        (StageState(tilt_deg=54.0, inserted=frozenset({"eds"})),
         StageState(tilt_deg=54.0, rotation_deg=float("nan"), inserted=frozenset({"eds"})),
         "finite"),
        (StageState(), StageState(x_um=float("inf")), "finite"),
        (StageState(), StageState(z_um=-5.0), "outside the stage"),
    ],
)  # fmt: skip
def test_unsafe_moves_are_named(state, target, message):
    problems = violations(state, target)
    assert any(message in p for p in problems), problems


def test_safe_moves_pass():
    assert violations(StageState(), StageState(tilt_deg=54.0)) == []
    assert violations(StageState(tilt_deg=54.0), StageState(tilt_deg=54.0,
                      inserted=frozenset({"eds"}))) == []  # fmt: skip
    assert violations(StageState(tilt_deg=30.0), StageState(tilt_deg=30.0, rotation_deg=3.0)) == []


def test_planned_sequence_from_sem_with_eds_to_sims():
    poses = named_poses()
    here = StageState(tilt_deg=54.0, x_um=5.0, inserted=frozenset({"eds"}))
    steps = plan_pose_move(here, poses["sims"], position_um=(1.0, 2.0, 3.0))
    assert [s.what.split()[0] for s in steps] == ["retract", "tilt", "rotate", "translate"]
    assert steps[1].after.tilt_deg == 0.0 and steps[1].after.rotation_deg == 0.0
    final = steps[-1].after
    assert (final.tilt_deg, final.rotation_deg) == (0.0, 180.0)
    assert (final.x_um, final.y_um, final.z_um) == (1.0, 2.0, 3.0)
    assert final.inserted == frozenset()
    for before, step in zip([here, *[s.after for s in steps]], steps, strict=False):
        assert violations(before, step.after) == [], step.what


def test_planned_sequence_inserts_last_and_refuses_unsafe_targets():
    poses = named_poses()
    steps = plan_pose_move(StageState(), poses["sem"], insert={"cbs"})
    assert [s.what for s in steps] == ["tilt to 54 deg", "insert cbs"]
    with pytest.raises(ValueError, match="not be inserted together"):
        plan_pose_move(StageState(), poses["sem"], insert={"cbs", "eds"})
    tight = ChamberLimits(max_tilt_inserted_deg=50.0)
    with pytest.raises(ValueError, match="nothing may be inserted"):
        plan_pose_move(StageState(), poses["sem"], insert={"eds"}, limits=tight)
    assert plan_pose_move(StageState(tilt_deg=16.0), poses["mill"]) == []  # already there
