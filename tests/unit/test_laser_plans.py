"""cut_tab / lathe_pillar refuse before anything moves or fires (in-process fakes).

The mill is built from ``instruments.laser`` with every EPICS signal faked; a
refusal must come from the plan's first ``next()`` (no message at all), and a
good call's messages are checked for their order: the path loaded and the table at
its start before emission goes on, the cut numbered and never rewound.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest
from fakes import instant_motor
from ophyd.sim import make_fake_device

from multiscope.devices import laser as laser_devices
from multiscope.instruments import laser as laser_instrument
from multiscope.plan_stubs.safe_state import laser_safe_state
from multiscope.plans.laser import cut_tab, estimate_cut_s, lathe_pillar
from multiscope.plans.preflight import PlanArgumentError


@pytest.fixture
def mill(monkeypatch):
    for name in ("Table", "Emission", "LaserSource", "Enclosure", "LaserCut", "Piece"):
        cls = getattr(laser_devices, name)
        monkeypatch.setattr(laser_instrument, name, make_fake_device(cls))
    laser = laser_instrument.laser("FAKE:")
    for axis in (laser.table.x, laser.table.y):
        instant_motor(axis, 0.0, (0.0, 6000.0), velocity=20000.0)
    source = laser.source
    for signal, value in ((source.spot_um, 40.0), (source.kerf_um, 20.0),
                          (source.power_limit_W, 5.0), (source.min_power_W, 0.5),
                          (source.speed_mm_s, 2.0), (laser.cut.count, 3),
                          (laser.cut.last_complete, 1), (laser.cut.path_time_s, 6.0)):  # fmt: skip
        signal.sim_put(value)
    laser.enclosure.interlock.sim_put("Closed")
    laser.enclosure.argon.sim_put("No")
    laser.emission.command.sim_put("Off")
    laser.cut.busy.sim_put(0)
    return laser


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"width_um": 30.0}, "narrower than the 40 um spot"),
     ({"width_um": 55.0, "compensate": False}, "come out 35"),
     ({"power_W": 8.0}, "over the laser's 5 W limit"),
     ({"power_W": 0.3}, "below 0.5 W"),
     ({"speed_mm_s": 4.0, "power_W": 0.9}, "below 1 W"),
     ({"speed_mm_s": 0.0}, "speed_mm_s must be > 0"),
     ({"origin_um": (100.0, 100.0)}, "outside the table's range"),
     ({"material": "unobtainium"}, "material 'unobtainium' is unknown"),
     ({"width_um": None}, "give the width"),
     ({"cut_number": 3}, "cut 3 was already made"),
     ({"cut_number": 7}, "not the next cut"),
     ({"max_duration_s": 5.0}, "max_duration_s")],
)  # fmt: skip
def test_bad_requests_are_refused_before_the_first_message(mill, kwargs, match):
    args = {"width_um": 100.0, **kwargs}
    plan = cut_tab(mill, args.pop("width_um"), **args)
    with pytest.raises(PlanArgumentError, match=match):
        next(plan)


@pytest.mark.parametrize(
    ("plan", "kwargs", "match"),
    [(cut_tab, {"length_um": "500"}, "length_um must be a number, got '500'"),
     (cut_tab, {"handle_width_um": None}, "handle_width_um must be a number"),
     (cut_tab, {"handle_length_um": -4000.0}, "handle_length_um must be > 0"),
     (cut_tab, {"width_um": "wide"}, "width_um must be a number"),
     (cut_tab, {"length_um": math.nan}, "length_um must be finite"),
     (lathe_pillar, {"height_um": "tall"}, "height_um must be a number"),
     (lathe_pillar, {"diameter_um": [90.0]}, "diameter_um must be a number"),
     (lathe_pillar, {"handle_width_um": "x"}, "handle_width_um must be a number"),
     (lathe_pillar, {"sheet_thickness_um": 0.0}, "sheet_thickness_um must be > 0")],
)  # fmt: skip
def test_bad_lengths_are_refused_naming_the_parameter(mill, plan, kwargs, match):
    first = "width_um" if plan is cut_tab else "diameter_um"
    args = {first: 90.0, **kwargs}
    with pytest.raises(PlanArgumentError, match=re.escape(match)):
        next(plan(mill, args.pop(first), **args))


def test_a_cut_in_progress_is_refused_before_the_first_message(mill):
    mill.cut.busy.sim_put(1)
    with pytest.raises(PlanArgumentError, match="the mill is cutting"):
        next(cut_tab(mill, 100.0))


def test_an_open_interlock_is_refused_before_the_first_message(mill):
    mill.enclosure.interlock.sim_put("Open")
    with pytest.raises(PlanArgumentError, match="interlock is open"):
        next(cut_tab(mill, 100.0))


def test_a_pillar_wider_than_the_sheet_is_thick_is_refused(mill):
    with pytest.raises(PlanArgumentError, match="sheet's thickness"):
        next(lathe_pillar(mill, 120.0, 300.0, handle_width_um=600.0, handle_length_um=800.0))


def _messages(plan, replies=None, until=None, seen=None):
    """Follow ``plan`` answering reads from ``replies`` (else the device's value)."""
    replies = replies or {}
    messages, reply = ([] if seen is None else seen), None
    while True:
        try:
            msg = plan.send(reply)
        except StopIteration:
            return messages
        messages.append(msg)
        if msg.command == until:
            return messages
        reply = None
        if msg.command == "read":
            name = msg.obj.name
            value = replies.get(name, msg.obj.get() if hasattr(msg.obj, "get") else 0)
            reply = {name: {"value": value, "timestamp": 0.0}}
        elif msg.command == "open_run":
            reply = "uid"


def test_the_cut_comes_after_the_path_the_table_and_emission_and_is_not_rewound(mill):
    plan = cut_tab(mill, 100.0, sample_id="nmc-07", origin_um=(3000.0, 800.0))
    replies = {"cut_path_vertices": 9, "cut_path_length_um": 12080.0, "cut_path_intact": 1.0}
    msgs = _messages(plan, replies)
    start = next(m for m in msgs if m.command == "open_run")
    assert start.kwargs["sample_id"] == "nmc-07" and start.kwargs["material"] == "NMC811"
    block = start.kwargs["laser_cut"]
    assert block["cut_number"] == 4 and block["expected_tab_width_um"] == pytest.approx(100.0)
    assert block["power_W"] == pytest.approx(0.6)  # 1.2 x the lowest power: minimised
    assert start.kwargs["estimated_duration_s"] < 60.0
    sets = [(m.obj.name, m.args[0] if m.args else None) for m in msgs if m.command == "set"]
    names = [name for name, _ in sets]
    on = sets.index(("emission", "On"))
    assert names.index("cut_path_x_um") < on and names.index("table_x") < on
    assert sets[on + 1] == ("cut_start", 4)
    assert sets[on + 2] == ("emission", "Off")
    # Emission on, the cut and emission off are one step that is never rewound
    # (decision 0016): a checkpoint, rewinding off, the three, a checkpoint.
    steps = [(m.command, m.obj.name if m.obj is not None else None,
              m.args[0] if m.args else None) for m in msgs
             if m.command in ("checkpoint", "set")
             or (m.command == "rewindable" and m.args[0] is not None)]  # fmt: skip
    first = steps.index(("set", "emission", "On"))
    assert steps[first - 2 : first + 4] == [
        ("checkpoint", None, None), ("rewindable", None, False), ("set", "emission", "On"),
        ("set", "cut_start", 4), ("set", "emission", "Off"), ("checkpoint", None, None),
    ]  # fmt: skip
    # On exit: emission off, whatever happened.
    assert sets[-1] == ("emission", "Off")


def test_the_path_is_loaded_x_then_y_each_put_completed_before_the_next(mill):
    plan = cut_tab(mill, 100.0, origin_um=(3000.0, 800.0))
    replies = {"cut_path_vertices": 9, "cut_path_length_um": 12080.0, "cut_path_intact": 1.0}
    msgs = _messages(plan, replies)
    names = [(m.command, getattr(m.obj, "name", None)) for m in msgs]
    x, y = names.index(("set", "cut_path_x_um")), names.index(("set", "cut_path_y_um"))
    assert x < y
    wait = [i for i, (command, _) in enumerate(names) if command == "wait" and x < i < y]
    assert wait and msgs[wait[0]].kwargs["group"] == msgs[x].kwargs["group"]
    # Read back once both are in.
    assert names.index(("read", "cut_path_vertices")) > y


def test_the_thickness_rule_gives_the_width(mill):
    msgs = _messages(cut_tab(mill, None, material="NMC811", energy_keV=8.0,
                             origin_um=(3000.0, 800.0)),
                     until="open_run")  # fmt: skip
    block = next(m for m in msgs if m.command == "open_run").kwargs["laser_cut"]
    assert block["width_um"] == pytest.approx(block["target_width_um"])
    assert 90.0 < block["target_width_um"] < 120.0


def test_estimate_covers_the_table_move_and_the_cut(mill):
    from multiscope.analysis.laser_path import tab_path

    path = tab_path(100.0, 500.0, 1500.0, 4000.0).moved(3000.0, 800.0)
    estimate = estimate_cut_s(path, 2.0, mill.table)
    assert estimate >= path.duration_s(2.0) + 5.0
    assert math.isfinite(estimate)


def test_the_safe_state_stops_the_cut_then_switches_emission_off(mill):
    safe = laser_safe_state(mill.emission, cut=mill.cut, table=mill.table)
    assert safe.names == ["stop the laser cut", "laser emission off", "stop table_x",
                          "stop table_y"]  # fmt: skip


def test_a_dry_run_reports_the_estimate_and_moves_nothing(mill):
    from multiscope.plans.dry_run import dry_run

    summary = dry_run(cut_tab(mill, 100.0, origin_um=(3000.0, 800.0)))
    assert summary.plan_names == ["cut_tab"]
    # 6.04 s of cut (12.08 mm at 2 mm/s), the table's move and the overhead.
    assert 11.0 < summary.estimated_duration_s < 60.0
    assert mill.table.x.position == 0.0 and mill.emission.command.get() == "Off"


def test_a_path_already_cut_is_refused_before_the_table_moves(mill):
    plan = cut_tab(mill, 100.0, origin_um=(3000.0, 800.0))
    replies = {"cut_path_vertices": 9, "cut_path_length_um": 12080.0, "cut_path_intact": 0.02}
    seen = []
    with pytest.raises(PlanArgumentError, match="only 2% of the path's kerf"):
        _messages(plan, replies, seen=seen)
    moved = {m.obj.name for m in seen if m.command == "set"}
    assert "table_x" not in moved and "cut_start" not in moved
    assert ("emission", "On") not in [(m.obj.name, m.args[0]) for m in seen if m.command == "set"]


def test_the_run_contract_reads_back_as_written(mill):
    from multiscope.contracts import LaserCutBlock

    msgs = _messages(cut_tab(mill, 100.0, origin_um=(3000.0, 800.0), sample_id="s"),
                     until="open_run")  # fmt: skip
    md = next(m for m in msgs if m.command == "open_run").kwargs["laser_cut"]
    block = LaserCutBlock.from_md(md)
    assert block.to_md() == md and block.extra == {}
    assert len(block.path_x_um) == 9 and block.origin_um == (3000.0, 800.0)
    assert block.tab_mid_y_um == pytest.approx(800.0 + 4250.0)


def test_a_named_piece_is_registered_with_the_sheet_it_is_cut_from(mill):
    plan = cut_tab(mill, 100.0, sample_id="tab-3", parent_id="sheet-1", origin_um=(3000.0, 800.0))
    replies = {"cut_path_vertices": 9, "cut_path_length_um": 12080.0, "cut_path_intact": 1.0}
    start = next(m for m in _messages(plan, replies) if m.command == "open_run")
    assert start.kwargs["sample_id"] == "tab-3"
    assert start.kwargs["sample"] == {
        "id": "tab-3",
        "material": "NMC811",
        "parent_id": "sheet-1",
        "description": "laser-cut tab",
    }


@pytest.mark.parametrize("keywords, message", [
    ({"parent_id": "sheet-1"}, "needs a sample_id"),
    ({"sample_id": "tab-3", "parent_id": "tab-3"}, "from itself"),
    ({"sample_id": " tab-3"}, "sample_id"),
])  # fmt: skip
def test_a_bad_sample_or_parent_is_refused_before_anything(mill, keywords, message):
    with pytest.raises(PlanArgumentError, match=message):
        next(cut_tab(mill, 100.0, origin_um=(3000.0, 800.0), **keywords))


def _described_parameters(function) -> dict[str, str]:
    """Each numpydoc parameter of ``function``'s docstring and its description."""
    text = inspect.getdoc(function)
    section = text.split("Parameters\n----------\n", 1)[1].split("\n\n", 1)[0]
    described, names = {}, []
    for line in section.splitlines():
        if line and not line.startswith(" "):
            names = [name.strip() for name in line.split(" : ")[0].split(",")]
            described.update(dict.fromkeys(names, ""))
        else:
            for name in names:
                described[name] += line.strip() + " "
    return described


def test_every_parameter_of_cut_tab_is_described():
    described = _described_parameters(cut_tab)
    for name in inspect.signature(cut_tab).parameters:
        assert described.get(name, "").strip(), f"cut_tab's {name} is not described"
    assert "instrument seconds" in described["max_duration_s"]
    assert "merged" in described["md"]


def test_lathe_pillar_says_its_cut_is_a_rectangle_in_top_view():
    assert "rectangular outline in top view" in " ".join(inspect.getdoc(lathe_pillar).split())
    docs = (Path(__file__).resolve().parents[2] / "docs" / "laser.md").read_text()
    assert "`lathe_pillar` cuts a rectangular outline in top view" in " ".join(docs.split())
