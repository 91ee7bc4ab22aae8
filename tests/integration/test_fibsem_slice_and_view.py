"""slice_and_view over Channel Access: every slice milled once, whatever ends the run.

A real session drives the simulated PFIB-SEM IOC (``sim_devices.fibsem``). The IOC
numbers its cuts and keeps its count and face depth in a state file, so what was
milled is read from the instrument, not from the client; the runs' documents are read
back from the catalog. Interruptions land inside a cut (the IOC reports
``mill:busy_RBV``): a deferred pause, an immediate pause (the run ends; a resume
continues), a SIGKILL of the client process, a restart of the IOC.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import h5py
import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted
from conftest import fibsem_session, finished_run, restart_ioc, shared_data_dir
from waiting import wait_until

from multiscope import simctl
from multiscope.analysis.fibsem_geometry import ChamberLimits
from multiscope.catalog import recover, series_documents
from multiscope.compat import throw_into_run
from multiscope.devices.fibsem import InstrumentRefusedError
from multiscope.frame_files import uri_to_path
from multiscope.plans.preflight import PlanArgumentError

pytestmark = pytest.mark.integration

# Short maps and a slow cut (about 1 s of wall time at the IOC's clock, in the two passes
# of the plan's default rocking polish) so that an interruption can land inside a cut;
# the physics still counts instrument seconds.
FAST = {"eds_live_time_s": 20.0, "sims_frame_time_s": 20.0}
SLOW_CUT = {**FAST, "mill_current_na": 0.6}
# About 5 s of wall time: a pause and then an abort both land inside the cut, loaded or not.
VERY_SLOW_CUT = {**FAST, "mill_current_na": 0.12}


def _milled(pfib) -> int:
    return int(pfib.mill.slices_milled.get(use_monitor=False))


def _assert_safe(pfib) -> None:
    """The exit state every run must leave: beam blanked, nothing inserted, no cut."""
    assert pfib.ion_column.beam.get(use_monitor=False) == "Blanked"
    for name, device in pfib.insertables.items():
        assert device.state.get(use_monitor=False) == "Retracted", name
    assert int(pfib.mill.busy.get(use_monitor=False)) == 0


def _stream_numbers(run, stream: str) -> list[int]:
    if stream not in run:
        return []
    return [int(v) for v in run[stream].read()["slice_number"].values]


def _frame_attributes(session, uid: str, stream: str) -> dict:
    """Per-acquisition HDF5 attributes of a run's ``stream`` frames (channel 0 rows)."""
    docs = series_documents(session.data_dir, uid)
    (resource,) = [d for n, d in docs if n == "stream_resource"
                   and d["data_key"] == f"{stream}_image" and d["run_start"] == uid]  # fmt: skip
    with h5py.File(uri_to_path(resource["uri"]), "r", swmr=True) as f:
        group = f["/entry/instrument/NDAttributes"]
        attrs = {name: np.asarray(group[name][()]) for name in group}
    first = attrs["channel"] == 0
    return {name: values[first] for name, values in attrs.items()}


def _interrupt_inside_cut(session, slice_number: int, action) -> threading.Thread:
    """Call ``action()`` from a thread once the IOC is cutting ``slice_number``.

    The thread's ``cutting_after`` says whether the cut was still running once the
    action returned (a test whose interruption missed the cut must fail, not pass).
    """
    pfib = session.devices["pfib"]

    def watch():
        wait_until(
            lambda: (
                int(pfib.mill.busy.get(use_monitor=False)) == 1 and _milled(pfib) == slice_number
            ),
            timeout=120,
            interval=0.005,
            message=f"the IOC never cut slice {slice_number}",
        )
        action()
        thread.cutting_after = int(pfib.mill.busy.get(use_monitor=False)) == 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.cutting_after = None
    thread.start()
    return thread


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data directory and catalog server for the module's sessions."""
    return shared_data_dir(tmp_path_factory, "sv")


