"""Every private ophyd, bluesky, caproto and FastAPI API the project relies on, in one place.

Each shim below names the public behaviour it stands for and why no public API
serves it. The pinned version ranges in ``pyproject.toml`` (``ophyd``,
``bluesky``, ``caproto``, ``fastapi``) are the versions these shims were checked against;
``tests/unit/test_compat.py`` fails, naming this module and the pin, when an
installed version leaves its range or when one of :data:`PRIVATE_APIS` is gone.
To move a pin: read each entry against the new version's source, fix the shim,
then widen the range (decision 0013).

Like :mod:`multiscope.config`, this module sits outside the layer contract: any
layer, and the simulated IOCs (:mod:`sim_devices`), may import it. It imports no
library at module level (each shim imports what it touches when called), so an
IOC process that only needs the caproto shims does not pay for importing ophyd
and bluesky.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = [
    "PRIVATE_APIS",
    "PrivateAPI",
    "StrictPortBinding",
    "SuspenderHooks",
    "SubsetConcurrentMove",
    "analyse_overridden_dependencies_once",
    "cannot_exceed_limits",
    "forget_staging",
    "is_staged",
    "limit_violation_type",
    "order_event_tables_by_seq_num",
    "serves_no_streams",
    "server_monitor_batch_seconds",
    "set_server_high_load_timeout",
    "keep_ca_client_searching",
    "survive_circuit_failures",
    "survive_search_retry_failures",
    "suspender_justification",
    "throw_into_run",
]


@dataclass(frozen=True)
class PrivateAPI:
    """One private name of a library that a shim here uses.

    Attributes
    ----------
    library : str
        Distribution whose pin in ``pyproject.toml`` covers it.
    owner : str
        Dotted path of the module or class that has it.
    name : str
        The private attribute, method or module-level name.
    on_instance : bool
        True when only instances have it (set in ``__init__``), not the class.
    shim : str
        The shim in this module that uses it.
    """

    library: str
    owner: str
    name: str
    on_instance: bool
    shim: str


#: The private names the shims use; the compatibility test checks each still exists.
PRIVATE_APIS: tuple[PrivateAPI, ...] = (
    PrivateAPI("ophyd", "ophyd.device.Device", "_staged", True, "is_staged"),
    PrivateAPI("ophyd", "ophyd.device.Device", "_original_vals", True, "forget_staging"),
    PrivateAPI("ophyd", "ophyd.signal.EpicsSignalBase", "_timeout", True, "allow_slow_reads"),
    PrivateAPI(
        "ophyd",
        "ophyd.pseudopos.PseudoPositioner",
        "_concurrent_move",
        False,
        "SubsetConcurrentMove",
    ),
    PrivateAPI(
        "ophyd", "ophyd.pseudopos.PseudoPositioner", "_real_waiting", True, "SubsetConcurrentMove"
    ),
    PrivateAPI(
        "ophyd", "ophyd.pseudopos.PseudoPositioner", "_real_finished", False, "SubsetConcurrentMove"
    ),
    PrivateAPI("bluesky", "bluesky.suspenders.SuspenderBase", "_sig", True, "SuspenderHooks"),
    PrivateAPI(
        "bluesky", "bluesky.suspenders.SuspenderBase", "_should_suspend", False, "SuspenderHooks"
    ),
    PrivateAPI(
        "bluesky", "bluesky.suspenders.SuspenderBase", "_should_resume", False, "SuspenderHooks"
    ),
    PrivateAPI(
        "bluesky",
        "bluesky.suspenders.SuspenderBase",
        "_get_justification",
        False,
        "SuspenderHooks, suspender_justification",
    ),
    PrivateAPI(
        "bluesky", "bluesky.run_engine.RunEngine", "_pardon_failures", True, "throw_into_run"
    ),
    PrivateAPI("bluesky", "bluesky.run_engine.RunEngine", "_task", True, "throw_into_run"),
    PrivateAPI("bluesky", "bluesky.run_engine.RunEngine", "_state_lock", True, "throw_into_run"),
    PrivateAPI("bluesky", "bluesky.run_engine.RunEngine", "_exception", True, "throw_into_run"),
    PrivateAPI(
        "caproto",
        "caproto._data",
        "CannotExceedLimits",
        False,
        "cannot_exceed_limits, limit_violation_type",
    ),  # fmt: skip
    PrivateAPI(
        "caproto",
        "caproto.server.common.Context",
        "_bind_tcp_sockets_with_consistent_port_number",
        False,
        "StrictPortBinding",
    ),
    PrivateAPI(
        "caproto",
        "caproto.threading.client.Context",
        "_process_search_results_loop",
        False,
        "survive_circuit_failures",
    ),
    PrivateAPI(
        "caproto",
        "caproto.threading.client.Context",
        "_close_event",
        True,
        "survive_circuit_failures",
    ),
    PrivateAPI(
        "caproto",
        "caproto.threading.client.SharedBroadcaster",
        "_retry_unanswered_searches",
        False,
        "survive_search_retry_failures",
    ),
    PrivateAPI(
        "caproto",
        "caproto.threading.client.SharedBroadcaster",
        "_close_event",
        True,
        "survive_search_retry_failures",
    ),
    PrivateAPI(
        "caproto",
        "caproto.server.common",
        "HIGH_LOAD_TIMEOUT",
        False,
        "set_server_high_load_timeout, server_monitor_batch_seconds",
    ),
    PrivateAPI(
        "fastapi",
        "fastapi.dependencies.utils",
        "get_dependant",
        False,
        "analyse_overridden_dependencies_once",
    ),
    PrivateAPI(
        "fastapi",
        "fastapi.dependencies.utils",
        "solve_dependencies",
        False,
        "analyse_overridden_dependencies_once",
    ),
)


# --------------------------------------------------------------------------------------
# ophyd
# --------------------------------------------------------------------------------------
def is_staged(device) -> bool:
    """True if ``device`` is fully staged (``Device.stage`` has run, ``unstage`` not yet).

    Stands for: "is this device staged?", which a flyer asks before it may kick off
    and before ``prepare`` applies its settings. ophyd keeps the answer in
    ``Device._staged`` (a ``Staged`` enum) and offers no public accessor.
    """
    from ophyd.device import Staged

    return device._staged == Staged.yes


def forget_staging(*devices) -> None:
    """Mark ``devices`` unstaged without putting their stage settings back.

    Stands for: unstaging a device whose IOC is gone, where ``unstage`` would spend
    a connection timeout on every staged signal and hide the run's real error.
    ophyd's only public way out of the staged state is ``unstage``, which writes
    the original values back; here the record of them (``_original_vals``) is
    dropped and ``_staged`` reset, as ``unstage`` itself does at its end.
    """
    from ophyd.device import Staged

    for device in devices:
        # Every instantiated sub-device was staged with it (ophyd stages them
        # recursively); one left "staged" refuses the next stage (e.g. a camera's
        # ``cam.array_size`` once a plan has read the frame size).
        subdevices = [sub for _, sub in device.walk_subdevices(include_lazy=False)]
        for part in (device, *subdevices):
            part._staged = Staged.no
            part._original_vals.clear()


def allow_slow_reads(signals, timeout: float) -> None:
    """Let each EPICS signal of ``signals`` wait up to ``timeout`` s for a read's answer.

    Stands for: a per-signal read timeout on signals a stock ophyd class declares.
    ophyd sets it only at construction (``EpicsSignalBase(timeout=...)``) or for every
    signal at once before the first exists (``EpicsSignalBase.set_defaults``), and
    reads it from ``_timeout``; ``Device.unstage`` restores each staged value through
    ``set().wait()``, whose read-back uses it (2 s by default). Only raises it.
    """
    from ophyd.signal import EpicsSignalBase

    for signal in signals:
        # None waits for ever: it is never lowered.
        current = getattr(signal, "_timeout", None) if isinstance(signal, EpicsSignalBase) else None
        if current is not None and current < timeout:
            signal._timeout = float(timeout)


class SubsetConcurrentMove:
    """Mixin before ``ophyd.PseudoPositioner``: a concurrent move commands only some axes.

    Stands for: a pseudo positioner whose ``forward`` gives every real axis a target
    but whose move must leave some of them alone (the TXM energy axis does not move
    an uncalibrated zone-plate x/y). ophyd's ``PseudoPositioner.move`` always starts
    every real axis through its ``_concurrent_move`` hook and tracks completion in
    ``_real_waiting`` with the ``_real_finished`` callback; there is no public hook
    to choose the axes. The subclass implements :meth:`commanded_moves`.
    """

    def commanded_moves(self, real_pos) -> list:
        """``(real positioner, target)`` pairs this move starts; the subclass decides."""
        raise NotImplementedError

    def _concurrent_move(self, real_pos, **kwargs):
        # ophyd's own _concurrent_move, restricted to the commanded axes: the move is
        # done when the last of them reports (PseudoPositioner._real_finished).
        moves = self.commanded_moves(real_pos)
        self._real_waiting.extend(real for real, _ in moves)
        for real, target in moves:
            real.move(target, wait=False, moved_cb=self._real_finished, **kwargs)


# --------------------------------------------------------------------------------------
# bluesky
# --------------------------------------------------------------------------------------
class SuspenderHooks:
    """Mixin before a bluesky suspender class: public names for its extension hooks.

    Stands for: a suspender with its own trip rule. bluesky's ``SuspenderBase``
    asks the abstract methods ``_should_suspend`` / ``_should_resume`` and
    ``_get_justification`` (the documented way to write a suspender is to
    implement them) and keeps the watched signal as ``_sig``; none has a public
    name. A subclass overrides :meth:`should_suspend`, :meth:`should_resume` and
    :meth:`justification`, and calls ``super()`` for the base suspender's rule.
    """

    @property
    def signal(self):
        """The watched signal."""
        return self._sig

    def should_suspend(self, value) -> bool:
        """True if ``value`` trips the suspender (the base suspender's rule)."""
        return super()._should_suspend(value)

    def should_resume(self, value) -> bool:
        """True if ``value`` lets a suspended run resume (the base suspender's rule)."""
        return super()._should_resume(value)

    def justification(self) -> str:
        """Why the suspender tripped (the base suspender's text)."""
        return super()._get_justification()

    # bluesky's hooks, routed to the public names above.
    def _should_suspend(self, value):
        return self.should_suspend(value)

    def _should_resume(self, value):
        return self.should_resume(value)

    def _get_justification(self):
        return self.justification()

    # bluesky (1.15) makes a tripped suspender's event on the RunEngine's loop from the
    # caller's thread and waits 0.1 s for it; on a loaded machine the loop can take
    # longer and the trip is lost ("Could not create the suspender event": the run went
    # on into a dead IOC, measured in the integration suite). Trying again is safe: the
    # timed-out request was cancelled, nothing else changed.
    TRIP_TIMEOUT_S = 10.0

    def __call__(self, value, **kwargs):
        deadline = time.monotonic() + self.TRIP_TIMEOUT_S
        while True:
            try:
                return super().__call__(value, **kwargs)
            except RuntimeError as error:
                running = self.RE is not None and self.RE.state.is_running
                if "suspender event" not in str(error) or not running:
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{error}: the RunEngine's loop did not answer in {self.TRIP_TIMEOUT_S} s"
                    ) from error


