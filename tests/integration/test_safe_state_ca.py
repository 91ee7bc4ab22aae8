"""Every exit leaves the TXM safe: each plan that opens the shutter, ended by a fault, an
abort and a stop, over Channel Access on the simulated TXM IOC (binning 4, 64 x 64).

Afterwards the IOC (read from its PVs, not the clients' caches) reads the shutter
closed, the camera neither acquiring nor capturing, the rotation's speed and the
camera's exposure and trigger mode as before the plan, and the sample back at its
in-beam position (``x``; ``x`` and ``z`` for the radiograph grid).

Where each case lands is chosen by a RunEngine message hook, not by timing: it counts
one kind of message sent while the IOC's shutter reads open (e.g. the 2nd move of the
rotation, the flyer's kickoff) and at the n-th one

* fault: narrows that axis's soft limit on the IOC between where it is and where the
  plan sends it, so the device refuses the move (a ``LimitError``) and the run fails;
* abort, stop: a watcher thread waits (with a deadline) until the IOC reads the shutter
  open and the camera acquiring, then pauses the RunEngine as Ctrl-C does
  (``request_pause``); the test asserts the shutter is open there, then aborts or stops.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from bluesky.utils import RunEngineInterrupted
from conftest import txm_session
from ophyd import EpicsSignal, EpicsSignalRO
from waiting import wait_until

from multiscope.plan_stubs.safe_state import go_safe, txm_safe_state
from multiscope.plans.calibration import focus_calibration
from multiscope.plans.mosaic import mosaic_radiograph, vertical_mosaic_tomo
from multiscope.plans.tomography import fly_tomo_scan, tomo_scan
from multiscope.plans.xanes import energy_grid, xanes_2d, xanes_3d

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0  # longest wait for any condition (never reached when things work)
USER_EXPOSURE_S = 0.013  # the camera's exposure before each plan (plans set 0.05)
# The IOC's state after every plan, as (PV after the prefix, name).
IOC_STATE = {
    "shutter_open": "shutter:Open-Sts", "acquiring": "cam1:Acquire_RBV",
    "capturing": "HDF1:Capture_RBV", "theta_velocity": "sample:theta.VELO",
    "x": "sample:x.RBV", "z": "sample:z.RBV", "exposure": "cam1:AcquireTime_RBV",
    "trigger_mode": "cam1:TriggerMode_RBV",
}  # fmt: skip


@pytest.fixture(scope="module")
def txm(ca_port_pool, tmp_path_factory):
    """A TXM session on its own IOC, and readers of the IOC's own PVs."""
    extra_args = ["--binning", "4", "--shape", "64", "64"]
    with txm_session(ca_port_pool, tmp_path_factory, "safe", extra_args) as (session, running):
        ioc = {key: EpicsSignalRO(running.prefix + pv, name=key) for key, pv in IOC_STATE.items()}
        for signal in ioc.values():
            signal.wait_for_connection(timeout=10)
        session.devices["energy"].calibration.put({})  # thin lens: the IOC's optics
        yield session, ioc


def _read_ioc(ioc) -> dict:
    return {key: signal.get(use_monitor=False) for key, signal in ioc.items()}


def _wait_until(condition, what: str) -> None:
    wait_until(condition, timeout=DEADLINE_S, interval=0.002, message=what)


# -- the plans, small -------------------------------------------------------------------

GRID = dict(energies_keV=[8.29, 8.30, 8.333, 8.35, 8.37, 8.40, 8.43], whiteline_eV=(-5, 40))


def _plans(d) -> dict:
    camera, sample, shutter, energy = d.camera, d.sample, d.shutter, d.energy
    grid = energy_grid("Ni", **GRID)
    return {
        "tomo_scan": lambda: tomo_scan(
            camera, sample, shutter, num_projections=6, angle_range_deg=30, exposure_s=0.05,
            num_darks=1, num_flats=2, flat_policy="every", flat_every=3),
        "fly_tomo_scan": lambda: fly_tomo_scan(
            camera, sample, shutter, num_projections=20, angle_range_deg=60, exposure_s=0.03,
            frame_period_s=0.05, num_darks=1, num_flats=1, flat_policy="both"),
        "vertical_mosaic_tomo": lambda: vertical_mosaic_tomo(
            camera, sample, shutter, num_tiles=2, tile_height_um=16.0, overlap_fraction=0.2,
            num_projections=4, angle_range_deg=30, exposure_s=0.05, num_darks=1, num_flats=1),
        "mosaic_radiograph": lambda: mosaic_radiograph(
            camera, sample, shutter, rows=2, columns=2, tile_width_um=16.0,
            tile_height_um=16.0, exposure_s=0.05, num_flats=1),
        "xanes_2d": lambda: xanes_2d(
            camera, energy, sample, shutter, grid, exposure_s=0.05, num_frames=1,
            flat_policy="every", num_flats=1, num_darks=1),
        "xanes_3d": lambda: xanes_3d(
            camera, energy, sample, shutter, grid, num_projections=4, angle_range_deg=30,
            exposure_s=0.05, flat_policy="every", tomo_flat_policy="start", num_flats=1,
            num_darks=1),
        "focus_calibration": lambda: focus_calibration(
            camera, energy, shutter, [8.25, 8.35], zp_z_range_mm=0.2, zp_z_step_mm=0.1,
            exposure_s=0.05),
    }  # fmt: skip


