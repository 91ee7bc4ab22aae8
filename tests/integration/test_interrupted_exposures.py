"""Interruptions inside an exposure corrupt nothing (issue 8, docs/stack-facts.md fault row 4).

Over Channel Access on the simulated TXM (binning 4, 64 x 64) and its ring IOC.
Inject a pause (Ctrl-C twice: ``request_pause``) or a beam dump (the ring IOC's
current to 0, the session's suspender trips) while the IOC reports the camera
exposing, after a few events of the stream; then resume (``RE.resume()``, or a
refill for the dump) or abort. Expect, read back from the catalog: every stream
has as many frames in its files as events, each seq_num once; no dark frame
(beam lost, or shutter closed) among the projections; rotation angles increasing;
the live reconstruction made from exactly the run's projections.
"""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky.utils import RunEngineInterrupted
from conftest import txm_session
from ophyd import EpicsSignal, EpicsSignalRO
from waiting import wait_until

from multiscope.plan_stubs.frames import acquire_frame
from multiscope.plans.mosaic import vertical_mosaic_tomo
from multiscope.plans.scans import count_frames
from multiscope.plans.tomography import fly_tomo_scan, tomo_scan
from multiscope.plans.xanes import energy_grid, xanes_2d

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0  # longest wait for any condition (never reached when things work)
GRID = dict(
    energies_keV=[8.25, 8.27, 8.29, 8.30, 8.333, 8.35, 8.37, 8.40, 8.43], whiteline_eV=(-5, 40)
)


@pytest.fixture(scope="module")
def txm(ca_port_pool, tmp_path_factory):
    """A TXM session (suspenders on) with the IOC's camera state and the ring's controls."""
    extra_args = ["--binning", "4", "--shape", "64", "64"]
    # A run left suspended by a failing case ends after 120 s instead of 30 min.
    options = {"max_suspension_s": 120.0}
    with txm_session(ca_port_pool, tmp_path_factory, "interrupted", extra_args, **options) as (
        session,
        running,
    ):
        ioc = {
            "state": EpicsSignalRO(running.prefix + "cam1:DetectorState_RBV", name="state",
                                   string=True),
            "dump": EpicsSignal(running.ring.prefix + "ring:dump", name="dump"),
            "inject": EpicsSignal(running.ring.prefix + "ring:inject", name="inject"),
            "current": EpicsSignalRO(running.ring.prefix + "ring:current", name="current"),
        }  # fmt: skip
        for signal in ioc.values():
            signal.wait_for_connection(timeout=10)
        session.devices["energy"].calibration.put({})  # thin lens: the IOC's optics
        session.devices["sample"].theta.velocity.set(180).wait(10)
        yield session, ioc


def _wait_until(condition, what: str) -> None:
    wait_until(condition, timeout=DEADLINE_S, interval=0.002, message=what)


def _with_exposure(camera, exposure_s, plan):
    """``plan`` after setting the camera's exposure (``count_frames`` keeps the camera's)."""
    yield from bps.mv(camera.cam.acquire_time, exposure_s)
    return (yield from plan)


def _plans(d):
    camera, sample, shutter, energy = d["camera"], d["sample"], d["shutter"], d["energy"]
    return {
        "count_frames": lambda: _with_exposure(camera, 0.15, count_frames([camera], 12)),
        "tomo_scan": lambda: tomo_scan(
            camera, sample, shutter, num_projections=12, exposure_s=0.15, num_darks=2,
            num_flats=2, flat_policy="both"),
        "fly_tomo_scan": lambda: fly_tomo_scan(
            camera, sample, shutter, num_projections=24, exposure_s=0.05,
            frame_period_s=0.1, num_darks=2, num_flats=2, flat_policy="both"),
        "xanes_2d": lambda: xanes_2d(
            camera, energy, sample, shutter, energy_grid("Ni", **GRID), exposure_s=0.15,
            num_frames=1, flat_policy="every", num_flats=1, num_darks=1),
        "vertical_mosaic_tomo": lambda: vertical_mosaic_tomo(
            camera, sample, shutter, num_tiles=2, tile_height_um=16.0, overlap_fraction=0.2,
            num_projections=8, exposure_s=0.15, num_darks=1, num_flats=1),
    }  # fmt: skip


