"""RunWatchdog: a run stuck on a dead device or a long suspension ends as `fail` in time."""

import threading
import time

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from ophyd import Device
from ophyd.sim import Signal, det
from ophyd.status import DeviceStatus
from waiting import wait_until

from multiscope.suspenders import (
    DeviceDisconnectedError,
    RunWatchdog,
    SuspendedTooLongError,
    SuspendFloorOrDisconnect,
)


class Unplugged(Device):
    """A device whose `connected` a test switches and whose trigger never finishes."""

    def __init__(self, name):
        super().__init__(name=name)
        self.plugged = True

    @property
    def connected(self):
        return self.plugged

    def trigger(self):
        return DeviceStatus(self)  # never done: as a camera whose IOC died mid-exposure


def _collect(RE):
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def _stop_doc(docs):
    (stop,) = [doc for name, doc in docs if name == "stop"]
    return stop


def _when(predicate, action, timeout=10.0):
    """Run ``action`` in a thread once ``predicate()`` holds (polled; the deadline is a limit)."""

    def watch():
        wait_until(predicate, timeout=timeout, interval=0.005)  # fails the thread, not the test
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_disconnected_device_fails_a_blocked_run_within_the_limit():
    device = Unplugged("cam")
    RE = RunEngine({})
    RunWatchdog(disconnect_timeout_s=0.5, poll_s=0.05).install(RE)
    docs = _collect(RE)
    unplugged = {}

    def unplug():
        unplugged["t"] = time.monotonic()
        device.plugged = False

    def plan():
        yield from bps.trigger(det, wait=True)
        yield from bps.trigger(device, wait=True)  # hangs: the IOC is gone

    _when(lambda: any(name == "start" for name, _ in docs), unplug)
    with pytest.raises(DeviceDisconnectedError, match="cam disconnected"):
        RE(bpp.run_wrapper(plan()))
    elapsed = time.monotonic() - unplugged["t"]
    assert 0.5 <= elapsed < 5.0  # the limit, not before; then the poll and cleanup (loaded CI)
    stop = _stop_doc(docs)
    assert stop["exit_status"] == "fail" and "cam disconnected" in stop["reason"]
    assert RE.state == "idle"


def test_devices_the_plan_does_not_use_and_ignored_devices_do_not_fail_it():
    unused, ignored = Unplugged("unused"), Unplugged("beam")
    unused.plugged = ignored.plugged = False
    RE = RunEngine({})
    RunWatchdog(disconnect_timeout_s=0.1, poll_s=0.02, ignore=[ignored]).install(RE)
    docs = _collect(RE)

    def plan():
        yield from bps.read(ignored)
        for _ in range(10):
            yield from bps.trigger_and_read([det])
            yield from bps.sleep(0.05)

    RE(bpp.run_wrapper(plan()))
    assert _stop_doc(docs)["exit_status"] == "success"


def _counts(n=40):
    for _ in range(n):
        yield from bps.checkpoint()
        yield from bps.trigger_and_read([det])
        yield from bps.sleep(0.02)


def test_short_suspension_resumes_and_long_one_fails_the_run():
    current = Signal(name="ring_current", value=400.0)
    RE = RunEngine({})
    RE.install_suspender(SuspendFloorOrDisconnect(current, 10.0, sleep=0.05))
    RunWatchdog(max_suspension_s=1.0, poll_s=0.05).install(RE)
    docs = _collect(RE)
    events = lambda: sum(name == "event" for name, _ in docs)  # noqa: E731

    def dump_and_refill():
        current.put(0.0)
        time.sleep(0.3)  # the outage itself, shorter than the limit
        current.put(400.0)

    _when(lambda: events() >= 5, dump_and_refill)
    RE(bpp.run_wrapper(_counts()))
    assert _stop_doc(docs)["exit_status"] == "success"

    docs.clear()
    dumped = {}

    def dump():
        dumped["t"] = time.monotonic()
        current.put(0.0)

    _when(lambda: events() >= 5, dump)
    with pytest.raises(SuspendedTooLongError, match="suspended for"):
        RE(bpp.run_wrapper(_counts()))
    elapsed = time.monotonic() - dumped["t"]
    assert 1.0 <= elapsed < 6.0  # the limit, not before; then the poll and cleanup (loaded CI)
    stop = _stop_doc(docs)
    assert stop["exit_status"] == "fail" and "below" in stop["reason"]
    # The run failed inside bluesky's suspension (which turns rewinding off until the
    # beam is back): the watchdog turns it on again, or later pauses would replay nothing.
    wait_until(lambda: RE.rewindable, timeout=10, message="RE.rewindable restored")