@dataclass(frozen=True)
class Landing:
    """Where a case lands: the ``n``-th ``command`` on ``target`` sent with the shutter open."""

    command: str
    target: str  # a device path ("sample.theta") or "" for any object
    n: int


# Faults land on moves the plan still has to make (the axis is narrowed there); pauses
# after a checkpoint, with the shutter open, mid-plan (after the sample moved out for the
# tomogram's second flats, the rotation at its fly speed, the grid away from its origin).
# Small angle ranges keep the step moves short.
LANDINGS = {
    #                       fault                           pause (abort, stop)
    "tomo_scan": (Landing("set", "sample.theta", 4), Landing("set", "sample.x", 3)),
    "fly_tomo_scan": (Landing("set", "sample.theta", 2), Landing("kickoff", "", 1)),
    "vertical_mosaic_tomo": (Landing("set", "sample.theta", 6),
                             Landing("set", "sample.theta", 6)),  # the 2nd tile
    "mosaic_radiograph": (Landing("set", "sample.z", 3), Landing("set", "sample.z", 3)),
    "xanes_2d": (Landing("set", "energy", 3), Landing("set", "energy", 2)),
    "xanes_3d": (Landing("set", "sample.theta", 3), Landing("set", "sample.theta", 3)),
    "focus_calibration": (Landing("set", "energy.zp_z", 4), Landing("set", "energy.zp_z", 3)),
}  # fmt: skip


def _device(devices, path: str):
    name, *parts = path.split(".")
    obj = devices[name]
    for part in parts:
        obj = getattr(obj, part)
    return obj


class _Hook:
    """RunEngine ``msg_hook``: calls ``act(msg)`` at the landing's n-th message."""

    def __init__(self, landing: Landing, target, shutter_open, act):
        self.landing, self.target, self.shutter_open, self.act = landing, target, shutter_open, act
        self.count = 0
        self.fired = threading.Event()

    def __call__(self, msg) -> None:
        if self.fired.is_set() or msg.command != self.landing.command:
            return
        if self.target is not None and msg.obj is not self.target:
            return
        if self.shutter_open.get(use_monitor=False) != 1:
            return
        self.count += 1
        if self.count == self.landing.n:
            self.act(msg)
            self.fired.set()


class _NarrowedLimit:
    """Narrow ``motor``'s soft limit on the IOC to refuse a move to ``target``; undo it."""

    def __init__(self, motor):
        self.motor = motor
        self.limits = tuple(motor.limits)  # as the client saw them before
        self.saved: list[tuple[EpicsSignal, float]] = []

    def refuse(self, target: float) -> None:
        here = float(self.motor.position)
        field = "HLM" if target > here else "LLM"
        limit = EpicsSignal(f"{self.motor.prefix}.{field}", name=f"{self.motor.name}_{field}")
        limit.wait_for_connection(timeout=10)
        self.saved.append((limit, limit.get(use_monitor=False)))
        limit.put((here + target) / 2, wait=True)
        # The client refuses on the limits it monitors: wait until it sees the new one.
        low, high = self.limits
        _wait_until(lambda: tuple(self.motor.limits) != (low, high), f"{limit.name} seen")

    def undo(self) -> None:
        for limit, value in self.saved:
            limit.put(value, wait=True)
        _wait_until(lambda: tuple(self.motor.limits) == self.limits, f"{self.motor.name} limits")


@pytest.fixture
def fresh(txm):
    """The session ready for a case: devices home, the user's exposure, ``before`` state."""
    session, ioc = txm
    d = SimpleNamespace(**session.devices)
    assert session.RE.state == "idle"
    d.sample.z.set(0.0).wait(30)
    d.sample.x.set(0.0).wait(30)
    d.sample.theta.velocity.set(90.0).wait(10)
    d.camera.cam.acquire_time.set(USER_EXPOSURE_S).wait(10)
    before = _read_ioc(ioc)
    assert before["shutter_open"] == 0 and before["acquiring"] == 0
    documents = []
    token = session.RE.subscribe(lambda name, doc: documents.append((name, doc)))
    yield session, ioc, d, before, documents
    session.RE.unsubscribe(token)
    session.RE.msg_hook = None


def _assert_safe(ioc, before, plan_name: str) -> None:
    after = _read_ioc(ioc)
    assert after["shutter_open"] == 0, "shutter left open"
    assert after["acquiring"] == 0 and after["capturing"] == 0, "camera left acquiring"
    assert after["theta_velocity"] == pytest.approx(before["theta_velocity"]), "rotation speed"
    assert after["exposure"] == pytest.approx(before["exposure"]), "exposure"
    assert after["trigger_mode"] == before["trigger_mode"], "trigger mode"
    assert after["x"] == pytest.approx(before["x"], abs=1e-3), "sample not back in the beam"
    if plan_name == "mosaic_radiograph":  # the grid's origin
        assert after["z"] == pytest.approx(before["z"], abs=1e-3), "sample z not back"


