"""Loopback ports for started servers lie outside the kernel's ephemeral range."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from parallel_workers import worker_environment

from multiscope import ports, simctl


@pytest.fixture
def no_port_range(monkeypatch):
    """The default range (a parallel run's worker has its own MULTISCOPE_PORT_RANGE)."""
    monkeypatch.delenv(ports.PORT_RANGE_ENV, raising=False)


def test_a_free_port_is_below_the_ephemeral_range_and_bindable(no_port_range):
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


def test_excluded_ports_are_not_returned(monkeypatch, no_port_range):
    # Two candidate ports: excluding one leaves only the other (random picks of ~12000
    # candidates would pass without the exclusion).
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (ports.LOWEST_PORT + 2, 65535))
    first, second = ports.LOWEST_PORT, ports.LOWEST_PORT + 1
    assert {ports.free_port(exclude={first}) for _ in range(20)} == {second}
    with pytest.raises(RuntimeError, match="no free loopback port"):
        ports.free_port(exclude={first, second})


def test_a_kernel_range_with_no_room_below_uses_the_room_above(monkeypatch, no_port_range):
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 40000))
    assert ports.free_port() > 40000


def test_a_kernel_range_leaving_no_port_is_a_clear_error(monkeypatch, no_port_range):
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))
    with pytest.raises(RuntimeError, match="leaves no port"):
        ports.free_port()


def test_a_given_range_confines_every_chosen_port(monkeypatch):
    monkeypatch.setenv(ports.PORT_RANGE_ENV, "21000-21004")
    assert ports.allowed_range() == range(21000, 21005)
    assert {ports.free_port() for _ in range(50)} <= set(range(21000, 21005))
    assert ports.range_permits(21004) and not ports.range_permits(21005)
    assert not ports.range_permits(5070)  # a fixed default port too
    with pytest.raises(RuntimeError, match="no free loopback port in 21000-21004"):
        ports.free_port(exclude=set(range(21000, 21005)))


def test_without_a_given_range_fixed_ports_are_permitted(no_port_range):
    assert ports.range_permits(5070)


@pytest.mark.parametrize("text", ["20000", "a-b", "21000-20000", "80-90", "60000-70000"])
def test_a_malformed_range_is_a_clear_error(monkeypatch, text):
    monkeypatch.setenv(ports.PORT_RANGE_ENV, text)
    with pytest.raises(ValueError, match=ports.PORT_RANGE_ENV):
        ports.free_port()


def test_worker_parts_are_disjoint_and_cover_the_range_equally():
    whole = range(20000, 32768)
    parts = [ports.split_range(whole, i, 3) for i in range(3)]
    assert [len(p) for p in parts] == [4256] * 3
    assert all(a.stop <= b.start for a, b in zip(parts, parts[1:], strict=False))
    assert parts[0].start == whole.start and parts[-1].stop <= whole.stop
    with pytest.raises(ValueError, match="does not exist"):
        ports.split_range(whole, 3, 3)
    with pytest.raises(ValueError, match="parts of"):
        ports.split_range(range(20000, 20150), 0, 2)


def test_each_xdist_worker_gets_its_own_ports_and_numba_cache(tmp_path, no_port_range):
    base = {"PYTEST_XDIST_WORKER_COUNT": "3"}
    envs = [worker_environment({**base, "PYTEST_XDIST_WORKER": f"gw{i}"}, tmp_path)
            for i in range(3)]  # fmt: skip
    parts = [ports.parse_range(env[ports.PORT_RANGE_ENV]) for env in envs]
    assert all(a.stop <= b.start for a, b in zip(parts, parts[1:], strict=False))
    assert all(len(p) >= 4000 and p.stop <= ports.ephemeral_range()[0] for p in parts)
    assert len({env["NUMBA_CACHE_DIR"] for env in envs}) == 3
    assert envs[1]["NUMBA_CACHE_DIR"] == str(tmp_path / "numba-xdist-gw1")
    # A range and a cache the user gave are split, not replaced.
    given = {**base, "PYTEST_XDIST_WORKER": "gw2", ports.PORT_RANGE_ENV: "40000-40899",
             "NUMBA_CACHE_DIR": "/cache"}  # fmt: skip
    env = worker_environment(given, tmp_path)
    assert env == {ports.PORT_RANGE_ENV: "40600-40899", "NUMBA_CACHE_DIR": "/cache/numba-xdist-gw2"}
    assert worker_environment({}, tmp_path) == {}  # a serial run changes nothing


def test_this_process_has_the_ports_and_numba_cache_of_its_worker():
    """tests/conftest.py applied worker_environment before numba read its configuration."""
    from numba.core import config as numba_config

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        assert ports.PORT_RANGE_ENV in os.environ
        assert Path(numba_config.CACHE_DIR).name == f"numba-xdist-{worker}"
    else:
        assert "numba-xdist" not in numba_config.CACHE_DIR


def test_sim_start_leaves_a_default_port_outside_the_given_range(monkeypatch, tmp_path):
    """Two workers would both find DEMO's default 5070 free and start on it."""
    monkeypatch.setenv(ports.PORT_RANGE_ENV, "21000-21099")
    started = []

    def fake_start_ioc(name, *, prefix, port, log_dir, extra_args=()):
        started.append(port)
        return simctl.IOCProcess(name, prefix, port, os.getpid(), str(tmp_path / "log"), "m")

    monkeypatch.setattr(simctl, "start_ioc", fake_start_ioc)
    monkeypatch.setattr(simctl, "wait_until_ready", lambda *args, **kwargs: 0.0)
    monkeypatch.setattr(simctl, "port_is_free", lambda port: True)  # 5072 may be in use here
    simctl.start(["demo"], tmp_path)
    simctl.start(["ring"], tmp_path, ports={"ring": 5072})  # one given explicitly is kept
    assert started[0] in range(21000, 21100) and started[1] == 5072
