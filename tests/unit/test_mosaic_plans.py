"""Mosaic plans: heights, validation of every tile before any motion, run layout (no IOC)."""

import numpy as np
import pytest
from bluesky import RunEngine
from fakes import FakeCamera, FakeShutter
from ophyd import Component as Cpt
from ophyd import Device, SoftPositioner

from multiscope.plans.mosaic import (
    mosaic_grid,
    mosaic_heights,
    mosaic_radiograph,
    vertical_mosaic_tomo,
)
from multiscope.plans.preflight import PlanArgumentError


class Stage(Device):
    x = Cpt(SoftPositioner, limits=(-500, 500), init_pos=0.0)
    z = Cpt(SoftPositioner, limits=(0, 200), init_pos=0.0)
    theta = Cpt(SoftPositioner, limits=(-720, 720), init_pos=0.0)


@pytest.fixture
def rig():
    return (
        FakeCamera(name="camera"),
        Stage(name="sample"),
        FakeShutter(name="shutter", value="close"),
    )


def test_heights_follow_the_seed_layout():
    # Seed 000: four tomograms ~58 um apart with ~6 um overlap (64 um field, 10 %).
    heights = mosaic_heights(4, 64.0, 0.1, 10.0)
    np.testing.assert_allclose(np.diff(heights), 57.6)
    assert heights[0] == 10.0


@pytest.mark.parametrize("overlap", [0, 0.5, -0.1, 0.7])
def test_overlap_outside_open_interval_refused(rig, overlap):
    camera, sample, shutter = rig
    plan = vertical_mosaic_tomo(
        camera, sample, shutter, num_tiles=3, tile_height_um=50, overlap_fraction=overlap
    )
    with pytest.raises(PlanArgumentError, match=r"overlap_fraction must be in \(0, 0.5\)"):
        next(plan)


def test_heights_beyond_stage_refused_before_motion(rig):
    camera, sample, shutter = rig
    plan = vertical_mosaic_tomo(camera, sample, shutter, num_tiles=5, tile_height_um=64)
    with pytest.raises(PlanArgumentError, match="tile heights"):
        next(plan)
    assert sample.z.position == 0


def test_a_bad_tile_argument_is_refused_before_the_first_tile_moves(rig):
    camera, sample, shutter = rig
    plan = vertical_mosaic_tomo(
        camera, sample, shutter, num_tiles=2, tile_height_um=50, exposure_s=-1
    )
    with pytest.raises(PlanArgumentError, match="exposure_s"):
        next(plan)
    assert sample.z.position == 0


def test_tiles_share_mosaic_id_and_record_heights(rig):
    camera, sample, shutter = rig
    RE = RunEngine({})
    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    uids = RE(
        vertical_mosaic_tomo(
            camera, sample, shutter, num_tiles=3, tile_height_um=60, overlap_fraction=0.1,
            num_projections=4, num_flats=1, num_darks=1, md={"operator": "ada"},
        )
    )  # fmt: skip
    assert len(uids) == 3 and len(starts) == 3
    ids = {doc["mosaic"]["mosaic_id"] for doc in starts}
    assert len(ids) == 1
    np.testing.assert_allclose([doc["mosaic"]["z_um"] for doc in starts], [0, 54, 108])
    assert [doc["mosaic"]["tile_index"] for doc in starts] == [0, 1, 2]
    assert all(doc["operator"] == "ada" and doc["plan_name"] == "tomo_scan" for doc in starts)
    assert sample.z.position == pytest.approx(108)


def test_radiograph_grid_is_snake_ordered_and_run(rig):
    xs, zs = mosaic_grid(2, 3, 50, 40, 0.2, (0.0, 0.0))
    np.testing.assert_allclose(xs, [0, 40, 80, 80, 40, 0])
    np.testing.assert_allclose(zs, [0, 0, 0, 32, 32, 32])
    camera, sample, shutter = rig
    RE = RunEngine({})
    events = []
    RE.subscribe(lambda name, doc: events.append(doc) if name == "event" else None)
    RE(mosaic_radiograph(camera, sample, shutter, rows=2, columns=3, tile_width_um=50,
                         tile_height_um=40, overlap_fraction=0.2, num_flats=2))  # fmt: skip
    assert len(events) == 8  # 2 flats + 6 tiles
    assert sample.x.position == 0 and sample.z.position == 0


def test_a_tile_that_fails_closes_its_own_run_and_shutter(rig):
    # The tiles' plans are started early (validation) and replayed: a failure the
    # RunEngine throws in must reach the tile's plan, or its cleanup never runs.
    camera, sample, shutter = rig
    RE = RunEngine({})
    stops = []
    RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
    triggers = {"count": 0}
    trigger = camera.trigger

    def trigger_then_fail():
        triggers["count"] += 1
        if triggers["count"] == 9:  # tile 1 (of 0, 1) at its 2nd projection
            raise RuntimeError("camera lost")
        return trigger()

    camera.trigger = trigger_then_fail
    with pytest.raises(RuntimeError, match="camera lost"):
        RE(vertical_mosaic_tomo(camera, sample, shutter, num_tiles=2, tile_height_um=60,
                                num_projections=4, num_flats=1, num_darks=1))  # fmt: skip
    assert [doc["exit_status"] for doc in stops] == ["success", "fail"]
    assert shutter.get() == "close" and sample.x.position == 0
