"""Verbs that take frames: a block of frames in one stream, darks, flats.

Each block of frames goes to its own detector file: the camera is staged for
the block and unstaged after it. A file then holds one contiguous run of
frames of one stream, which is what the catalog's file-backed arrays
describe (a stream's frames are the rows of its files, in order); darks,
flats and projections interleaved in one file would read back shifted.
"""

from __future__ import annotations

from collections.abc import Sequence

from bluesky import plan_stubs as bps
from bluesky.utils import plan

__all__ = ["take_frames", "take_darks", "take_flats"]


@plan
def take_frames(camera, num: int, stream: str, *, also_read: Sequence = ()):
    """Stage ``camera`` (a new file), read it ``num`` times into ``stream``, unstage it.

    Parameters
    ----------
    camera : StreamingCamera
        The area detector.
    num : int
        Number of frames (events).
    stream : str
        Event stream name (``"dark"``, ``"flat"``, ``"primary"``...).
    also_read : sequence of Readable
        Read with every frame (e.g. the rotation stage).
    """
    yield from bps.stage(camera)
    for _ in range(num):
        yield from bps.trigger_and_read([camera, *also_read], name=stream)
    yield from bps.unstage(camera)


@plan
def take_darks(camera, shutter, num: int):
    """Close ``shutter``, take ``num`` frames in stream ``dark``, open it again."""
    yield from bps.mv(shutter, "close")
    yield from take_frames(camera, num, "dark")
    yield from bps.mv(shutter, "open")


@plan
def take_flats(
    camera, sample_x, out_position: float, in_position: float, num: int, *, also_read=()
):
    """Move the sample out along ``sample_x``, take ``num`` frames in ``flat``, move it back.

    ``also_read`` is read with every frame, as in :func:`take_frames`.
    """
    yield from bps.mv(sample_x, out_position)
    yield from take_frames(camera, num, "flat", also_read=also_read)
    yield from bps.mv(sample_x, in_position)
