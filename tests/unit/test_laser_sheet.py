"""The simulated sheet's kerf matches an independent rasterisation (sim_devices.laser_truth)."""

import numpy as np
import pytest

from multiscope.analysis.laser_path import tab_path
from sim_devices.laser_truth import kerf_mismatch
from sim_devices.physics.laser_sheet import SheetMap


def test_material_is_removed_only_within_the_kerf():
    path = tab_path(100.0, 500.0, 600.0, 800.0).moved(1000.0, 500.0)
    sheet = SheetMap((3000.0, 3000.0), 2.0)
    sheet.sweep(path.x_um, path.y_um, 10.0, 0.0, path.length_um)
    outside, left = kerf_mismatch(~sheet.material, [(path.x_um, path.y_um)], 20.0, 2.0, 2.0)
    assert (outside, left) == (0, 0)
    # Removed: the kerf's area (length x kerf, corners aside) within the pixel's error.
    assert sheet.removed_um2 == pytest.approx(path.length_um * 20.0, rel=0.05)


def test_a_stopped_cut_frees_nothing_and_removes_only_what_it_swept():
    path = tab_path(100.0, 500.0, 600.0, 800.0).moved(1000.0, 500.0)
    sheet = SheetMap((3000.0, 3000.0), 2.0)
    sheet.sweep(path.x_um, path.y_um, 10.0, 0.0, 0.4 * path.length_um)
    assert sheet.pieces_in(path.x_um, path.y_um, 10.0).count == 0
    assert sheet.removed_um2 == pytest.approx(0.4 * path.length_um * 20.0, rel=0.05)
    sheet.sweep(path.x_um, path.y_um, 10.0, 0.4 * path.length_um, path.length_um)
    assert sheet.pieces_in(path.x_um, path.y_um, 10.0).count == 1


def test_the_map_survives_a_save_and_load(tmp_path):
    sheet = SheetMap((1000.0, 800.0), 2.0)
    sheet.remove_segment(100.0, 100.0, 600.0, 300.0, 15.0)
    file = tmp_path / "map.npz"
    file.write_bytes(sheet.to_bytes())
    again = SheetMap.load(file)
    assert again.pixel_um == 2.0 and again.size_um == (1000.0, 800.0)
    np.testing.assert_array_equal(again.material, sheet.material)


def test_the_intact_share_of_a_kerf_falls_as_it_is_cut():
    path = tab_path(100.0, 500.0, 600.0, 800.0).moved(1000.0, 500.0)
    sheet = SheetMap((3000.0, 3000.0), 2.0)
    assert sheet.intact_fraction(path.x_um, path.y_um, 10.0) == 1.0
    sheet.sweep(path.x_um, path.y_um, 10.0, 0.0, 0.3 * path.length_um)
    assert sheet.intact_fraction(path.x_um, path.y_um, 10.0) == pytest.approx(0.7, abs=0.02)
    sheet.sweep(path.x_um, path.y_um, 10.0, 0.3 * path.length_um, path.length_um)
    assert sheet.intact_fraction(path.x_um, path.y_um, 10.0) == 0.0
