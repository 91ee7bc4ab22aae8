"""Fixtures that run the demo IOC as a subprocess and point CA clients at it.

CA clients read ``EPICS_CA_ADDR_LIST`` once, when the first client context is
created, so every port an IOC of this test session may use is reserved up front
(a pool) and put in the address list before any ophyd signal exists. After every
test the client stops searching for the channels of ended IOCs, and between test
modules their ports go back to the pool (``tests/ioc_ports.py``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from ioc_ports import IOCTracker, PortPool

from multiscope import catalog_server, config, simctl

# The IOCs running at once take one each (a restart reuses its port); the ports of
# ended IOCs are handed out again from the next test module on.
PORT_POOL_SIZE = 64


@dataclass
class RunningIOC:
    """What a test needs to know about a started IOC."""

    prefix: str
    port: int
    pid: int
    log_path: str
    ring: RunningIOC | None = None  # the ring IOC a TXM reads its beam current from
    state_file: Path | None = None  # an IOC that keeps state across restarts (PFIB-SEM)
    extra_args: list | None = None  # its options, for a restart
    log_dir: Path | None = None


def _distinct_free_ports(n: int) -> list[int]:
    # Below the ephemeral range (multiscope.ports): a pooled port may be bound
    # twenty minutes after it was chosen, and no client connection takes it meanwhile.
    ports: list[int] = []
    while len(ports) < n:
        ports.append(simctl.free_port(exclude=set(ports)))
    return ports


@pytest.fixture(scope="session")
def ioc_tracker():
    """Reserve ports, configure the CA client environment, select ophyd's caproto layer.

    Yields the :class:`ioc_ports.IOCTracker` of every IOC ``simctl.start_ioc`` starts.
    """
    ports = _distinct_free_ports(PORT_POOL_SIZE)
    config.apply_ca_client_environment(config.ca_client_environment(ports))
    os.environ["OPHYD_CONTROL_LAYER"] = "caproto"
    import ophyd

    ophyd.set_cl("caproto")
    tracker = IOCTracker(PortPool(ports))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simctl, "start_ioc", tracker.track(simctl.start_ioc))
        yield tracker


@pytest.fixture(scope="session")
def ca_port_pool(ioc_tracker) -> PortPool:
    """The reserved CA ports: ``next(ca_port_pool)`` for an IOC to start."""
    return ioc_tracker.pool


@pytest.fixture(scope="module", autouse=True)
def _forget_ended_iocs(ioc_tracker):
    """Recycle the ports of the IOCs earlier modules ended; stop searching their channels."""
    ioc_tracker.forget_ended()


@pytest.fixture(autouse=True)
def _stop_searching_ended_iocs(ioc_tracker):
    """After each test, stop searching for the channels of the IOCs that have ended."""
    yield
    ioc_tracker.stop_searching_ended()


def start_sim_ioc(
    pool, log_dir: Path, name: str = "demo", extra_args=(), timeout: float = 30.0
) -> tuple[RunningIOC, simctl.IOCProcess]:
    """Start simulated IOC ``name`` on the next pooled port under a unique prefix."""
    port = next(pool, None)
    if port is None:
        raise RuntimeError(f"all {PORT_POOL_SIZE} reserved CA ports are used: raise PORT_POOL_SIZE")
    prefix = f"T{uuid.uuid4().hex[:6]}:"
    ioc = simctl.start_ioc(name, prefix=prefix, port=port, log_dir=log_dir, extra_args=extra_args)
    try:
        simctl.wait_until_ready(ioc, timeout=timeout)
    except Exception:
        simctl.stop_ioc(ioc.pid)
        raise
    return RunningIOC(prefix, port, ioc.pid, ioc.log_path), ioc


def start_txm_with_ring(pool, log_dir: Path, extra_args=()):
    """Start a ring IOC and a TXM IOC reading its beam current from it (as `sim start txm`).

    Returns the TXM's :class:`RunningIOC` (``.ring`` is the ring's) and both processes.
    """
    ring, ring_process = start_sim_ioc(pool, log_dir, "ring")
    try:
        link = simctl.link_args("txm", {"ring": ring_process})
        txm, txm_process = start_sim_ioc(pool, log_dir, "txm", extra_args=[*extra_args, *link])
    except Exception:
        simctl.stop_ioc(ring_process.pid)
        raise
    txm.ring = ring
    return txm, (txm_process, ring_process)


def _start_catalog_server(tmp_path_factory, name: str, options: dict) -> Path:
    """The session's data directory (``data_dir=`` or ``<name>-data``), its catalog server starting.

    As ``multiscope sim start`` does: the server starts while the IOCs do, and the
    session's ``configure_session`` waits for it to answer.
    """
    data_dir = options.pop("data_dir", None) or tmp_path_factory.mktemp(f"{name}-data")
    if not (options.get("catalog_uri") or os.environ.get("MULTISCOPE_CATALOG_URI")):
        catalog_server.start_in_background(data_dir)
    return data_dir


def shared_data_dir(tmp_path_factory, name: str) -> Path:
    """A data directory for all of a module's sessions (``data_dir=``), its catalog server starting.

    The module's sessions share its catalog server, as an IPython session and
    ``multiscope catalog`` share one: the module pays the server's start-up (~4 s of CPU,
    ``docs/testing.md``) once, not once per test. Each test finds its own runs by uid.
    """
    return _start_catalog_server(tmp_path_factory, name, {})


@contextlib.contextmanager
def txm_session(pool, tmp_path_factory, name: str, extra_args=(), **options):
    """A TXM session on its own simulated TXM and ring IOCs; closed and stopped after.

    Yields ``(session, running TXM IOC)`` (``.ring``: the ring IOC); logs and data go to
    ``<name>-logs`` / ``<name>-data`` (or ``data_dir=``, shared with another session).
    ``options`` go to ``configure_session``.
    """
    from multiscope.session import configure_session

    data_dir = _start_catalog_server(tmp_path_factory, name, options)
    running, processes = start_txm_with_ring(
        pool, tmp_path_factory.mktemp(f"{name}-logs"), extra_args
    )
    session = None
    try:
        session = configure_session(
            {},
            "txm",
            data_dir=data_dir,
            prefix=running.prefix,
            beam_prefix=running.ring.prefix,
            table=False,
            progress=False,
            **options,
        )
        yield session, running
    finally:
        if session is not None:
            session.close(timeout=120)
        for process in processes:
            simctl.stop_ioc(process.pid)


def finished_run(session, uid):
    """Run ``uid`` from the session's catalog once it has it all; the run must have succeeded."""
    assert session.catalog.drain(120)
    run = session.catalog.run(uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    return run


def run_focus_calibration(session, camera, energy, shutter, energies, step_mm):
    """Run ``focus_calibration`` (0.4 mm of zp:z in ``step_mm`` steps, 0.1 s frames); its run."""
    (uid,) = session.RE(
        session.plans["focus_calibration"](
            camera, energy, shutter, energies, zp_z_range_mm=0.4, zp_z_step_mm=step_mm,
            exposure_s=0.1,
        )
    )  # fmt: skip
    run = finished_run(session, uid)
    start, stop = run.metadata["start"], run.metadata["stop"]
    print(f"focus_calibration: estimated {start['estimated_duration_s']:.1f} s, "
          f"took {stop['time'] - start['time']:.1f} s")  # fmt: skip
    return run


def _start(pool, log_dir: Path) -> tuple[RunningIOC, simctl.IOCProcess]:
    return start_sim_ioc(pool, log_dir, "demo", timeout=15)


@pytest.fixture(scope="session")
def demo_ioc(ca_port_pool, tmp_path_factory):
    """The demo IOC for the whole session."""
    running, ioc = _start(ca_port_pool, tmp_path_factory.mktemp("ioc-logs"))
    yield running
    simctl.stop_ioc(ioc.pid)


@pytest.fixture
def fresh_demo_ioc(ca_port_pool, tmp_path):
    """A demo IOC of its own (own port and prefix), for tests that kill it."""
    running, ioc = _start(ca_port_pool, tmp_path)
    yield running
    simctl.stop_ioc(ioc.pid)


def acquire(cam, exposure: float, n: int = 1, period: float = 0.0):
    """Acquire ``n`` frames over CA into a new file; return (frames float64, attributes).

    ``cam`` is a staged-per-call :class:`multiscope.devices.areadetector.StreamingCamera`;
    frames and per-frame attributes are read back from the HDF5 file the IOC wrote.
    """
    cam.cam.acquire_time.set(exposure).wait(5)
    cam.cam.acquire_period.set(period).wait(5)
    cam.images_per_trigger.put(n)
    cam.stage()
    try:
        cam.trigger().wait(cam.trigger_timeout() + 5)
        docs = list(cam.collect_asset_docs())
    finally:
        cam.unstage()
    path = docs[0][1]["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"][:].astype(np.float64)
        attrs = {k: v[:] for k, v in f["/entry/instrument/NDAttributes"].items()}
    return frames, attrs


@contextlib.contextmanager
def stateful_session(pool, tmp_path_factory, name: str, instrument: str, extra_args=(),
                     *, state: bool = True, **options):  # fmt: skip
    """A session of ``instrument`` on its own simulated IOC (with ``state``, a state file).

    Yields ``(session, running IOC)``; the IOC keeps its state in
    ``<name>-logs/<instrument>-state.json`` (``running.state_file``), so a restart on
    the same port and prefix (:func:`restart_ioc`) finds it again. ``data_dir=`` shares
    another session's data directory; other ``options`` go to ``configure_session``.
    """
    from multiscope.session import configure_session

    data_dir = _start_catalog_server(tmp_path_factory, name, options)
    logs = tmp_path_factory.mktemp(f"{name}-logs")
    state_file = logs / f"{instrument}-state.json" if state else None
    args = [*(["--state-file", str(state_file)] if state else []), *extra_args]
    running, _ = start_sim_ioc(pool, logs, instrument, extra_args=args)
    running.state_file, running.extra_args, running.log_dir = state_file, args, logs
    session = None
    try:
        session = configure_session(
            {}, instrument, data_dir=data_dir,
            prefix=running.prefix, table=False, progress=False, **options,
        )  # fmt: skip
        yield session, running
    finally:
        if session is not None:
            session.close(timeout=120)
        simctl.stop_ioc(running.pid)


def fibsem_session(pool, tmp_path_factory, name: str, extra_args=(), **options):
    """A PFIB-SEM session (:func:`stateful_session`): slice count and face depth kept."""
    return stateful_session(pool, tmp_path_factory, name, "fibsem", extra_args, **options)


def laser_session(pool, tmp_path_factory, name: str, extra_args=(), **options):
    """A laser mill session (:func:`stateful_session`): cut count and material map kept."""
    return stateful_session(pool, tmp_path_factory, name, "laser", extra_args, **options)


def restart_ioc(running: RunningIOC, name: str, timeout: float = 60.0) -> None:
    """Start IOC ``name`` again on ``running``'s port and prefix (after it was killed)."""
    ioc = simctl.start_ioc(name, prefix=running.prefix, port=running.port,
                           log_dir=running.log_dir, extra_args=running.extra_args)  # fmt: skip
    try:
        simctl.wait_until_ready(ioc, timeout=timeout)
    except Exception:
        simctl.stop_ioc(ioc.pid)
        raise
    running.pid = ioc.pid


def xrm_session(pool, tmp_path_factory, name: str, extra_args=(), **options):
    """A lab XRM session (:func:`stateful_session`, without a state file: none is kept)."""
    return stateful_session(pool, tmp_path_factory, name, "xrm", extra_args, state=False,
                            **options)  # fmt: skip
