"""caproto's CA client keeps connecting after a circuit failed to open (multiscope.compat).

caproto 1.3 opens circuits in its client's search-results thread, which a failure
ended for good: an IOC that did not answer within 2 s (a loaded machine) or went away
between its search reply and the connect left every later channel "searching". A
parallel test worker once lost all its connections this way part-way through a run.
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
