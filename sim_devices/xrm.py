"""The simulated lab X-ray microscope (XRM) IOC: whole battery cells on a rotation stage.

This module is the IOC only: its PVs and their wiring. What a frame shows is the pure
scene :class:`sim_devices.physics.xrm_scene.XRMScene` (phantoms, effective energy,
counts and noise are described there). The PV interface is documented in
``docs/xrm.md`` ("PVs of the simulated XRM IOC").

* The X-ray source (``source:kv``, ``source:power``, ``source:filter``, ``source:on``)
  sits behind its shutter (``source:shutter:``); frames are bright only with the source
  on *and* the shutter open, else dark (offset and read noise).
* The geometry stages ``geometry:sod`` and ``geometry:odd`` are motor records; a move
  of the SOD below the minimum (``geometry:sod_min``, the source window's clearance)
  is refused (nothing moves, ``interlock:message_RBV`` says why), as is an objective
  not in the turret, a binning the camera lacks, a change of sample, objective or
  binning while the camera acquires.
* ``sample:theta`` and ``sample:x/y/z`` are evaluated at the middle of each exposure
  from the motors' trajectories and recorded per frame (HDF5 attributes).
* Exposures take ``AcquireTime x sys:time_scale`` wall seconds (the recipes expose
  for 1 to 15 instrument seconds).

Run::

    python -m sim_devices.xrm --prefix XRM: --port 5075 [--phantom coin_short] [--seed 0]
        [--binning 2] [--time-scale 0.01]
"""

from __future__ import annotations

import logging
import math
import time
from textwrap import dedent

from caproto import ChannelType
from caproto.server import PVGroup, PvpropertyChar, SubGroup, pvproperty

from sim_devices.areadetector import FrameContext, SimAreaDetector, pvproperty_with_rbv
from sim_devices.detector_shape import camera_busy, resize_camera
from sim_devices.motor import TrackedAxis
from sim_devices.physics.xrm_scene import (
    DETECTOR_PIXEL_UM,
    FILTERS,
    OBJECTIVES,
    PHANTOMS,
    SENSOR_PX,
    XRMScene,
    XRMState,
    effective_energy_keV,
    make_phantom,
)
from sim_devices.refusal import (
    MessageRefusals,
    RefusableDouble,
    RefusableEnum,
)
from sim_devices.server import ioc_argument_parser, run_from_args
from sim_devices.shutter import Shutter

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "MIN_SOD_MM", "XRMIOC", "main"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "XRM:"
DEFAULT_PORT = 5075
DEFAULT_TIME_SCALE = 0.01  # wall s per instrument s of exposure
MIN_SOD_MM = 12.0  # the source window's clearance
SOD_LIMITS_MM = (MIN_SOD_MM, 600.0)
ODD_LIMITS_MM = (10.0, 400.0)
BINNINGS = (1, 2, 4, 8)
DEFAULT_BINNING = 2


def _float(name, value, doc, *, units="", precision=3, read_only=False, limits=None):
    extra = {} if limits is None else {"lower_ctrl_limit": limits[0], "upper_ctrl_limit": limits[1]}
    return pvproperty(name=name, value=float(value), precision=precision, units=units,
                      dtype=float if read_only else RefusableDouble, read_only=read_only,
                      doc=doc, **extra)  # fmt: skip


def _enum(name, states, value, doc):
    return pvproperty(name=name, enum_strings=tuple(states), value=value, dtype=RefusableEnum,
                      doc=doc)  # fmt: skip


def _axis(prefix, *, velocity, limits, egu, position=0.0, doc):
    return SubGroup(TrackedAxis, prefix=prefix, velocity=velocity, acceleration=0.05,
                    limits=limits, position=position, egu=egu, precision=4, doc=doc)  # fmt: skip


async def _put_binning(obj, instance, value):
    return await obj.parent.set_binning(value)