def suspender_justification(suspender) -> str:
    """Why a tripped bluesky suspender (any kind) holds the run.

    Stands for: the text bluesky itself logs when a suspender trips. It is made
    by ``SuspenderBase._get_justification``; no public accessor exists.
    """
    return suspender._get_justification() or repr(suspender)


def throw_into_run(RE, error: BaseException) -> bool:  # noqa: N803 - bluesky's name
    """Make the plan running on ``RE`` raise ``error`` at once; False if too late.

    Stands for: failing a run from outside it, as a failed status does (bluesky's
    ``RunEngine._status_object_completed``): the run loop throws
    ``RE._exception`` into the plan at its next step, and cancelling the run task
    makes that step now, whatever the plan waits for (a status, a sleep, a
    suspension). The public ``RE.abort``/``RE.stop`` need a paused RunEngine and
    record ``abort``/``success``, not a failure with a reason. Once the run loop has
    ended (its cleanup sets ``_pardon_failures``), nothing may interrupt the
    closing of the run: then nothing is thrown and False is returned.
    """
    pardon = RE._pardon_failures
    if pardon is None or pardon.is_set() or RE._task is None:
        return False
    with RE._state_lock:
        RE._exception = error
    RE._task.cancel()
    return True


# --------------------------------------------------------------------------------------
# caproto (server side: the simulated IOCs)
# --------------------------------------------------------------------------------------
def cannot_exceed_limits(message: str) -> Exception:
    """The exception caproto's own records raise for a put outside the limits.

    Stands for: refusing a put as a limit violation, exactly as a caproto
    ``ChannelData`` does (the client sees a failed put). The class,
    ``CannotExceedLimits``, lives in ``caproto._data`` and is not exported.
    """
    return limit_violation_type()(message)


