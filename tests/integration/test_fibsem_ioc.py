"""The simulated PFIB-SEM IOC over real Channel Access: interlocks, milling, state file, frames.

Plain caproto client puts (no ophyd): a refused put completes with ``ECA_PUTFAIL`` and
``interlock:message_RBV`` says why; nothing changes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pv_docs
import pytest
from conftest import start_sim_ioc
from waiting import wait_until

from multiscope import simctl

pytestmark = pytest.mark.integration

TIME_SCALE = 0.01  # wall s per instrument s (the IOC's default)
POSES = {"eucentric": (0.0, 0.0), "mill": (16.0, 0.0), "sem": (54.0, 0.0), "sims": (0.0, 180.0)}
INSERTABLES = ("cbs:insert", "eds:insert", "gis:needle")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "fibsem.md"
MOTOR_FIELDS = ("", ".RBV", ".DMOV", ".VELO", ".HLM", ".LLM", ".STOP", ".LVIO", ".SPMG")
DETECTOR_PVS = ("cam1:Acquire", "cam1:NumImages", "cam1:AcquireTime", "HDF1:Capture",
                "HDF1:FullFileName_RBV")  # fmt: skip


def documented_pvs() -> list[str]:
    """PV names (after the prefix) of the IOC's table in docs/fibsem.md, with motor fields."""
    return pv_docs.documented_pvs(
        DOCS, "## PVs of the simulated PFIB-SEM IOC", end="\n### ",
        by_kind={"motor record": MOTOR_FIELDS, "areaDetector": DETECTOR_PVS},
    )  # fmt: skip


class Client:
    """Gets and puts on one IOC's PVs (a caproto threading client)."""

    def __init__(self, context, prefix):
        self.context, self.prefix, self.pvs = context, prefix, {}

    def pv(self, name):
        if name not in self.pvs:
            (self.pvs[name],) = self.context.get_pvs(self.prefix + name, timeout=10)
            self.pvs[name].wait_for_connection(timeout=10)
        return self.pvs[name]

    def get(self, name):
        data = self.pv(name).read(data_type="native", timeout=10).data
        if isinstance(data, np.ndarray) and data.dtype == np.uint8:  # char array: a string
            return bytes(data).rstrip(b"\0").decode()
        if len(data) == 1:
            value = data[0]
            return value.decode() if isinstance(value, bytes) else value
        return data

    def text(self, name):
        from caproto import ChannelType

        (value,) = self.pv(name).read(data_type=ChannelType.STRING, timeout=10).data
        return value.decode()

    def put(self, name, value, timeout=30.0):
        """Put and wait for completion; the CA status name (ECA_NORMAL, ECA_PUTFAIL)."""
        from caproto import ChannelType

        pv, extra = self.pv(name), {}
        if isinstance(value, str) and pv.channel.native_data_type == ChannelType.CHAR:
            value = np.frombuffer(value.encode() + b"\0", dtype=np.uint8)  # a long string
        elif isinstance(value, str):
            value, extra = [value], {"data_type": ChannelType.STRING}  # an enum or a string
        else:
            value = [value]
        response = pv.write(value, wait=True, timeout=timeout, **extra)
        return response.status.name

    def put_nowait(self, name, value):
        self.pv(name).write([value], wait=False, notify=True, callback=lambda _: None)

    @property
    def message(self):
        return self.get("interlock:message_RBV")

    def move(self, axis, target):
        assert self.put(f"stage:{axis}", float(target)) == "ECA_NORMAL", self.message
        wait_until(
            lambda: (
                self.get(f"stage:{axis}.DMOV") == 1
                and abs(self.get(f"stage:{axis}.RBV") - target) < 1e-6
            ),
            timeout=10,
            message=f"stage:{axis} at {target}",
        )

    def retract_all(self):
        for name in INSERTABLES:
            assert self.put(name, "Retracted") == "ECA_NORMAL", self.message

    def go(self, pose):
        """Retract everything, tilt flat, rotate, tilt: the safe way to a pose."""
        tilt, rotation = POSES[pose]
        self.retract_all()
        if abs(self.get("stage:rot.RBV") - rotation) > 1e-6:
            self.move("tilt", 0.0)
            self.move("rot", rotation)
        self.move("tilt", tilt)
        assert self.text("stage:pose_RBV") == pose

    def snapshot(self):
        """What a refused request must leave unchanged."""
        names = ("mill:slices_RBV", "mill:polishes_RBV", "mill:face_depth_RBV",
                 "truth:depth_um", "stage:tilt.RBV", "stage:rot.RBV", "cbs:insert_RBV",
                 "eds:insert_RBV", "gis:needle_RBV", "mill:busy_RBV")  # fmt: skip
        return {name: self.get(name) for name in names}


