"""caproto's CA client keeps connecting after its threads met an error (multiscope.compat).

caproto 1.3 opens circuits in its client's search-results thread, which a failure
ended for good: an IOC that did not answer within 2 s (a loaded machine) or went away
between its search reply and the connect left every later channel "searching". A
parallel test worker once lost all its connections this way part-way through a run.
Its "retry" thread, which sends every search request, ends alike on any error; in CI
a ``KeyError`` from ``dict(os.environ)`` racing a removed variable ended it, and every
later channel of that worker stayed "searching".
"""

from __future__ import annotations

import pytest

from multiscope import compat

pytestmark = pytest.mark.integration


def test_a_circuit_that_failed_to_open_is_tried_again(demo_ioc, monkeypatch):
    from caproto import CaprotoTimeoutError
    from caproto.threading import client

    compat.survive_circuit_failures()
    open_circuit = client.Context.get_circuit_manager
    failed = []

    def fail_first(context, address, priority):
        if not failed:
            failed.append(address)
            raise CaprotoTimeoutError(f"Circuit with server at {address} did not connect")
        return open_circuit(context, address, priority)

    monkeypatch.setattr(client.Context, "get_circuit_manager", fail_first)
    context = client.Context()
    try:
        (first,) = context.get_pvs(demo_ioc.prefix + "m1.RBV")
        first.wait_for_connection(timeout=30)
        (later,) = context.get_pvs(demo_ioc.prefix + "m1.VAL")
        later.wait_for_connection(timeout=30)
        assert failed == [first.circuit_manager.circuit.address]
        assert later.read().data.size == 1
    finally:
        context.disconnect()


def test_searches_go_out_after_sending_them_failed(demo_ioc):
    import threading

    from caproto.threading import client

    compat.survive_search_retry_failures()
    broadcaster = client.SharedBroadcaster()
    send = broadcaster.send
    failed = []

    def fail_first_from_the_retry_thread(*commands):
        if not failed and threading.current_thread().name == "retry":
            failed.append(commands)
            # What caproto's dict(os.environ) raises when a variable goes meanwhile.
            raise KeyError("A_VARIABLE_REMOVED_MEANWHILE")
        return send(*commands)

    broadcaster.send = fail_first_from_the_retry_thread
    context = client.Context(broadcaster)
    try:
        (first,) = context.get_pvs(demo_ioc.prefix + "m1.RBV")
        first.wait_for_connection(timeout=30)
        (later,) = context.get_pvs(demo_ioc.prefix + "m1.VAL")
        later.wait_for_connection(timeout=30)
        assert failed, "the retry thread never sent a search"
        assert broadcaster._retry_unanswered_searches_thread.is_alive()
        assert later.read().data.size == 1
    finally:
        context.disconnect()
        broadcaster.disconnect()