class XRMIOC(MessageRefusals, PVGroup):
    """Lab X-ray microscope with a whole-cell phantom (see the module docstring).

    The PVs are listed in ``docs/xrm.md`` ("PVs of the simulated XRM IOC").

    Parameters
    ----------
    phantom : str
        Start-up sample (:data:`~sim_devices.physics.xrm_scene.PHANTOMS`).
    seed : int
        Phantom (pouch voids), gain pattern and noise seed.
    binning : int
        Start-up binning (1, 2, 4, 8 of the 2048 x 2048 sensor).
    time_scale : float
        Wall seconds per instrument second of exposure.
    """

    # -- source ---------------------------------------------------------------------
    source_kv = _float("source:kv", 100.0, "Tube voltage", units="kV", precision=1,
                       limits=(20.0, 160.0))  # fmt: skip
    source_power = _float("source:power", 14.0, "Tube power", units="W", precision=2,
                          limits=(0.5, 25.0))  # fmt: skip
    source_filter = _enum("source:filter", FILTERS, "LE6", "Source filter (LE1..LE6, HE1..HE6)")
    source_on = _enum("source:on", ("Off", "On"), "On", "X-ray generation")
    source_energy = _float("source:energy_RBV", effective_energy_keV(100.0, "LE6"),
                           "Effective energy kV x (0.40 + 0.02 h)", units="keV",
                           read_only=True)  # fmt: skip
    shutter = SubGroup(Shutter, prefix="source:shutter:", actuation_time=0.05,
                       doc="Source shutter")  # fmt: skip
    # -- optics and geometry --------------------------------------------------------
    objective = _enum("objective:mag", OBJECTIVES, "0.4x", "Objective in the beam (turret)")
    sod = _axis("geometry:sod", velocity=100.0, limits=SOD_LIMITS_MM, egu="mm", position=67.91,
                doc="Source-object distance (mm); refused below geometry:sod_min")  # fmt: skip
    odd = _axis("geometry:odd", velocity=100.0, limits=ODD_LIMITS_MM, egu="mm", position=100.0,
                doc="Object-detector distance (mm)")  # fmt: skip
    sod_min = _float("geometry:sod_min", MIN_SOD_MM, "Smallest SOD (source clearance)",
                     units="mm", read_only=True)  # fmt: skip
    detector_pixel = _float("geometry:detector_pixel_um", DETECTOR_PIXEL_UM,
                            "Camera pixel behind the objective", units="um",
                            read_only=True)  # fmt: skip
    pixel_size = _float("geometry:pixel_size_RBV", 27.3, "Pixel at the sample", units="um",
                        precision=4, read_only=True)  # fmt: skip
    magnification = _float("geometry:magnification_RBV", 2.47, "Geometric magnification",
                           precision=4, read_only=True)  # fmt: skip
    # -- sample ---------------------------------------------------------------------
    sample_x = _axis("sample:x", velocity=20.0, limits=(-50.0, 50.0), egu="mm",
                     doc="Sample point x on the rotation axis (mm, rotating frame)")  # fmt: skip
    sample_y = _axis("sample:y", velocity=20.0, limits=(-50.0, 50.0), egu="mm",
                     doc="Sample point y on the rotation axis (mm, rotating frame)")  # fmt: skip
    sample_z = _axis("sample:z", velocity=20.0, limits=(-60.0, 60.0), egu="mm",
                     doc="Sample height at the beam centre (mm)")  # fmt: skip
    sample_theta = _axis("sample:theta", velocity=90.0, limits=(-720.0, 720.0), egu="deg",
                         doc="Sample rotation (deg)")  # fmt: skip
    sample_select = _enum("sample:select", PHANTOMS, PHANTOMS[0], "Sample (phantom) mounted")
    # -- camera binning (the rest of cam1: comes from SimAreaDetector) ---------------
    bin_x = pvproperty_with_rbv(name="cam1:BinX", value=DEFAULT_BINNING, put=_put_binning,
                                doc="Camera binning (1, 2, 4, 8; X and Y together)")  # fmt: skip
    bin_y = pvproperty_with_rbv(name="cam1:BinY", value=DEFAULT_BINNING, put=_put_binning,
                                doc="Camera binning (1, 2, 4, 8; X and Y together)")  # fmt: skip
    # -- status and truth -----------------------------------------------------------
    message = pvproperty(name="interlock:message_RBV", value="", max_length=256,
                         dtype=PvpropertyChar, read_only=True, string_encoding="utf-8",
                         doc="Why the last request was refused (empty: accepted)")  # fmt: skip
    time_scale_pv = _float("sys:time_scale", DEFAULT_TIME_SCALE, "Wall s per instrument s",
                           precision=4, read_only=True)  # fmt: skip
    truth_phantom = pvproperty(name="truth:phantom", value=PHANTOMS[0], dtype=ChannelType.STRING,
                               read_only=True, doc="Ground truth: the phantom")  # fmt: skip
    truth_defect = pvproperty(name="truth:defect_mm", value=[math.nan] * 3, max_length=3,
                              read_only=True, doc="Truth: defect centre x, y, z (mm)")  # fmt: skip
    truth_seed = pvproperty(name="truth:seed", value=0, dtype=ChannelType.LONG, read_only=True,
                            doc="Ground truth: phantom and noise seed")  # fmt: skip

    def __init__(self, *args, phantom: str = "coin", seed: int = 0,
                 binning: int = DEFAULT_BINNING, time_scale: float = DEFAULT_TIME_SCALE,
                 **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        if phantom not in PHANTOMS:
            raise ValueError(f"phantom must be one of {PHANTOMS}")
        if int(binning) not in BINNINGS:
            raise ValueError(f"binning must be one of {BINNINGS}")
        if not float(time_scale) > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.seed, self.binning, self.time_scale = int(seed), int(binning), float(time_scale)
        self.physics = XRMScene(make_phantom(phantom, self.seed), seed=self.seed)
        # The source and turret as last accepted (a putter runs before its PV holds the value).
        self.settings = {"kv": 100.0, "power": 14.0, "filter": "LE6", "on": True,
                         "objective": "0.4x"}  # fmt: skip
        self.camera = SimAreaDetector(
            prefix=self.prefix, scene=self.scene, shape=self._frame_shape(self.binning),
            ioc=self, seed=self.seed, time_scale=self.time_scale,
        )  # fmt: skip
        # Its own cam1:BinX/BinY (they rebin the scene) win over the camera's accepted ones.
        self.pvdb.update({k: v for k, v in self.camera.pvdb.items() if k not in self.pvdb})
        for axis in (self.sod, self.odd, self.sample_x, self.sample_y, self.sample_z,
                     self.sample_theta):  # fmt: skip
            axis.report_refusal = self.report_refusal
        for axis in (self.sod, self.odd):
            axis.guard = self._guard_geometry
            axis.on_position = self._geometry_moved

    @staticmethod
    def _frame_shape(binning: int) -> tuple[int, int]:
        return (SENSOR_PX // binning, SENSOR_PX // binning)

    # -- state ----------------------------------------------------------------------

    def state(self, t: float | None = None) -> XRMState:
        """The instrument state; sample positions at monotonic time ``t``."""
        t = time.monotonic() if t is None else t
        return XRMState(
            theta_deg=self.sample_theta.position_at(t),
            sample_mm=tuple(
                a.position_at(t) for a in (self.sample_x, self.sample_y, self.sample_z)
            ),  # fmt: skip
            kv=self.settings["kv"],
            power_w=self.settings["power"],
            filter_name=self.settings["filter"],
            source_on=self.settings["on"],
            shutter_open=self.shutter.open,
            objective=self.settings["objective"],
            binning=self.binning,
            sod_mm=self.sod.position,
            odd_mm=self.odd.position,
        )

    def scene(self, ctx: FrameContext):
        """Render one frame with the positions at the middle of its exposure."""
        end = ctx.monotonic_end()  # motors run on the monotonic clock
        state = self.state(end - 0.5 * ctx.exposure_time * self.time_scale)
        return self.physics.render(state, ctx.exposure_time, ctx.shape, ctx.rng)

    # -- refusals -------------------------------------------------------------------

    async def report_refusal(self, reason: str) -> None:
        """A put refused before its putter (a soft limit): publish why."""
        logger.warning("refused: %s", reason)
        if "geometry:sod" in reason:
            reason = f"SOD below the minimum {MIN_SOD_MM:g} mm or beyond its travel: {reason}"
        await self.message.write(reason[:255])

    async def _guard_geometry(self, axis, value) -> None:
        # The minimum is the instrument's own, not the axis's soft limit (a client may
        # lower LLM): the source window would be hit.
        if axis is self.sod and float(value) < MIN_SOD_MM:
            await self.refuse(
                f"SOD {float(value):g} mm below the minimum {MIN_SOD_MM:g} mm (source window)"
            )
        await self.accepted()

    async def _refuse_while_acquiring(self, what: str) -> None:
        if camera_busy(self.camera):
            await self.refuse(f"{what}: the camera is acquiring")

    # -- derived PVs ----------------------------------------------------------------

    async def update_derived(self) -> None:
        """Recompute the pixel size, magnification and effective energy."""
        state = self.state()
        m_geo = (state.sod_mm + state.odd_mm) / state.sod_mm
        for prop, value in ((self.pixel_size, state.pixel_mm * 1e3),
                            (self.magnification, m_geo),
                            (self.source_energy, state.energy_keV)):  # fmt: skip
            if abs(float(prop.value) - value) > 1e-9:
                await prop.write(value)

    async def _geometry_moved(self, axis) -> None:
        await self.update_derived()

    @message.startup
    async def message(self, instance, async_lib):
        """Publish the truth and the derived PVs at start-up."""
        await self.time_scale_pv.write(self.time_scale)
        await self.truth_seed.write(self.seed)
        await self._publish_phantom()
        for pair in (self.bin_x, self.bin_y):
            await pair.setpoint.write(self.binning, verify_value=False)
            await pair.readback.write(self.binning)
        await self.update_derived()

    async def _publish_phantom(self) -> None:
        phantom = self.physics.phantom
        await self.truth_phantom.write(phantom.name)
        defect = phantom.defect_center_mm or (math.nan,) * 3
        await self.truth_defect.write(list(defect))
        await self.sample_select.write(phantom.name, verify_value=False)

    # -- putters --------------------------------------------------------------------

    @objective.putter
    async def objective(self, instance, value):
        """Turn the turret; only its three objectives exist."""
        name = value if isinstance(value, str) else tuple(OBJECTIVES)[int(value)]
        if name not in OBJECTIVES:
            await self.refuse(f"objective {name!r} is not in the turret {tuple(OBJECTIVES)}")
        if name != self.settings["objective"]:
            await self._refuse_while_acquiring(f"objective {name}")
        self.settings["objective"] = name
        await self.update_derived()
        await self.accepted()
        return name

    @source_kv.putter
    async def source_kv(self, instance, value):
        """Tube voltage (kV): the effective energy follows."""
        self.settings["kv"] = float(value)
        await self.accepted()
        await self.update_derived()
        return value

    @source_power.putter
    async def source_power(self, instance, value):
        """Tube power (W): the flux follows."""
        self.settings["power"] = float(value)
        await self.accepted()
        return value

    @source_filter.putter
    async def source_filter(self, instance, value):
        """Source filter: the effective energy and the flux follow."""
        name = value if isinstance(value, str) else FILTERS[int(value)]
        self.settings["filter"] = name
        await self.accepted()
        await self.update_derived()
        return name

    @source_on.putter
    async def source_on(self, instance, value):
        """X-rays on or off."""
        self.settings["on"] = value in ("On", 1)
        await self.accepted()  # a client checks the reason PV after its put completes
        return value

    @sample_select.putter
    async def sample_select(self, instance, value):
        """Mount another sample (refused while acquiring)."""
        name = value if isinstance(value, str) else PHANTOMS[int(value)]
        await self._refuse_while_acquiring(f"sample {name}")
        self.physics = XRMScene(make_phantom(name, self.seed), seed=self.seed)
        await self.truth_phantom.write(name)
        defect = self.physics.phantom.defect_center_mm or (math.nan,) * 3
        await self.truth_defect.write(list(defect))
        await self.accepted()
        return name

    async def set_binning(self, value) -> int:
        """Change BinX and BinY together; the frame shape follows the sensor size."""
        binning = int(value)
        if binning not in BINNINGS:
            await self.refuse(f"binning must be one of {BINNINGS}, not {value}")
        if binning != self.binning:
            await self._refuse_while_acquiring(f"binning {binning}")
        self.binning = binning
        await resize_camera(self.camera, self._frame_shape(binning))
        for pair in (self.bin_x, self.bin_y):
            await pair.setpoint.write(binning, verify_value=False)
            await pair.readback.write(binning)
        await self.update_derived()
        await self.accepted()
        return binning


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the XRM IOC until SIGTERM."""
    parser = ioc_argument_parser(
        dedent(XRMIOC.__doc__ or ""), default_prefix=DEFAULT_PREFIX, default_port=DEFAULT_PORT
    )
    parser.add_argument("--phantom", choices=PHANTOMS, default="coin", help="start-up sample")
    parser.add_argument("--seed", type=int, default=0, help="phantom and noise seed")
    parser.add_argument("--binning", type=int, choices=BINNINGS, default=DEFAULT_BINNING,
                        help="start-up camera binning of the 2048 x 2048 sensor")  # fmt: skip
    parser.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                        help="wall s per instrument s (default %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    ioc = XRMIOC(prefix=args.prefix, phantom=args.phantom, seed=args.seed,
                 binning=args.binning, time_scale=args.time_scale)  # fmt: skip
    run_from_args(ioc.pvdb, args)


if __name__ == "__main__":
    main()
