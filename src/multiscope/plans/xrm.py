"""Lab X-ray microscope (XRM) tomography from named recipes.

:data:`XRM_RECIPES` holds the acquisition recipes of seed 001's multi-scale study
(objective, binning, exposure, source filter, kV, W, projections, pixel);
:func:`xrm_tomo_scan` runs one, with any field overridden, as one tomography run of
the same three streams as the TXM's (``dark``, ``flat``, ``primary``; see
:mod:`multiscope.plans.tomography`, whose :func:`step_tomogram` it uses) and the same
``tomo`` block (:class:`~multiscope.contracts.TomoBlock`), so the tomography
callbacks (:mod:`multiscope.callbacks.tomo`) reconstruct it unchanged. An ``xrm``
block records the recipe, the source and the geometry.

Everything is checked before the first message (:func:`xrm_settings`): the recipe,
every override, the objective against the turret, the SOD against the instrument's
minimum, the pixel against what the geometry can reach, the positions against the
stages' limits and the run's estimated duration. In the run the source, turret,
binning and geometry are set (the SOD for the pixel at the recipe's ODD, see
:func:`multiscope.analysis.optics.xrm_geometry_for_pixel`), the sample goes to its
volume of interest, and the frames are taken; flats lift the sample out of the beam
along z. Every exit closes the source shutter (:func:`xrm_safe_state`).

Examples
--------
>>> RE(xrm_tomo_scan(xrm, "coin_survey", n_projections=361, sample_id="CR2032 2"))  # doctest: +SKIP
"""

import logging
import math
from dataclasses import asdict, dataclass, replace

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from ..analysis.optics import xrm_geometry_for_pixel, xrm_pixel_size_um
from ..contracts import TomoBlock, XrmBlock
from ..devices.xrm import OBJECTIVE_NAMES, SOURCE_FILTERS
from ..plan_stubs.safe_state import safe_state_decorator, xrm_safe_state
from .preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    format_duration,
    require_duration_within,
    require_int,
    require_number,
    require_parts,
    require_positions_within_limits,
    sample_md,
)
from .tomography import step_tomogram, tomo_schedule

__all__ = ["XRM_RECIPES", "XRMRecipe", "XRMSettings", "xrm_settings", "xrm_tomo_scan"]

logger = logging.getLogger(__name__)

OBJECTIVES = OBJECTIVE_NAMES
FILTERS = SOURCE_FILTERS
BINNINGS = (1, 2, 4, 8)
KV_RANGE = (20.0, 160.0)
POWER_RANGE_W = (0.5, 25.0)
#: Flats lift the sample this far (mm) along z unless told: above a coin cell's and
#: below a pouch cell's half height plus the widest field (28 mm at 27.3 um, bin 2).
DEFAULT_SAMPLE_OUT_MM = 40.0
_FRAME_OVERHEAD_S = 0.05  # readout and file write per frame beyond the exposure
#: The sample's outermost point, swept by the rotation, stays this far (mm) from the
#: source spot: the source's window and housing. Checked against the sample's radius
#: and the VOI's offset from its centre (the instrument's minimum SOD knows neither).
SOURCE_CLEARANCE_MM = 8.0


@dataclass(frozen=True)
class XRMRecipe:
    """One acquisition recipe (seed 001's numbers).

    Attributes
    ----------
    objective : str
        ``"0.4x"``, ``"4x"`` or ``"20x"``.
    binning : int
    exposure_s : float
        Per projection.
    filter : str
        Source filter, LE1..LE6 or HE1..HE6.
    kv, power_w : float
        Tube voltage and power.
    n_projections : int
    pixel_um : float
        Pixel at the sample, reached by the geometry at ``binning``.
    odd_mm : float
        Object-detector distance kept while the SOD sets the pixel.
    sample_radius_mm : float
        The sample's radius about its centre (the source clearance check).
    description : str
    """

    objective: str
    binning: int
    exposure_s: float
    filter: str
    kv: float
    power_w: float
    n_projections: int
    pixel_um: float
    odd_mm: float = 100.0
    sample_radius_mm: float = 10.0  # a CR2032 coin cell
    description: str = ""


