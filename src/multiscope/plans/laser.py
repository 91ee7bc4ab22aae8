"""Cutting samples free with the laser mill: a tab on a handle, a pillar; one run per sample.

``cut_tab(laser, 100, 500, 1500, 4000, sample_id="nmc-07", material="NMC811")``
checks everything before anything moves (the arguments, the spot's smallest
feature, the table's range, the power against the instrument's limit and the
lowest power that cuts through, the enclosure's interlock, a repeated cut number),
then, in one run: switches emission off (a killed client may have left it on),
sets the power and the speed, loads the tool path
(:func:`multiscope.analysis.laser_path.tab_path`), brings the table to its start,
switches emission on, cuts once (numbered) and switches emission off, the three one
step that is never replayed (decision 0016), and reads the piece the instrument
measured (stream ``cut``). The safe
state (cut stopped, emission off, table stopped) runs on every exit.

The tab's width can come from the thickness rule: ``width_um=None`` with an
``energy_keV`` gives two attenuation lengths of ``material`` at that energy
(:func:`multiscope.analysis.attenuation.plan_tab`).

The power is minimised: by default, 1.2 times the lowest power that cuts through at
the speed (the instrument's ``laser:min_power_W_RBV``, which scales with the speed:
the energy per length).
"""

import logging
import math

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from ophyd import Signal

from multiscope.analysis.attenuation import ELECTRODE_MATERIALS, plan_tab
from multiscope.analysis.laser_path import PathError, ToolPath, pillar_path, tab_path
from multiscope.checks import estimate_moves_s, require_int, require_number
from multiscope.contracts import LaserCutBlock
from multiscope.devices.laser import PARTS
from multiscope.plan_stubs.laser import (
    cut_along_path,
    load_path,
    move_to_path_start,
    set_emission,
)
from multiscope.plan_stubs.safe_state import laser_safe_state, safe_state_decorator
from multiscope.plans.preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    require_duration_within,
    require_parts,
    sample_md,
)
from multiscope.plans.samples import sample_record_md

__all__ = ["cut_tab", "estimate_cut_s", "lathe_pillar"]

logger = logging.getLogger(__name__)

#: The default power is this many times the lowest power that cuts through.
POWER_MARGIN = 1.2
#: Switching emission, loading the path, reading the piece (instrument s).
OVERHEAD_S = 5.0
#: The electrode's coating and its foil (um): seed 000's ~80 um on ~20 um Al.
SHEET_THICKNESS_UM = 100.0
#: Measured and predicted tab widths further apart than this are logged (um).
GEOMETRY_TOLERANCE_UM = 5.0
#: A path whose kerf holds less material than this share was cut before: refused.
MIN_INTACT_FRACTION = 0.5


def estimate_cut_s(path: ToolPath, speed_mm_s: float, table=None) -> float:
    """Instrument seconds of one cut: the table to the start, the cut, the overhead."""
    moves = 0.0
    if table is not None:
        x0, y0 = path.start_um
        moves = max(
            estimate_moves_s(table.x, [x0], start=_value(table.x.position)),
            estimate_moves_s(table.y, [y0], start=_value(table.y.position)),
        )
    return moves + path.duration_s(speed_mm_s) + OVERHEAD_S


def _value(read) -> float:
    try:
        return float(read)
    except (TypeError, ValueError):
        return 0.0


def _instrument(laser, name: str, signal) -> float:
    try:
        value = float(signal.get())
    except Exception as error:  # noqa: BLE001 - a mill that does not answer
        raise PlanArgumentError(f"the laser mill does not answer ({name}): {error}") from None
    if not math.isfinite(value):
        raise PlanArgumentError(f"the laser mill reads {name} = {value}")
    return value