class _Interrupter:
    """A thread that interrupts the run once the camera exposes after ``after`` events."""

    def __init__(self, session, ioc, action: str, after: int):
        self.session, self.ioc, self.action, self.after = session, ioc, action, after
        self.documents: list[tuple[str, dict]] = []
        self.landed_exposing = None
        self.error: BaseException | None = None
        self.cancelled = threading.Event()  # the run ended first: never interrupt a later one
        self._token = session.RE.subscribe(lambda name, doc: self.documents.append((name, doc)))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _events(self) -> int:
        # primary events, or (fly scan) the dark and flat events before the sweep
        return sum(1 for name, _ in self.documents if name == "event")

    def _exposing(self) -> bool:
        return self.ioc["state"].get(use_monitor=False) == "Acquire"

    def _run(self):
        try:
            _wait_until(lambda: self.cancelled.is_set()
                        or (self._events() >= self.after and self._exposing()),
                        f"the camera exposing after {self.after} events")  # fmt: skip
            if self.cancelled.is_set():
                return
            if self.action == "dump":
                self.ioc["dump"].put(1)
            else:
                self.session.RE.request_pause(defer=False)
            self.landed_exposing = True
            if self.action == "dump":
                # Refill once the suspender stopped the exposure (the camera idle).
                _wait_until(lambda: not self._exposing(), "the exposure stopped by the dump")
        except BaseException as ex:  # reported by join()
            self.error = ex
        finally:
            if self.action == "dump":  # always: a run left suspended would wait for it
                self.ioc["inject"].put(1)

    def join(self):
        self.cancelled.set()
        self._thread.join(DEADLINE_S)
        self.session.RE.unsubscribe(self._token)
        if self.error is not None:
            raise self.error
        assert self.landed_exposing, "the interruption did not land inside an exposure"


def _run_interrupted(session, ioc, plan, action: str, after: int):
    """Run ``plan`` interrupted by ``action`` (pause+resume, pause+abort, dump); its starts."""
    interrupter = _Interrupter(session, ioc, action, after)
    RE = session.RE
    try:
        if action == "dump":
            uids = RE(plan())
        else:
            with pytest.raises(RunEngineInterrupted):
                RE(plan())
            try:
                assert RE.state == "paused"
                # The pause stopped the exposure.
                assert ioc["state"].get(use_monitor=False) != "Acquire"
            except AssertionError:
                RE.abort()  # leave the module's RunEngine idle for the next case
                raise
            uids = RE.resume() if action == "resume" else RE.abort()
    finally:
        interrupter.join()
    starts = [doc for name, doc in interrupter.documents if name == "start"]
    assert len(starts) >= 1 and len(uids) == len(starts)
    return starts, interrupter.documents


def _check_run(session, uid, documents, expected_primary: int | None, rotation_key=None):
    """Frames read back equal events per stream; no dark projection; angles increasing."""
    run = session.catalog.run(uid)
    events = {}
    descriptors = {d["uid"]: d["name"] for n, d in documents if n == "descriptor"}
    for name, doc in documents:  # points (seq_nums) per stream: events or a flyer's datums
        stream = descriptors.get(doc.get("descriptor"))
        if name == "event" and stream:
            events.setdefault(stream, []).append(doc["seq_num"])
        elif name == "stream_datum" and stream:
            seq = doc["seq_nums"]
            events.setdefault(stream, []).extend(range(seq["start"], seq["stop"]))
    frames = {}
    for stream, seqs in events.items():
        if stream not in ("primary", "dark", "flat"):
            continue
        data = run[stream].read()
        frames[stream] = np.asarray(data["camera_image"], dtype=float).reshape(-1, 64, 64)
        # The RunEngine's feed may repeat a replayed point; the catalog holds each once.
        assert len(frames[stream]) == len(set(seqs)), stream
        assert len(data["time"]) == len(set(seqs)), stream
    if expected_primary is not None:
        assert len(frames["primary"]) == expected_primary
    if "primary" not in frames:  # an aborted fly sweep: never collected, no event of it
        return run
    bright = frames["primary"].mean(axis=(1, 2))
    if "dark" in frames:  # a frame without beam is at the dark level, within its noise
        darks = frames["dark"]
        noise = max(darks.mean(axis=(1, 2)).std(), darks.std() / np.sqrt(darks[0].size))
        threshold = darks.mean() + max(10 * noise, 5.0)
    else:  # the same field throughout: a dark frame is far below the others
        threshold = 0.5 * np.median(bright)
    assert (bright > threshold).all(), f"dark frames among the projections: {bright}"
    if rotation_key:
        angles = np.asarray(run["primary"].read()[rotation_key], dtype=float)
        assert (np.diff(angles) > 0).all(), angles
    return run