@pytest.fixture(scope="module")
def ca_context(ca_port_pool):
    from caproto.threading.client import Context

    context = Context()
    yield context
    context.disconnect()


def start_fibsem(pool, tmp_path, state_file, extra=()):
    args = ["--state-file", str(state_file), "--time-scale", str(TIME_SCALE), *extra]
    return start_sim_ioc(pool, tmp_path, "fibsem", extra_args=args, timeout=120)


@pytest.fixture(scope="module")
def fibsem(ca_port_pool, ca_context, tmp_path_factory):
    logs = tmp_path_factory.mktemp("fibsem-logs")
    running, process = start_fibsem(ca_port_pool, logs, logs / "state.json")
    yield SimpleNamespace(client=Client(ca_context, running.prefix), running=running,
                          data=tmp_path_factory.mktemp("fibsem-data"))  # fmt: skip
    simctl.stop_ioc(process.pid)


def test_every_documented_pv_is_served(fibsem):
    names = documented_pvs()
    assert len(names) > 80
    missing = []
    for name in names:
        try:
            fibsem.client.pv(name)
        except Exception:  # noqa: BLE001 - any failure to connect is a missing PV
            missing.append(name)
    assert not missing


def refused(client, name, value, expected_reason):
    before = client.snapshot()
    assert client.put(name, value) == "ECA_PUTFAIL"
    message = client.message
    assert expected_reason in message, message
    assert client.snapshot() == before
    return message


def mill_one(client):
    """Mill the next slice at the mill pose; returns (slices, depth) after it."""
    client.go("mill")
    assert client.put("ion:beam", "On") == "ECA_NORMAL"
    k = client.get("mill:slices_RBV") + 1
    assert client.put("mill:slice", k) == "ECA_NORMAL", client.message
    assert client.message == ""
    return client.get("mill:slices_RBV"), client.get("mill:face_depth_RBV")


def test_milling_refusals(fibsem):
    client = fibsem.client
    client.go("eucentric")
    assert client.put("ion:beam", "On") == "ECA_NORMAL"
    k = client.get("mill:slices_RBV") + 1
    refused(client, "mill:slice", k, "not at 'mill'")
    client.go("mill")
    assert client.put("ion:beam", "Blanked") == "ECA_NORMAL"
    refused(client, "mill:slice", k, "the ion beam is blanked")
    assert client.put("ion:beam", "On") == "ECA_NORMAL"
    refused(client, "mill:slice", k + 1, f"put {k}")  # skipping one
    slices, _ = mill_one(client)
    assert slices == k
    refused(client, "mill:slice", k, f"slice {k} is not the next one")  # a replayed k
    assert client.put("cbs:insert", "Inserted") == "ECA_NORMAL"
    refused(client, "mill:slice", k + 1, "inserted: retract first")
    client.retract_all()


def test_slice_thickness_and_rocking_are_checked_and_rocking_takes_two_passes(fibsem):
    client = fibsem.client
    refused(client, "mill:thickness_um", 0.0, "outside (0, 1.0] um")
    refused(client, "mill:thickness_um", 1.5, "outside (0, 1.0] um")
    refused(client, "mill:rock_deg", 11.0, "outside [0, 10.0] deg")
    refused(client, "mill:rock_deg", -1.0, "outside [0, 10.0] deg")
    rock = client.get("mill:rock_deg")
    try:
        assert client.put("mill:rock_deg", 0.0) == "ECA_NORMAL"
        one_pass = client.get("mill:time_RBV")
        assert one_pass > 0
        assert client.put("mill:rock_deg", 3.0) == "ECA_NORMAL"
        # seed 003: the slice is cut at +3 deg and at -3 deg, twice the dose
        assert client.get("mill:time_RBV") == pytest.approx(2 * one_pass)
    finally:
        client.put("mill:rock_deg", rock)