def test_every_face_is_imaged_and_every_slice_milled_once(ca_port_pool, tmp_path_factory, data_dir):
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-basic", data_dir=data_dir) as (
        session,
        _,
    ):
        pfib = session.devices["pfib"]
        assert _milled(pfib) == 0
        (uid,) = session.RE(session.plans["slice_and_view"](pfib, 3, 0.1, **FAST))
        run = finished_run(session, uid)
        assert _milled(pfib) == 3
        _assert_safe(pfib)
        assert _stream_numbers(run, "mill") == [1, 2, 3]
        for stream in ("sem", "eds", "sims"):
            assert _stream_numbers(run, stream) == [1, 2, 3], stream
        data = {s: run[s].read() for s in ("mill", "sem", "eds", "sims")}
        assert data["sem"]["sem_image"].shape[:2] == (3, 2)  # CBS and TLD of one scan
        assert data["eds"]["eds_image"].shape[:2] == (3, len(pfib.eds.channels()))
        assert data["sims"]["sims_image"].shape[:2] == (3, len(pfib.sims.channels()))
        for stream, pose in (("mill", "mill"), ("sem", "sem"), ("eds", "sem"), ("sims", "sims")):
            assert set(data[stream]["stage_pose"].values) == {pose}, stream
        assert set(data["sims"]["ion_column_beam"].values) == {"On"}
        assert set(data["sem"]["ion_column_beam"].values) == {"Blanked"}
        depths = data["mill"]["mill_face_depth_um"].values
        np.testing.assert_allclose(np.diff(depths), 0.1, atol=1e-9)
        block = run.metadata["start"]["slice_and_view"]
        assert block["n_slices"] == 3 and block["first_slice"] == 1
        # Drift correction: after each SEM frame the beam shift is set to the sample's
        # drift since the first frame (the truth: the frames' drift attributes).
        truth = _frame_attributes(session, uid, "sem")
        pixel_um = float(truth["pixel_um"][0])
        walked = 0.0
        for axis in ("x", "y"):
            drift = truth[f"drift_{axis}_um"] - truth[f"drift_{axis}_um"][0]
            shift = data["sem"][f"electron_column_beam_shift_{axis}_um"].values
            np.testing.assert_allclose(shift[1:], drift[:-1], atol=0.5 * pixel_um)
            walked = max(walked, float(np.abs(drift[:-1]).max()))
        # The sample did drift before the corrections compared (the seeded walk): by more
        # than half a pixel, so a correction of the wrong sign (off by twice the drift)
        # fails the 0.5 px tolerance above.
        assert walked > 0.5 * pixel_um
        depth = run["depth"].read()
        assert depth["stage_pose"].values[0] == "eucentric"
        # Tilted back, the measured depth is the true one (3 cuts with a 3 % error each).
        measured = float(depth["mill_measured_depth_um"].values[0])
        assert measured == pytest.approx(float(truth["true_depth_um"][-1]), abs=0.05)
        assert measured == pytest.approx(float(depths[-1]), abs=0.05)


def test_bad_requests_are_refused_before_anything_moves(ca_port_pool, tmp_path_factory, data_dir):
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-refuse", data_dir=data_dir) as (
        session,
        _,
    ):
        pfib = session.devices["pfib"]
        plan = session.plans["slice_and_view"]
        before = (_milled(pfib), pfib.stage.tilt.position, pfib.stage.rot.position)
        for kwargs, match in (
            ({"slice_thickness_um": 0.0}, "slice_thickness_um must be > 0"),
            ({"slice_thickness_um": 5.0}, "beyond the ion beam's reach"),
            ({"eds_every": -1}, "eds_every must be >= 0"),
            ({"fiducial": (0, 8, 0, 8)}, "fiducial window"),
            ({"limits": ChamberLimits(tilt_range_deg=(-10.0, 50.0))}, "pose 'sem'"),
        ):
            args = {"slice_thickness_um": 0.1, **kwargs}
            with pytest.raises(PlanArgumentError, match=match):
                plan(pfib, 3, **args)
        with pytest.raises(PlanArgumentError, match="no run"):
            session.RE(plan(pfib, 3, 0.1, resume="ffffffff"))
        after = (_milled(pfib), pfib.stage.tilt.position, pfib.stage.rot.position)
        assert after == before

        # The instrument refuses on its own, with its reason, whatever the client does.
        status = pfib.mill.cut.set(1)
        with pytest.raises(InstrumentRefusedError, match="mill"):
            status.wait(30)
        pfib.cbs.set("in").wait(30)
        with pytest.raises(InstrumentRefusedError):
            pfib.eds_detector.set("in").wait(30)
        pfib.cbs.set("out").wait(30)
        assert _milled(pfib) == 0


