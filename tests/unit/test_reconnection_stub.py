"""The suspender's post-plan waits for devices to reconnect, finitely."""

import logging
import time

from bluesky import RunEngine

from multiscope.plan_stubs.connection import wait_for_reconnection


class _Device:
    def __init__(self, name, connect_at):
        self.name = name
        self._connect_at = connect_at

    @property
    def connected(self):
        return time.monotonic() >= self._connect_at


def test_waits_until_every_device_is_connected():
    RE = RunEngine({}, call_returns_result=True)
    start = time.monotonic()
    devices = [_Device("beam", start), _Device("cam", start + 0.5)]
    RE(wait_for_reconnection(devices, timeout=5.0, poll=0.05))
    waited = time.monotonic() - start
    assert 0.5 <= waited < 2.0


def test_gives_up_after_timeout_with_a_warning(caplog):
    RE = RunEngine({}, call_returns_result=True)
    start = time.monotonic()
    devices = [_Device("cam", start + 3600)]
    with caplog.at_level(logging.WARNING, logger="multiscope.plan_stubs.connection"):
        RE(wait_for_reconnection(devices, timeout=0.3, poll=0.05))
    assert time.monotonic() - start < 2.0
    assert "cam did not reconnect" in caplog.text
