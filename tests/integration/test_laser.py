"""The laser mill over Channel Access: tabs cut to size, refusals, nothing cut twice.

A RunEngine drives the simulated laser mill IOC (``sim_devices.laser``) through the
devices of ``instruments.laser``. The IOC's material map is its ground truth: the
geometry of a freed piece is measured by the instrument (``piece:*``) and the map
file is compared with an independent rasterisation of the paths
(``sim_devices.laser_truth``). Interruptions land inside a cut (the IOC reports
``cut:busy_RBV``): an immediate pause then an abort, a deferred pause, the
enclosure opened mid-cut (the instrument stops the cut), a restart of the IOC.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus, RunEngineInterrupted
from conftest import finished_run, laser_session, restart_ioc, start_sim_ioc
from ophyd import EpicsSignal
from waiting import wait_until

from multiscope import simctl
from multiscope.devices.process import InstrumentRefusedError
from multiscope.instruments.laser import devices
from multiscope.plans.laser import cut_tab, lathe_pillar
from multiscope.plans.preflight import PlanArgumentError
from sim_devices.laser_truth import kerf_mismatch, load_map

pytestmark = pytest.mark.integration

#: Pixel of the IOC's map (um): the measured widths are multiples of it.
PIXEL_UM = 2.0
#: Small pieces, so that several fit on the 6 x 6 mm sheet.
SMALL = {"length_um": 400.0, "handle_width_um": 700.0, "handle_length_um": 1200.0}


@dataclass
class Mill:
    """A RunEngine, the mill's devices, the documents, the IOC."""

    RE: RunEngine
    laser: object
    docs: list
    running: object
    door: EpicsSignal

    def events(self, stream: str = "cut") -> list[dict]:
        descriptors = {d["uid"] for n, d in self.docs if n == "descriptor" and d["name"] == stream}
        return [d["data"] for n, d in self.docs if n == "event" and d["descriptor"] in descriptors]

    def stops(self) -> list[str]:
        return [d["exit_status"] for n, d in self.docs if n == "stop"]

    def read(self, signal):
        return signal.get(use_monitor=False)


@contextlib.contextmanager
def laser_mill(pool, tmp_path_factory, name: str, extra_args=()):
    """The laser mill IOC on its own port and prefix, its devices, a plain RunEngine."""
    logs = tmp_path_factory.mktemp(f"{name}-logs")
    args = ["--state-file", str(logs / "laser-state.json"), *extra_args]
    running, _ = start_sim_ioc(pool, logs, "laser", extra_args=args)
    running.extra_args, running.log_dir = args, logs
    try:
        made = devices(running.prefix)
        made["laser"].wait_for_connection(timeout=30)
        door = EpicsSignal(f"{running.prefix}sim:door", name="door", string=True)
        door.wait_for_connection(timeout=30)
        RE = RunEngine({})
        docs: list = []
        RE.subscribe(lambda n, d: docs.append((n, d)))
        yield Mill(RE, made["laser"], docs, running, door)
    finally:
        simctl.stop_ioc(running.pid)


def _assert_safe(mill: Mill) -> None:
    laser = mill.laser
    assert mill.read(laser.emission.command) == "Off"
    assert int(mill.read(laser.emission.firing)) == 0
    assert int(mill.read(laser.cut.busy)) == 0


def _table(mill: Mill) -> tuple[float, float]:
    """The table's readbacks, read now (a monitor may lag a restarted IOC)."""
    table = mill.laser.table
    return tuple(float(mill.read(axis.user_readback)) for axis in (table.x, table.y))


def _removed(mill: Mill) -> np.ndarray:
    return ~load_map(mill.running.log_dir / "laser-state.json.map.npz").material


def _path(block) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(block["path_x_um"]), np.asarray(block["path_y_um"])


def _blocks(mill: Mill) -> list[dict]:
    return [d["laser_cut"] for n, d in mill.docs if n == "start"]


