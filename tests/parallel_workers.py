"""What a pytest-xdist worker changes in its environment so no other test process collides.

``tests/conftest.py`` applies :func:`worker_environment` when a worker starts (before
numba is imported or any server starts); the IOCs, catalog servers and commands the
worker starts inherit it. docs/testing.md explains the parallel mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from multiscope import ports

__all__ = ["worker_environment"]


def worker_environment(environ: Mapping[str, str], cache_root: Path) -> dict[str, str]:
    """Variables to set in worker ``gw<i>`` of N (``{}`` outside pytest-xdist).

    Ports: two workers choosing "free now" ports from one range can both pick a port
    before either binds it (an IOC's UDP search port is bound with SO_REUSEPORT, so
    two IOCs on one port silently split the searches). Worker ``i`` takes part ``i``
    of N disjoint parts of the range (the user's ``MULTISCOPE_PORT_RANGE`` or the room
    below the ephemeral range); ``multiscope sim start``'s fixed default ports are
    then not used either (:func:`multiscope.ports.range_permits`).

    numba: ``cache=True`` kernels are cached beside their source, one index per
    function. Two processes saving different signatures of one function at once can
    leave an index entry naming the other's machine code, which numba loads without
    a check. A cache per worker (``<cache_root>/numba-xdist-gw<i>``, kept between runs,
    or under the user's ``NUMBA_CACHE_DIR``) leaves only a worker and its own IOCs
    sharing one, as a serial run's test process and its IOCs do.

    Parameters
    ----------
    environ : mapping
        The worker's environment (``PYTEST_XDIST_WORKER``, ``PYTEST_XDIST_WORKER_COUNT``).
    cache_root : Path
        Where per-worker numba caches go unless ``NUMBA_CACHE_DIR`` is set.
    """
    worker = environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return {}
    count = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    given = environ.get(ports.PORT_RANGE_ENV)
    whole = ports.parse_range(given) if given else ports.allowed_range()
    part = ports.split_range(whole, int(worker.removeprefix("gw")), count)
    numba_root = Path(environ.get("NUMBA_CACHE_DIR") or cache_root)
    return {
        ports.PORT_RANGE_ENV: f"{part.start}-{part.stop - 1}",
        "NUMBA_CACHE_DIR": str(numba_root / f"numba-xdist-{worker}"),
    }
