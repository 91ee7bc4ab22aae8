"""Demo devices over real Channel Access against the simulated demo IOC."""

from __future__ import annotations

import os
import signal
import threading
import time

import h5py
import numpy as np
import pytest
from waiting import wait_until

from multiscope.instruments import demo

pytestmark = pytest.mark.integration


def connected(device):
    device.wait_for_connection(timeout=5)
    return device


@pytest.fixture
def m1(demo_ioc):
    motor = connected(demo.m1(demo_ioc.prefix))
    motor.set(0).wait(10)
    return motor


@pytest.fixture
def cam(demo_ioc, tmp_path):
    return connected(demo.cam(demo_ioc.prefix, write_path_template=str(tmp_path / "%Y/%m/%d")))


def test_motor_moves_and_reports_readback(m1):
    readbacks = []
    token = m1.user_readback.subscribe(lambda value, **kwargs: readbacks.append(value), run=False)
    try:
        m1.set(1.5).wait(10)
    finally:
        m1.user_readback.unsubscribe(token)
    assert m1.position == pytest.approx(1.5, abs=1e-6)
    assert m1.user_readback.get(use_monitor=False) == pytest.approx(1.5, abs=1e-6)
    # 1.5 mm at 5 mm/s: finite velocity, not a jump; the readback passes through the
    # travel in order (about one reading per IOC tick, however long the move took).
    on_the_way = [value for value in readbacks if 0.05 < value < 1.45]
    assert len(on_the_way) >= 3, readbacks
    assert on_the_way == sorted(on_the_way)
    m1.set(1.5).wait(5)  # a zero-length move must complete too


def test_motor_refuses_out_of_limits_without_moving(m1):
    from ophyd.utils import LimitError

    assert m1.limits == (-10.0, 10.0)
    with pytest.raises(LimitError, match="m1"):
        m1.set(11)
    # Refused before any put: the IOC's setpoint (read afresh, after anything sent
    # before on the same circuit) never left 0, so no move can be under way.
    assert m1.user_setpoint.get(use_monitor=False) == pytest.approx(0.0, abs=1e-6)
    assert m1.position == pytest.approx(0.0, abs=1e-6)
    assert m1.motor_done_move.get(use_monitor=False) == 1


def test_motor_stop_mid_move(m1):
    status = m1.set(8)
    wait_until(lambda: m1.position > 0.5, timeout=10, message="m1 never got past 0.5")
    m1.stop()
    status.wait(5)
    # As the motor record does, the IOC sets the setpoint to where the motor stopped.
    wait_until(
        lambda: abs(m1.user_setpoint.get(use_monitor=False) - m1.position) <= 1e-3,
        timeout=5,
        message=lambda: f"setpoint {m1.user_setpoint.get()} != stopped position {m1.position}",
    )
    assert 0.5 < m1.position < 7.5
    assert m1.user_setpoint.get(use_monitor=False) == pytest.approx(m1.position, abs=1e-3)


def test_camera_stage_trigger_unstage_writes_hdf5(cam):
    cam.stage()
    try:
        for _ in range(3):
            cam.trigger().wait(10)
        docs = list(cam.collect_asset_docs())
        counter = cam.cam.array_counter.get()
    finally:
        cam.unstage()
    names = [name for name, _ in docs]
    assert names == ["stream_resource", "stream_datum", "stream_datum", "stream_datum"]
    resource = docs[0][1]
    assert resource["parameters"] == {"dataset": "/entry/data/data", "chunk_shape": [1, 64, 64]}
    path = resource["uri"].removeprefix("file://localhost")
    assert [d["indices"] for _, d in docs[1:]] == [{"start": i, "stop": i + 1} for i in range(3)]
    with h5py.File(path, "r", swmr=True) as f:
        data = f["/entry/data/data"]
        assert data.shape == (3, 64, 64) and data.dtype == np.uint16
        uid = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][:]
        assert list(uid) == list(range(counter - 2, counter + 1))
        assert f["/entry/instrument/NDAttributes/m1"].shape == (3,)
    assert cam.describe()[cam.image_key]["shape"] == [1, 64, 64]