@pytest.mark.parametrize("defer", [True, False], ids=["one-ctrl-c", "two-ctrl-c"])
def test_a_pause_in_a_cut_lets_it_finish_and_resumes_without_remilling(
    ca_port_pool, tmp_path_factory, data_dir, defer
):
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-pause", data_dir=data_dir) as (
        session,
        _,
    ):
        pfib, RE = session.devices["pfib"], session.RE
        watcher = _interrupt_inside_cut(session, 2, lambda: RE.request_pause(defer=defer))
        with pytest.raises(RunEngineInterrupted):
            RE(session.plans["slice_and_view"](pfib, 3, 0.1, **SLOW_CUT))
        watcher.join(5)
        assert watcher.cutting_after  # the pause was requested inside the cut
        assert RE.state == "paused"
        # The cut in progress is finished by the instrument, and nothing more is milled.
        wait_until(lambda: int(pfib.mill.busy.get(use_monitor=False)) == 0, timeout=60)
        assert _milled(pfib) == 2
        assert int(pfib.mill.last_complete.get(use_monitor=False)) == 1
        # Paused, the ion beam is blanked once the cut is done (not left on the face).
        wait_until(lambda: pfib.ion_column.beam.get(use_monitor=False) == "Blanked", timeout=30)
        (uid,) = RE.resume()
        run = finished_run(session, uid)
        assert _milled(pfib) == 3
        assert _stream_numbers(run, "mill") == [1, 2, 3]
        assert _stream_numbers(run, "sem") == [1, 2, 3]
        _assert_safe(pfib)


def test_a_pause_then_abort_in_a_cut_stops_it_and_a_resume_finishes_the_series(
    ca_port_pool, tmp_path_factory, data_dir
):
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-abort", data_dir=data_dir) as (
        session,
        _,
    ):
        pfib, RE = session.devices["pfib"], session.RE
        plan = session.plans["slice_and_view"]
        uids = []
        RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
        watcher = _interrupt_inside_cut(session, 2, lambda: RE.request_pause(defer=False))
        with pytest.raises(RunEngineInterrupted):
            RE(plan(pfib, 4, 0.1, **VERY_SLOW_CUT))
        watcher.join(5)
        assert watcher.cutting_after
        RE.abort()
        _assert_safe(pfib)  # the safe state stopped the cut and blanked the beam
        assert _milled(pfib) == 2
        assert int(pfib.mill.last_complete.get(use_monitor=False)) == 0  # stopped part-way
        first = uids[0]
        (second,) = RE(plan(pfib, 4, 0.1, resume=first, **FAST))
        assert _milled(pfib) == 4
        assert session.catalog.drain(120)
        first_run, second_run = session.catalog.run(first), finished_run(session, second)
        assert first_run.metadata["stop"]["exit_status"] == "abort"
        assert second_run.metadata["start"]["resume_of"] == first
        milled = _stream_numbers(first_run, "mill") + _stream_numbers(second_run, "mill")
        assert sorted(milled) == [1, 3, 4]  # slice 2's cut was stopped: it has no event
        imaged = _stream_numbers(first_run, "sem") + _stream_numbers(second_run, "sem")
        assert sorted(imaged) == [1, 2, 3, 4]  # the part-milled face is imaged by the resume
        _assert_safe(pfib)


KILLED_CLIENT = textwrap.dedent(
    """
    import sys
    from multiscope.session import configure_session

    data_dir, prefix = sys.argv[1], sys.argv[2]
    session = configure_session({}, "fibsem", data_dir=data_dir, prefix=prefix,
                                table=False, progress=False)
    session.RE.subscribe(lambda name, doc: print("start", doc["uid"], flush=True), "start")
    pfib = session.devices["pfib"]
    session.RE(session.plans["slice_and_view"](pfib, 4, 0.1, eds_live_time_s=20.0,
                                               sims_frame_time_s=20.0, mill_current_na=0.6))
    """
)


def _start_client(data_dir, prefix) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, str(data_dir), prefix],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def _first_uid(client: subprocess.Popen) -> str:
    for line in client.stdout:
        if line.startswith("start "):
            return line.split()[1]
    raise AssertionError(f"the client ended without a run (exit {client.wait()})")