def _check_power(laser, power_W, speed: float) -> float:
    """The power to cut with: within the limit, enough to cut through at ``speed``."""
    limit = _instrument(laser, "power limit", laser.source.power_limit_W)
    lowest_now = _instrument(laser, "lowest cutting power", laser.source.min_power_W)
    speed_now = _instrument(laser, "cutting speed", laser.source.speed_mm_s)
    lowest = lowest_now / speed_now * speed if speed_now > 0 else lowest_now
    if power_W is None:
        power = min(POWER_MARGIN * lowest, limit)
    else:
        power = require_number("power_W", power_W, minimum=0, exclusive_minimum=True)
    if power > limit:
        raise PlanArgumentError(
            f"power_W {power:g} W is over the laser's {limit:g} W limit: nothing was moved "
            "and the laser did not fire"
        )
    if power < lowest:
        raise PlanArgumentError(
            f"power_W {power:g} W is below {lowest:.3g} W, the lowest that cuts through at "
            f"{speed:g} mm/s: give more power or a lower speed"
        )
    return power


def _check_material(material, energy_keV):
    if material is not None and material not in ELECTRODE_MATERIALS:
        raise PlanArgumentError(
            f"material {material!r} is unknown; known: {sorted(ELECTRODE_MATERIALS)}"
        )
    if energy_keV is None:
        return None
    energy = require_number("energy_keV", energy_keV, minimum=0, exclusive_minimum=True)
    if material is None:
        raise PlanArgumentError("energy_keV needs a material (the thickness rule's)")
    return plan_tab(material, energy)


def _place(laser, path: ToolPath, origin_um) -> ToolPath:
    """The path on the table: at ``origin_um``, or centred in the table's range."""
    ranges = []
    for axis in (laser.table.x, laser.table.y):
        low, high = (float(v) for v in axis.limits)
        ranges.append((low, high))
    if origin_um is None:
        xmin, xmax, ymin, ymax = path.bounds_um
        origin_um = tuple(
            (low + high) / 2.0 - (a + b) / 2.0
            for (low, high), (a, b) in zip(ranges, ((xmin, xmax), (ymin, ymax)), strict=True)
        )
    try:
        x0, y0 = (float(v) for v in origin_um)
    except (TypeError, ValueError):
        raise PlanArgumentError(
            f"origin_um must be (x, y) in table um, got {origin_um!r}"
        ) from None
    placed = path.moved(x0, y0)
    try:
        placed.check_within(*ranges)
    except PathError as error:
        raise PlanArgumentError(f"{error}; nothing was moved") from None
    return placed


def _lengths(**lengths) -> dict:
    """Each length (um) as a finite float > 0; None stays None (a width from the rule).

    Raises
    ------
    PlanArgumentError
        Naming the parameter: not a number, not finite, not > 0.
    """
    return {name: None if value is None and name in ("width_um", "diameter_um")
            else require_number(name, value, minimum=0, exclusive_minimum=True)
            for name, value in lengths.items()}  # fmt: skip


def _sample_entries(kind: str, sample_id: str, parent_id: str, material) -> dict:
    """The start-document entries of the piece the cut makes (registered if named)."""
    if not sample_id:
        if parent_id:
            raise PlanArgumentError(f"parent_id {parent_id!r} needs a sample_id for the piece")
        return sample_md(sample_id)
    return sample_record_md(sample_id, material=material or "", parent_id=parent_id,
                            description=f"laser-cut {kind}")  # fmt: skip