def test_scan_emits_stream_documents_readable_with_h5py(cam, m1, demo_ioc):
    from bluesky import RunEngine
    from bluesky.plans import scan

    shutter = connected(demo.shutter(demo_ioc.prefix))
    shutter.set("open").wait(5)
    assert shutter.is_open.get(use_monitor=False) == 1
    RE = RunEngine({})
    docs = []
    RE(scan([cam], m1, -1, 1, 5), lambda name, doc: docs.append((name, doc)))
    names = [n for n, _ in docs]
    assert names.count("stream_resource") == 1
    assert names.count("stream_datum") == 5
    assert names.count("event") == 5
    assert docs[-1][1]["exit_status"] == "success"
    resource = next(d for n, d in docs if n == "stream_resource")
    descriptor = next(d for n, d in docs if n == "descriptor")
    assert descriptor["data_keys"]["cam_image"]["external"] == "STREAM:"
    datums = [d for n, d in docs if n == "stream_datum"]
    assert [d["seq_nums"] for d in datums] == [{"start": i, "stop": i + 1} for i in range(1, 6)]
    with h5py.File(resource["uri"].removeprefix("file://localhost"), "r", swmr=True) as f:
        frames = f["/entry/data/data"][:]
        positions = f["/entry/instrument/NDAttributes/m1"][:]
    assert frames.shape == (5, 64, 64)
    np.testing.assert_allclose(positions, np.linspace(-1, 1, 5), atol=1e-6)
    # The spot peaks near m1 = 0.3: the brightest frame is at 0 or 0.5.
    assert int(np.argmax(frames.reshape(5, -1).sum(axis=1))) in (2, 3)


def test_killing_ioc_mid_move_fails_move_within_timeout(fresh_demo_ioc):
    motor = connected(demo.m1(fresh_demo_ioc.prefix, name="m1_fresh"))
    timeout = motor.move_timeout(9.0)
    status = motor.set(9.0)
    wait_until(lambda: motor.position > 0.1, timeout=10, message="the move never started")
    t_kill = time.monotonic()
    os.kill(fresh_demo_ioc.pid, signal.SIGKILL)
    with pytest.raises(Exception):  # noqa: B017 - StatusTimeoutError or a disconnect error
        status.wait(timeout + 5)
    elapsed = time.monotonic() - t_kill
    print(f"\nkill-to-fail: {elapsed:.2f} s (move timeout {timeout:.2f} s)")
    assert status.done and not status.success
    assert elapsed <= timeout + 2.0


def test_external_trigger_without_a_start_source_fails_clearly(cam):
    # The demo instrument wires no start pulse to its camera: armed, it must say so.
    cam.cam.trigger_mode.set("External").wait(5)
    try:
        cam.cam.image_mode.set("Single").wait(5)
        ended = threading.Event()
        cam.cam.acquire.put(1, use_complete=True, callback=lambda *a, **k: ended.set())
        assert ended.wait(5)  # put-completion: the acquisition ended
        assert cam.cam.detector_state.get(as_string=True, use_monitor=False) == "Error"
        message = cam.cam.status_message.get(as_string=True, use_monitor=False)
        assert "no start trigger" in message
    finally:
        cam.cam.trigger_mode.set("Internal").wait(5)


def test_camera_connects_the_lazy_pvs_it_uses_up_front(demo_ioc, tmp_path):
    # ophyd would connect each lazy PV at its first use, one by one, each within 1 s:
    # a first stage failed that way on a loaded machine. They connect with the device.
    camera = demo.cam(demo_ioc.prefix, write_path_template=str(tmp_path))
    camera.wait_for_connection(timeout=10)
    connected = {w.dotted_name for w in camera.walk_signals() if w.item.connected}
    used = camera.used_signal_names()
    assert {"hdf1.file_path_exists", "cam.trigger_mode", "hdf1.num_captured"} <= set(used)
    assert set(used) <= connected, set(used) - connected


def test_stage_takes_a_camera_off_a_left_over_external_trigger(cam):
    # A client that died mid fly scan leaves the camera waiting for a start pulse;
    # staging sets it back to Internal, and unstaging must not restore External.
    cam.cam.trigger_mode.set("External").wait(5)
    cam.stage()
    try:
        assert cam.cam.trigger_mode.get(as_string=True, use_monitor=False) == "Internal"
    finally:
        cam.unstage()
    assert cam.cam.trigger_mode.get(as_string=True, use_monitor=False) == "Internal"