def test_a_killed_client_is_resumed_without_milling_twice(ca_port_pool, tmp_path_factory, data_dir):
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-kill", data_dir=data_dir) as (
        session,
        running,
    ):
        pfib = session.devices["pfib"]
        client = _start_client(session.data_dir, running.prefix)
        try:
            first = _first_uid(client)
            wait_until(lambda: int(pfib.mill.busy.get(use_monitor=False)) == 1
                       and _milled(pfib) == 2, timeout=180, interval=0.005,
                       message="the client never cut slice 2")  # fmt: skip
            os.kill(client.pid, signal.SIGKILL)
        finally:
            client.kill()
            client.wait(30)
        # Nobody stops the cut: the instrument finishes it (the client is gone).
        wait_until(lambda: int(pfib.mill.busy.get(use_monitor=False)) == 0, timeout=60)
        assert _milled(pfib) == 2
        (second,) = session.RE(session.plans["slice_and_view"](pfib, 4, 0.1, resume=first,
                                                               **FAST))  # fmt: skip
        assert _milled(pfib) == 4
        second_run = finished_run(session, second)
        assert second_run.metadata["start"]["slice_and_view"]["resume_of"] == first
        assert _stream_numbers(second_run, "mill") == [3, 4]
        assert _stream_numbers(second_run, "sem") == [2, 3, 4]  # slice 2 was never imaged
        # The killed client left the beam on after the cut: the resume blanked it first.
        assert set(second_run["sem"].read()["ion_column_beam"].values) == {"Blanked"}
        # The killed run is readable too, once recovered from its journal.
        recover(session.data_dir, session.catalog)
        first_run = session.catalog.run(first)
        assert first_run.metadata["stop"]["exit_status"] == "fail"
        assert _stream_numbers(first_run, "mill") == [1]
        assert _stream_numbers(first_run, "sem") == [1]
        assert first_run["sem"].read()["sem_image"].shape[:2] == (1, 2)
        _assert_safe(pfib)


def test_an_ioc_restart_keeps_the_count_and_the_series_resumes(
    ca_port_pool, tmp_path_factory, data_dir
):
    options = {"disconnect_timeout_s": 3.0}
    with fibsem_session(
        ca_port_pool, tmp_path_factory, "sv-restart", data_dir=data_dir, **options
    ) as (
        session,
        running,
    ):
        pfib, RE = session.devices["pfib"], session.RE
        plan = session.plans["slice_and_view"]
        uids = []
        RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")

        def kill_ioc():
            os.kill(running.pid, signal.SIGKILL)

        # Killed between cuts: at the sem pose of slice 2 (its cut is done and counted).
        watcher = threading.Thread(target=lambda: (wait_until(
            lambda: _milled(pfib) == 2 and pfib.stage.pose.get() == "sem", timeout=180,
            interval=0.005), kill_ioc()), daemon=True)  # fmt: skip
        watcher.start()
        with pytest.raises(Exception):  # noqa: B017 - the watchdog fails the run
            RE(plan(pfib, 4, 0.1, **FAST))
        watcher.join(5)
        assert not simctl.pid_exists(running.pid)
        restart_ioc(running, "fibsem")
        pfib.wait_for_connection(timeout=30)
        assert _milled(pfib) == 2  # from the IOC's state file
        (second,) = RE(plan(pfib, 4, 0.1, resume=uids[0], **FAST))
        assert _milled(pfib) == 4
        second_run = finished_run(session, second)
        assert _stream_numbers(second_run, "mill") == [3, 4]
        _assert_safe(pfib)