XRM_RECIPES: dict[str, XRMRecipe] = {
    "coin_survey": XRMRecipe("0.4x", 2, 1.0, "LE6", 100.0, 14.0, 1601, 27.3, description=
                             "whole coin cell, low resolution (the scout)"),
    "coin_zoom": XRMRecipe("0.4x", 2, 1.0, "LE6", 100.0, 14.0, 1601, 12.16, description=
                           "coin cell interior, high resolution"),
    "pouch": XRMRecipe("4x", 2, 15.0, "LE2", 60.0, 6.5, 3201, 3.74, sample_radius_mm=20.5,
                       description=
                       "LFP pouch cell interior: cathode voids, graphite particles"),
    "nimh_survey": XRMRecipe("0.4x", 2, 2.0, "HE4", 160.0, 25.0, 1601, 52.53,
                             sample_radius_mm=7.25, description=
                             "whole NiMH cell, low resolution"),
    "nimh_zoom": XRMRecipe("4x", 2, 8.0, "HE6", 160.0, 25.0, 3201, 3.62,
                           sample_radius_mm=7.25, description=
                           "NiMH cell interior, high resolution"),
}  # fmt: skip


@dataclass(frozen=True)
class XRMSettings:
    """A recipe with its overrides, checked, and the geometry that gives its pixel."""

    recipe: str
    objective: str
    binning: int
    exposure_s: float
    filter: str
    kv: float
    power_w: float
    n_projections: int
    pixel_um: float
    sod_mm: float
    odd_mm: float
    voi_mm: tuple[float, float, float]
    sample_out_mm: float
    sample_radius_mm: float = 10.0

    @property
    def magnification(self) -> float:
        """Geometric magnification ``(SOD + ODD) / SOD``."""
        return (self.sod_mm + self.odd_mm) / self.sod_mm

    def to_md(self) -> dict:
        """The run's ``xrm`` block (:class:`~multiscope.contracts.XrmBlock`)."""
        return XrmBlock(**asdict(self), geometric_magnification=self.magnification).to_md()


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise PlanArgumentError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _motor_limits(motor) -> tuple[float, float]:
    low, high = (float(v) for v in getattr(motor, "limits", (0.0, 0.0)))
    return (low, high) if low < high else (0.0, float("inf"))