def test_cut_pieces_match_the_request_and_the_map_changes_only_along_the_paths(
    ca_port_pool, tmp_path_factory
):
    with laser_mill(ca_port_pool, tmp_path_factory, "laser-geometry") as mill:
        RE, laser = mill.RE, mill.laser
        # Seed 000's tab, compensated: 100 um on a 1.5 x 4 mm handle.
        RE(cut_tab(laser, 100.0, 500.0, 1500.0, 4000.0, origin_um=(1000.0, 300.0),
                   sample_id="nmc-tab", material="NMC811"))  # fmt: skip
        # Nominal 100 um, uncompensated: the spot eats half a kerf per edge.
        RE(cut_tab(laser, 100.0, compensate=False, origin_um=(2600.0, 300.0),
                   sample_id="nominal", **SMALL))  # fmt: skip
        # The thickness rule's width (NMC811 at the TXM demo's 8 keV) and a pillar.
        RE(cut_tab(laser, None, energy_keV=8.0, origin_um=(4200.0, 300.0), sample_id="rule",
                   **SMALL))  # fmt: skip
        RE(lathe_pillar(laser, 90.0, 400.0, handle_width_um=700.0, handle_length_um=1200.0,
                        origin_um=(2600.0, 3000.0), sample_id="pillar"))  # fmt: skip
        assert mill.stops() == ["success"] * 4
        starts = [d for n, d in mill.docs if n == "start"]
        assert [s["sample_id"] for s in starts] == ["nmc-tab", "nominal", "rule", "pillar"]
        assert {s["material"] for s in starts} == {"NMC811"}
        events = mill.events()
        widths = [e["piece_row_width_um"] for e in events]
        print("tab widths (um): measured", widths, "expected",
              [e["expected_tab_width_um"] for e in events])  # fmt: skip
        assert widths[0] == pytest.approx(100.0, abs=5.0)
        assert widths[1] == pytest.approx(80.0, abs=5.0)  # seed 000's ~80 um
        rule = _blocks(mill)[2]
        assert widths[2] == pytest.approx(rule["target_width_um"], abs=5.0)
        assert widths[3] == pytest.approx(90.0, abs=5.0)
        for event in events:
            assert event["piece_count"] == 1 and event["cut_last_complete"] == 1
            assert event["piece_area_um2"] == pytest.approx(event["expected_area_um2"], rel=0.01)
        assert events[0]["piece_width_um"] == pytest.approx(1500.0, abs=5.0)
        assert events[0]["piece_length_um"] == pytest.approx(4500.0, abs=5.0)
        assert [e["cut_count"] for e in events] == [1, 2, 3, 4]
        # The map lost material exactly along the four kerfs (an independent raster).
        paths = [_path(block) for block in _blocks(mill)]
        outside, left = kerf_mismatch(_removed(mill), paths, 20.0, PIXEL_UM, PIXEL_UM)
        assert (outside, left) == (0, 0)
        _assert_safe(mill)


def test_refusals_move_nothing_and_never_fire(ca_port_pool, tmp_path_factory):
    with laser_mill(ca_port_pool, tmp_path_factory, "laser-refuse") as mill:
        RE, laser = mill.RE, mill.laser
        laser.table.x.set(500.0).wait(30)

        def state():
            return (*_table(mill), int(mill.read(laser.cut.count)),
                    float(mill.read(laser.piece.removed_um2)), mill.read(laser.emission.command),
                    int(mill.read(laser.emission.firing)))  # fmt: skip

        before = state()
        mill.door.set("Open").wait(10)
        wait_until(lambda: laser.enclosure.interlock.get(use_monitor=False) == "Open", timeout=10)
        with pytest.raises(PlanArgumentError, match="interlock is open"):
            RE(cut_tab(laser, 100.0, **SMALL))
        # The instrument refuses emission itself, with its reason.
        with pytest.raises(InstrumentRefusedError, match="interlock is open"):
            laser.emission.set("On").wait(10)
        mill.door.set("Closed").wait(10)
        for kwargs, match in (
            ({"power_W": 8.0}, "over the laser's 5 W limit"),
            ({"width_um": 30.0}, "narrower than the 40 um spot"),
            ({"origin_um": (5800.0, 300.0)}, "outside the table's range"),
        ):
            args = {"width_um": 100.0, **SMALL, **kwargs}
            with pytest.raises(PlanArgumentError, match=match):
                RE(cut_tab(laser, args.pop("width_um"), **args))
        # The instrument's own checks: a power over its limit, a cut it has not been
        # asked for properly (emission off, not at the path's start).
        # A refused setting fails at once with the instrument's reason (put-completion).
        for setting, value, reason in ((laser.source.power_W, 8.0, "the power limit"),
                                       (laser.source.speed_mm_s, 50.0, "outside")):  # fmt: skip
            began = time.monotonic()
            with pytest.raises(InstrumentRefusedError, match=reason):
                setting.set(value).wait(60)
            assert time.monotonic() - began < 10.0
        assert float(mill.read(laser.source.power_W)) == pytest.approx(1.0)
        assert float(mill.read(laser.source.speed_mm_s)) == pytest.approx(2.0)
        assert "outside" in laser.enclosure.message.get(use_monitor=False)
        with pytest.raises(InstrumentRefusedError, match="emission is off"):
            laser.cut.start.set(1).wait(30)
        assert state() == before
        assert mill.stops() == []  # no run was opened