def limit_violation_type() -> type:
    """The class of :func:`cannot_exceed_limits` (to catch a refused put in an IOC).

    Stands for: ``caproto._data.CannotExceedLimits``, not exported by caproto.
    """
    from caproto._data import CannotExceedLimits

    return CannotExceedLimits


class StrictPortBinding:
    """Mixin before a caproto server ``Context``: bind exactly the requested TCP port.

    Stands for: an IOC listening on the port it was given, or failing. caproto's
    ``Context._bind_tcp_sockets_with_consistent_port_number`` silently tries 100
    random ports after the requested one, and an IOC on an unexpected port is
    invisible to clients searching the given one; no option turns that off.
    """

    async def _bind_tcp_sockets_with_consistent_port_number(self, make_socket):
        sockets = {}
        try:
            for interface in self.interfaces:
                sockets[interface] = await make_socket(interface, self.ca_server_port)
        except OSError:
            for sock in sockets.values():
                sock.close()
            raise
        return self.ca_server_port, sockets


def set_server_high_load_timeout(seconds: float) -> None:
    """Batch a caproto server's monitor updates for ``seconds`` (this process).

    Stands for: ``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC``, which caproto reads once,
    into ``caproto.server.common.HIGH_LOAD_TIMEOUT``, when that module is imported;
    an IOC module has imported it (defining its PVGroups) before its command line
    says which port, hence which environment, to serve with.
    """
    from caproto.server import common

    common.HIGH_LOAD_TIMEOUT = float(seconds)


