"""Plans refuse bad arguments before emitting any message (RELIABILITY.md row 10)."""

import math

import pytest
from bluesky import RunEngine
from ophyd.sim import SoftPositioner, det

from multiscope.plans.preflight import (
    PlanArgumentError,
    format_duration,
    require_int,
    require_number,
    require_positions_within_limits,
)
from multiscope.plans.scans import count_frames, line_scan


@pytest.fixture
def axis():
    motor = SoftPositioner(name="axis", limits=(-5, 5), init_pos=0)
    return motor


def first_message(plan):
    return next(iter(plan))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"start": -6, "stop": 1, "num": 3}, "outside its limits"),
        ({"start": 0, "stop": 5.5, "num": 3}, "outside its limits"),
        ({"start": 0, "stop": 1, "num": 0}, "num must be >= 1"),
        ({"start": 0, "stop": 1, "num": 2.5}, "num must be an integer"),
        ({"start": "a", "stop": 1, "num": 2}, "start must be a number"),
        ({"start": math.nan, "stop": 1, "num": 2}, "start must be finite"),
    ],
)
def test_line_scan_refuses_before_any_message(axis, kwargs, fragment):
    with pytest.raises(PlanArgumentError, match=fragment):
        first_message(line_scan([det], axis, **kwargs))
    assert axis.position == 0


def test_line_scan_refusal_through_run_engine_moves_nothing(axis):
    RE = RunEngine({})
    documents = []
    RE.subscribe(lambda name, doc: documents.append(name))
    with pytest.raises(PlanArgumentError):
        RE(line_scan([det], axis, 0, 9, 5))
    assert documents == []  # no run was opened
    assert axis.position == 0


def test_line_scan_runs_and_records_estimate(axis):
    RE = RunEngine({})
    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    (uid,) = RE(line_scan([det], axis, -1, 1, 5))
    assert starts[0]["plan_name"] == "line_scan"
    assert starts[0]["num_points"] == 5
    assert starts[0]["estimated_duration_s"] >= 0
    assert axis.position == pytest.approx(1)


def test_detectors_must_be_a_list_of_readables(axis):
    with pytest.raises(PlanArgumentError, match="list of readable"):
        first_message(line_scan(det, axis, 0, 1, 2))
    with pytest.raises(PlanArgumentError, match="not readable"):
        first_message(count_frames([object()], 1))


def test_limits_zero_zero_mean_none():
    free = SoftPositioner(name="free", limits=(0, 0), init_pos=0)
    require_positions_within_limits("positions", free, [-1e6, 1e6])


def test_scalar_checks():
    assert require_int("n", 3, minimum=1) == 3
    with pytest.raises(PlanArgumentError, match="n must be an integer"):
        require_int("n", True)
    with pytest.raises(PlanArgumentError, match="overlap must be > 0"):
        require_number("overlap", 0, minimum=0, exclusive_minimum=True)
    with pytest.raises(PlanArgumentError, match="overlap must be <= 0.5"):
        require_number("overlap", 0.7, maximum=0.5)


def test_format_duration():
    assert format_duration(12) == "12.0 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3720) == "1 h 02 min"