def _cut_plan(laser, path_of, *, kind, geometry, compensate, origin_um, power_W, speed_mm_s,
              sample_id, parent_id, material, energy_keV, cut_number, max_duration_s,
              md):  # fmt: skip
    """Check, then one run cutting the path ``path_of(spot, kerf_fraction, width)`` makes."""
    require_parts("laser", laser, PARTS, "the laser mill (instruments.laser.laser)")
    sample_entries = _sample_entries(kind, sample_id, parent_id, material)
    speed = require_number("speed_mm_s", speed_mm_s, minimum=0, exclusive_minimum=True,
                           maximum=20.0)  # fmt: skip
    tab = _check_material(material, energy_keV)
    spot = _instrument(laser, "spot", laser.source.spot_um)
    kerf = _instrument(laser, "kerf", laser.source.kerf_um)
    width = geometry["width_um"]
    if width is None:
        if tab is None:
            raise PlanArgumentError(
                "give the width, or a material and an energy_keV for the thickness rule"
            )
        # Uncompensated, the tab loses a kerf: program the target plus a kerf.
        width = tab.target_width_um + (0.0 if compensate else kerf)
    try:
        path = path_of(spot, kerf / spot, width)
    except PathError as error:
        raise PlanArgumentError(f"{error}; nothing was moved") from None
    path = _place(laser, path, origin_um)
    power = _check_power(laser, power_W, speed)
    if not laser.enclosure.closed:
        raise PlanArgumentError(
            "the enclosure interlock is open: close it (nothing was moved, the laser did not fire)"
        )
    if int(_instrument(laser, "cut in progress", laser.cut.busy)):
        raise PlanArgumentError("the mill is cutting (another client's cut): wait for it to end")
    made = int(_instrument(laser, "cut count", laser.cut.count))
    number = made + 1
    if cut_number is not None:
        asked = require_int("cut_number", cut_number, minimum=1)
        if asked <= made:
            raise PlanArgumentError(
                f"cut {asked} was already made (the mill has made {made}): a cut is never "
                "made twice; give a new origin and no cut_number"
            )
        if asked != number:
            raise PlanArgumentError(f"cut_number {asked} is not the next cut ({number})")
    estimate = estimate_cut_s(path, speed, laser.table)
    require_duration_within(f"{kind} cut", estimate, max_duration_s)
    argon = str(laser.enclosure.argon.get()) == "Yes"
    block = LaserCutBlock(
        kind=kind, cut_number=number, width_um=float(width), length_um=geometry["length_um"],
        handle_width_um=geometry["handle_width_um"],
        handle_length_um=geometry["handle_length_um"], compensated=path.compensated,
        expected_tab_width_um=path.piece.tab_width_um, expected_area_um2=path.piece.area_um2,
        spot_um=spot, kerf_um=kerf, origin_um=path.origin_um,
        tab_mid_y_um=path.origin_um[1] + path.piece.tab_mid_y_um,
        path_x_um=tuple(float(v) for v in path.x_um),
        path_y_um=tuple(float(v) for v in path.y_um), power_W=power, speed_mm_s=speed,
        estimated_cut_s=round(path.duration_s(speed), 3), material=material,
        energy_keV=None if tab is None else tab.energy_keV,
        target_width_um=None if tab is None else tab.target_width_um, argon=argon,
        sample_id=sample_id or None,
    )  # fmt: skip
    run_md = {
        "plan_name": "lathe_pillar" if kind == "pillar" else "cut_tab",
        "plan_args": {**geometry, "width_um": float(width), "compensate": path.compensated,
                      "power_W": power, "speed_mm_s": speed, "origin_um": list(path.origin_um)},
        "num_points": 1, "estimated_duration_s": round(estimate, 1),
        **sample_entries, "material": material, "laser_cut": block.to_md(),
    }  # fmt: skip
    run_md.update(md or {})
    return (yield from _run(laser, path, block, power, speed, run_md))