def server_monitor_batch_seconds() -> float:
    """Seconds a caproto server holds a monitor update to batch it (this process).

    Stands for: the same ``caproto.server.common.HIGH_LOAD_TIMEOUT`` that
    :func:`set_server_high_load_timeout` sets. A put's reply is sent at once, so a
    monitor posted just before it can reach the client after it; a simulated
    record that must post its monitors first (the motor record's final readback
    and DMOV before a put's completion) waits at least twice this long before replying.
    """
    from caproto.server import common

    return float(common.HIGH_LOAD_TIMEOUT)


def survive_circuit_failures() -> None:
    """Keep caproto's CA client connecting after a circuit fails to open (this process).

    Stands for: a Channel Access client that retries a server it could not reach, as
    libca does. caproto 1.3's threading ``Context`` opens each TCP circuit in its
    search-results thread, which ends on the first error: no VersionResponse within
    2 s (an IOC busy starting, a loaded machine: "Circuit with server at ... did not
    connect within 2.0-second timeout"), or a connection refused (the IOC ended
    between its search reply and the connect). From then on every channel the
    context searches for stays "searching" for good, for the life of the process.
    Wrapped, the thread logs the error, searches again for every channel still
    waiting for a circuit, and carries on. Install before the first context exists
    (a context's thread runs the loop it found when it started); idempotent.
    """
    import logging

    from caproto.threading import client

    loop = client.Context._process_search_results_loop
    if getattr(loop, "_survives_circuit_failures", False):
        return
    log = logging.getLogger(__name__)

    def resilient_loop(context) -> None:
        while True:
            try:
                loop(context)
                return
            except Exception as error:  # noqa: BLE001 - any error ended the thread
                if context._close_event.is_set():
                    return
                log.warning("CA client: a circuit failed to open (%s); searching again", error)
                with context.pv_cache_lock:
                    waiting = [key for key, pv in context.pvs.items()
                               if not pv.circuit_ready.is_set()]  # fmt: skip
                if waiting:
                    context.reconnect(waiting)

    resilient_loop._survives_circuit_failures = True
    client.Context._process_search_results_loop = resilient_loop


