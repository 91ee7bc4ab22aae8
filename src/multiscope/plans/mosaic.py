"""Mosaics: a vertical stack of tomograms, and a 2D grid of radiographs.

``vertical_mosaic_tomo`` (seed 000: four tomograms, ~58 um steps, ~6 um overlap)
runs one :func:`~multiscope.plans.tomography.tomo_scan` per tile at stage heights
spaced by ``tile_height * (1 - overlap)``; every tile's start document carries a
``mosaic`` block with the shared ``mosaic_id`` so the stitcher can find them.
``mosaic_radiograph`` surveys a tab with a grid of single frames in one run.
"""

import logging
import uuid
from functools import partial

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from ..contracts import MosaicBlock
from ..plan_stubs.frames import acquire_frame, take_flats
from ..plan_stubs.safe_state import safe_state_decorator, txm_safe_state
from .preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    field_of_view_um,
    format_duration,
    require_camera,
    require_duration_within,
    require_int,
    require_number,
    require_out_of_field,
    require_parts,
    require_positioner,
    require_positions_within_limits,
    require_shutter,
    sample_md,
)
from .tomography import tomo_scan

__all__ = ["mosaic_heights", "vertical_mosaic_tomo", "mosaic_grid", "mosaic_radiograph"]

logger = logging.getLogger(__name__)


def _overlap(overlap_fraction) -> float:
    overlap = require_number("overlap_fraction", overlap_fraction)
    if not 0 < overlap < 0.5:
        raise PlanArgumentError(f"overlap_fraction must be in (0, 0.5), got {overlap}")
    return overlap


def mosaic_heights(
    num_tiles: int, tile_height_um: float, overlap_fraction: float, start_um: float
) -> np.ndarray:
    """Stage heights (um) of the tiles: ``start + i * tile_height * (1 - overlap)``.

    Examples
    --------
    >>> mosaic_heights(4, 64.0, 0.1, 0.0).round(1).tolist()
    [0.0, 57.6, 115.2, 172.8]
    """
    num_tiles = require_int("num_tiles", num_tiles, minimum=1)
    tile_height_um = require_number(
        "tile_height_um", tile_height_um, minimum=0, exclusive_minimum=True
    )
    overlap = _overlap(overlap_fraction)
    start_um = require_number("start_um", start_um)
    return start_um + np.arange(num_tiles) * tile_height_um * (1.0 - overlap)


def vertical_mosaic_tomo(
    camera,
    sample,
    shutter,
    *,
    num_tiles: int = 4,
    tile_height_um: float,
    overlap_fraction: float = 0.1,
    start_z_um: float | None = None,
    mosaic_id: str | None = None,
    md: dict | None = None,
    **tomo_kwargs,
):
    """A vertical stack of tomograms, one run per tile, sharing a mosaic id.

    Parameters
    ----------
    camera, sample, shutter
        As :func:`~multiscope.plans.tomography.tomo_scan`; ``sample.z`` sets the height.
    num_tiles : int
        Number of tomograms (>= 1).
    tile_height_um : float
        Height of the field of view at the sample (um): rows x pixel size.
    overlap_fraction : float
        Overlap of neighbouring tiles, in (0, 0.5); seed 000 used ~0.1.
    start_z_um : float, optional
        Height of the first tile (default: the current ``sample.z``).
    mosaic_id : str, optional
        Shared identifier (default: a new uuid).
    md : dict, optional
        Metadata merged into every tile's start document.
    **tomo_kwargs
        Passed to every ``tomo_scan`` (``num_projections``, ``exposure_s``...);
        ``max_duration_s`` limits each tile's run.

    Returns
    -------
    list of str
        The tiles' run uids.
    """
    require_parts("sample", sample, ("z",), "a sample stage (x, z, theta)")
    require_positioner("sample.z", sample.z)
    start = float(sample.z.position) if start_z_um is None else start_z_um
    heights = mosaic_heights(num_tiles, tile_height_um, overlap_fraction, start)
    require_positions_within_limits("tile heights", sample.z, heights)
    if mosaic_id is None:
        mosaic_id = str(uuid.uuid4())
    elif not isinstance(mosaic_id, str) or not mosaic_id:
        raise PlanArgumentError(f"mosaic_id must be a non-empty string, got {mosaic_id!r}")
    if "md" in tomo_kwargs:
        raise PlanArgumentError("pass metadata as md=, once, for all tiles")
    # Build every tile's plan now, so each tile's arguments are checked before the first moves.
    tiles = []
    for index, z in enumerate(heights):
        tile_md = {
            **(md or {}),
            "mosaic": MosaicBlock(
                mosaic_id=mosaic_id,
                tile_index=index,
                num_tiles=len(heights),
                z_um=float(z),
                tile_height_um=float(tile_height_um),
                overlap_fraction=float(overlap_fraction),
            ).to_md(),
        }
        plan = tomo_scan(camera, sample, shutter, md=tile_md, **tomo_kwargs)
        tiles.append((float(z), plan))
    first_messages = [next(plan) for _, plan in tiles]  # runs tomo_scan's checks, emits nothing
    logger.info("vertical_mosaic_tomo %s: %d tiles at %s um", mosaic_id, len(tiles), heights)

    uids = []
    for (z, plan), first in zip(tiles, first_messages, strict=True):
        yield from bps.mv(sample.z, z)
        uid = yield from _replay_first(plan, first)
        uids.append(uid)
    return uids


