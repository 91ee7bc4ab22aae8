"""Shared by every test directory: ``tests/`` is on ``sys.path`` (``from waiting import ...``).

pytest's default import mode puts the directory of this rootless conftest first on
``sys.path``, as it does ``tests/unit`` and ``tests/integration`` for their modules.

Run in parallel (``pytest -n 3 --dist loadfile``, docs/testing.md), each pytest-xdist
worker is one process with its own environment, set here before any test runs and
inherited by the IOCs, catalog servers and commands it starts: its own part of the
loopback ports (``MULTISCOPE_PORT_RANGE``) and its own numba cache. Every test
process, serial or not, has a default data directory of its own (``MULTISCOPE_DATA_DIR``).
"""

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from module_order import longest_modules_first
from parallel_workers import worker_environment

from multiscope import compat, config

# Every test data directory gets its own shared catalog server (decision 0015); a
# user's idles out after 10 min, a test's after this, so a suite leaves none behind.
os.environ.setdefault("MULTISCOPE_CATALOG_IDLE_S", "20")
# The launchers that fork catalog servers and IOCs (decision 0037) must outlive the gaps
# between a worker's modules, or each start pays their imports again (measured: 60
# launcher starts for 68 children with 20 s). Each worker stops its own at its end.
os.environ.setdefault("MULTISCOPE_LAUNCHER_IDLE_S", "600")
# A launcher directory per test process (and its subprocesses), apart from the user's
# and another checkout's tests; short, since a socket's path holds at most 107 bytes.
_CHECKOUT = hashlib.sha256(str(Path(__file__).parent).encode()).hexdigest()[:8]
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ["MULTISCOPE_LAUNCHER_DIR"] = str(
    Path(tempfile.gettempdir()) / f"multiscope-{os.getuid()}-tests-{_CHECKOUT}-{_WORKER}"
)


# As configure_session does, before any test's CA client context exists (a context's
# search-results thread keeps the loop it started with).
compat.keep_ca_client_searching()

# Before numba is imported (it reads NUMBA_CACHE_DIR then) and before any server starts.
os.environ.update(worker_environment(os.environ, Path(__file__).parents[1] / ".pytest_cache"))

# The simulators' packed tabs (sim_devices.physics.phantom.cached_tab), kept between
# runs beside the numba caches rather than in the user's ~/.cache. Written whole
# (renamed into place), so workers and their IOCs share one directory.
_TAB_CACHE = Path(__file__).parents[1] / ".pytest_cache" / "tab-cache"
os.environ.setdefault("MULTISCOPE_TAB_CACHE", str(_TAB_CACHE))


@pytest.fixture(scope="session", autouse=True)
def _default_data_dir(tmp_path_factory):
    """A test that gives no data directory (nor an IOC it starts) writes here, not to the
    user's data directory (a PFIB-SEM IOC without ``--state-file`` keeps its state
    under ``<data dir>/sim``)."""
    os.environ[config.DATA_DIR_ENV] = str(tmp_path_factory.mktemp("default-data-dir"))


# make_fake_device swaps EpicsSignal and EpicsSignalRO for fakes; a refusable setting
# (an EpicsSignal that explains refusals) is faked as a plain fake EpicsSignal.
from ophyd.sim import FakeEpicsSignal, fake_device_cache  # noqa: E402

from multiscope.devices.process import RefusableSignal  # noqa: E402


class FakeRefusableSignal(FakeEpicsSignal):
    """A fake :class:`RefusableSignal`: no instrument, so no refusal."""

    def __init__(self, read_pv, *, message_pv=None, **kwargs):
        super().__init__(read_pv, **kwargs)


fake_device_cache[RefusableSignal] = FakeRefusableSignal


def pytest_collection_modifyitems(items):
    """Longest modules first, so that none runs on alone at the end (tests/module_order.py)."""
    longest_modules_first(items)


def pytest_collection_finish(session):
    """Move everything the imports made into the permanent GC generation.

    The suite is CPU-bound (docs/testing.md). Each test process holds millions of
    objects from importing tiled, dask, numba and bluesky; every full collection
    walked them all again. Objects made by imports are never garbage, so frozen they
    cost nothing. Objects the tests make are collected as usual.
    """
    import gc

    gc.collect()
    gc.freeze()


def pytest_sessionfinish(session):
    """Stop the launchers of this process and its subprocesses (decision 0037).

    They are in this process's own launcher directory (set above), whatever their
    keys; their children have ended by now.
    """
    from multiscope import launcher

    launcher.stop_all()