def survive_search_retry_failures() -> None:
    """Keep caproto's CA client sending its searches after an error (this process).

    Stands for: a Channel Access client whose search requests go out for as long as it
    lives, as libca's do. caproto 1.3's threading client sends every search request,
    the first one included, from one "retry" thread, which ends on the first error.
    One such error is a race: each send re-reads the EPICS variables with
    ``dict(os.environ)``, which raises ``KeyError`` when another thread removes an
    environment variable between listing the keys and reading them (a test's
    ``monkeypatch`` undoing a ``setenv``, any library's ``os.environ.pop``). From then
    on nothing is searched for: every channel the process opens stays "searching".
    Wrapped, the thread logs the error, waits (half a second, doubling to 30 s while
    the fault persists: it must not spin) and carries on. Install before the first
    context exists; idempotent.
    """
    import logging

    from caproto.threading import client

    retry = client.SharedBroadcaster._retry_unanswered_searches
    if getattr(retry, "_survives_errors", False):
        return
    log = logging.getLogger(__name__)

    def resilient_retry(broadcaster) -> None:
        failures = 0
        while True:
            try:
                retry(broadcaster)
                return
            except Exception as error:  # noqa: BLE001 - any error ended the thread
                if broadcaster._close_event.is_set():
                    return
                failures += 1
                log.warning("CA client: sending searches failed (%r); carrying on", error)
                # 0.5 s, doubling to 30 s while the fault persists: no log flood.
                if broadcaster._close_event.wait(min(0.5 * 2 ** (failures - 1), 30.0)):
                    return

    resilient_retry._survives_errors = True
    client.SharedBroadcaster._retry_unanswered_searches = resilient_retry


def keep_ca_client_searching() -> None:
    """Install both CA client shims: :func:`survive_circuit_failures` and
    :func:`survive_search_retry_failures`.

    Call before the process's first CA client context exists (a thread keeps the loop
    it started with); idempotent. ``configure_session`` calls it.
    """
    survive_circuit_failures()
    survive_search_retry_failures()


#: seq_num, then time: a point retaken after a pause repeats its seq_num, later.
EVENT_TABLE_ORDER = [
    {"column": "seq_num", "direction": "asc"},
    {"column": "time", "direction": "asc"},
]


def order_event_tables_by_seq_num() -> None:
    """Make the event tables this process creates in tiled read back in ``seq_num`` order.

    Stands for: events that come back in the order they were taken, whatever the
    database. tiled 0.2.20 reads an appendable table with ``ORDER BY _partition_id``,
    adding ``rowid`` (insertion order) only for SQLite and DuckDB. PostgreSQL has no
    rowid: rows come in heap order, which is not insertion order once a row is
    updated or a deleted run's space is reused (a facility catalog that replaced a run
    cut off mid-write read its events as 14, 15, 16, 0, 1, ...). tiled's SQL adapter
    honours ``order_by_args`` stored with a table's data source, but its client's
    ``create_appendable_table``, which bluesky-tiled-plugins' ``TiledWriter`` calls,
    cannot pass them. Wrapped, a bluesky event table (key ``internal``, with
    ``seq_num`` and ``time`` columns) is created with ``order_by_args`` =
    :data:`EVENT_TABLE_ORDER`, through the same public ``Container.new`` call; other
    tables, and the parts of a table split for very many columns (``internal_0``,
    ...: ordering one part would misalign it with the others), are created as
    before. Idempotent.
    """
    import functools

    from tiled.client.container import Container

    create = Container.create_appendable_table
    if getattr(create, "_orders_by_seq_num", False):
        return

    @functools.wraps(create)
    def create_in_seq_num_order(
        self,
        schema,
        npartitions=1,
        *,
        key=None,
        metadata=None,
        specs=None,
        access_tags=None,
        table_name=None,
    ):
        # A table split in parts (key internal_0, ...: very many columns) is left as
        # tiled makes it: ordering only the part holding seq_num would misalign them.
        if key != "internal" or not {"seq_num", "time"} <= set(schema.names):
            return create(self, schema, npartitions, key=key, metadata=metadata, specs=specs,
                          access_tags=access_tags, table_name=table_name)  # fmt: skip
        from tiled.structures.core import StructureFamily
        from tiled.structures.data_source import DataSource
        from tiled.structures.table import TableStructure

        parameters = {"order_by_args": EVENT_TABLE_ORDER}
        if table_name is not None:
            parameters["table_name"] = table_name
        source = DataSource(
            structure=TableStructure.from_schema(schema, npartitions),
            structure_family=StructureFamily.table,
            mimetype="application/x-tiled-sql-table",
            parameters=parameters,
        )
        return self.new(StructureFamily.table, [source], key=key, metadata=metadata or {},
                        specs=specs or [], access_tags=access_tags)  # fmt: skip

    create_in_seq_num_order._orders_by_seq_num = True
    Container.create_appendable_table = create_in_seq_num_order


