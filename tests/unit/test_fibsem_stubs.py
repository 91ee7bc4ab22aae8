"""The PFIB-SEM verbs with soft devices: the order of a pose move, cuts never replayed."""

from __future__ import annotations

import threading

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky.utils import RunEngineInterrupted
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.positioner import SoftPositioner
from ophyd.status import Status
from waiting import wait_until

from multiscope.analysis.fibsem_geometry import named_poses
from multiscope.plan_stubs.fibsem import Chamber, PoseError, go_to_pose, mill_slice
from multiscope.plan_stubs.safe_state import fibsem_safe_state, go_safe, safe_state_wrapper


class Axis(SoftPositioner):
    def __init__(self, *, name, init_pos=0.0, **kwargs):
        super().__init__(name=name, init_pos=init_pos, limits=(-360.0, 360.0), **kwargs)


class PoseSignal(Signal):
    """The instrument's reading of the pose, from tilt and rotation."""

    def get(self, **kwargs):
        stage = self.parent
        for pose in named_poses().values():
            if (abs(stage.tilt.position - pose.tilt_deg) < 0.05
                    and abs(stage.rot.position - pose.rotation_deg) < 0.05):  # fmt: skip
                return pose.name
        return "none"


class Stage(Device):
    tilt = Cpt(Axis, init_pos=0.0)
    rot = Cpt(Axis, init_pos=0.0)
    x = Cpt(Axis, init_pos=0.0)
    y = Cpt(Axis, init_pos=0.0)
    z = Cpt(Axis, init_pos=0.0)
    pose = Cpt(PoseSignal, value="eucentric")


class Insertable(Device):
    state = Cpt(Signal, value="Retracted")

    def set(self, value):
        self.state.put("Inserted" if value == "in" else "Retracted")
        status = Status(obj=self)
        status.set_finished()
        return status


@pytest.fixture
def chamber():
    stage = Stage(name="stage")
    inserts = {n: Insertable(name=n) for n in ("cbs", "eds", "needle")}
    return Chamber(stage, inserts)


def _sets(RE):
    log = []
    RE.msg_hook = lambda msg: (
        log.append((msg.obj.name, msg.args[0])) if msg.command == "set" else None
    )
    return log


def test_a_pose_move_retracts_tilts_flat_rotates_then_tilts(chamber):
    RE = RunEngine()
    RE(go_to_pose(chamber, "sem", insert=("cbs",)))
    assert chamber.stage.tilt.position == pytest.approx(54.0)
    log = _sets(RE)
    RE(go_to_pose(chamber, "sims"))
    assert log == [("cbs", "out"), ("stage_tilt", 0.0), ("stage_rot", 180.0)]
    assert chamber.stage.pose.get() == "sims"


def test_an_unsafe_target_is_refused_before_anything_moves(chamber):
    RE = RunEngine()
    chamber.limits = type(chamber.limits)(max_tilt_inserted_deg=50.0)
    log = _sets(RE)
    with pytest.raises(PoseError, match="nothing may be inserted"):
        RE(go_to_pose(chamber, "sem", insert=("eds",)))
    assert log == []
    with pytest.raises(PoseError, match="unknown pose"):
        RE(go_to_pose(chamber, "side"))


class Cut(Device):
    """A cut that lasts until the test ends it; counts its starts (as ProcessCommand:
    a pause's stop is ignored, an abort's stop ends it)."""

    count = Cpt(Signal, value=0)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = []
        self.stopped = 0

    def set(self, value):
        self.count.put(self.count.get() + 1)
        status = Status(obj=self)
        self.pending.append(status)
        return status

    def finish(self):
        for status in self.pending:
            if not status.done:
                status.set_finished()

    def stop(self, *, success=False):
        if not success:
            self.stopped += 1
            self.finish()


class Mill(Device):
    cut = Cpt(Cut)


def _cut_plan(mill, after):
    def plan():
        yield from bps.checkpoint()
        yield from mill_slice(mill, 1)
        after.append("imaging")  # what follows the cut, once per run of the generator
        yield from bps.null()

    return plan()


def _pause_in_the_cut(RE, mill, defer):
    def interrupt():
        wait_until(lambda: mill.cut.pending, timeout=30, interval=0.001)
        RE.request_pause(defer=defer)
        if defer:  # a deferred pause waits for the cut: end it
            mill.cut.finish()

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("defer", [True, False], ids=["one-ctrl-c", "two-ctrl-c"])
def test_a_pause_inside_a_cut_never_replays_it(defer):
    mill, after, RE = Mill(name="mill"), [], RunEngine()
    thread = _pause_in_the_cut(RE, mill, defer)
    with pytest.raises(RunEngineInterrupted):
        RE(_cut_plan(mill, after))
    thread.join(5)
    assert RE.state == "paused"
    mill.cut.finish()  # the instrument finishes the cut while the run is paused
    RE.resume()
    assert mill.cut.count.get() == 1  # never sent again
    assert mill.cut.stopped == 0  # a pause does not stop a cut
    assert after == ["imaging"]


class Ion(Device):
    beam = Cpt(Signal, value="On")


def test_an_abort_after_a_pause_in_a_cut_stops_it():
    """The RunEngine stops what a run moved with ``success=True`` on every exit, so the
    cut is ended by the safe state's stop (``success=False``), which runs on an abort."""
    mill, after, RE = Mill(name="mill"), [], RunEngine()
    ion = Ion(name="ion")
    thread = _pause_in_the_cut(RE, mill, defer=False)
    with pytest.raises(RunEngineInterrupted):
        RE(safe_state_wrapper(_cut_plan(mill, after), fibsem_safe_state(ion, mill=mill)))
    thread.join(5)
    RE.abort()
    assert mill.cut.count.get() == 1
    assert mill.cut.stopped >= 1
    assert after == []
    assert ion.beam.get() == "Blanked"


def test_the_safe_state_blanks_retracts_and_stops():
    ion, mill = Ion(name="ion"), Mill(name="mill")
    inserts = [Insertable(name=n) for n in ("cbs", "needle")]
    for device in inserts:
        device.set("in")
    safe = fibsem_safe_state(ion, mill=mill, insertables=inserts)
    assert safe.names[:2] == ["stop the cut", "blank the ion beam"]
    RunEngine()(go_safe(safe))
    assert ion.beam.get() == "Blanked"
    assert all(d.state.get() == "Retracted" for d in inserts)