def test_insertion_and_stage_refusals(fibsem):
    client = fibsem.client
    client.go("sem")
    assert client.put("eds:insert", "Inserted") == "ECA_NORMAL"
    assert client.message == ""
    refused(client, "cbs:insert", "Inserted", "CBS and EDS may not be inserted together")
    refused(client, "stage:tilt", 58.0, "above 56 deg nothing may be inserted")
    client.retract_all()
    client.move("tilt", 58.0)
    refused(client, "eds:insert", "Inserted", "above 56 deg nothing may be inserted")
    client.go("eucentric")
    assert client.put("gis:needle", "Inserted") == "ECA_NORMAL"
    refused(client, "stage:rot", 2.0, "retract first")
    client.retract_all()
    client.move("tilt", 10.0)
    refused(client, "stage:rot", 90.0, "tilt flat")
    # Beyond the soft limit: as the motor record, accepted without a move, LVIO set
    before = client.snapshot()
    assert client.put("stage:tilt", 61.0) == "ECA_NORMAL"
    assert client.get("stage:tilt.LVIO") == 1
    assert "stage:tilt: target 61 outside soft limits [-10, 60]" in client.message
    assert client.snapshot() == before
    assert client.get("stage:tilt") == pytest.approx(10.0)  # VAL back to the last target
    client.go("sem")
    assert client.put("ion:beam", "On") == "ECA_NORMAL"
    refused(client, "SIMS:cam1:Acquire", 1, "SIMS acquisition refused: the stage is at 'sem'")
    refused(client, "EDS:cam1:Acquire", 1, "the EDS detector is retracted")
    client.go("mill")
    refused(client, "SEM:cam1:Acquire", 1, "not at 'sem'")


def test_slice_advances_count_and_depth(fibsem):
    client = fibsem.client
    client.put("mill:thickness_um", 0.06)
    slices, depth = client.get("mill:slices_RBV"), client.get("mill:face_depth_RBV")
    true_depth = client.get("truth:depth_um")
    assert client.get("mill:time_RBV") == pytest.approx(40 * 20 * 0.06 / (2.0 * 1.0))
    after, new_depth = mill_one(client)
    assert after == slices + 1
    assert new_depth == pytest.approx(depth + 0.06, abs=1e-9)
    # true thickness within 5 sigma of the 3 % error
    assert client.get("truth:depth_um") - true_depth == pytest.approx(0.06, abs=5 * 0.03 * 0.06)
    assert client.get("mill:last_complete_RBV") == 1


@pytest.mark.parametrize("stop", [("mill:stop", 1), ("ion:beam", "Blanked")])
def test_stopped_cut_counts_partial(fibsem, stop):
    client = fibsem.client
    client.go("mill")
    assert client.put("ion:beam", "On") == "ECA_NORMAL"
    assert client.put("mill:thickness_um", 1.0) == "ECA_NORMAL"  # 400 s: 4 s wall
    slices, depth = client.get("mill:slices_RBV"), client.get("mill:face_depth_RBV")
    client.put_nowait("mill:slice", slices + 1)
    wait_until(lambda: client.get("mill:busy_RBV") == 1, timeout=10, message="cut started")
    assert client.get("mill:slices_RBV") == slices + 1  # counted as it starts
    assert client.put(*stop) == "ECA_NORMAL"
    wait_until(lambda: client.get("mill:busy_RBV") == 0, timeout=10, message="cut stopped")
    assert client.get("mill:last_complete_RBV") == 0
    assert client.get("ion:beam") == 0  # Blanked
    assert client.get("mill:slices_RBV") == slices + 1
    assert depth < client.get("mill:face_depth_RBV") < depth + 1.0  # pro rata
    client.put("mill:thickness_um", 0.06)