def xrm_settings(xrm, recipe: str = "coin_survey", **overrides) -> XRMSettings:
    """Resolve ``recipe`` with ``overrides`` and check everything (raises PlanArgumentError).

    Overrides: any :class:`XRMRecipe` field (``n_projections``, ``objective``,
    ``binning``, ``exposure_s``, ``filter``, ``kv``, ``power_w``, ``pixel_um``,
    ``odd_mm``), ``sod_mm`` (a fixed SOD; the pixel then follows from the geometry),
    ``voi_mm`` (the sample point put on the rotation axis and the beam centre,
    default: where the sample is) and ``sample_out_mm`` (flats). A ``None`` override
    keeps the recipe's value. Changing ``binning`` alone keeps the recipe's geometry
    (the pixel scales with the binning).
    """
    if recipe not in XRM_RECIPES:
        raise PlanArgumentError(f"unknown recipe {recipe!r}; recipes: {sorted(XRM_RECIPES)}")
    require_parts("xrm", xrm, ("source", "shutter", "turret", "geometry", "sample", "camera"),
                  "the XRM bundle (instruments.xrm.xrm)")  # fmt: skip
    overrides = {k: v for k, v in overrides.items() if v is not None}
    extra = {k: overrides.pop(k) for k in ("sod_mm", "voi_mm", "sample_out_mm") if k in overrides}
    base = XRM_RECIPES[recipe]
    unknown = sorted(set(overrides) - set(XRMRecipe.__dataclass_fields__))
    if unknown:
        raise PlanArgumentError(f"unknown recipe overrides {unknown}")
    if "binning" in overrides and "pixel_um" not in overrides:
        binned = _choice("binning", require_int("binning", overrides["binning"]), BINNINGS)
        overrides["pixel_um"] = base.pixel_um * binned / base.binning
    chosen = replace(base, **overrides)
    objective = chosen.objective
    if objective not in OBJECTIVES:
        raise PlanArgumentError(
            f"objective {objective!r} is not in the turret {tuple(OBJECTIVES)}: refused"
        )
    binning = require_int("binning", chosen.binning)
    _choice("binning", binning, BINNINGS)
    _choice("filter", chosen.filter, FILTERS)
    kv = require_number("kv", chosen.kv, minimum=KV_RANGE[0], maximum=KV_RANGE[1])
    power = require_number("power_w", chosen.power_w, minimum=POWER_RANGE_W[0],
                           maximum=POWER_RANGE_W[1])  # fmt: skip
    exposure = require_number("exposure_s", chosen.exposure_s, minimum=0, exclusive_minimum=True)
    n_projections = require_int("n_projections", chosen.n_projections, minimum=2)

    geometry = xrm.geometry
    detector_um = float(geometry.detector_pixel_um.get())
    sod_min = float(geometry.sod_min.get())
    sod_low, sod_high = _motor_limits(geometry.sod)
    sod_low = max(sod_low, sod_min)
    odd_limits = _motor_limits(geometry.odd)
    odd = require_number("odd_mm", chosen.odd_mm, minimum=0, exclusive_minimum=True)
    if "sod_mm" in extra:
        sod = require_number("sod_mm", extra["sod_mm"], minimum=0, exclusive_minimum=True)
        if sod < sod_min:
            raise PlanArgumentError(
                f"sod_mm {sod:g} is below the instrument's minimum SOD {sod_min:g} mm: refused"
            )
        require_positions_within_limits("sod_mm", geometry.sod, [sod])
        require_positions_within_limits("odd_mm", geometry.odd, [odd])
        pixel = xrm_pixel_size_um(detector_um, sod, odd, OBJECTIVES[objective], binning)
    else:
        pixel = require_number("pixel_um", chosen.pixel_um, minimum=0, exclusive_minimum=True)
        try:
            sod, odd = xrm_geometry_for_pixel(
                pixel, detector_um, OBJECTIVES[objective], binning, odd_mm=odd,
                sod_limits_mm=(sod_low, sod_high), odd_limits_mm=odd_limits,
            )  # fmt: skip
        except ValueError as error:
            raise PlanArgumentError(f"recipe {recipe!r}: pixel not reachable: {error}") from None

    sample = xrm.sample
    here = tuple(float(getattr(sample, axis).position) for axis in ("x", "y", "z"))
    voi = extra.get("voi_mm", here)
    if isinstance(voi, str) or not hasattr(voi, "__len__") or len(voi) != 3:
        raise PlanArgumentError(f"voi_mm must be (x, y, z) mm, got {voi!r}")
    voi = tuple(require_number(f"voi_mm[{i}]", v) for i, v in enumerate(voi))
    for axis, value in zip(("x", "y", "z"), voi, strict=True):
        require_positions_within_limits(f"voi_mm {axis}", getattr(sample, axis), [value])
    out = require_number("sample_out_mm", extra.get("sample_out_mm", DEFAULT_SAMPLE_OUT_MM))
    if out == 0:
        raise PlanArgumentError("sample_out_mm must be non-zero (flats)")
    require_positions_within_limits("sample_out_mm", sample.z, [voi[2] + out])
    radius = require_number("sample_radius_mm", chosen.sample_radius_mm, minimum=0,
                            exclusive_minimum=True)  # fmt: skip
    off_centre = math.hypot(voi[0], voi[1])
    if sod - radius - off_centre < SOURCE_CLEARANCE_MM:
        raise PlanArgumentError(
            f"recipe {recipe!r}: at SOD {sod:.2f} mm a sample of radius {radius:g} mm with its "
            f"VOI {off_centre:.2f} mm off its centre sweeps within {sod - radius - off_centre:.2f}"
            f" mm of the source ({SOURCE_CLEARANCE_MM:g} mm needed): choose a VOI nearer the "
            "centre or a larger pixel; nothing was moved"
        )
    return XRMSettings(recipe, objective, binning, exposure, chosen.filter, kv, power,
                       n_projections, pixel, sod, odd, voi, out, radius)  # fmt: skip


