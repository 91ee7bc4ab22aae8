"""A configured session drives the demo IOC over CA and stores runs, frames included."""

import numpy as np
import pytest
from conftest import shared_data_dir

from multiscope.plans.preflight import PlanArgumentError
from multiscope.plans.scans import line_scan
from multiscope.session import configure_session

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data directory, so one catalog server, for the module's sessions."""
    return shared_data_dir(tmp_path_factory, "session-demo")


@pytest.fixture
def session(demo_ioc, data_dir):
    namespace = {}
    session = configure_session(
        namespace, "demo", data_dir=data_dir, prefix=demo_ioc.prefix, table=False, progress=False
    )
    for device in session.devices.values():
        device.wait_for_connection(timeout=10)
    session.devices["shutter"].set("open").wait(5)
    session.devices["cam"].cam.acquire_time.set(0.002).wait(5)
    yield session, namespace
    session.close()


def test_session_names_and_refuses_a_second_setup(session, tmp_path):
    session, namespace = session
    for name in (
        "RE",
        "catalog",
        "session",
        "bp",
        "bps",
        "m1",
        "cam",
        "beam_current",
        "shutter",
        "line_scan",
        "count_frames",
    ):
        assert name in namespace, name
    assert namespace["m1"] is session.devices["m1"]
    with pytest.raises(RuntimeError, match="already ran in this namespace"):
        configure_session(namespace, "demo", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown instrument"):
        configure_session({}, "nonesuch", data_dir=tmp_path)


def test_scan_is_stored_with_frames_and_reads_back(session, data_dir):
    session, _ = session
    m1, cam, beam = (session.devices[n] for n in ("m1", "cam", "beam_current"))
    assets = data_dir / "assets" / "demo"
    before = set(assets.rglob("*.h5"))
    (uid,) = session.RE(line_scan([cam, beam], m1, -1, 1, 9))
    assert session.catalog.drain(30)
    run = session.catalog.run(uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    data = run["primary"].read()
    frames = np.asarray(data[cam.image_key])
    assert frames.shape[0] == 9 and frames.shape[-2:] == (64, 64)
    np.testing.assert_allclose(np.asarray(data["m1"]), np.linspace(-1, 1, 9), atol=1e-3)
    # Frames in the catalog are the ones in the IOC's HDF5 file under the data dir's assets/.
    files = sorted(set(assets.rglob("*.h5")) - before)
    assert len(files) == 1
    import h5py

    with h5py.File(files[0], "r") as f:
        np.testing.assert_array_equal(f["/entry/data/data"][()], frames.reshape(9, 64, 64))
    # A brighter frame where the simulator puts the spot (m1 = 0.3 mm): physics, not zeros.
    totals = frames.reshape(9, -1).sum(axis=1)
    assert np.argmax(totals) in (5, 6)  # positions 0.25 and 0.5


def test_out_of_limits_scan_refused_without_motion_or_run(session):
    session, _ = session
    m1 = session.devices["m1"]
    m1.set(0.5).wait(5)
    runs_before = len(session.catalog.runs(limit=1000))
    with pytest.raises(PlanArgumentError, match="m1 target"):
        session.RE(line_scan([session.devices["beam_current"]], m1, 0, 50, 3))
    assert m1.position == pytest.approx(0.5, abs=1e-3)
    session.catalog.drain(10)
    assert len(session.catalog.runs(limit=1000)) == runs_before


def test_the_tours_refusal_comes_at_the_call_without_a_traceback_log(session, caplog):
    """README: `line_scan([cam], m1, 0, 50, 5)  # PlanArgumentError: outside its limits`."""
    session, namespace = session
    m1, cam = namespace["m1"], namespace["cam"]
    m1.set(0.5).wait(5)
    with pytest.raises(PlanArgumentError, match="outside its limits"):
        namespace["line_scan"]([cam], m1, 0, 50, 5)  # the plan is built, not run
    # Inside RE(...) too, and bluesky's "Run aborted" traceback is not logged above it.
    with caplog.at_level("DEBUG", logger="bluesky"), pytest.raises(PlanArgumentError):
        session.RE(line_scan([cam], m1, 0, 50, 5))
    assert [r for r in caplog.records if r.getMessage() == "Run aborted"] == []
    assert m1.position == pytest.approx(0.5, abs=1e-3)
    # Its dry run over CA: the camera's frames and m1's moves, nothing moved or stored.
    runs_before = len(session.catalog.runs(limit=1000))
    summary = namespace["dry_run"](namespace["line_scan"]([cam], m1, 0, 0.2, 3))
    assert summary.plan_names == ["line_scan"] and summary.frames == {"cam": 3}
    ny, nx = (
        int(s.get()) for s in (cam.cam.array_size.array_size_y, cam.cam.array_size.array_size_x)
    )
    assert summary.frame_bytes["cam"] == ny * nx * 2 > 0
    assert summary.moves["m1"].count == 3 and summary.limit_problems == []
    assert summary.estimated_duration_s > 0
    assert m1.position == pytest.approx(0.5, abs=1e-3)
    assert len(session.catalog.runs(limit=1000)) == runs_before
    # A valid call still runs to the end through the checked plan.
    (uid,) = session.RE(namespace["line_scan"]([namespace["beam_current"]], m1, 0, 0.2, 3))
    assert session.catalog.drain(60)
    assert session.catalog.run(uid).metadata["stop"]["num_events"] == {"primary": 3}


def test_staged_signals_wait_for_a_slow_read(session):
    """Unstage reads back what it restores: a busy IOC gets 5 s, not ophyd's 2 s."""
    from multiscope.devices.areadetector import SLOW_READ_TIMEOUT_S

    session, _ = session
    cam = session.devices["cam"]
    cam.stage()
    try:
        assert SLOW_READ_TIMEOUT_S == 5.0
        for signal in (cam.hdf1.auto_save, cam.hdf1.file_write_mode, cam.cam.image_mode):
            assert signal.timeout == SLOW_READ_TIMEOUT_S, signal.name
    finally:
        cam.unstage()