def _when_cutting(mill: Mill, action) -> threading.Thread:
    """Call ``action()`` from a thread once the IOC is cutting; ``cutting_after`` after."""
    cut = mill.laser.cut

    def watch():
        wait_until(lambda: int(cut.busy.get(use_monitor=False)) == 1, timeout=120,
                   interval=0.005, message="the IOC never cut")  # fmt: skip
        action()
        thread.cutting_after = int(cut.busy.get(use_monitor=False)) == 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.cutting_after = None
    thread.start()
    return thread


# 2 wall s per instrument s: a 2 mm/s cut of a small tab (4.68 mm) lasts ~4.7 s of wall
# time; 5 for an abort after a pause, so that both land inside the cut, loaded or not.
SLOW = ["--time-scale", "2.0"]
VERY_SLOW = ["--time-scale", "5.0"]


def test_an_abort_inside_a_cut_stops_it_emission_off_and_it_is_never_cut_again(
    ca_port_pool, tmp_path_factory
):
    with laser_mill(ca_port_pool, tmp_path_factory, "laser-abort", VERY_SLOW) as mill:
        RE, laser = mill.RE, mill.laser
        watcher = _when_cutting(mill, lambda: RE.request_pause(defer=False))
        with pytest.raises(RunEngineInterrupted):
            RE(cut_tab(laser, 100.0, origin_um=(3000.0, 300.0), **SMALL))
        watcher.join(10)
        assert watcher.cutting_after  # the pause landed inside the cut
        RE.abort()
        _assert_safe(mill)  # the safe state stopped the cut and switched emission off
        assert mill.stops() == ["abort"]
        assert int(mill.read(laser.cut.count)) == 1
        assert int(mill.read(laser.cut.last_complete)) == 0
        fraction = float(mill.read(laser.cut.fraction))
        assert 0.0 < fraction < 1.0
        assert int(mill.read(laser.piece.count)) == 0  # nothing freed
        # Re-running the same cut is refused before anything moves or fires.
        with pytest.raises(PlanArgumentError, match="cut 1 was already made"):
            RE(cut_tab(laser, 100.0, origin_um=(3000.0, 300.0), cut_number=1, **SMALL))
        assert int(mill.read(laser.cut.count)) == 1
        # What was cut lies along the path only: the share cut of its kerf, and the
        # spot's disc at each end of the part cut.
        (block,) = _blocks(mill)
        removed = _removed(mill)
        outside, _ = kerf_mismatch(removed, [_path(block)], 20.0, PIXEL_UM, PIXEL_UM)
        assert outside == 0
        length = float(np.hypot(*np.diff(_path(block))).sum())
        swept = fraction * length * 20.0 + np.pi * 10.0**2
        assert removed.sum() * PIXEL_UM**2 == pytest.approx(swept, rel=0.1)
        _assert_safe(mill)
        # The next cut may run the stopped path again to free the piece: cut 2, not 1.
        RE(cut_tab(laser, 100.0, origin_um=(3000.0, 300.0), speed_mm_s=10.0, **SMALL))
        assert mill.stops()[-1] == "success"
        event = mill.events()[-1]
        assert event["cut_number"] == 2 and event["piece_count"] == 1
        assert event["piece_row_width_um"] == pytest.approx(100.0, abs=5.0)
        _assert_safe(mill)