def _run(laser, path: ToolPath, block: LaserCutBlock, power: float, speed: float, run_md):
    programmed = [Signal(name=name, value=value, kind="normal") for name, value in (
        ("cut_number", block.cut_number), ("programmed_width_um", block.width_um),
        ("expected_tab_width_um", block.expected_tab_width_um),
        ("expected_area_um2", block.expected_area_um2))]  # fmt: skip
    readings = [laser.piece, laser.cut.count, laser.cut.last_complete, laser.cut.fraction,
                laser.source.power_W, laser.source.speed_mm_s, *programmed]  # fmt: skip
    safe = laser_safe_state(laser.emission, cut=laser.cut, table=laser.table)

    @bpp.run_decorator(md=run_md)
    @safe_state_decorator(safe)
    def body():
        yield from set_emission(laser.emission, "Off")
        # One after the other: each put's refusal is read from the one message PV.
        yield from bps.mv(laser.source.speed_mm_s, speed)
        yield from bps.mv(laser.source.power_W, power)
        yield from load_path(laser.cut, path)
        intact = float((yield from bps.rd(laser.cut.path_intact)))
        if math.isnan(intact):
            raise PlanArgumentError("the mill cannot tell whether the path's sheet is intact")
        if intact < MIN_INTACT_FRACTION:
            raise PlanArgumentError(
                f"only {intact:.0%} of the path's kerf still holds material: it was cut "
                "before (a cut is never repeated); give a new origin. Nothing moved, the "
                "laser did not fire"
            )
        yield from move_to_path_start(laser.table, path)
        made = int((yield from bps.rd(laser.cut.count)))
        if made + 1 != block.cut_number:
            raise PlanArgumentError(
                f"the mill made cut {made} since the checks: cut {block.cut_number} is not next"
            )
        yield from cut_along_path(laser.emission, laser.cut, block.cut_number)
        yield from bps.mv(laser.piece.row_y_um, block.tab_mid_y_um)
        reading = yield from bps.trigger_and_read(readings, name="cut")
        measured = _reading(reading, "piece_row_width_um")
        if not abs(measured - block.expected_tab_width_um) <= GEOMETRY_TOLERANCE_UM:
            logger.warning("%s %s: the tab came out %.1f um wide, %.1f um expected",
                           block.kind, block.sample_id or "", measured,
                           block.expected_tab_width_um)  # fmt: skip

    return (yield from body())


def _reading(reading, key: str) -> float:
    try:
        return float(reading[key]["value"])
    except (KeyError, TypeError, ValueError):
        return math.nan


