"""One call that sets up an interactive or scripted session for one instrument.

``configure_session(get_ipython().user_ns, "demo")`` is all an IPython profile
does. It creates, and puts into the namespace under explicit names:

===============  ==============================================================
``RE``           the RunEngine, with persistent metadata (``RE.md``)
``catalog``      the tiled catalog of runs (``catalog[-1]``, ``catalog[uid]``)
``session``      the :class:`Session` object (``session.close()`` drains storage)
``bec``          bluesky's BestEffortCallback (tables; plots only with a display)
``bp``, ``bps``  ``bluesky.plans`` and ``bluesky.plan_stubs``
``dry_run``      ``dry_run(plan)``: duration, frames, disk, moves, checks
devices          one name per device of the instrument (e.g. ``m1``, ``cam``)
plans            the instrument's plans (e.g. ``line_scan``), checking their
                 arguments when called (:func:`~multiscope.plans.refusals.checked_at_call`),
                 and every session's ``register_sample`` (``catalog.sample_history``)
===============  ==============================================================

Simulated hardware is found through the state file that ``multiscope sim start``
writes: when the instrument's simulated IOC runs, the session talks to it;
otherwise it uses the facility prefix and the EPICS environment as given. The
beam current of the TXM comes from the storage ring's IOC (``multiscope sim
start txm`` starts the simulated ``ring`` too; decision 0009).

A run ends as ``fail``, with the reason in its stop document, when a device it
uses stays disconnected for ``disconnect_timeout_s`` (default 30 s) or it stays
suspended (no beam) for ``max_suspension_s`` (default 30 min): see
:class:`multiscope.suspenders.RunWatchdog`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from . import catalog_server, compat, simctl
from .callbacks.progress import RunProgress
from .callbacks.replay import ReplayFilter
from .catalog import Catalog, series_documents
from .config import apply_ca_client_environment, ca_client_environment
from .config import data_dir as resolve_data_dir
from .metadata import JSONMetadataStore
from .plan_stubs.connection import wait_for_reconnection
from .plans.dry_run import dry_run
from .plans.refusals import QuietRefusals, checked_at_call
from .suspenders import RunWatchdog, SuspendFloorOrDisconnect

__all__ = [
    "COMMON_PLAN_MODULES",
    "InstrumentSpec",
    "INSTRUMENTS",
    "Session",
    "configure_session",
    "instrument_plans",
]

logger = logging.getLogger(__name__)

_MARKER = "_multiscope_session"


@dataclass(frozen=True)
class InstrumentSpec:
    """What the session needs to know about one instrument.

    Attributes
    ----------
    name : str
        Instrument name, as in ``multiscope sim start NAME`` and the profile name.
    devices_module : str
        Module under ``multiscope.instruments`` whose ``devices(prefix)`` builds all devices.
    plan_modules : tuple of str
        Modules whose ``__all__`` plans are put into the namespace.
    facility_prefix : str
        PV prefix of the real instrument, used when no simulated IOC runs.
    beam_current : str or None
        Dotted name of the signal that gates acquisition (suspender), e.g.
        ``"beam_current.current"``, if any.
    beam_floor : float
        Suspend below this beam current (same units as the device).
    beam_ioc : str or None
        Simulated IOC (``multiscope sim`` name) serving the beam current when it is
        not the instrument's own, e.g. ``"ring"``; then ``devices(prefix, beam_prefix)``
        builds the beam device on that IOC's prefix.
    facility_beam_prefix : str or None
        PV prefix of the facility's beam-current IOC (with ``beam_ioc``).
    pipeline : str or None
        ``"module:function"`` building the instrument's live analysis callback,
        called as ``function(output_dir, publish)``; run off the RunEngine thread.
    """

    name: str
    devices_module: str
    plan_modules: tuple[str, ...]
    facility_prefix: str
    beam_current: str | None = None
    beam_floor: float = 0.0
    beam_ioc: str | None = None
    facility_beam_prefix: str | None = None
    pipeline: str | None = None


#: Plans every instrument's session has: ``register_sample`` (one sample's history
#: across instruments, :meth:`multiscope.catalog.Catalog.sample_history`).
COMMON_PLAN_MODULES = ("multiscope.plans.samples",)

INSTRUMENTS: dict[str, InstrumentSpec] = {
    "demo": InstrumentSpec(
        name="demo",
        devices_module="multiscope.instruments.demo",
        plan_modules=("multiscope.plans.scans",),
        facility_prefix="DEMO:",
        beam_current="beam_current.current",
        beam_floor=10.0,
    ),
    "txm": InstrumentSpec(
        name="txm",
        devices_module="multiscope.instruments.txm",
        plan_modules=(
            "multiscope.plans.scans",
            "multiscope.plans.tomography",
            "multiscope.plans.mosaic",
            "multiscope.plans.xanes",
            "multiscope.plans.calibration",
        ),
        facility_prefix="TXM:",
        beam_current="beam_current.current",
        beam_floor=10.0,
        beam_ioc="ring",
        facility_beam_prefix="SR:",
        pipeline="multiscope.callbacks.pipelines:tomography_pipeline",
    ),
    "fibsem": InstrumentSpec(
        name="fibsem",
        devices_module="multiscope.instruments.fibsem",
        plan_modules=("multiscope.plans.slice_and_view",),
        facility_prefix="PFIB:",
        pipeline="multiscope.callbacks.slice_and_view:slice_and_view_pipeline",
    ),
    "laser": InstrumentSpec(
        name="laser",
        devices_module="multiscope.instruments.laser",
        plan_modules=("multiscope.plans.laser",),
        facility_prefix="LASER:",
    ),
    "xrm": InstrumentSpec(
        name="xrm",
        devices_module="multiscope.instruments.xrm",
        plan_modules=("multiscope.plans.xrm", "multiscope.plans.xrm_scout"),
        facility_prefix="XRM:",
        pipeline="multiscope.callbacks.pipelines:tomography_pipeline",
    ),
}


@dataclass
class Session:
    """Everything :func:`configure_session` created; ``close()`` releases it."""

    instrument: str
    data_dir: Path
    RE: Any
    catalog: Catalog
    devices: dict[str, Any]
    plans: dict[str, Any]
    prefix: str
    simulated: bool
    pipeline: Any = None
    beam_prefix: str | None = None
    watchdog: RunWatchdog | None = None
    names: list[str] = field(default_factory=list)

    def drain(self, timeout: float = 600.0) -> bool:
        """Wait until live analysis and storage have caught up; True if they did."""
        done = True
        if self.pipeline is not None:
            done = self.pipeline.drain(timeout)
        return self.catalog.drain(timeout) and done

    def close(self, timeout: float = 600.0, storage_timeout: float = 60.0) -> None:
        """Let live analysis and storage finish, then close them (idempotent).

        Analysis gets ``timeout`` s (a reconstruction can take minutes); storage
        ``storage_timeout`` s: what the catalog has not taken by then stays in the
        journal for ``multiscope catalog recover``.
        """
        if self.watchdog is not None:
            self.watchdog.remove()
        if self.pipeline is not None:
            self.pipeline.drain(timeout)
            self.pipeline.close(timeout)
        if not self.catalog.drain(storage_timeout):
            logger.warning(
                "the catalog did not take every run within %.0f s; they are in the journal "
                "(%s): run `multiscope catalog recover`",
                storage_timeout,
                self.data_dir / "journal",
            )
        self.catalog.close(storage_timeout)

    def __repr__(self) -> str:
        mode = "simulated" if self.simulated else "facility"
        return (
            f"<multiscope session: {self.instrument} ({mode}, prefix {self.prefix!r}), "
            f"data in {self.data_dir}, {len(self.devices)} devices>"
        )


def _register_series_command(RE, root: Path) -> None:
    """Answer ``Msg(SERIES_COMMAND, None, uid)`` with the series' documents (the journal)."""
    from .plans.preflight import PlanArgumentError
    from .plans.slice_and_view import SERIES_COMMAND

    async def series(msg):
        uid = msg.args[0]
        try:
            return series_documents(root, uid)
        except KeyError as error:
            raise PlanArgumentError(f"resume={uid!r}: {error.args[0]}") from None

    RE.register_command(SERIES_COMMAND, series)


