"""Fault injection over real Channel Access (docs/stack-facts.md, fault rows 1, 3, 5, 6).

Each test: inject X during Y, expect Z, measure N. The TXM tests run the TXM and
the storage ring as separate IOCs (decision 0009), so a dead TXM IOC and a beam
dump are different faults: the first fails the run within the session's
``disconnect_timeout_s``, the second suspends it, for at most ``max_suspension_s``.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import shared_data_dir, txm_session
from waiting import wait_until

from multiscope import simctl
from multiscope.plans.scans import line_scan
from multiscope.session import configure_session
from multiscope.suspenders import DeviceDisconnectedError, SuspendedTooLongError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data directory and catalog server for the module's sessions."""
    return shared_data_dir(tmp_path_factory, "faults")


def _session(ioc, data_dir, *, suspenders):
    session = configure_session(
        {},
        "demo",
        data_dir=data_dir,
        prefix=ioc.prefix,
        table=False,
        progress=False,
        suspenders=suspenders,
    )
    for device in session.devices.values():
        device.wait_for_connection(timeout=10)
    session.devices["shutter"].set("open").wait(5)
    session.devices["cam"].cam.acquire_time.set(0.002).wait(5)
    return session


def _kill_when(predicate, pid, timeout=30.0):
    """Start a thread that SIGKILLs ``pid`` once ``predicate()`` is true.

    Returns the thread and a dict that gets the kill time under ``"t"``.
    """
    killed_at = {}

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                os.kill(pid, signal.SIGKILL)
                killed_at["t"] = time.monotonic()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed_at


def test_ioc_killed_mid_move_fails_run_quickly_with_events_kept(fresh_demo_ioc, data_dir):
    """Kill the motor IOC mid-move: the run ends `fail` within 10 s; earlier events readable."""
    session = _session(fresh_demo_ioc, data_dir, suspenders=False)
    m1, cam, beam = (session.devices[n] for n in ("m1", "cam", "beam_current"))
    m1.set(-8).wait(10)
    move_budget = m1.move_timeout(-4)  # every step of this scan is 4 mm
    events = []
    session.RE.subscribe(lambda name, doc: events.append(doc) if name == "event" else None)
    # 4 mm steps at 5 mm/s: each move takes ~0.8 s; kill during the move after 3 events.
    thread, killed = _kill_when(lambda: len(events) >= 3 and m1.moving, fresh_demo_ioc.pid)
    uids = []
    session.RE.subscribe(lambda name, doc: uids.append(doc["uid"]) if name == "start" else None)
    with pytest.raises(Exception) as excinfo:
        session.RE(line_scan([cam, beam], m1, -8, 8, 5))
    ended = time.monotonic()
    thread.join(1)
    assert "t" in killed, "the IOC was not killed during a move"
    elapsed = ended - killed["t"]
    print(f"kill-to-fail: {elapsed:.2f} s ({excinfo.value!r})")
    # docs/stack-facts.md, fault row 1: the error names the device; it arrives within its
    # move timeout + 2 s.
    assert "m1" in repr(excinfo.value)
    assert elapsed < move_budget + 2.0
    assert elapsed < 10.0  # the bound
    assert session.catalog.drain(30)
    run = session.catalog.run(uids[0])
    assert run.metadata["stop"]["exit_status"] == "fail"
    data = run["primary"].read()
    assert len(data["m1"]) == 3
    np.testing.assert_allclose(np.asarray(data["m1"]), [-8, -4, 0], atol=1e-3)
    frames = np.asarray(data[cam.image_key])  # flushed per frame: readable after the crash
    assert frames.shape[0] == 3 and frames.sum() > 0
    session.close()