CASES = [
    # plan, action, events before the interruption
    ("count_frames", "resume", 3),
    ("count_frames", "dump", 3),
    ("count_frames", "abort", 3),
    ("tomo_scan", "resume", 6),
    ("tomo_scan", "dump", 6),
    ("tomo_scan", "abort", 6),
    ("fly_tomo_scan", "resume", 4),
    ("fly_tomo_scan", "dump", 4),
    ("fly_tomo_scan", "abort", 4),
    ("xanes_2d", "resume", 6),
    ("xanes_2d", "dump", 6),
    ("vertical_mosaic_tomo", "resume", 6),
]
EXPECTED_PRIMARY = {"count_frames": 12, "tomo_scan": 12, "fly_tomo_scan": 24, "xanes_2d": 9,
                    "vertical_mosaic_tomo": 8}  # fmt: skip
ROTATION_KEY = {"tomo_scan": "sample_theta", "fly_tomo_scan": "camera_theta",
                "vertical_mosaic_tomo": "sample_theta"}  # fmt: skip


@pytest.mark.parametrize(("plan_name", "action", "after"), CASES)
def test_interruption_inside_an_exposure_corrupts_nothing(txm, plan_name, action, after):
    session, ioc = txm
    plan = _plans(session.devices)[plan_name]
    starts, documents = _run_interrupted(session, ioc, plan, action, after)
    assert session.drain(120)
    assert not session.pipeline.errors
    for start in starts:
        run_docs = [(n, d) for n, d in documents if _belongs(n, d, start["uid"], documents)]
        stop = session.catalog.run(start["uid"]).metadata["stop"]
        assert stop["exit_status"] == ("abort" if action == "abort" else "success")
        expected = None if action == "abort" else EXPECTED_PRIMARY[plan_name]
        _check_run(session, start["uid"], run_docs, expected, ROTATION_KEY.get(plan_name))
    if plan_name in ("tomo_scan", "fly_tomo_scan") and action != "abort":
        # The live reconstruction used exactly the run's projections.
        (derived,) = [
            r for r in session.catalog.runs(limit=200)
            if session.catalog.run(r.uid).metadata["start"].get("derived_from")
            == starts[0]["uid"]
        ]  # fmt: skip
        parameters = session.catalog.run(derived.uid).metadata["start"]["parameters"]
        assert parameters["num_projections"] == EXPECTED_PRIMARY[plan_name]
        assert (parameters["num_darks"], parameters["num_flats"]) == (2, 4)


def _belongs(name, doc, uid, documents) -> bool:
    descriptors = {d["uid"] for n, d in documents if n == "descriptor" and d["run_start"] == uid}
    if name in ("start",):
        return doc["uid"] == uid
    if name in ("descriptor", "stop"):
        return doc["run_start"] == uid
    return doc.get("descriptor") in descriptors


def test_a_point_replayed_after_its_save_reuses_its_frame_and_resource(txm):
    """A pause after a point's save, before the next checkpoint: the point is replayed.

    The camera reports the frame it took (no second exposure), does not send its
    StreamResource again (bluesky refuses a repeat), and the repeated event is dropped
    for the catalog: the file holds 2 frames for 2 points.
    """
    session, ioc = txm
    camera, RE = session.devices["camera"], session.RE
    documents = []
    token = RE.subscribe(lambda name, doc: documents.append((name, doc)))

    def plan():
        yield from bps.open_run()
        yield from bps.stage(camera)
        yield from acquire_frame(camera, 0)
        yield from bps.pause()  # after the save: the rewind replays point 0
        yield from acquire_frame(camera, 1)
        yield from bps.unstage(camera)
        return (yield from bps.close_run())

    try:
        with pytest.raises(RunEngineInterrupted):
            RE(plan())
        (uid,) = RE.resume()
    finally:
        RE.unsubscribe(token)
    names = [name for name, _ in documents]
    assert names.count("stream_resource") == 1
    assert names.count("event") == 3  # point 0 twice (same seq_num), point 1
    assert session.drain(60)
    run = session.catalog.run(uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    frames = np.asarray(run["primary"].read()["camera_image"])
    assert frames.shape[0] == 2
    (resource,) = [doc for name, doc in documents if name == "stream_resource"]
    with h5py.File(resource["uri"].removeprefix("file://localhost"), "r") as f:
        assert f["/entry/data/data"].shape[0] == 2  # one exposure per point
