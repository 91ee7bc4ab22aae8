"""Pure logic of the simulated IOCs (no network)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from sim_devices.areadetector import HDF5FrameWriter, format_file_name, normalize_scene_output
from sim_devices.motor import Trajectory
from sim_devices.motor_record import (
    MSTA_DIRECTION,
    MSTA_DONE,
    MSTA_HOMED,
    MSTA_MOVING,
    dial_limits_from_user,
    direction_sign,
    limit_violation,
    status_word,
    user_limits,
)


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


def test_limit_violation_as_the_motor_record():
    assert not limit_violation(5.0, 0.0, -10.0, 10.0)
    assert limit_violation(11.0, 0.0, -10.0, 10.0)
    assert limit_violation(-10.5, 0.0, -10.0, 10.0)
    assert not limit_violation(100.0, 0.0, 0.0, 0.0)  # both 0: no soft limits
    assert limit_violation(0.5, 1.0, 1.0, 1.0)  # equal but not 0: a single allowed point
    # Left outside (limits changed under it): a move back towards the range is allowed,
    # one further out is not.
    assert not limit_violation(11.0, 12.0, -10.0, 10.0)
    assert limit_violation(13.0, 12.0, -10.0, 10.0)
    assert not limit_violation(-11.0, -12.0, -10.0, 10.0)


def test_user_and_dial_limits_through_the_calibration():
    assert direction_sign("Pos") == direction_sign(0) == 1
    assert direction_sign("Neg") == direction_sign(1) == -1
    assert user_limits(-10.0, 10.0, 1, 5.0) == (-5.0, 15.0)
    assert user_limits(-10.0, 10.0, -1, 11.0) == (1.0, 21.0)  # HLM from DLLM with DIR Neg
    for sign, offset in ((1, 0.0), (1, 5.0), (-1, 11.0), (-1, -3.0)):
        low, high = user_limits(-4.0, 7.0, sign, offset)
        assert dial_limits_from_user(low, high, sign, offset) == (-4.0, 7.0)


def test_status_word_bits():
    rest = status_word(positive=True, done=True, moving=False)
    assert rest == MSTA_DIRECTION | MSTA_DONE | MSTA_HOMED == 0b100_0000_0000_0011
    moving = status_word(positive=False, done=False, moving=True)
    assert moving == MSTA_MOVING | MSTA_HOMED and MSTA_MOVING == 1 << 10


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