def test_beam_ioc_disconnect_suspends_and_resumes_after_restart(fresh_demo_ioc, tmp_path, data_dir):
    """Kill the IOC serving the ring current during a count: the run suspends (does not
    fail, does not go on); restart the IOC: it resumes and completes with every point."""
    session = _session(fresh_demo_ioc, data_dir, suspenders=True)
    cam, beam = session.devices["cam"], session.devices["beam_current"]
    events = []
    session.RE.subscribe(lambda name, doc: events.append(doc) if name == "event" else None)
    thread, killed = _kill_when(lambda: len(events) >= 5, fresh_demo_ioc.pid)
    restarted = {}

    def restart():
        thread.join(30)
        time.sleep(2.0)  # the outage
        restarted["events_during_outage"] = len(events)
        ioc = simctl.start_ioc(
            "demo",
            prefix=fresh_demo_ioc.prefix,
            port=fresh_demo_ioc.port,
            log_dir=tmp_path / "restart",
        )
        restarted["ioc"] = ioc
        simctl.wait_until_ready(ioc, 15)
        # The restarted IOC starts with its shutter closed, as real hardware may.
        shutter = session.devices["shutter"]
        shutter.wait_for_connection(timeout=20)
        shutter.set("open").wait(10)

    helper = threading.Thread(target=restart, daemon=True)
    helper.start()

    def counts_with_delay():
        from bluesky import plan_stubs as bps
        from bluesky import preprocessors as bpp

        def inner():
            for _ in range(20):
                yield from bps.checkpoint()
                yield from bps.trigger_and_read([cam, beam])
                yield from bps.sleep(0.05)

        plan = bpp.run_wrapper(inner(), md={"plan_name": "fault_count"})
        return (yield from bpp.stage_wrapper(plan, [cam, beam]))

    try:
        try:
            (uid,) = session.RE(counts_with_delay())
        finally:
            helper.join(30)
        _check_resumed_run(session, uid, killed, restarted, events)
    finally:
        session.close()
        if "ioc" in restarted:  # the restarted IOC is ours to stop, whatever happened
            simctl.stop_ioc(restarted["ioc"].pid)