def serves_no_streams(context) -> None:
    """Let the clients of ``context`` skip stream closes: its server keeps no streams.

    Stands for: a run's stop costs no request per node the run made, on a server with
    nothing to close. bluesky-tiled-plugins' ``TiledWriter`` closes the stream of every
    node a run made when the run stops (``BaseClient.close_stream``: one
    ``DELETE /api/v1/stream/close/...`` each, about a fifth of an embedded catalog's
    requests). tiled 0.2.20's server acts on one only with a streaming cache
    (``--cache``) or webhooks (a config file); without them it looks the node up and
    does nothing. The embedded catalog servers have neither (decision 0036). tiled's
    client has no option to skip them, so ``close_stream`` is wrapped once: it returns
    at once for a context marked here, and sends the request for any other context (a
    facility's server may stream). Idempotent.
    """
    import functools

    from tiled.client.base import BaseClient

    close = BaseClient.close_stream
    if not getattr(close, "_skips_unstreamed", False):

        @functools.wraps(close)
        def close_if_streamed(self):
            if getattr(self.context, _SERVES_NO_STREAMS, False):
                return None
            return close(self)

        close_if_streamed._skips_unstreamed = True
        BaseClient.close_stream = close_if_streamed
    setattr(context, _SERVES_NO_STREAMS, True)


_SERVES_NO_STREAMS = "_multiscope_serves_no_streams"


# --------------------------------------------------------------------------------------
# FastAPI (tiled's server)
# --------------------------------------------------------------------------------------


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def analyse_overridden_dependencies_once() -> None:
    """Analyse each request's dependencies once per process, as FastAPI does without overrides.

    Stands for: what FastAPI does for an app without ``dependency_overrides`` (it
    analyses an endpoint's dependencies once, when the route is made), for an app with
    them. FastAPI 0.165 builds every sub-dependency of every request again
    (``get_dependant``: the callable's signature inspected, its parameters analysed,
    recursively) as soon as the app has any override, and tiled's server always has
    one (``get_settings``). In the embedded catalog server that was about a quarter of
    the CPU it spent serving requests (docs/benchmarks.md). Wrapped, a build that
    ``solve_dependencies`` asks for again with the same arguments (path, callable, name,
    scopes, scope and concurrency) returns the one built the first time, which
    is what the route itself keeps for a dependency that is not overridden: the request
    only reads it. An override changed later is another callable, so another build.
    Calls from anywhere else (making routes) pass through. The builds are kept for the
    process's life (one app in the catalog server's). Idempotent.
    """
    import functools
    import sys

    from fastapi.dependencies import utils

    build = utils.get_dependant
    if getattr(build, "_analysed_once", False):
        return
    solve = utils.solve_dependencies.__code__
    built = {}

    @functools.wraps(build)
    def get_dependant(**kwargs):
        if sys._getframe(1).f_code is not solve:
            return build(**kwargs)
        key = tuple(sorted((name, _hashable(value)) for name, value in kwargs.items()))
        try:
            dependant = built.get(key)
        except TypeError:  # an unhashable argument: build it, as FastAPI does
            return build(**kwargs)
        if dependant is None:
            dependant = built[key] = build(**kwargs)
        return dependant

    get_dependant._analysed_once = True
    utils.get_dependant = get_dependant