def test_kintsugi_fills_the_pores_ahead_and_is_repeated_only_when_needed(
    ca_port_pool, tmp_path_factory, data_dir
):
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-kintsugi", data_dir=data_dir) as (
        session,
        _,
    ):
        pfib, RE = session.devices["pfib"], session.RE
        (first,) = RE(session.plans["kintsugi_face"](pfib, pt_thickness_um=2.0, polish_um=1.5))
        run = finished_run(session, first)
        kintsugi = run["kintsugi"].read()
        depth = float(kintsugi["mill_face_depth_um"].values[0])
        filled = float(kintsugi["gis_filled_to_um"].values[0])
        assert float(kintsugi["gis_cap_um"].values[0]) == pytest.approx(0.0, abs=1e-6)
        assert depth == pytest.approx(1.5, abs=1e-6)  # 1.5 um into the sample
        assert filled == pytest.approx(3.0, abs=1e-6)  # Pt 3 um deep from the old face
        assert int(pfib.mill.polishes_done.get(use_monitor=False)) == 1
        assert _milled(pfib) == 0  # a polish is not a slice
        _assert_safe(pfib)
        assert pfib.gis.heat.get(use_monitor=False) == "Off"
        # 0.5 um slices: the pores are filled 1.5 um ahead (to 3.0), the face goes to 2.5.
        (second,) = RE(session.plans["slice_and_view"](pfib, 2, 0.5, kintsugi=True,
                                                       eds_every=0, sims_every=0))  # fmt: skip
        run = finished_run(session, second)
        assert "kintsugi" not in run
        assert int(pfib.mill.polishes_done.get(use_monitor=False)) == 1
        # ... the next slice would reach the unfilled pores (within 0.1 um): one more first.
        (third,) = RE(session.plans["slice_and_view"](pfib, 2, 0.5, kintsugi=True,
                                                      eds_every=0, sims_every=0))  # fmt: skip
        run = finished_run(session, third)
        assert len(run["kintsugi"].read()["gis_cap_um"]) == 1
        assert int(pfib.mill.polishes_done.get(use_monitor=False)) == 2
        assert _milled(pfib) == 4
        _assert_safe(pfib)


def test_a_stop_during_a_sims_map_leaves_the_instrument_safe(
    ca_port_pool, tmp_path_factory, data_dir
):
    """RE.stop() while the ion beam is on for SIMS: the run ends (success, as bluesky's
    stop means), the beam is blanked and nothing is left inserted."""
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-stop", data_dir=data_dir) as (
        session,
        _,
    ):
        pfib, RE = session.devices["pfib"], session.RE

        def stop_in_sims():
            wait_until(lambda: pfib.stage.pose.get(use_monitor=False) == "sims"
                       and pfib.ion_column.beam.get(use_monitor=False) == "On",
                       timeout=120, interval=0.005, message="never mapped SIMS")  # fmt: skip
            RE.request_pause(defer=False)

        watcher = threading.Thread(target=stop_in_sims, daemon=True)
        watcher.start()
        with pytest.raises(RunEngineInterrupted):
            RE(session.plans["slice_and_view"](pfib, 2, 0.1, eds_every=0,
                                               sims_frame_time_s=200.0))  # fmt: skip
        watcher.join(5)
        # Paused with the beam on for SIMS: the pause blanks it.
        wait_until(lambda: pfib.ion_column.beam.get(use_monitor=False) == "Blanked", timeout=30)
        (uid,) = RE.stop()
        assert session.catalog.drain(120)
        assert session.catalog.run(uid).metadata["stop"]["exit_status"] == "success"
        _assert_safe(pfib)
        assert _milled(pfib) == 1


def test_a_fault_during_an_eds_map_leaves_everything_retracted_and_blanked(
    ca_port_pool, tmp_path_factory, data_dir
):
    """A fault (thrown into the run, as a failed device would) while the EDS detector is
    in: the run fails and the safe state retracts it and blanks the beam."""
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-fault", data_dir=data_dir) as (
        session,
        _,
    ):
        pfib, RE = session.devices["pfib"], session.RE
        uids = []
        RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
        thrown = []

        def fault_in_eds():
            wait_until(lambda: pfib.eds_detector.state.get(use_monitor=False) == "Inserted",
                       timeout=120, interval=0.005, message="EDS never inserted")  # fmt: skip
            thrown.append(throw_into_run(RE, RuntimeError("injected fault")))

        watcher = threading.Thread(target=fault_in_eds, daemon=True)
        watcher.start()
        with pytest.raises(RuntimeError, match="injected fault"):
            RE(session.plans["slice_and_view"](pfib, 2, 0.1, sims_every=0,
                                               eds_live_time_s=200.0))  # fmt: skip
        watcher.join(5)
        assert thrown == [True]
        _assert_safe(pfib)
        assert session.catalog.drain(120)
        assert session.catalog.run(uids[0]).metadata["stop"]["exit_status"] == "fail"