def _replay_first(plan, first_message):
    """Run a generator whose first message was already taken out (to validate it early).

    As ``yield from plan`` would: responses go to ``plan``, and what the RunEngine
    throws in (a failed move, ``RE.abort()``, ``RE.stop()``) is thrown into it, so its
    own cleanup runs (its run's stop document, its safe state); closing this closes it.
    """
    message = first_message
    while True:
        try:
            response = yield message
        except GeneratorExit:
            plan.close()
            raise
        except BaseException as error:
            advance = partial(plan.throw, error)
        else:
            advance = partial(plan.send, response)
        try:
            message = advance()
        except StopIteration as stop:
            return stop.value


def mosaic_grid(
    rows: int,
    columns: int,
    tile_width_um: float,
    tile_height_um: float,
    overlap_fraction: float,
    origin_xz_um: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Stage positions (x, z) in um of a ``rows x columns`` snake-ordered grid.

    Rows go up in z, columns across in x; odd rows run backwards so the stage
    never makes a long return move.
    """
    rows = require_int("rows", rows, minimum=1)
    columns = require_int("columns", columns, minimum=1)
    overlap = _overlap(overlap_fraction)
    width = require_number("tile_width_um", tile_width_um, minimum=0, exclusive_minimum=True)
    height = require_number("tile_height_um", tile_height_um, minimum=0, exclusive_minimum=True)
    x0, z0 = (require_number("origin_xz_um", v) for v in origin_xz_um)
    xs, zs = [], []
    for r in range(rows):
        order = range(columns) if r % 2 == 0 else range(columns - 1, -1, -1)
        for c in order:
            xs.append(x0 + c * width * (1 - overlap))
            zs.append(z0 + r * height * (1 - overlap))
    return np.array(xs), np.array(zs)


def mosaic_radiograph(
    camera,
    sample,
    shutter,
    *,
    rows: int,
    columns: int,
    tile_width_um: float,
    tile_height_um: float,
    overlap_fraction: float = 0.1,
    exposure_s: float = 0.05,
    num_flats: int = 5,
    sample_out_offset_um: float = 300.0,
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """A 2D grid of radiographs over ``sample.x`` and ``sample.z``, in one run.

    Flats (sample moved out by ``sample_out_offset_um`` in x beyond the grid, at
    least the field of view's width) are taken first in stream ``flat``; each tile
    is one event in ``primary`` with the stage positions. Every argument is
    checked, and a run estimated beyond ``max_duration_s`` (s; default
    :data:`~multiscope.plans.preflight.MAX_RUN_DURATION_S`) refused, before the
    first message and before the grid is built. ``sample_id`` names the sample
    (:func:`~multiscope.plans.preflight.sample_md`).
    """
    require_camera("camera", camera)
    require_parts("sample", sample, ("x", "z"), "a sample stage (x, z)")
    require_positioner("sample.x", sample.x)
    require_positioner("sample.z", sample.z)
    require_shutter("shutter", shutter)
    num_tiles = require_int("rows", rows, minimum=1) * require_int("columns", columns, minimum=1)
    exposure_s = require_number("exposure_s", exposure_s, minimum=0, exclusive_minimum=True)
    num_flats = require_int("num_flats", num_flats, minimum=1)
    offset = require_number("sample_out_offset_um", sample_out_offset_um)
    require_out_of_field("sample_out_offset_um", offset, field_of_view_um(camera, None))
    sample_entry = sample_md(sample_id)
    estimate = (num_tiles + num_flats) * (exposure_s + 0.05)
    require_duration_within("mosaic_radiograph", estimate, max_duration_s)
    origin = (float(sample.x.position), float(sample.z.position))
    xs, zs = mosaic_grid(rows, columns, tile_width_um, tile_height_um, overlap_fraction, origin)
    out_x = float(xs.max() + offset) if offset > 0 else float(xs.min() + offset)
    require_positions_within_limits("grid x", sample.x, list(xs) + [out_x])
    require_positions_within_limits("grid z", sample.z, zs)
    logger.info("mosaic_radiograph of %d tiles: estimated %s", len(xs), format_duration(estimate))
    _md = {
        "plan_name": "mosaic_radiograph",
        "num_points": len(xs),
        "detectors": [camera.name],
        "motors": [sample.x.name, sample.z.name],
        "estimated_duration_s": round(estimate, 3),
        **sample_entry,
        "mosaic_radiograph": {
            "rows": rows, "columns": columns, "tile_width_um": tile_width_um,
            "tile_height_um": tile_height_um, "overlap_fraction": overlap_fraction,
        },
    }  # fmt: skip
    _md.update(md or {})
    cam = getattr(camera, "cam", None)

    # On every exit (the success path too) the shutter closes, the camera stops and gets
    # its exposure back and the stage returns to the grid's origin, before the stop document.
    safe_state = txm_safe_state(shutter, camera=camera, sample=sample, positions=("x", "z"))

    @bpp.run_decorator(md=_md)
    @safe_state_decorator(safe_state)
    def run():
        if cam is not None and hasattr(cam, "acquire_time"):
            yield from bps.mv(cam.acquire_time, exposure_s)
        yield from bps.mv(shutter, "open")
        yield from take_flats(camera, sample.x, out_x, origin[0], num_flats)
        yield from bps.stage(camera)  # the tiles' file
        for index, (x, z) in enumerate(zip(xs, zs, strict=True)):
            tile = bps.mv(sample.x, float(x), sample.z, float(z))
            yield from acquire_frame(camera, index, [sample.x, sample.z], before=tile)
        yield from bps.unstage(camera)
        yield from bps.mv(shutter, "close")

    return (yield from run())
