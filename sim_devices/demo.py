"""The demo instrument IOC: one motor, one camera, a ring current and a shutter.

A small, fast instrument that exercises the whole harness. The camera sees a
Gaussian beam spot on a flat background; the spot's brightness peaks when the
motor ``m1`` is at :data:`PEAK_POSITION` and the spot drifts across the frame as
``m1`` moves, so scanning ``m1`` gives a peak::

    counts/frame = (dark + rate * (background + spot(m1)))  -> Poisson
    rate         = ring current / 400 mA * exposure / 10 ms
    spot(m1)     = PEAK_COUNTS * exp(-(m1 - PEAK_POSITION)^2 / (2 * PEAK_WIDTH^2))

With the shutter closed only the dark level remains.

Run::

    python -m sim_devices.demo --prefix DEMO: --port 5070 [--shape 64 64]
"""

from __future__ import annotations

from textwrap import dedent

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from sim_devices.areadetector import FrameContext, SimAreaDetector
from sim_devices.beam import RingCurrent
from sim_devices.motor import MotorAxis
from sim_devices.server import ioc_argument_parser, run_from_args
from sim_devices.shutter import Shutter

__all__ = ["DemoIOC", "DEFAULT_PORT", "DEFAULT_PREFIX", "main"]

DEFAULT_PREFIX = "DEMO:"
DEFAULT_PORT = 5070

PEAK_POSITION = 0.3  # m1 (mm) where the spot is brightest
PEAK_WIDTH = 0.5  # mm, Gaussian sigma of brightness versus m1
PEAK_COUNTS = 20000.0  # counts in the spot centre at 400 mA, 10 ms
BACKGROUND_COUNTS = 200.0  # flat background at 400 mA, 10 ms
DARK_COUNTS = 20.0  # detector offset, present with the shutter closed
SPOT_SIGMA_FRACTION = 0.08  # spot sigma as a fraction of the frame width
DRIFT_PER_MM = 0.02  # spot centre moves this fraction of the width per mm of m1


class DemoIOC(PVGroup):
    """Demo instrument.

    PVs (prefix e.g. ``DEMO:``)
    ---
    Motor
        ``m1`` (motor record: ``.VAL``, ``.RBV``, ``.DMOV``, ``.MOVN``, ``.STOP``,
        ``.VELO`` = 5 mm/s, ``.ACCL``, ``.EGU`` = mm, ``.HLM``/``.LLM`` = +/-10).
    Camera
        ``cam1:`` areaDetector driver (Acquire, AcquireTime, NumImages, ImageMode,
        ArrayCounter, ...) and ``HDF1:`` NDFileHDF5 plugin (FilePath, FileName,
        Capture, FileWriteMode, NumCaptured_RBV, FullFileName_RBV, ...), and ADCore's
        ``image1:``, ``ROI1:``-``ROI4:``, ``Stats1:``-``Stats5:`` plugins
        (docs/areadetector.md). Frames
        carry the per-frame attributes ``m1`` and ``ring_current``.
    Beam
        ``ring:current`` (mA), ``ring:status``, ``ring:current:SP``, ``ring:dump``,
        ``ring:inject``.
    Shutter
        ``shutter:Cmd`` (Close/Open), ``shutter:Pos-Sts``, ``shutter:Open-Sts``,
        ``shutter:ActTime``.
    Ground truth (simulation only, for scoring demos and tests)
        ``truth:peak_position`` (mm), ``truth:peak_width`` (mm).
    """

    truth_peak_position = pvproperty(
        name="truth:peak_position",
        value=PEAK_POSITION,
        dtype=ChannelType.DOUBLE,
        read_only=True,
        units="mm",
        doc="Ground truth: m1 position where the spot is brightest (simulation only)",
    )
    truth_peak_width = pvproperty(
        name="truth:peak_width",
        value=PEAK_WIDTH,
        dtype=ChannelType.DOUBLE,
        read_only=True,
        units="mm",
        doc="Ground truth: Gaussian sigma of spot brightness versus m1 (simulation only)",
    )

    m1 = SubGroup(
        MotorAxis,
        prefix="m1",
        velocity=5.0,
        acceleration=0.02,
        limits=(-10.0, 10.0),
        egu="mm",
        doc="Sample motor m1",
    )
    ring = SubGroup(RingCurrent, prefix="ring:", current=400.0, doc="Storage ring current")
    shutter = SubGroup(Shutter, prefix="shutter:", actuation_time=0.05, doc="Beam shutter")

    def __init__(self, *args, shape: tuple[int, int] = (64, 64), seed: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.camera = SimAreaDetector(
            prefix=self.prefix, scene=self.scene, shape=shape, ioc=self, seed=seed
        )
        self.pvdb.update(self.camera.pvdb)
        ny, nx = self.camera.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        self._grid = (yy.astype(np.float64), xx.astype(np.float64))

    def scene(self, ctx: FrameContext) -> tuple[np.ndarray, dict[str, float]]:
        """Render one frame from the motor position, ring current and shutter."""
        position = self.m1.position
        current = self.ring.value
        expected = expected_frame(
            position,
            current,
            ctx.exposure_time,
            self.shutter.open,
            self._grid,
        )
        frame = ctx.rng.poisson(expected)
        return frame, {"m1": position, "ring_current": current}


def expected_frame(
    position: float,
    current_ma: float,
    exposure_s: float,
    shutter_open: bool,
    grid: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Noise-free expected counts of the demo scene (float64, shape of ``grid``)."""
    yy, xx = grid
    ny, nx = yy.shape
    if not shutter_open:
        return np.full(yy.shape, DARK_COUNTS)
    rate = (current_ma / 400.0) * (exposure_s / 0.01)
    sigma = SPOT_SIGMA_FRACTION * nx
    cx = nx / 2.0 + DRIFT_PER_MM * nx * position
    cy = ny / 2.0
    brightness = PEAK_COUNTS * np.exp(-((position - PEAK_POSITION) ** 2) / (2 * PEAK_WIDTH**2))
    spot = brightness * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return DARK_COUNTS + rate * (BACKGROUND_COUNTS + spot)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the demo IOC until SIGTERM."""
    parser = ioc_argument_parser(
        dedent(DemoIOC.__doc__ or ""), default_prefix=DEFAULT_PREFIX, default_port=DEFAULT_PORT
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("NY", "NX"),
        default=(64, 64),
        help="camera frame shape (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="noise seed")
    args = parser.parse_args(argv)
    ioc = DemoIOC(prefix=args.prefix, shape=tuple(args.shape), seed=args.seed)
    run_from_args(ioc.pvdb, args)


if __name__ == "__main__":
    main()
