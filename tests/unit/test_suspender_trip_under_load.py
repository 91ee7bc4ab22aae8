"""A suspender trips even when the RunEngine's loop is slow to answer (a loaded machine)."""

from __future__ import annotations

import threading
import time

from bluesky import RunEngine
from bluesky import plan_stubs as bps
from ophyd.sim import Signal
from waiting import wait_until

from multiscope.suspenders import SuspendFloorOrDisconnect


def test_a_trip_while_the_loop_is_busy_still_suspends_the_run():
    beam = Signal(name="beam", value=100.0)
    RE = RunEngine({})
    held = []

    def record_hold():
        held.append(time.monotonic())
        yield from bps.null()

    RE.install_suspender(SuspendFloorOrDisconnect(beam, 10.0, sleep=0.0, pre_plan=record_hold))
    errors = []

    def dump_while_the_loop_is_busy():
        try:
            wait_until(lambda: RE.state.is_running, timeout=10)
            # bluesky waits 0.1 s for the loop to make the suspender's event: keep it busy.
            RE._loop.call_soon_threadsafe(time.sleep, 0.5)
            beam.put(0.0)  # the trip, from this thread
            wait_until(lambda: held, timeout=20, message="the run was never suspended")
            beam.put(100.0)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=dump_while_the_loop_is_busy, daemon=True)
    thread.start()

    def plan():
        for _ in range(40):
            yield from bps.checkpoint()
            yield from bps.sleep(0.05)

    RE(plan())
    thread.join(10)
    assert not errors, errors
    assert held, "the run was never suspended"
