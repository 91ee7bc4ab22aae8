"""Process-wide settings shared by every layer: data directory, Channel Access, OpenMP.

Nothing here contacts hardware; the functions only read and write environment
variables and paths, so any layer may import this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import platformdirs

__all__ = [
    "DATA_DIR_ENV",
    "data_dir",
    "ca_client_environment",
    "ca_server_environment",
    "apply_ca_client_environment",
    "prefer_passive_openmp_wait",
]

DATA_DIR_ENV = "MULTISCOPE_DATA_DIR"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Return the data directory, creating it if needed.

    Order of precedence: ``explicit`` (``--data-dir``), then the
    ``MULTISCOPE_DATA_DIR`` environment variable, then the user's data directory.
    """
    chosen = explicit or os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("multiscope")
    path = Path(chosen).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        # mkdir's own words ("[Errno 17] File exists") do not say what is wrong.
        in_the_way = next(p for p in (path, *path.parents) if p.exists() and not p.is_dir())
        raise NotADirectoryError(
            f"data directory {path}: {in_the_way} is a file, not a directory; "
            "give a directory (new or existing)"
        ) from None
    return path


def ca_server_environment(port: int) -> dict[str, str]:
    """EPICS variables that make a caproto IOC serve on loopback only, on its own port.

    UDP search and TCP use the same port number; every IOC needs a unique one
    because UDP is bound with SO_REUSEPORT and two IOCs on one port silently
    split the search traffic (docs/stack-facts.md).
    """
    return {
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CAS_SERVER_PORT": str(port),
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        # Monitor bursts are batched this long; 1 ms doubles a polled positioner scan's rate.
        "CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC": "0.0002",
        # Readers (live callbacks, tiled) open HDF5 files the IOC is still writing.
        "HDF5_USE_FILE_LOCKING": "FALSE",
    }


def ca_client_environment(ports: Iterable[int]) -> dict[str, str]:
    """EPICS variables for a client that searches only the given loopback IOC ports."""
    ports = sorted(set(int(p) for p in ports))
    return {
        "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in ports) or "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "HDF5_USE_FILE_LOCKING": "FALSE",
    }


def apply_ca_client_environment(env: Mapping[str, str]) -> None:
    """Set client EPICS variables in this process.

    Channel Access clients read them once, when the first context is created,
    so call this before any ophyd signal connects.
    """
    os.environ.update(env)


def prefer_passive_openmp_wait() -> None:
    """Let idle OpenMP threads sleep, not spin: ``OMP_WAIT_POLICY=PASSIVE`` unless set.

    numba's parallel kernels run on OpenMP threads, which by default spin after each
    parallel region. On a machine shared with IOCs and other processes a spinning
    thread holds the core its partner needs, and every region then waits for the
    scheduler: on a loaded 2-core machine a 128 x 128 kernel of ``xanes_align`` took
    8-24 ms per call instead of 0.2-0.6 ms. OpenMP reads the variable when numba
    starts its threads (the first parallel call), so this runs at import of the
    modules that hold parallel kernels; a value set by the user is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