def test_a_pause_in_a_cut_lets_it_finish_and_the_resume_does_not_cut_again(
    ca_port_pool, tmp_path_factory
):
    with laser_mill(ca_port_pool, tmp_path_factory, "laser-pause", SLOW) as mill:
        RE, laser = mill.RE, mill.laser
        table = laser.table

        def moving():
            return [(int(mill.read(axis.motor_done_move)), int(mill.read(axis.motor_is_moving)))
                    for axis in (table.x, table.y)]  # fmt: skip

        during = []

        def in_the_cut():
            # The cut drives the table along the path: its records report moving.
            wait_until(
                lambda: moving() == [(0, 1), (0, 1)],
                timeout=30,
                message=lambda: f"the table does not report moving: {moving()}",
            )
            during.append(moving())
            RE.request_pause(defer=True)

        watcher = _when_cutting(mill, in_the_cut)
        with pytest.raises(RunEngineInterrupted):
            RE(cut_tab(laser, 100.0, origin_um=(3000.0, 300.0), **SMALL))
        watcher.join(10)
        assert watcher.cutting_after
        assert RE.state == "paused"
        wait_until(lambda: int(laser.cut.busy.get(use_monitor=False)) == 0, timeout=120)
        # Paused, emission goes off once the cut has ended.
        wait_until(lambda: laser.emission.command.get(use_monitor=False) == "Off", timeout=30)
        assert int(mill.read(laser.cut.last_complete)) == 1
        RE.resume()
        assert mill.stops() == ["success"]
        assert int(mill.read(laser.cut.count)) == 1  # one cut, not two
        (event,) = mill.events()
        assert event["cut_number"] == 1 and event["piece_count"] == 1
        assert event["piece_row_width_um"] == pytest.approx(100.0, abs=5.0)
        _assert_safe(mill)
        assert during == [[(0, 1), (0, 1)]]
        assert moving() == [(1, 0), (1, 0)]  # settled where the cut ended


class _Changes:
    """Every value change of a PV with the IOC's timestamp (a monitor of its own)."""

    def __init__(self, pv: str, string: bool):
        self.values: list[tuple[object, float]] = []
        self.signal = EpicsSignal(pv, name=pv.replace(":", "_"), string=string)
        self.signal.wait_for_connection(timeout=30)
        self.signal.subscribe(self._record, run=True)

    def _record(self, value=None, timestamp=None, **_):
        self.values.append((value, float(timestamp)))

    def close(self):
        self.signal.unsubscribe_all()
        self.signal.destroy()


def test_an_immediate_pause_in_a_cut_resumes_after_it_and_never_switches_emission_on_again(
    ca_port_pool, tmp_path_factory
):
    with laser_mill(ca_port_pool, tmp_path_factory, "laser-pause-now", SLOW) as mill:
        RE, laser = mill.RE, mill.laser
        prefix = mill.running.prefix
        emission = _Changes(f"{prefix}laser:emission", string=True)
        busy = _Changes(f"{prefix}cut:busy_RBV", string=False)
        try:
            count_before = int(mill.read(laser.cut.count))
            watcher = _when_cutting(mill, lambda: RE.request_pause(defer=False))
            with pytest.raises(RunEngineInterrupted):
                RE(cut_tab(laser, 100.0, origin_um=(3000.0, 300.0), **SMALL))
            watcher.join(10)
            assert watcher.cutting_after  # the pause landed inside the cut
            assert RE.state == "paused"
            RE.resume()  # at once: the resume waits for the instrument to end the cut
            assert mill.stops() == ["success"]
            assert int(mill.read(laser.cut.count)) == count_before + 1  # one cut, not two
            assert int(mill.read(laser.cut.last_complete)) == 1
            (event,) = mill.events()
            assert event["cut_last_complete"] == 1 and event["piece_count"] == 1
            _assert_safe(mill)
            wait_until(lambda: busy.values and int(busy.values[-1][0]) == 0
                       and emission.values[-1][0] == "Off", timeout=30,
                       message=lambda: f"{busy.values} {emission.values}")  # fmt: skip
            cut_end = max(t for value, t in busy.values if int(value) == 0)
            after = [(value, round(t - cut_end, 3)) for value, t in emission.values]
            print("emission changes (s after the cut's end):", after)
            assert [v for v, t in after if t > 0 and v == "On"] == []
            assert any(v == "On" and t <= 0 for v, t in after)  # it was on for the cut
        finally:
            emission.close()
            busy.close()


