"""What a simulated camera hands its scene for one frame, and what a scene returns.

:class:`FrameContext` describes one exposure (its length, index, shape, end time on
both clocks, the noise generator, the instrument); a :data:`Scene` renders it into a
frame, optionally with per-frame attributes (:func:`normalize_scene_output`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FrameContext", "Scene", "normalize_scene_output"]


@dataclass(frozen=True)
class FrameContext:
    """What a scene knows when it renders one frame.

    Attributes
    ----------
    exposure_time : float
        AcquireTime in seconds.
    frame_index : int
        The value ArrayCounter takes for this frame (1 for the first frame after reset).
    image_index : int
        Index of the frame within the current acquisition (0-based).
    shape : tuple of int
        (ny, nx).
    timestamp : float
        Unix time at the end of the exposure.
    rng : numpy.random.Generator
        The detector's random generator (noise).
    ioc : object
        The object that owns the detector (the instrument IOC), for state.
    end_monotonic : float or None
        ``time.monotonic()`` at the end of the exposure, the clock the motors run on
        (None: derived from ``timestamp``, see :meth:`monotonic_end`).
    """

    exposure_time: float
    frame_index: int
    image_index: int
    shape: tuple[int, int]
    timestamp: float
    rng: np.random.Generator
    ioc: Any = None
    end_monotonic: float | None = None

    def monotonic_end(self) -> float:
        """The exposure's end on the monotonic clock, where a scene evaluates the motors.

        Carried from the acquisition clock, not converted back from ``timestamp``:
        a conversion reads two clocks, and a thread switch between the reads (5 ms
        under a loaded GIL) moved a fly frame's angle by 0.12 deg at 75 deg/s.
        """
        if self.end_monotonic is not None:
            return self.end_monotonic
        return time.monotonic() - (time.time() - self.timestamp)


Scene = Callable[[FrameContext], Any]


def normalize_scene_output(output: Any, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Split a scene's return value into (uint16 frame, attribute dict) and check the shape."""
    if isinstance(output, tuple):
        frame, attrs = output
    else:
        frame, attrs = output, {}
    frame = np.asarray(frame)
    if frame.shape != tuple(shape):
        raise ValueError(f"scene returned shape {frame.shape}, expected {tuple(shape)}")
    if frame.dtype != np.uint16:
        frame = np.clip(frame, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return frame, {str(k): float(v) for k, v in dict(attrs or {}).items()}
