"""Loopback ports for started servers lie outside the kernel's ephemeral range."""

from __future__ import annotations

import socket

import pytest

from multiscope import ports


def test_a_free_port_is_below_the_ephemeral_range_and_bindable():
    low, _ = ports.ephemeral_range()
    chosen = {ports.free_port() for _ in range(20)}
    assert all(ports.LOWEST_PORT <= p < low for p in chosen)
    for p in chosen:
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", p))
            udp.bind(("127.0.0.1", p))


def test_a_bound_port_is_not_free():
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        assert not ports.port_is_free(tcp.getsockname()[1])


def test_excluded_ports_are_not_returned(monkeypatch):
    # Two candidate ports: excluding one leaves only the other (random picks of ~12000
    # candidates would pass without the exclusion).
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (ports.LOWEST_PORT + 2, 65535))
    first, second = ports.LOWEST_PORT, ports.LOWEST_PORT + 1
    assert {ports.free_port(exclude={first}) for _ in range(20)} == {second}
    with pytest.raises(RuntimeError, match="no free loopback port"):
        ports.free_port(exclude={first, second})


def test_a_kernel_range_with_no_room_below_uses_the_room_above(monkeypatch):
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 40000))
    assert ports.free_port() > 40000


def test_a_kernel_range_leaving_no_port_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))
    with pytest.raises(RuntimeError, match="leaves no port"):
        ports.free_port()
