"""The run contracts (``multiscope.contracts``): plans write them, callbacks read them back."""

import json
from pathlib import Path

import pytest

from multiscope.contracts import MosaicBlock, ScoutBlock, TomoBlock, XanesBlock, XrmBlock

# Start documents of runs the TXM demo stored (session journal, 2026-12-06, main at
# c97e145), and the zoom run of the prep demo's scout and zoom (main job, 2026-12-06,
# main at 8b16eef): the blocks exactly as a catalog holds them.
STORED = json.loads((Path(__file__).parent / "data" / "stored_start_documents.json").read_text())


@pytest.mark.parametrize(
    ("plan_name", "key", "block_class"),
    [
        ("tomo_scan", "tomo", TomoBlock),
        ("tomo_scan", "mosaic", MosaicBlock),
        ("xanes_2d", "xanes", XanesBlock),
        ("xrm_tomo_scan", "xrm", XrmBlock),
        ("xrm_tomo_scan", "scout", ScoutBlock),
    ],
)
def test_stored_blocks_read_back_and_write_out_unchanged(plan_name, key, block_class):
    md = STORED[plan_name][key]
    block = block_class.from_md(md)
    assert block.extra == {}  # every stored key is a field
    assert block.to_md() == md
    assert json.loads(json.dumps(block.to_md())) == md  # plain JSON


def test_stored_tomo_block_fields():
    block = TomoBlock.from_md(STORED["tomo_scan"]["tomo"])
    assert block.num_projections == 181 and block.pixel_size_um == 0.26
    assert block.rotation == "sample_theta" and block.flat_policy == "both"
    assert block.scan_mode is None and not block.is_fly
    assert "scan_mode" not in block.to_md()  # a tomography run's block has no scan_mode


def test_stored_xanes_block_fields():
    block = XanesBlock.from_md(STORED["xanes_2d"]["xanes"])
    assert block.energies_keV == tuple(STORED["xanes_2d"]["xanes"]["energies_keV"])
    assert len(block.pre_edge_keV) == 2 and block.edge == "Ni"
    assert block.energy_index_field == "xanes_energy_index"


def test_fly_tomo_block_round_trip_keeps_its_optional_keys():
    block = TomoBlock(
        num_projections=90, angle_range_deg=180.0, start_deg=0.0, exposure_s=0.01,
        num_darks=2, num_flats=3, flat_policy="both", dark_policy="start",
        sample_out_offset_um=300.0, sample_id="s", scan_mode="fly",
        frame_period_s=0.02, theta_velocity_deg_s=100.0,
    )  # fmt: skip
    md = block.to_md()
    assert md["scan_mode"] == "fly" and md["frame_period_s"] == 0.02
    assert list(md)[-3:] == ["scan_mode", "frame_period_s", "theta_velocity_deg_s"]
    again = TomoBlock.from_md(md)
    assert again == block and again.is_fly


def test_unknown_keys_survive_and_missing_keys_take_defaults():
    md = {"edge": "Mn", "energies_keV": [6.5, 6.6], "future_key": {"a": 1}}
    block = XanesBlock.from_md(md)
    assert block.extra == {"future_key": {"a": 1}}
    assert block.image_field == "camera_image" and block.num_frames is None
    assert block.to_md()["future_key"] == {"a": 1}
    assert TomoBlock.from_md(None) == TomoBlock()


def test_a_scout_by_coordinates_writes_no_survey_analysis():
    block = ScoutBlock(survey_uid="u", survey_recipe="coin_survey", selection="coordinates",
                       voi_mm=(1.0, 2.0, 3.0))  # fmt: skip
    assert set(block.to_md()) == {"survey_uid", "survey_recipe", "selection", "voi_mm"}
    assert ScoutBlock.from_md(block.to_md()) == block
