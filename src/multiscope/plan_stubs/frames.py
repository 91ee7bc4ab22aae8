"""Verbs that take frames: a block of frames in one stream, darks, flats.

Each block of frames goes to its own detector file: the camera is staged for
the block and unstaged after it. A file then holds one contiguous run of
frames of one stream, which is what the catalog's file-backed arrays
describe (a stream's frames are the rows of its files, in order); darks,
flats and projections interleaved in one file would read back shifted.

Every frame is one point, :func:`acquire_frame`: a checkpoint, the point's key
on the camera, then trigger and read. A pause or a suspension rewinds to the
checkpoint and replays the point: the camera then reports the frame it already
took for that key, or exposes again if the interruption stopped the exposure,
so the file holds exactly one frame per event (decision 0011).
"""

import itertools
from collections.abc import Sequence

from bluesky import plan_stubs as bps
from bluesky.utils import plan

__all__ = [
    "acquire_frame", "keyed_reading", "set_point_key", "take_frames", "take_darks", "take_flats",
]  # fmt: skip


@plan
def acquire_frame(camera, key, readers: Sequence = (), stream: str = "primary", *, before=None):
    """One frame as one point: checkpoint, ``camera.point_key``, trigger and read.

    Parameters
    ----------
    camera : StreamingCamera
        The area detector (staged).
    key : hashable
        Identity of the point within the camera's current file (e.g. its index): a
        replay after an interruption sets the same key, and the camera reuses the
        frame it took for it instead of exposing again.
    readers : sequence of Readable
        Read with the frame (motors, the energy...).
    stream : str
        Event stream name.
    before : plan, optional
        Run after the checkpoint, before the frame (e.g. the move to the point), so a
        replay repeats it too.
    """
    yield from bps.checkpoint()
    if before is not None:
        yield from before
    yield from set_point_key([camera], key)
    return (yield from bps.trigger_and_read([camera, *readers], name=stream))


@plan
def set_point_key(devices: Sequence, key):
    """Set ``point_key`` on every device that has one (the cameras), after a checkpoint.

    A camera without one is exposed anew when a point is replayed.
    """
    for device in devices:
        key_signal = getattr(device, "point_key", None)
        if key_signal is not None:
            yield from bps.abs_set(key_signal, key)


def keyed_reading():
    """A ``take_reading`` for bluesky's ``count``/``scan``: each point keyed on the cameras.

    bluesky's ``one_shot`` and ``one_nd_step`` checkpoint before ``take_reading``,
    so a replayed point sets the same key (see :func:`acquire_frame`).
    """
    points = itertools.count()

    def take_reading(devices, name="primary"):
        yield from set_point_key(devices, next(points))
        return (yield from bps.trigger_and_read(devices, name=name))

    return take_reading


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
    for index in range(num):
        yield from acquire_frame(camera, index, also_read, stream)
    yield from bps.unstage(camera)


@plan
def take_darks(camera, shutter, num: int, *, also_read=()):
    """Close ``shutter``, take ``num`` frames in stream ``dark``, open it again.

    ``also_read`` is read with every frame, as in :func:`take_frames`.
    """
    yield from bps.mv(shutter, "close")
    yield from take_frames(camera, num, "dark", also_read=also_read)
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