def test_the_enclosure_opened_mid_cut_stops_it_and_the_run_fails_safe(
    ca_port_pool, tmp_path_factory
):
    with laser_mill(ca_port_pool, tmp_path_factory, "laser-door", SLOW) as mill:
        RE, laser = mill.RE, mill.laser
        watcher = _when_cutting(mill, lambda: mill.door.set("Open").wait(10))
        with pytest.raises((FailedStatus, InstrumentRefusedError)) as failure:
            RE(cut_tab(laser, 100.0, origin_um=(3000.0, 300.0), **SMALL))
        watcher.join(10)
        assert mill.stops() == ["fail"]
        chain, error = [], failure.value
        while error is not None:
            chain.append(str(error))
            error = error.__cause__ or error.__context__
        assert any("enclosure was opened" in text for text in chain), chain
        _assert_safe(mill)
        assert int(mill.read(laser.cut.count)) == 1
        assert int(mill.read(laser.cut.last_complete)) == 0
        # Closed again, the next sample is cut elsewhere as cut 2.
        mill.door.set("Closed").wait(10)
        RE(cut_tab(laser, 100.0, origin_um=(1000.0, 3000.0), speed_mm_s=10.0, **SMALL))
        assert mill.stops() == ["fail", "success"]
        assert mill.events()[-1]["cut_number"] == 2
        _assert_safe(mill)


def test_an_ioc_restart_keeps_the_count_and_the_map(ca_port_pool, tmp_path_factory):
    with laser_mill(ca_port_pool, tmp_path_factory, "laser-restart") as mill:
        RE, laser = mill.RE, mill.laser
        RE(cut_tab(laser, 100.0, origin_um=(3000.0, 300.0), **SMALL))
        removed = float(mill.read(laser.piece.removed_um2))
        os.kill(mill.running.pid, signal.SIGKILL)
        wait_until(lambda: not simctl.pid_exists(mill.running.pid), timeout=30)
        restart_ioc(mill.running, "laser")
        laser.wait_for_connection(timeout=30)
        assert int(laser.cut.count.get(use_monitor=False)) == 1
        assert float(laser.piece.removed_um2.get(use_monitor=False)) == pytest.approx(removed)
        with pytest.raises(InstrumentRefusedError, match="not the next one"):
            laser.cut.start.set(1).wait(30)
        # The same tab again: its kerf is gone; refused before the table moves or the
        # laser fires.
        here = _table(mill)
        with pytest.raises(PlanArgumentError, match="was cut before"):
            RE(cut_tab(laser, 100.0, origin_um=(3000.0, 300.0), **SMALL))
        assert _table(mill) == here
        assert int(laser.cut.count.get(use_monitor=False)) == 1
        assert mill.stops()[-1] == "fail"
        _assert_safe(mill)


def test_a_session_records_the_sample_and_its_measured_geometry(ca_port_pool, tmp_path_factory):
    with laser_session(ca_port_pool, tmp_path_factory, "laser-session") as (session, _):
        laser, plan = session.devices["laser"], session.plans["cut_tab"]
        # The session's plans refuse at the call, before anything moves.
        with pytest.raises(PlanArgumentError, match="over the laser's 5 W limit"):
            plan(laser, 100.0, power_W=6.0, **SMALL)
        # Sealed under argon: the glass lid passes 92 %, the lowest cutting power rises.
        laser.enclosure.argon.set("Yes").wait(10)
        wait_until(lambda: float(laser.source.min_power_W.get(use_monitor=False)) > 0.54,
                   timeout=10)  # fmt: skip
        (uid,) = session.RE(plan(laser, 100.0, origin_um=(3000.0, 300.0), sample_id="nmc-07",
                                 material="NMC811", energy_keV=8.0, **SMALL))  # fmt: skip
        run = finished_run(session, uid)
        start = run.metadata["start"]
        assert start["sample_id"] == "nmc-07" and start["material"] == "NMC811"
        block = start["laser_cut"]
        assert block["cut_number"] == 1 and block["compensated"] is True
        assert block["argon"] is True
        assert block["power_W"] == pytest.approx(1.2 * 0.5 / 0.92, rel=1e-6)  # minimised
        assert block["target_width_um"] == pytest.approx(95.65, abs=0.5)  # docs/laser.md
        cut = run["cut"].read()
        assert float(cut["piece_row_width_um"].values[0]) == pytest.approx(100.0, abs=5.0)
        assert float(cut["expected_tab_width_um"].values[0]) == pytest.approx(100.0)
        assert int(cut["cut_count"].values[0]) == 1
        assert session.devices["emission"].command.get(use_monitor=False) == "Off"