def _stops(documents) -> list[dict]:
    return [doc for name, doc in documents if name == "stop"]


@pytest.mark.parametrize("plan_name", list(LANDINGS))
def test_a_fault_mid_plan_leaves_the_instrument_safe(fresh, plan_name):
    session, ioc, d, before, documents = fresh
    landing = LANDINGS[plan_name][0]
    target = _device(session.devices, landing.target)
    # The energy axis is refused by its monochromator's limit, any other axis by its own.
    motor = target.mono if landing.target == "energy" else target
    narrowed = _NarrowedLimit(motor)

    # (an energy's mono goes where the energy goes, in keV)
    refuse = lambda msg: narrowed.refuse(float(msg.args[0]))  # noqa: E731
    session.RE.msg_hook = _Hook(landing, target, d.shutter.is_open, refuse)
    t0 = time.monotonic()
    try:
        with pytest.raises(ValueError, match="limit"):
            session.RE(_plans(d)[plan_name]())
    finally:
        narrowed.undo()
    elapsed = time.monotonic() - t0
    assert session.RE.msg_hook.fired.is_set(), "the fault never landed"
    _assert_safe(ioc, before, plan_name)
    stop = _stops(documents)[-1]
    assert stop["exit_status"] == "fail" and "limit" in stop["reason"]
    print(f"{plan_name} fault: {elapsed:.1f} s")


@pytest.mark.parametrize("action", ["abort", "stop"])
@pytest.mark.parametrize("plan_name", list(LANDINGS))
def test_abort_or_stop_while_the_shutter_is_open_leaves_the_instrument_safe(
    fresh, plan_name, action
):
    session, ioc, d, before, documents = fresh
    RE = session.RE
    landing = LANDINGS[plan_name][1]
    target = _device(session.devices, landing.target) if landing.target else None
    hook = _Hook(landing, target, d.shutter.is_open, lambda msg: None)
    RE.msg_hook = hook
    paused_with = {}

    def pause_while_exposing():
        hook.fired.wait(DEADLINE_S)
        shutter_open, acquiring = ioc["shutter_open"], ioc["acquiring"]
        _wait_until(
            lambda: (
                shutter_open.get(use_monitor=False) == 1 and acquiring.get(use_monitor=False) == 1
            ),
            "shutter open and camera acquiring",
        )
        RE.request_pause(defer=False)
        paused_with["shutter_open"] = shutter_open.get(use_monitor=False)

    watcher = threading.Thread(target=pause_while_exposing, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    with pytest.raises(RunEngineInterrupted):
        RE(_plans(d)[plan_name]())
    watcher.join(DEADLINE_S)
    try:
        assert RE.state == "paused"
        assert _read_ioc(ioc)["shutter_open"] == 1, "paused with the shutter closed: no test"
    finally:
        getattr(RE, action)()  # also on a failed check: the next case needs an idle RunEngine
    elapsed = time.monotonic() - t0
    assert RE.state == "idle"
    _assert_safe(ioc, before, plan_name)
    assert _stops(documents)[-1]["exit_status"] == {"abort": "abort", "stop": "success"}[action]
    print(f"{plan_name} {action}: {elapsed:.1f} s")


def test_halt_runs_no_cleanup_and_go_safe_closes_the_shutter(fresh):
    """What ``RE.halt()`` leaves (docs/txm.md, "Safe state"), and ``go_safe`` after it."""
    session, ioc, d, before, documents = fresh
    RE = session.RE
    hook = _Hook(Landing("kickoff", "", 1), None, d.shutter.is_open, lambda msg: None)
    RE.msg_hook = hook

    def pause_while_flying():
        hook.fired.wait(DEADLINE_S)
        _wait_until(lambda: ioc["acquiring"].get(use_monitor=False) == 1, "camera acquiring")
        RE.request_pause(defer=False)

    watcher = threading.Thread(target=pause_while_flying, daemon=True)
    watcher.start()
    with pytest.raises(RunEngineInterrupted):
        RE(_plans(d)["fly_tomo_scan"]())
    watcher.join(DEADLINE_S)
    try:
        assert RE.state == "paused"
    finally:
        RE.halt()  # also on a failed check: the next case needs an idle RunEngine
    left = _read_ioc(ioc)
    try:
        # The RunEngine's own cleanup stopped the rotation and unstaged the camera (its
        # acquisition stopped, its file closed); no plan cleanup ran: the shutter is open
        # and the rotation keeps its fly speed.
        assert left["shutter_open"] == 1
        assert left["acquiring"] == 0 and left["capturing"] == 0
        assert left["theta_velocity"] != pytest.approx(before["theta_velocity"])
        assert _stops(documents)[-1]["exit_status"] == "abort"
        RE(go_safe(txm_safe_state(d.shutter, camera=d.camera, sample=d.sample)))
        assert _read_ioc(ioc)["shutter_open"] == 0
    finally:
        d.sample.theta.velocity.set(before["theta_velocity"]).wait(10)
