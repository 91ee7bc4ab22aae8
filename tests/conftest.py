"""Shared by every test directory: ``tests/`` is on ``sys.path`` (``from waiting import ...``).

pytest's default import mode puts the directory of this rootless conftest first on
``sys.path``, as it does ``tests/unit`` and ``tests/integration`` for their modules.
"""

import os

# Every test data directory gets its own shared catalog server (decision 0015); a
# user's idles out after 10 min, a test's after this, so a suite leaves none behind.
os.environ.setdefault("MULTISCOPE_CATALOG_IDLE_S", "20")

# make_fake_device swaps EpicsSignal and EpicsSignalRO for fakes; a refusable setting
# (an EpicsSignal that explains refusals) is faked as a plain fake EpicsSignal.
from ophyd.sim import FakeEpicsSignal, fake_device_cache  # noqa: E402

from multiscope.devices.process import RefusableSignal  # noqa: E402


class FakeRefusableSignal(FakeEpicsSignal):
    """A fake :class:`RefusableSignal`: no instrument, so no refusal."""

    def __init__(self, read_pv, *, message_pv=None, **kwargs):
        super().__init__(read_pv, **kwargs)


fake_device_cache[RefusableSignal] = FakeRefusableSignal