class _BuiltOnFirstUse:
    """The instrument's live-analysis callback, built at its first use.

    ``"module:function"`` is imported and called as ``function(output_dir, publish)``
    by :meth:`build`, or at the first document or attribute asked for: its imports
    (numba, scipy, scikit-image; ~3 s on a loaded 2-core machine) stay out of the
    session's start-up, which warms it up on a thread once ready.
    """

    def __init__(self, target: str, output_dir: Path, publish, settings=None) -> None:
        self._target, self._output_dir, self._publish = target, output_dir, publish
        # Attributes given to the callback once built, if it has them (``history``).
        self._settings = dict(settings or {})
        self._callback = None
        self._lock = threading.Lock()

    def build(self):
        """The callback, built now if it is not yet."""
        with self._lock:
            if self._callback is None:
                module_name, function_name = self._target.split(":")
                function = getattr(importlib.import_module(module_name), function_name)
                callback = function(self._output_dir, self._publish)
                for attribute, value in self._settings.items():
                    if hasattr(callback, attribute):
                        setattr(callback, attribute, value)
                self._callback = callback
            return self._callback

    def warm_up(self) -> None:
        """:meth:`build`, logging a failure (the first document retries and reports it)."""
        try:
            self.build()
        except Exception:  # e.g. the interpreter exiting meanwhile
            logger.debug("live-analysis warm-up failed", exc_info=True)

    def __call__(self, name: str, doc: dict):
        return self.build()(name, doc)

    def __getattr__(self, attribute: str):  # e.g. session.pipeline.callback.keep_last
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.build(), attribute)

    def __setattr__(self, attribute: str, value) -> None:
        if attribute.startswith("_"):
            object.__setattr__(self, attribute, value)
        else:
            setattr(self.build(), attribute, value)