def test_deposition_needs_needle_heat_and_beam(fibsem):
    client = fibsem.client
    client.go("mill")
    assert client.put("ion:beam", "On") == "ECA_NORMAL"
    refused(client, "gis:deposit_um", 0.2, "the GIS needle is retracted")
    assert client.put("gis:needle", "Inserted") == "ECA_NORMAL"
    refused(client, "gis:deposit_um", 0.2, "gis:heat On")
    assert client.put("gis:heat", "On") == "ECA_NORMAL"
    wait_until(lambda: client.get("gis:temperature_RBV") >= 44.0, timeout=20, message="45 C")
    assert client.put("ion:beam", "Blanked") == "ECA_NORMAL"
    refused(client, "gis:deposit_um", 0.2, "the ion beam is blanked")
    assert client.put("ion:beam", "On") == "ECA_NORMAL"
    depth = client.get("mill:face_depth_RBV")
    assert client.put("gis:deposit_um", 0.2) == "ECA_NORMAL", client.message
    assert client.get("gis:cap_um_RBV") == pytest.approx(0.2)
    assert client.get("gis:filled_to_RBV") == pytest.approx(depth + 3.0)
    client.retract_all()
    polishes = client.get("mill:polishes_RBV")
    client.put("mill:polish_um", 0.3)
    assert client.put("mill:polish", polishes + 1) == "ECA_NORMAL", client.message
    assert client.get("gis:cap_um_RBV") == 0.0  # the polish removed the cap first
    assert client.get("mill:face_depth_RBV") == pytest.approx(depth + 0.1)
    client.put("gis:heat", "Off")


def test_insertion_refused_while_the_tilt_moves_above_the_limit(fibsem):
    client = fibsem.client
    client.go("eucentric")
    client.put("stage:tilt.VELO", 5.0)  # 58 deg in ~12 s: the insertion comes mid-move
    try:
        client.put_nowait("stage:tilt", 58.0)  # its put completes when the tilt is there
        wait_until(lambda: client.get("stage:tilt.MOVN") == 1, timeout=5, message="tilting")
        refused_put = client.put("eds:insert", "Inserted")
        assert refused_put == "ECA_PUTFAIL"
        assert "above 56 deg" in client.message
        assert client.get("eds:insert_RBV") == 0
    finally:
        client.put("stage:tilt.STOP", 1)
        client.put("stage:tilt.VELO", 60.0)
    client.go("eucentric")


def acquire(client, detector, n, directory, exposure=1.0):
    """One acquisition of ``n`` frames to a new HDF5 file; (frames, attributes)."""
    cam, hdf = f"{detector}:cam1:", f"{detector}:HDF1:"
    client.put(hdf + "CreateDirectory", 1)
    client.put(hdf + "FilePath", str(directory))
    client.put(hdf + "FileName", detector.lower())
    client.put(hdf + "FileWriteMode", "Stream")
    client.put(hdf + "NumCapture", 0)
    assert client.put(hdf + "Capture", 1) == "ECA_NORMAL"
    client.put(cam + "ImageMode", "Multiple")
    client.put(cam + "NumImages", n)
    client.put(cam + "AcquireTime", exposure)
    assert client.put(cam + "Acquire", 1, timeout=60) == "ECA_NORMAL", client.message
    client.put(hdf + "Capture", 0)
    path = client.get(hdf + "FullFileName_RBV")
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"][:]
        attrs = {k: v[:] for k, v in f["/entry/instrument/NDAttributes"].items()}
    return frames, attrs


