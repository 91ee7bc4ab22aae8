"""The test harness's port pool and its clean-up of ended IOCs' channel searches."""

from __future__ import annotations

import os
import uuid

from ioc_ports import IOCTracker, PortPool, cancel_searches
from waiting import wait_until

from multiscope import simctl


def test_pool_hands_out_fresh_ports_then_recycled_ones():
    pool = PortPool([30001, 30002])
    assert next(pool) == 30001
    pool.recycle(30001)
    pool.recycle(40000)  # not reserved: never handed out
    assert [next(pool), next(pool), next(pool, None)] == [30002, 30001, None]


def test_cancelled_searches_are_no_longer_sent():
    """caproto re-sends every unanswered search on each new one; cancelled names leave."""
    from caproto.threading.pyepics_compat import PV

    context = PV.default_context() if hasattr(PV, "default_context") else PV._default_context
    gone, kept = f"Tgone{uuid.uuid4().hex[:6]}:", f"Tkept{uuid.uuid4().hex[:6]}:"
    context.get_pvs(*(f"{p}x{i}" for p in (gone, kept) for i in range(3)))

    def searched() -> set[str]:
        with context.broadcaster._search_lock:
            return {item[0] for item in context.broadcaster.unanswered_searches.values()}

    wait_until(lambda: {f"{gone}x0", f"{kept}x0"} <= searched(), timeout=10)
    assert cancel_searches([gone]) == 3
    assert not any(name.startswith(gone) for name in searched())
    assert sum(name.startswith(kept) for name in searched()) == 3
    cancel_searches([kept])


def test_tracker_recycles_the_port_of_an_ended_ioc(monkeypatch):
    """Only an IOC that is not running gives its port back."""
    pool = PortPool([30001, 30002])
    tracker = IOCTracker(pool)
    alive = {"running": True, "ended": False}

    def start(name, *, prefix, port, log_dir, extra_args=()):
        return simctl.IOCProcess(name, prefix, port, os.getpid(), "", name)

    monkeypatch.setattr(simctl, "is_alive", lambda ioc: alive[ioc.name])
    start_tracked = tracker.track(start)
    start_tracked("running", prefix="A:", port=next(pool), log_dir="")
    start_tracked("ended", prefix="B:", port=next(pool), log_dir="")
    assert next(pool, None) is None
    assert [ioc.name for ioc in tracker.forget_ended()] == ["ended"]
    assert next(pool) == 30002
    assert tracker.forget_ended() == []


def test_ended_iocs_stop_being_searched_and_a_restart_searches_again(monkeypatch):
    """After a test: an ended IOC's channels leave the searches, its port stays taken;
    started again on its prefix (a restart in a later test), they are searched again."""
    from caproto.threading.pyepics_compat import PV

    context = PV.default_context() if hasattr(PV, "default_context") else PV._default_context
    prefix = f"Tback{uuid.uuid4().hex[:6]}:"
    names = {f"{prefix}x{i}" for i in range(2)}
    context.get_pvs(*sorted(names))

    def searched() -> set[str]:
        with context.broadcaster._search_lock:
            return {item[0] for item in context.broadcaster.unanswered_searches.values()}

    wait_until(lambda: names <= searched(), timeout=10)
    tracker = IOCTracker(PortPool([30001]))
    alive = {"ioc": True}
    monkeypatch.setattr(simctl, "is_alive", lambda ioc: alive["ioc"])

    def start(name, *, prefix, port, log_dir, extra_args=()):
        return simctl.IOCProcess(name, prefix, port, os.getpid(), "", name)

    start_tracked = tracker.track(start)
    start_tracked("ioc", prefix=prefix, port=next(tracker.pool), log_dir="")
    tracker.stop_searching_ended()  # still running: its channels are still searched
    assert names <= searched()
    alive["ioc"] = False
    tracker.stop_searching_ended()
    assert not names & searched()
    assert next(tracker.pool, None) is None  # the port is kept for a restart
    alive["ioc"] = True
    start_tracked("ioc", prefix=prefix, port=30001, log_dir="")
    wait_until(lambda: names <= searched(), timeout=10)
    cancel_searches([prefix])