def _find_simulated_ioc(instrument: str, data_dir: Path):
    """Return (record, all alive records) from the sim state file."""
    records = [r for r in simctl.status(data_dir).values() if r.get("alive")]
    mine = next((r for r in records if r["name"] == instrument), None)
    return mine, records


def _wait_for_connections(devices: dict[str, Any], timeout: float, instrument: str) -> None:
    """Wait (in parallel: every PV search started at construction) and report stragglers."""
    import time

    deadline = time.monotonic() + timeout
    missing = []
    for name, device in devices.items():
        try:
            device.wait_for_connection(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            missing.append(f"{name} ({device.prefix})")
    if missing:
        logger.warning(
            "not connected after %.0f s: %s. Is the IOC running? For simulated hardware: "
            "`multiscope sim start %s`",
            timeout,
            ", ".join(missing),
            instrument,
        )


def _devices_and_plans(
    spec: InstrumentSpec, prefix: str, beam_prefix: str | None, connect_timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The instrument's devices (connected, or reported after ``connect_timeout``) and plans."""
    devices_module = importlib.import_module(spec.devices_module)
    if spec.beam_ioc:
        devices = devices_module.devices(prefix, beam_prefix=beam_prefix)
    else:
        devices = devices_module.devices(prefix)
    _wait_for_connections(devices, connect_timeout, spec.name)
    return devices, instrument_plans(spec.name)


def instrument_plans(instrument: str) -> dict[str, Any]:
    """The names a session of ``instrument`` gets from its plan modules.

    Parameters
    ----------
    instrument : str
        One of :data:`INSTRUMENTS`.

    Returns
    -------
    dict
        Every name of the ``__all__`` of :data:`COMMON_PLAN_MODULES` and of the
        instrument's ``plan_modules``; plans wrapped by
        :func:`~multiscope.plans.refusals.checked_at_call`, helpers as they are.
    """
    spec = INSTRUMENTS[instrument]
    plans: dict[str, Any] = {}
    for module_name in (*COMMON_PLAN_MODULES, *spec.plan_modules):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            plan = getattr(module, name)
            # Plans check their arguments when called (`line_scan(...)` raises), not
            # only inside RE(...); helpers (energy_grid, tomo_schedule) stay as they are.
            plans[name] = checked_at_call(plan) if inspect.isgeneratorfunction(plan) else plan
    return plans


def configure_session(
    namespace: dict,
    instrument: str,
    *,
    data_dir: str | os.PathLike | None = None,
    catalog_uri: str | None = None,
    api_key: str | None = None,
    prefix: str | None = None,
    table: bool = True,
    progress: bool = True,
    suspenders: bool = True,
    connect_timeout: float = 10.0,
    beam_prefix: str | None = None,
    disconnect_timeout_s: float | None = 30.0,
    max_suspension_s: float | None = 1800.0,
) -> Session:
    """Set up a session for ``instrument`` and put its objects into ``namespace``.

    Parameters
    ----------
    namespace : dict
        Usually ``get_ipython().user_ns``; a plain dict for scripts and tests.
    instrument : str
        One of :data:`INSTRUMENTS`.
    data_dir : path-like, optional
        Data directory (default: ``$MULTISCOPE_DATA_DIR`` or the user's data dir).
    catalog_uri : str, optional
        URL of a facility tiled server (default ``$MULTISCOPE_CATALOG_URI``, else the
        embedded catalog in ``data_dir``).
    api_key : str, optional
        API key for ``catalog_uri`` (default ``$MULTISCOPE_TILED_API_KEY``).
    prefix : str, optional
        PV prefix; default: the running simulated IOC's, else the facility prefix.
    table : bool
        Subscribe bluesky's BestEffortCallback (live table). Off for quiet scripts.
    progress : bool
        Show progress: one bar per run (when there is no table) and, in a
        terminal, bars for long moves.
    suspenders : bool
        Install the instrument's suspenders (beam current below its floor or
        disconnected suspends a run until it is back).
    connect_timeout : float
        Seconds to wait for the devices to connect; devices still disconnected
        then are reported (a warning), not fatal, so a session can start while
        part of the instrument is off.
    beam_prefix : str, optional
        PV prefix of the beam-current IOC for instruments whose beam comes from the
        storage ring's IOC (the TXM); default: the running simulated ring IOC's
        (``multiscope sim start txm`` starts it), else the facility's.
    disconnect_timeout_s : float or None
        A device the running plan has used that stays disconnected this long ends
        the run as ``fail`` (None: never). The beam device is exempt: losing it
        suspends the run.
    max_suspension_s : float or None
        A suspension (beam below the floor or its IOC gone) this long ends the run
        as ``fail`` instead of waiting on (None: wait forever).

    Returns
    -------
    Session

    Raises
    ------
    RuntimeError
        If a session was already configured in this namespace.
    ValueError
        For an unknown instrument.
    """
    if _MARKER in namespace:
        raise RuntimeError(
            f"configure_session already ran in this namespace (instrument "
            f"{namespace[_MARKER].instrument!r}); start a new kernel to set up another."
        )
    try:
        spec = INSTRUMENTS[instrument]
    except KeyError:
        raise ValueError(
            f"unknown instrument {instrument!r}; choose one of {sorted(INSTRUMENTS)}"
        ) from None

    compat.keep_ca_client_searching()  # before the session's CA client context exists
    root = resolve_data_dir(data_dir)
    sim_record, running = _find_simulated_ioc(instrument, root)
    simulated = prefix is None and sim_record is not None
    if simulated:
        prefix = sim_record["prefix"]
        apply_ca_client_environment(ca_client_environment(r["port"] for r in running))
    elif prefix is None:
        prefix = spec.facility_prefix
    if spec.beam_ioc and beam_prefix is None:
        ring = next((r for r in running if r["name"] == spec.beam_ioc), None)
        # The simulated ring serves whichever TXM runs; its port is searched when the
        # session is simulated (all running IOCs), else the caller has listed it.
        beam_prefix = ring["prefix"] if ring is not None else spec.facility_beam_prefix
    # Choose the control layer before the first signal exists; caproto needs no libca.
    # An ophyd imported before multiscope chose one already (pyepics if installed).
    os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")
    import ophyd

    if ophyd.cl.name != os.environ["OPHYD_CONTROL_LAYER"]:
        ophyd.set_cl(os.environ["OPHYD_CONTROL_LAYER"])
    catalog_uri = catalog_uri or os.environ.get("MULTISCOPE_CATALOG_URI")
    if not catalog_uri:
        # The data directory's catalog server (seconds to start) starts now, while bluesky
        # imports, the devices connect and the plans import; Catalog.embedded waits for it.
        catalog_server.start_in_background(root)

    from bluesky import RunEngine
    from bluesky import plan_stubs as bps
    from bluesky import plans as bp
    from bluesky.utils import ProgressBarManager

    devices, plans = _devices_and_plans(spec, prefix, beam_prefix, connect_timeout)
    catalog = (
        Catalog.remote(catalog_uri, api_key or os.environ.get("MULTISCOPE_TILED_API_KEY"))
        if catalog_uri
        else Catalog.embedded(root)
    )
    RE = RunEngine(JSONMetadataStore(root / "session" / instrument / "md.json"))
    RE.md.setdefault("instrument", instrument)
    # A refusal is one clear exception, without bluesky's "Run aborted" traceback above it.
    QuietRefusals.install(RE)
    # A resumed series reads its earlier runs from the journal (plans.slice_and_view).
    _register_series_command(RE, root)
    # Every consumer sees each document once: a rewind re-emits saved events (replay.py).
    RE.subscribe(ReplayFilter(catalog.writer()))
    bec = None
    if table:
        # Imported only here: it imports matplotlib (~1.5 s), which a quiet script skips.
        from bluesky.callbacks.best_effort import BestEffortCallback

        bec = BestEffortCallback()
        if not os.environ.get("DISPLAY"):
            bec.disable_plots()
        RE.subscribe(ReplayFilter(bec))
    if progress and not table:  # the table already shows each point; two displays interleave
        RE.subscribe(ReplayFilter(RunProgress()))
        if sys.stderr.isatty():  # per-move bars redraw in place; in a log they flood it
            RE.waiting_hook = ProgressBarManager()

    pipeline = None
    if spec.pipeline:
        from .callbacks.background import BackgroundCallback

        pipeline = BackgroundCallback(
            _BuiltOnFirstUse(
                spec.pipeline,
                root / "derived" / instrument,
                catalog.writer(),
                # a resumed series' earlier runs, from the journal
                settings={"history": partial(series_documents, root)},
            ),
            name=f"background-{instrument}-pipeline",
        )
        RE.subscribe(ReplayFilter(pipeline))

    assets = root / "assets" / instrument
    for device in devices.values():
        # Cameras write where the catalog can read: the data directory's assets/ (strftime).
        if hasattr(device, "write_path_template") and not device.write_path_template.get():
            device.write_path_template.put(f"{assets}/%Y/%m/%d/")
        if hasattr(device, "follow_emitted"):  # cameras re-send a resource a rewind dropped
            device.follow_emitted(RE.subscribe)
    beam_devices = []
    if suspenders and spec.beam_current:
        device_name, *attributes = spec.beam_current.split(".")
        beam_devices.append(devices[device_name])
        gate = devices[device_name]
        for attribute in attributes:
            gate = getattr(gate, attribute)
        # On resume, wait for the devices that were up at start-up: the beam channel
        # can reconnect seconds before the rest of a restarted IOC. A device still
        # down then fails the run through the watchdog, within the same limit.
        connected_devices = [device for device in devices.values() if device.connected]
        RE.install_suspender(
            SuspendFloorOrDisconnect(
                gate,
                spec.beam_floor,
                sleep=1.0,
                post_plan=partial(
                    wait_for_reconnection,
                    connected_devices,
                    timeout=30.0 if disconnect_timeout_s is None else disconnect_timeout_s,
                ),
                tripped_message="beam current below floor or its IOC disconnected",
            )
        )
    # Bounds what a suspender cannot: a dead device the plan waits on, an endless outage.
    watchdog = RunWatchdog(
        disconnect_timeout_s=disconnect_timeout_s,
        max_suspension_s=max_suspension_s,
        ignore=beam_devices,
    )
    watchdog.install(RE)

    session = Session(
        instrument=instrument,
        data_dir=root,
        RE=RE,
        catalog=catalog,
        devices=devices,
        plans=plans,
        prefix=prefix,
        simulated=simulated,
        pipeline=pipeline,
        beam_prefix=beam_prefix,
        watchdog=watchdog,
    )
    added: dict[str, Any] = {
        "RE": RE,
        "catalog": catalog,
        "session": session,
        "bp": bp,
        "bps": bps,
        "dry_run": dry_run,
        **({"bec": bec} if bec is not None else {}),
        **devices,
        **plans,
    }
    clashes = sorted(set(added) & set(namespace))
    if clashes:
        logger.warning("configure_session replaces existing names: %s", ", ".join(clashes))
    namespace.update(added)
    namespace[_MARKER] = session
    session.names = sorted(added)
    # Import bluesky-tiled-plugins and the live analysis (~3 s each on a loaded machine)
    # while the user types, not before the prompt.
    catalog.warm_up()
    if pipeline is not None:
        threading.Thread(
            target=pipeline.callback.warm_up, name="pipeline-warm-up", daemon=True
        ).start()
    return session