def cut_tab(
    laser,
    width_um: float | None,
    length_um: float = 500.0,
    handle_width_um: float = 1500.0,
    handle_length_um: float = 4000.0,
    *,
    origin_um: tuple[float, float] | None = None,
    power_W: float | None = None,
    speed_mm_s: float = 2.0,
    compensate: bool = True,
    sample_id: str = "",
    parent_id: str = "",
    material: str | None = "NMC811",
    energy_keV: float | None = None,
    cut_number: int | None = None,
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """Cut a tab ``width_um x length_um`` on a ``handle_width_um x handle_length_um`` handle.

    Parameters
    ----------
    laser : LaserMill
        The mill (``instruments.laser.laser``).
    width_um : float or None
        The tab's width (the imaged thickness); None: two attenuation lengths of
        ``material`` at ``energy_keV``.
    length_um, handle_width_um, handle_length_um : float
        Seed 000's tab: ~0.1 x 0.5 mm on a ~1.5 x 4 mm handle.
    origin_um : (x, y), optional
        Table position of the handle's bottom centre (default: the piece centred).
    power_W : float, optional
        Default: 1.2 x the lowest power that cuts through at ``speed_mm_s``.
    speed_mm_s : float
        Cutting speed (seed 000: ~2 mm/s).
    compensate : bool
        Offset the path by half a kerf so that the tab is ``width_um`` wide; False
        cuts along the nominal outline (a 100 um tab comes out ~80 um).
    sample_id : str
        The piece cut out: the run registers it (decision 0019), with ``material``
        and ``parent_id``, so ``catalog.sample_history(sample_id)`` starts here.
    parent_id : str
        The sheet it is cut from (needs ``sample_id``).
    material : str or None
        The electrode's material (recorded; the thickness rule's with ``energy_keV``).
    energy_keV : float, optional
        The imaging energy of the thickness rule (recorded).
    cut_number : int, optional
        The cut's number, to make sure a re-run makes no cut twice (refused if the
        mill has made it); default: the next.
    max_duration_s : float
        Longest estimated run accepted (instrument seconds: the table's move to the
        path's start, the cut, switching emission); a longer estimate is refused
        before anything moves. Default a day; ``math.inf``: no limit.
    md : dict, optional
        Metadata merged over the plan's own start-document entries (a key given
        here wins, ``laser_cut`` included).

    Raises
    ------
    PlanArgumentError
        Before anything moves or fires: a bad argument, a tab narrower than the spot
        allows, a path off the table, a power over the limit or too low to cut, the
        enclosure open, a cut number already made.
    """
    geometry = _lengths(
        width_um=width_um,
        length_um=length_um,
        handle_width_um=handle_width_um,
        handle_length_um=handle_length_um,
    )

    def path_of(spot, kerf_fraction, width):
        return tab_path(width, geometry["length_um"], geometry["handle_width_um"],
                        geometry["handle_length_um"], spot, compensate,
                        kerf_fraction=kerf_fraction)  # fmt: skip

    return (yield from _cut_plan(
        laser, path_of, kind="tab", geometry=geometry, compensate=compensate,
        origin_um=origin_um, power_W=power_W, speed_mm_s=speed_mm_s, sample_id=sample_id,
        parent_id=parent_id, material=material, energy_keV=energy_keV, cut_number=cut_number,
        max_duration_s=max_duration_s, md=md))  # fmt: skip


def lathe_pillar(
    laser,
    diameter_um: float | None,
    height_um: float = 500.0,
    *,
    handle_width_um: float = 1500.0,
    handle_length_um: float = 4000.0,
    sheet_thickness_um: float = SHEET_THICKNESS_UM,
    origin_um: tuple[float, float] | None = None,
    power_W: float | None = None,
    speed_mm_s: float = 2.0,
    compensate: bool = True,
    sample_id: str = "",
    parent_id: str = "",
    material: str | None = "NMC811",
    energy_keV: float | None = None,
    cut_number: int | None = None,
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """Cut a pillar ``diameter_um`` wide and ``height_um`` long on a handle (seed 000: 80-100 um).

    The cut is a rectangular outline in top view: seed 000's "pillar" as a laser-cut
    tab of the pillar's diameter (:func:`~multiscope.analysis.laser_path.pillar_path`),
    ``diameter_um`` across and ``height_um`` along, standing on the handle. The mill
    has no rotation axis: nothing here turns it round. Its section is ``diameter_um``
    by the sheet's thickness, so the diameter cannot exceed ``sheet_thickness_um``.

    Parameters
    ----------
    laser : LaserMill
        The mill (``instruments.laser.laser``).
    diameter_um : float or None
        The pillar's width in top view; None: the thickness rule's, as ``width_um``
        of :func:`cut_tab`.
    height_um : float
        Its length along the handle's axis.
    handle_width_um, handle_length_um : float
        The handle it stands on.
    sheet_thickness_um : float
        The sheet's thickness (coating and foil): the largest diameter.
    **keywords
        ``origin_um``, ``power_W``, ``speed_mm_s``, ``compensate``, ``sample_id``,
        ``parent_id``, ``material``, ``energy_keV``, ``cut_number``,
        ``max_duration_s``, ``md``: as :func:`cut_tab`.

    Raises
    ------
    PlanArgumentError
        As :func:`cut_tab`, and a diameter beyond ``sheet_thickness_um``.
    """
    given = _lengths(diameter_um=diameter_um, height_um=height_um,
                     handle_width_um=handle_width_um, handle_length_um=handle_length_um,
                     sheet_thickness_um=sheet_thickness_um)  # fmt: skip
    geometry = {"width_um": given["diameter_um"], "length_um": given["height_um"],
                "handle_width_um": given["handle_width_um"],
                "handle_length_um": given["handle_length_um"]}  # fmt: skip

    def path_of(spot, kerf_fraction, width):
        return pillar_path(width, given["height_um"], spot, compensate,
                           handle_width_um=given["handle_width_um"],
                           handle_length_um=given["handle_length_um"],
                           sheet_thickness_um=given["sheet_thickness_um"],
                           kerf_fraction=kerf_fraction)  # fmt: skip

    return (yield from _cut_plan(
        laser, path_of, kind="pillar", geometry=geometry, compensate=compensate,
        origin_um=origin_um, power_W=power_W, speed_mm_s=speed_mm_s, sample_id=sample_id,
        parent_id=parent_id, material=material, energy_keV=energy_keV, cut_number=cut_number,
        max_duration_s=max_duration_s, md=md))  # fmt: skip
