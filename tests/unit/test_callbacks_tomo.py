"""Live tomography preview, full reconstruction and the background wrapper, on synthetic runs.

Runs are built with ``event_model.compose_run``; frames (a sphere phantom with a
known rotation-axis offset and Poisson noise) are written by the IOC's own HDF5
writer and referenced by stream_resource/stream_datum documents (synthetic_tomo.py).
"""

import threading
import time

import h5py
import numpy as np
import pytest
from event_model import RunRouter
from synthetic_tomo import RunSpec, random_spheres, tomo_run, truth_slice

from multiscope.callbacks.background import BackgroundCallback
from multiscope.callbacks.tomo import (
    LiveTomoPreview,
    TomoReconstructor,
    tomo_factory,
    warm_up,
)
from multiscope.frame_files import FrameReader

NY, NX = 48, 96
CENTER = (NX - 1) / 2 + 3.3  # the rotation axis is 3.3 px right of the detector centre


@pytest.fixture(scope="module")
def spheres():
    return random_spheres(np.random.default_rng(1), 12, z_range=(4, NY - 4), lateral=30)


def _pearson_in_fov(image, truth):
    n = image.shape[-1]
    yy, xx = np.mgrid[:n, :n]
    fov = (yy - n // 2) ** 2 + (xx - n // 2) ** 2 < (0.42 * n) ** 2
    return float(np.corrcoef(image[fov], truth[fov])[0, 1])


def test_live_preview_matches_truth_and_updates_at_every_projection(tmp_path, spheres):
    warm_up()
    spec = RunSpec(spheres, ny=NY, nx=NX, center=CENTER, center_guess_px=CENTER, fly=True)
    preview = LiveTomoPreview()
    updates = []
    preview.on_update(lambda slices, n: updates.append((n, slices[NY // 2].copy())))
    for name, doc in tomo_run(spec, tmp_path):
        preview(name, doc)

    assert preview.rows == [12, 24, 36]  # 25/50/75 % of the height
    assert preview.center == pytest.approx(CENTER)
    assert preview.num_projections == spec.num_projections
    # One update per projection, each with the slice as it stood then.
    assert [n for n, _ in updates] == list(range(1, spec.num_projections + 1))
    assert not np.allclose(updates[-2][1], updates[-1][1])
    r = _pearson_in_fov(preview.slices[NY // 2], truth_slice(spheres, NY // 2, NX))
    assert r > 0.9, r
    # Already recognisable after half the scan (90 deg).
    assert _pearson_in_fov(updates[89][1], truth_slice(spheres, NY // 2, NX)) > 0.5


def test_live_preview_catches_up_when_darks_and_flats_come_late(tmp_path, spheres):
    # Step scan: angles come from the events, darks and flats after every projection.
    spec = RunSpec(
        spheres,
        ny=NY,
        nx=NX,
        center=CENTER,
        center_guess_px=CENTER,
        fly=False,
        order=("primary", "dark", "flat"),
    )
    preview = LiveTomoPreview()
    seen = []
    for name, doc in tomo_run(spec, tmp_path):
        preview(name, doc)
        seen.append((name, preview.num_projections))
    # Nothing is reconstructed before both darks and flats exist ...
    first_flat = next(i for i, (name, _) in enumerate(seen) if name == "descriptor" and i > 3)
    assert all(n == 0 for _, n in seen[:first_flat])
    # ... then every projection is caught up, with the complete flat set.
    assert preview.num_projections == spec.num_projections
    r = _pearson_in_fov(preview.slices[NY // 2], truth_slice(spheres, NY // 2, NX))
    assert r > 0.9, r


def test_reconstructor_finds_center_writes_files_and_publishes_derived_run(tmp_path, spheres):
    spec = RunSpec(spheres, ny=NY, nx=NX, center=CENTER, fly=False, seed=2)
    published = []
    recon = TomoReconstructor(
        tmp_path / "out", publish=lambda name, doc: published.append((name, doc)), tiff=True
    )
    docs = list(tomo_run(spec, tmp_path / "raw"))
    raw_uid = docs[0][1]["uid"]
    for name, doc in docs:
        recon(name, doc)

    assert abs(recon.center - CENTER) < 0.5, recon.center
    assert recon.volume.shape == (NY, NX, NX)
    assert recon.raw_uid == raw_uid
    assert _pearson_in_fov(recon.volume[NY // 2], truth_slice(spheres, NY // 2, NX)) > 0.9

    h5 = tmp_path / "out" / raw_uid / "recon.h5"
    assert recon.paths["volume"] == h5
    with h5py.File(h5, "r") as f:
        ds = f["/entry/data/data"]
        assert ds.shape == (1, NY, NX, NX) and ds.dtype == np.float32
        assert ds.attrs["center_px"] == pytest.approx(recon.center)
        assert ds.attrs["algorithm"] == "gridrec"
        assert ds.attrs["pixel_size_um"] == pytest.approx(spec.pixel_size_um)
    assert recon.paths["figure"].stat().st_size > 10_000
    assert recon.paths["tiff"].exists()

    names = [name for name, _ in published]
    assert names == ["start", "descriptor", "stream_resource", "stream_datum", "event", "stop"]
    start = published[0][1]
    assert start["plan_name"] == "tomo_reconstruction"
    assert start["derived_from"] == raw_uid
    assert start["uid"] == recon.uid
    assert start["parameters"]["center_px"] == pytest.approx(recon.center)
    assert start["parameters"]["algorithm"] == "gridrec"
    assert start["figures"] == [str(recon.paths["figure"])]
    assert "multiscope.analysis.tomo.find_center" in start["analysis_functions"]
    assert {"numpy", "finufft", "multiscope"} <= set(start["software"])
    descriptor = published[1][1]
    assert descriptor["data_keys"]["volume"]["shape"] == [1, NY, NX, NX]
    assert descriptor["data_keys"]["volume"]["external"] == "STREAM:"
    event = published[4][1]
    assert event["data"]["center_px"] == pytest.approx(recon.center)
    assert event["data"]["contrast_to_noise"] > 5
    assert published[-1][1]["exit_status"] == "success"

    # A consumer of the published documents reads the volume back from the file.
    reader = FrameReader()
    reader.add_descriptor(descriptor)
    reader.add_resource(published[2][1])
    block = reader.read(published[3][1])
    reader.close()
    assert block.stream == "primary" and block.data_key == "volume"
    np.testing.assert_array_equal(block.data[0], recon.volume)


def test_reconstructor_ignores_failed_and_other_runs(tmp_path, spheres):
    published = []
    recon = TomoReconstructor(tmp_path / "out", publish=lambda n, d: published.append(n))
    small = dict(ny=16, nx=32, num_projections=20, center=15.5)
    for name, doc in tomo_run(RunSpec(spheres, exit_status="abort", **small), tmp_path):
        recon(name, doc)
    for name, doc in tomo_run(RunSpec(spheres, plan_name="count", **small), tmp_path):
        recon(name, doc)
    assert published == [] and recon.volume is None


def test_tomo_factory_builds_callbacks_for_tomography_runs_only():
    factory = tomo_factory(LiveTomoPreview, rows=[3])
    callbacks, _ = factory("start", {"plan_name": "fly_tomo_scan", "uid": "a", "time": 0})
    assert len(callbacks) == 1 and isinstance(callbacks[0], LiveTomoPreview)
    assert factory("start", {"plan_name": "count", "uid": "b", "time": 0}) == ([], [])
    RunRouter([factory])  # accepted by event-model's router


def test_reconstructor_in_background_through_run_router(tmp_path, spheres):
    published = []
    router = RunRouter(
        [
            tomo_factory(
                TomoReconstructor,
                output_dir=tmp_path / "out",
                publish=lambda n, d: published.append(n),
            )
        ]
    )
    bg = BackgroundCallback(router)
    small = RunSpec(spheres, ny=16, nx=32, num_projections=40, center=15.5)
    for name, doc in tomo_run(small, tmp_path):
        bg(name, doc)
    assert bg.drain(timeout=30)
    assert bg.errors == []
    assert published[0] == "start" and published[-1] == "stop"
    assert bg.close(timeout=5)


# ------------------------------------------------------------------ BackgroundCallback


def test_background_callback_never_blocks_the_caller():
    done = []

    def slow(name, doc):
        time.sleep(0.05)
        done.append(name)

    bg = BackgroundCallback(slow)
    t0 = time.perf_counter()
    for i in range(20):
        bg("event", {"uid": str(i)})
    enqueue_s = time.perf_counter() - t0
    assert enqueue_s < 0.05, enqueue_s  # the work itself takes 1 s
    assert bg.pending > 0
    assert bg.drain(timeout=5)
    assert len(done) == 20
    assert bg.close(timeout=1)


def test_background_callback_keeps_errors_and_goes_on():
    seen = []

    def flaky(name, doc):
        if doc["uid"] == "bad":
            raise ValueError("boom")
        seen.append(doc["uid"])

    bg = BackgroundCallback(flaky)
    for uid in ("a", "bad", "b"):
        bg("event", {"uid": uid})  # never raises into the caller
    assert bg.drain(timeout=5)
    assert seen == ["a", "b"]
    assert len(bg.errors) == 1
    err = bg.errors[0]
    assert err.name == "event" and err.uid == "bad" and isinstance(err.exception, ValueError)
    assert "boom" in err.traceback
    bg.close()
    bg("event", {"uid": "late"})  # after close: ignored, not raised
    assert seen == ["a", "b"]


def test_background_callback_drops_the_rest_of_a_run_when_full():
    gate = threading.Event()
    seen = []

    def blocked(name, doc):
        gate.wait(5)
        seen.append(name)

    bg = BackgroundCallback(blocked, maxsize=3)
    bg("start", {"uid": "s1"})
    deadline = time.monotonic() + 5
    while bg._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.001)  # the worker has taken the start and waits at the gate
    for name in ("descriptor", "event", "event", "event", "event", "stop"):
        bg(name, {"uid": name})
    gate.set()
    assert bg.drain(timeout=5)
    # The run lost its tail, stop included: consumers never see a partial run as complete.
    assert bg.dropped == 3
    assert seen == ["start", "descriptor", "event", "event"]
    bg("start", {"uid": "s2"})
    bg("stop", {"uid": "s2-stop"})
    assert bg.drain(timeout=5)
    assert seen[-2:] == ["start", "stop"]
    bg.close()
