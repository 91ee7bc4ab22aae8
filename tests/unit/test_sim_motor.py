"""Pure logic of the simulated IOCs (no network)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from sim_devices.areadetector import HDF5FrameWriter, format_file_name, normalize_scene_output
from sim_devices.motor import Trajectory, check_target


def test_trajectory_trapezoid_reaches_target_in_expected_time():
    traj = Trajectory(start=0.0, target=10.0, velocity=5.0, accel_time=0.2)
    assert traj.duration == pytest.approx(10.0 / 5.0 + 0.2)
    assert traj.position(0) == 0.0
    assert traj.position(traj.duration) == 10.0
    samples = [traj.position(t) for t in np.linspace(0, traj.duration, 50)]
    assert all(b >= a for a, b in zip(samples, samples[1:], strict=False))


def test_trajectory_triangular_and_zero_length():
    short = Trajectory(start=1.0, target=0.9, velocity=5.0, accel_time=0.2)
    assert short.duration < 0.2
    assert short.position(short.duration / 2) == pytest.approx(0.95)
    assert Trajectory(start=1.0, target=1.0, velocity=5.0).duration == 0.0


def test_check_target_limits():
    check_target(5.0, -10, 10)
    check_target(100.0, 0, 0)  # equal limits: none
    with pytest.raises(ValueError, match="outside"):
        check_target(11.0, -10, 10)


def test_hdf5_writer_appends_frames_and_attributes(tmp_path):
    writer = HDF5FrameWriter(tmp_path / "f.h5", (4, 5))
    for i in range(3):
        writer.write(np.full((4, 5), i, np.uint16), {"angle": 10.0 * i}, i + 1, 0.0)
    with h5py.File(tmp_path / "f.h5", "r", swmr=True) as f:  # readable while open
        assert f["/entry/data/data"].shape == (3, 4, 5)
        assert f["/entry/data/data"].chunks == (1, 4, 5)
    writer.close()
    with h5py.File(tmp_path / "f.h5", "r") as f:
        np.testing.assert_array_equal(f["/entry/instrument/NDAttributes/angle"][:], [0, 10, 20])


def test_scene_output_and_file_template():
    frame, attrs = normalize_scene_output((np.full((2, 2), 70000.0), {"a": 1}), (2, 2))
    assert frame.dtype == np.uint16 and frame.max() == 65535 and attrs == {"a": 1.0}
    with pytest.raises(ValueError, match="shape"):
        normalize_scene_output(np.zeros((3, 3)), (2, 2))
    assert format_file_name("%s%s_%6.6d.h5", "/d/", "x", 7) == "/d/x_000007.h5"