def _check_resumed_run(session, uid, killed, restarted, events):
    assert "t" in killed
    # Nothing was recorded while the beam monitor was gone.
    assert restarted["events_during_outage"] <= 6
    assert session.catalog.drain(30)
    run = session.catalog.run(uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    seq = [doc["seq_num"] for doc in events]
    # Rewind may re-emit an interrupted point; after de-duplication every point is there once.
    assert sorted(set(seq)) == list(range(1, 21))


# -- TXM: a dead IOC, a beam dump, a long outage ------------------------------------------

TXM_ARGS = ["--binning", "4", "--shape", "64", "64"]
DISCONNECT_LIMIT_S = 4.0
# Bound on the cleanup after the limit (the safe state against a dead IOC, each step at
# most its connection timeout): measured up to 2.8 s at load ~13, room for a loaded CI.
CLEANUP_MARGIN_S = 15.0
SUSPENSION_LIMIT_S = 3.0


def _until(predicate, timeout, what):
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` s (a limit)."""
    wait_until(predicate, timeout=timeout, message=what)


class _Documents:
    """Primary events and start uids of a session's runs, as the RunEngine emits them."""

    def __init__(self, RE):
        self.primary_seq: list[int] = []
        self.uids: list[str] = []
        self._primary_descriptors: set[str] = set()
        RE.subscribe(self)

    def __call__(self, name, doc):
        if name == "start":
            self.uids.append(doc["uid"])
        elif name == "descriptor" and doc["name"] == "primary":
            self._primary_descriptors.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self._primary_descriptors:
            self.primary_seq.append(doc["seq_num"])


def _tomo(session, num_projections=40):
    d = session.devices
    d["sample"].theta.velocity.set(180).wait(10)
    return session.plans["tomo_scan"](
        d["camera"], d["sample"], d["shutter"], num_projections=num_projections,
        exposure_s=0.05, num_darks=2, num_flats=2, flat_policy="start",
    )  # fmt: skip


def _in_thread(steps):
    """Run ``steps()`` (the fault injection) beside the RunEngine, which needs the main
    thread; returns the thread and a dict of what ``steps`` recorded (and its ``error``)."""
    record = {}

    def target():
        try:
            steps(record)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            record["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, record


def _stopped_run(session, uid):
    assert session.catalog.drain(60)
    run = session.catalog.run(uid)
    return run, run.metadata["stop"]


def test_txm_ioc_killed_mid_scan_fails_within_the_disconnect_limit(
    ca_port_pool, tmp_path_factory, data_dir
):
    """SIGKILL the TXM IOC during a tomo_scan, default suspenders on (the ring IOC lives on):
    the run ends `fail` within the disconnect limit; the frames before the kill are readable."""
    options = {"disconnect_timeout_s": DISCONNECT_LIMIT_S}
    with txm_session(
        ca_port_pool, tmp_path_factory, "kill", TXM_ARGS, data_dir=data_dir, **options
    ) as (
        session,
        running,
    ):
        docs = _Documents(session.RE)
        thread, killed = _kill_when(lambda: len(docs.primary_seq) >= 5, running.pid)
        with pytest.raises(Exception) as excinfo:
            session.RE(_tomo(session))
        ended = time.monotonic()
        thread.join(1)
        assert "t" in killed, "the TXM IOC was not killed during the scan"
        elapsed = ended - killed["t"]
        print(f"TXM kill-to-fail: {elapsed:.2f} s ({excinfo.value!r})")
        # Moves on the dead IOC fail on their own (~2 s); the watchdog bounds the rest.
        assert (
            elapsed < DISCONNECT_LIMIT_S + CLEANUP_MARGIN_S
        )  # the limit, plus cleanup on a loaded machine
        assert not any(s.tripped for s in session.RE.suspenders)  # the beam never went
        run, stop = _stopped_run(session, docs.uids[0])
        print(f"stop reason: {stop['reason']}")
        assert stop["exit_status"] == "fail" and stop["reason"]
        frames = np.asarray(run["primary"].read()["camera_image"])
        assert 5 <= frames.shape[0] == len(set(docs.primary_seq))
        assert frames.sum() > 0


def _ring_controls(running):
    from ophyd import EpicsSignal, EpicsSignalRO

    controls = {
        "dump": EpicsSignal(f"{running.ring.prefix}ring:dump", name="ring_dump"),
        "inject": EpicsSignal(f"{running.ring.prefix}ring:inject", name="ring_inject"),
        "txm_sees": EpicsSignalRO(f"{running.prefix}beam:ring_current", name="txm_ring_current"),
    }
    for control in controls.values():
        control.wait_for_connection(timeout=10)
    return controls


def test_beam_dump_on_the_ring_ioc_suspends_and_resumes(ca_port_pool, tmp_path_factory, data_dir):
    """Dump the beam (ring IOC) during a tomo_scan: the run suspends, the TXM sees no beam;
    refill: it resumes and succeeds with every projection once."""
    options = {"max_suspension_s": 120.0}  # a failing refill ends the run, not in 30 min
    with txm_session(
        ca_port_pool, tmp_path_factory, "dump", TXM_ARGS, data_dir=data_dir, **options
    ) as (
        session,
        running,
    ):
        ring = _ring_controls(running)
        (suspender,) = session.RE.suspenders
        docs = _Documents(session.RE)

        def dump_and_refill(record):
            _until(lambda: len(docs.primary_seq) >= 5, 30, "5 projections")
            ring["dump"].put(1)
            _until(lambda: suspender.tripped, 10, "the suspension")
            # The TXM renders with the ring's current: no beam, dark frames.
            _until(lambda: ring["txm_sees"].get() == 0.0, 10, "the TXM to see the dump")
            record["at_dump"] = len(docs.primary_seq)
            time.sleep(1.0)  # the outage itself (not a synchronisation)
            record["after_outage"] = len(docs.primary_seq)

        def refill_after(record):  # always: the run would otherwise wait for the beam
            try:
                dump_and_refill(record)
            finally:
                ring["inject"].put(1)

        thread, record = _in_thread(refill_after)
        session.RE(_tomo(session, num_projections=30))
        thread.join(10)
        assert "error" not in record, record
        # Nothing recorded while there was no beam, but the point in flight at the dump.
        assert record["after_outage"] <= record["at_dump"] + 1
        _, stop = _stopped_run(session, docs.uids[0])
        assert stop["exit_status"] == "success"
        assert sorted(set(docs.primary_seq)) == list(range(1, 31))
        assert ring["txm_sees"].get() == 400.0


def test_beam_outage_longer_than_the_limit_fails_the_run(ca_port_pool, tmp_path_factory, data_dir):
    """Dump the beam and never refill: the run ends `fail` once suspended for the limit,
    with the reason in its stop document and the frames before the dump readable."""
    options = {"max_suspension_s": SUSPENSION_LIMIT_S}
    with txm_session(
        ca_port_pool, tmp_path_factory, "outage", TXM_ARGS, data_dir=data_dir, **options
    ) as (
        session,
        running,
    ):
        ring = _ring_controls(running)
        docs = _Documents(session.RE)

        def dump(record):
            _until(lambda: len(docs.primary_seq) >= 5, 30, "5 projections")
            ring["dump"].put(1)
            record["t"] = time.monotonic()

        thread, record = _in_thread(dump)
        with pytest.raises(SuspendedTooLongError) as excinfo:
            session.RE(_tomo(session))
        elapsed = time.monotonic() - record["t"]
        thread.join(1)
        print(f"dump-to-fail: {elapsed:.2f} s ({excinfo.value!r})")
        assert (
            SUSPENSION_LIMIT_S <= elapsed < SUSPENSION_LIMIT_S + CLEANUP_MARGIN_S
        )  # + cleanup, loaded
        run, stop = _stopped_run(session, docs.uids[0])
        assert stop["exit_status"] == "fail" and "suspended for" in stop["reason"]
        frames = np.asarray(run["primary"].read()["camera_image"])
        assert frames.shape[0] == len(set(docs.primary_seq)) >= 5


def test_txm_ioc_killed_during_a_beam_dump_fails_within_the_disconnect_limit(
    ca_port_pool, tmp_path_factory, data_dir
):
    """Dump the beam, then SIGKILL the TXM IOC while suspended: the plan waits for the beam
    and touches no dead channel, so only the watchdog can end it: `fail` within the limit."""
    options = {"disconnect_timeout_s": DISCONNECT_LIMIT_S}
    with txm_session(
        ca_port_pool, tmp_path_factory, "dumpkill", TXM_ARGS, data_dir=data_dir, **options
    ) as (
        session,
        running,
    ):
        ring = _ring_controls(running)
        (suspender,) = session.RE.suspenders
        docs = _Documents(session.RE)

        def dump_then_kill(record):
            _until(lambda: len(docs.primary_seq) >= 5, 30, "5 projections")
            ring["dump"].put(1)
            _until(lambda: suspender.tripped, 10, "the suspension")
            os.kill(running.pid, signal.SIGKILL)
            record["t"] = time.monotonic()

        thread, record = _in_thread(dump_then_kill)
        with pytest.raises(DeviceDisconnectedError) as excinfo:
            session.RE(_tomo(session))
        elapsed = time.monotonic() - record["t"]
        thread.join(1)
        print(f"kill-during-dump-to-fail: {elapsed:.2f} s ({excinfo.value!r})")
        assert DISCONNECT_LIMIT_S <= elapsed < DISCONNECT_LIMIT_S + CLEANUP_MARGIN_S
        run, stop = _stopped_run(session, docs.uids[0])
        assert stop["exit_status"] == "fail" and "disconnected for" in stop["reason"]
        frames = np.asarray(run["primary"].read()["camera_image"])
        assert frames.shape[0] == len(set(docs.primary_seq)) >= 5
