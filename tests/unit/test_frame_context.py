"""A simulated frame carries its exposure's end on the motors' clock (no clock round trip)."""

import time

import numpy as np

from sim_devices.frames import FrameContext


def test_the_carried_monotonic_end_is_used_as_is():
    # A wall timestamp an hour off: a scene must still see the acquisition clock's end.
    ctx = FrameContext(0.1, 1, 0, (4, 4), time.time() - 3600.0, np.random.default_rng(0),
                       end_monotonic=123.456)  # fmt: skip
    assert ctx.monotonic_end() == 123.456


def test_without_it_the_wall_timestamp_is_converted():
    end = time.monotonic() - 2.0
    ctx = FrameContext(0.1, 1, 0, (4, 4), time.time() - 2.0, np.random.default_rng(0))
    assert abs(ctx.monotonic_end() - end) < 0.05
