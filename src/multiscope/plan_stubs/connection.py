"""Plan stubs about device connections."""

import logging
import time
from collections.abc import Iterable

from bluesky import plan_stubs as bps

__all__ = ["wait_for_reconnection"]

logger = logging.getLogger(__name__)


def wait_for_reconnection(devices: Iterable, timeout: float = 30.0, poll: float = 0.1):
    """Wait (without blocking the RunEngine) until every device is connected again.

    After an IOC restart the beam-current channel can come back seconds before the
    other channels of the same IOC (channel searches back off up to 5 s). A
    suspender resuming on the beam alone would let the next trigger meet a channel
    that is still searching. Run this as the suspender's ``post_plan``.

    Parameters
    ----------
    devices : iterable of ophyd devices
        The devices that must be connected before the plan goes on.
    timeout : float
        Seconds to wait. After that the plan resumes anyway with a warning naming
        the devices still disconnected: a device the plan never uses must not fail
        it, and one it does use fails on its own finite timeout or, in a session,
        through the run watchdog (``disconnect_timeout_s``, the same limit).
    poll : float
        Seconds between checks.
    """
    devices = list(devices)
    deadline = time.monotonic() + timeout
    while True:
        missing = [device.name for device in devices if not device.connected]
        if not missing:
            return
        if time.monotonic() >= deadline:
            logger.warning(
                "Resuming although %s did not reconnect within %.0f s.", ", ".join(missing), timeout
            )
            return
        yield from bps.sleep(poll)