def xrm_tomo_scan(
    xrm,
    recipe: str = "coin_survey",
    *,
    n_projections: int | None = None,
    objective: str | None = None,
    binning: int | None = None,
    exposure_s: float | None = None,
    source_filter: str | None = None,
    kv: float | None = None,
    power_w: float | None = None,
    pixel_um: float | None = None,
    odd_mm: float | None = None,
    sod_mm: float | None = None,
    voi_mm: tuple[float, float, float] | None = None,
    sample_out_mm: float | None = None,
    sample_radius_mm: float | None = None,
    angle_range_deg: float = 180.0,
    num_darks: int = 10,
    num_flats: int = 10,
    flat_policy: str = "both",
    dark_policy: str = "start",
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """One XRM tomogram from recipe ``recipe`` (:data:`XRM_RECIPES`), overrides applied.

    Parameters
    ----------
    xrm : XRM
        The instrument bundle (:func:`multiscope.instruments.xrm.xrm`).
    recipe : str
    n_projections, objective, binning, exposure_s, source_filter, kv, power_w, pixel_um, odd_mm
        Overrides of the recipe's fields (``source_filter``: its ``filter``).
    sod_mm : float, optional
        A fixed SOD instead of the one the pixel needs (the pixel then follows).
    voi_mm : (x, y, z), optional
        Sample point (mm) put on the rotation axis and at the beam centre; default:
        where the sample is.
    sample_out_mm : float, optional
        Lift of ``sample.z`` for the flats (default :data:`DEFAULT_SAMPLE_OUT_MM`).
    sample_radius_mm : float, optional
        The sample's radius (default: the recipe's): the rotating sample must stay
        :data:`SOURCE_CLEARANCE_MM` from the source.
    angle_range_deg, flat_policy, dark_policy
        As :func:`multiscope.plans.tomography.tomo_schedule` (``"every"`` flats are
        not offered: a lab source is stable).
    num_darks, num_flats : int
    sample_id : str
        Recorded in the start document (``sample_id``) and the ``tomo`` block.
    max_duration_s : float
    md : dict, optional
        Merged over the plan's metadata.

    Raises
    ------
    PlanArgumentError
        Before any message (nothing moves, no X-rays): see :func:`xrm_settings`.
    """
    settings = xrm_settings(
        xrm, recipe, n_projections=n_projections, objective=objective, binning=binning,
        exposure_s=exposure_s, filter=source_filter, kv=kv, power_w=power_w,
        pixel_um=pixel_um, odd_mm=odd_mm, sod_mm=sod_mm, voi_mm=voi_mm,
        sample_out_mm=sample_out_mm, sample_radius_mm=sample_radius_mm,
    )  # fmt: skip
    if flat_policy == "every":
        raise PlanArgumentError('flat_policy "every" is not offered for the XRM')
    schedule = tomo_schedule(settings.n_projections, angle_range_deg, flat_policy=flat_policy,
                             dark_policy=dark_policy)  # fmt: skip
    num_darks = require_int("num_darks", num_darks, minimum=1 if schedule.num_dark_sets else 0)
    num_flats = require_int("num_flats", num_flats, minimum=1 if schedule.num_flat_sets else 0)
    sample_entry = sample_md(sample_id)
    sample, camera, shutter = xrm.sample, xrm.camera, xrm.shutter
    require_positions_within_limits("angles", sample.theta, schedule.angles_deg)
    frames = (settings.n_projections + num_darks * schedule.num_dark_sets
              + num_flats * schedule.num_flat_sets)  # fmt: skip
    estimate = frames * (settings.exposure_s + _FRAME_OVERHEAD_S)
    require_duration_within("xrm_tomo_scan", estimate, max_duration_s)
    logger.info("xrm_tomo_scan %s: %d projections, %.3f um pixel, estimated %s", recipe,
                settings.n_projections, settings.pixel_um, format_duration(estimate))  # fmt: skip

    tomo_md = TomoBlock(
        num_projections=settings.n_projections, angle_range_deg=angle_range_deg, start_deg=0.0,
        exposure_s=settings.exposure_s, num_darks=num_darks, num_flats=num_flats,
        flat_policy=flat_policy, dark_policy=dark_policy,
        sample_out_offset_um=settings.sample_out_mm * 1e3, pixel_size_um=settings.pixel_um,
        sample_id=sample_id, rotation=sample.theta.name,
    ).to_md()  # fmt: skip
    _md = {
        "plan_name": "xrm_tomo_scan",
        "detectors": [camera.name],
        "motors": [sample.theta.name],
        "num_points": settings.n_projections,
        "num_intervals": settings.n_projections - 1,
        "plan_args": {"recipe": recipe, "n_projections": settings.n_projections},
        "hints": {"dimensions": [([sample.theta.name], "primary")]},
        "estimated_duration_s": round(estimate, 3),
        **sample_entry,
        "tomo": tomo_md,
        "xrm": settings.to_md(),
    }
    _md.update(md or {})
    z_in = settings.voi_mm[2]

    def inner():
        yield from bps.mv(xrm.turret, settings.objective)
        yield from bps.mv(camera.cam.bin_x, settings.binning, camera.cam.bin_y, settings.binning)
        source = xrm.source
        yield from bps.mv(source.kv, settings.kv, source.power, settings.power_w,
                          source.filter, settings.filter, source.on, "On")  # fmt: skip
        yield from bps.mv(xrm.geometry.sod, settings.sod_mm, xrm.geometry.odd, settings.odd_mm)
        x, y, z = settings.voi_mm
        yield from bps.mv(sample.x, x, sample.y, y, sample.z, z, sample.theta, 0.0)
        yield from bps.mv(camera.cam.acquire_time, settings.exposure_s)
        yield from bps.mv(shutter, "open")
        yield from step_tomogram(
            camera, sample, shutter, schedule, num_darks=num_darks, num_flats=num_flats,
            x_in=z_in, x_out=z_in + settings.sample_out_mm, flat_axis=sample.z,
        )  # fmt: skip
        yield from bps.mv(shutter, "close")

    @bpp.run_decorator(md=_md)
    @safe_state_decorator(xrm_safe_state(shutter, camera=camera, sample=sample))
    def run():
        yield from inner()

    return (yield from run())