def test_acquisitions_write_frames_with_attributes(fibsem):
    client = fibsem.client
    client.go("sem")
    frames, attrs = acquire(client, "SEM", 2, fibsem.data)
    assert frames.shape == (2, 384, 512)
    np.testing.assert_array_equal(attrs["channel"], [0, 1])
    depth = client.get("mill:face_depth_RBV")
    np.testing.assert_allclose(attrs["face_depth_um"], depth)
    np.testing.assert_allclose(attrs["true_depth_um"], client.get("truth:depth_um"))
    np.testing.assert_allclose(attrs["drift_x_um"], client.get("truth:drift_x_um"))
    np.testing.assert_allclose(attrs["drift_y_um"], client.get("truth:drift_y_um"))
    np.testing.assert_allclose(attrs["tilt_deg"], 54.0)
    np.testing.assert_allclose(attrs["rotation_deg"], 0.0)
    assert frames[0].mean() > frames[1].mean()  # CBS collects more than the TLD
    assert client.put("eds:insert", "Inserted") == "ECA_NORMAL"
    frames, attrs = acquire(client, "EDS", 7, fibsem.data, exposure=300.0)  # 3 s wall
    assert frames.shape == (7, 216, 352)
    np.testing.assert_array_equal(attrs["channel"], np.arange(7))
    assert frames[0].sum() > 0  # Co La of LiCoO2
    client.go("sims")
    assert client.put("ion:beam", "On") == "ECA_NORMAL"
    frames, attrs = acquire(client, "SIMS", 2, fibsem.data)
    assert frames.shape == (2, 500, 500)
    np.testing.assert_allclose(attrs["rotation_deg"], 180.0)
    assert frames[1].sum() > frames[0].sum() > 0  # 7Li+ over 6Li+ (natural abundance)


def test_state_file_survives_a_kill_and_restart(ca_port_pool, ca_context, tmp_path):
    state_file = tmp_path / "state.json"
    running, process = start_fibsem(ca_port_pool, tmp_path, state_file)
    try:
        client = Client(ca_context, running.prefix)
        mill_one(client)
        slices, depth = mill_one(client)
        true_depth, drift = client.get("truth:depth_um"), client.get("truth:drift_x_um")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the IOC leads its own group (start_ioc)
    wait_until(lambda: not simctl.pid_exists(process.pid), timeout=10, message="IOC killed")
    running, process = start_fibsem(ca_port_pool, tmp_path, state_file)
    try:
        client = Client(ca_context, running.prefix)
        assert client.get("mill:slices_RBV") == slices == 2
        assert client.get("mill:face_depth_RBV") == pytest.approx(depth)
        assert client.get("truth:depth_um") == pytest.approx(true_depth)
        assert client.get("truth:drift_x_um") == pytest.approx(drift)
        client.go("mill")
        assert client.put("ion:beam", "On") == "ECA_NORMAL"
        refused(client, "mill:slice", 2, "slice 2 is not the next one")  # replay after restart
    finally:
        simctl.stop_ioc(process.pid)


def _explained(image, labels):
    """Share of ``image``'s variance that a constant per truth label explains (R^2)."""
    fitted = np.zeros_like(image)
    for label in np.unique(labels):
        fitted[labels == label] = image[labels == label].mean()
    return 1.0 - ((image - fitted) ** 2).sum() / ((image - image.mean()) ** 2).sum()


def test_the_tab_phantom_is_the_txm_tab_of_the_given_width(ca_port_pool, ca_context, tmp_path):
    """``--phantom tab --seed S --tab-width-um W``: the truth PVs say so, and the SEM
    images that tab (its truth at W explains the frame; at the default 80 um it does not)."""
    from sim_devices.fibsem_truth import frames_truth

    sample = ["--phantom", "tab", "--seed", "2", "--tab-width-um", "70"]
    running, process = start_fibsem(ca_port_pool, tmp_path, tmp_path / "state.json", sample)
    try:
        client = Client(ca_context, running.prefix)
        assert client.text("truth:phantom") == "tab"
        assert client.get("truth:seed") == 2
        assert client.get("truth:tab_width_um") == 70.0
        assert client.get("mill:sputter_um3_per_nC_RBV") == pytest.approx(1.6)
        client.go("sem")
        frames, _ = acquire(client, "SEM", 2, tmp_path / "frames")
        path = client.get("SEM:HDF1:FullFileName_RBV")
    finally:
        simctl.stop_ioc(process.pid)
    below_cap = slice(70, None)  # the protective Pt cap band and its fiducial are above
    cbs = frames[0][below_cap].astype(float)
    right, default = (
        _explained(cbs, frames_truth("tab", 2, path, tab_width_um=width)[0][0][below_cap])
        for width in (70.0, 80.0)
    )
    assert right > 0.8 and default < right - 0.3, (right, default)
