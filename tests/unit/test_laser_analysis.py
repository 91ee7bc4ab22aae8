"""The laser mill's analysis: attenuation lengths (against xraydb by hand) and tool paths.

A path's geometry is checked by cutting it in the simulated sheet (its own
rasteriser, ``sim_devices.physics.laser_sheet``) and measuring the freed piece.
"""

import math

import numpy as np
import pytest
import xraydb

from multiscope.analysis.attenuation import (
    ELECTRODE_MATERIALS,
    attenuation_length_um,
    plan_tab,
    tab_thickness_um,
)
from multiscope.analysis.laser_path import PathError, cut_time_s, pillar_path, tab_path
from sim_devices.physics.laser_sheet import SheetMap


@pytest.mark.parametrize(
    ("formula", "density", "energy_keV"),
    [("LiNi0.8Mn0.1Co0.1O2", 4.75, 5.4), ("LiNi0.8Mn0.1Co0.1O2", 4.75, 8.333),
     ("Cu", 8.96, 8.0), ("Cu", 8.96, 20.0)],
)  # fmt: skip
def test_attenuation_length_is_one_over_mu_of_xraydb(formula, density, energy_keV):
    # By hand: mu (1/cm) of the total cross-section at the energy in eV.
    mu_per_cm = xraydb.material_mu(formula, energy_keV * 1000.0, density=density)
    expected_um = 1.0e4 / mu_per_cm
    assert attenuation_length_um(formula, density, energy_keV) == pytest.approx(expected_um)
    # Porosity 0.3 leaves 70 % of the material in the beam: 1 / 0.7 times longer.
    porous = attenuation_length_um(formula, density, energy_keV, porosity=0.3)
    assert porous == pytest.approx(expected_um / 0.7, rel=1e-9)


def test_known_numbers_within_the_seeds_range():
    # Cu at 8 keV: mu/rho ~ 52.6 cm2/g -> 1 / (52.6 * 8.96) cm = 21.2 um.
    assert attenuation_length_um("Cu", 8.96, 8.0) == pytest.approx(21.2, abs=0.3)
    # NMC811 at 30 % porosity at 8 keV: a tab of ~100 um (seed 000's ~80-100).
    plan = plan_tab("NMC811", 8.0)
    assert 90.0 < plan.target_width_um < 120.0 and plan.sized_at_keV == 8.0
    assert plan.transmission == pytest.approx(math.exp(-2))


@pytest.mark.parametrize("energy_keV", [8.30, 8.333, 8.36])
def test_a_tab_planned_near_an_edge_transmits_above_it(energy_keV):
    """At 8.333 keV (the Ni K edge in xraydb, below it) a tab sized there would pass
    ~0.1 % just above the edge; it is sized for just above the edge instead."""
    plan = plan_tab("NMC811", energy_keV)
    above = attenuation_length_um("LiNi0.8Mn0.1Co0.1O2", 4.75, 8.334, 0.30)
    assert plan.sized_at_keV == pytest.approx(8.334)
    assert plan.target_width_um == pytest.approx(2.0 * above)
    for energy in (energy_keV - 0.05, energy_keV, energy_keV + 0.05):
        length = attenuation_length_um("LiNi0.8Mn0.1Co0.1O2", 4.75, energy, 0.30)
        assert math.exp(-plan.target_width_um / length) >= math.exp(-2) - 1e-9
    # far from any edge, the energy itself
    assert plan_tab("NMC811", 8.25).sized_at_keV == 8.25
    assert plan_tab("NMC811", 8.333, edge_margin_keV=0.0).target_width_um > 100.0


def test_tab_thickness_is_minus_ln_transmission_attenuation_lengths():
    length = attenuation_length_um("LiFePO4", 3.6, 8.0, 0.35)
    assert tab_thickness_um("LiFePO4", 3.6, 8.0, 0.35) == pytest.approx(2.0 * length)
    assert tab_thickness_um("LiFePO4", 3.6, 8.0, 0.35, transmission=math.exp(-1)) == (
        pytest.approx(length)
    )
    # The transmission through the tab is what was asked.
    thickness = tab_thickness_um("LiFePO4", 3.6, 8.0, 0.35, transmission=0.2)
    assert math.exp(-thickness / length) == pytest.approx(0.2)


def test_plan_tab_programs_a_kerf_more_for_an_uncompensated_cut():
    plan = plan_tab("LCO", 8.0, spot_um=40.0)
    assert plan.kerf_um == pytest.approx(20.0)
    assert plan.programmed_width_um == pytest.approx(plan.target_width_um + 20.0)
    assert plan.porosity == ELECTRODE_MATERIALS["LCO"].porosity
    assert plan_tab("LCO", 8.0, porosity=0.0).target_width_um < plan.target_width_um


@pytest.mark.parametrize(
    ("call", "match"),
    [(lambda: plan_tab("NMC622", 8.0), "unknown material"),
     (lambda: plan_tab("NMC811", -1.0), "energy_keV"),
     (lambda: plan_tab("NMC811", 8.0, porosity=1.0), "porosity"),
     (lambda: attenuation_length_um("Qx2", 1.0, 8.0), "formula"),
     (lambda: attenuation_length_um("Cu", 0.0, 8.0), "density"),
     (lambda: tab_thickness_um("Cu", 8.96, 8.0, transmission=1.5), "transmission")],
)  # fmt: skip
def test_bad_requests_are_refused_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _cut(path, origin=(3000.0, 700.0)) -> tuple:
    """Cut ``path`` in a fresh simulated sheet; the freed piece and the map."""
    placed = path.moved(*origin)
    sheet = SheetMap((6000.0, 6000.0), 2.0)
    sheet.sweep(placed.x_um, placed.y_um, placed.kerf_um / 2.0, 0.0, placed.length_um)
    piece = sheet.pieces_in(placed.x_um, placed.y_um, placed.kerf_um / 2.0)
    mid = origin[1] + path.piece.tab_mid_y_um
    return piece, piece.row_width_um(mid, sheet.pixel_um), sheet


@pytest.mark.parametrize("width", [60.0, 100.0, 250.0])
def test_a_compensated_path_cuts_the_outline_asked_for_within_5_um(width):
    path = tab_path(width, 500.0, 1500.0, 4000.0, spot_um=40.0)
    piece, tab_width, _ = _cut(path)
    assert piece.count == 1
    assert tab_width == pytest.approx(width, abs=5.0)
    assert piece.width_um == pytest.approx(1500.0, abs=5.0)
    assert piece.length_um == pytest.approx(4500.0, abs=5.0)
    assert piece.area_um2 == pytest.approx(path.piece.area_um2, rel=0.005)


def test_an_uncompensated_nominal_100_um_tab_comes_out_80_um():
    path = tab_path(100.0, 500.0, 1500.0, 4000.0, spot_um=40.0, compensate=False)
    assert path.piece.tab_width_um == pytest.approx(80.0)
    piece, tab_width, _ = _cut(path)
    assert tab_width == pytest.approx(80.0, abs=5.0)
    assert piece.length_um == pytest.approx(4480.0, abs=5.0)
    # The path runs on the nominal outline: its vertices are the outline's.
    np.testing.assert_allclose(path.x_um, path.outline_um[0])


def test_an_uncompensated_tab_keeps_its_length_above_the_shoulders_the_handle_loses_a_kerf():
    path = tab_path(100.0, 500.0, 1500.0, 4000.0, spot_um=40.0, compensate=False)
    expected = path.piece
    assert (expected.tab_length_um, expected.handle_length_um) == pytest.approx((500.0, 3980.0))
    assert expected.tab_length_um + expected.handle_length_um == pytest.approx(expected.length_um)
    piece, _, sheet = _cut(path)
    # The freed piece's rows, from the simulated sheet: the tab's narrow, the handle's wide.
    widths = piece.mask.sum(axis=1) * sheet.pixel_um
    tab_rows = np.flatnonzero((widths > 0) & (widths < 750.0))
    handle_rows = np.flatnonzero(widths >= 750.0)
    tolerance = 2 * sheet.pixel_um  # a pixel at each end
    assert tab_rows.size * sheet.pixel_um == pytest.approx(expected.tab_length_um, abs=tolerance)
    assert handle_rows.size * sheet.pixel_um == pytest.approx(expected.handle_length_um,
                                                              abs=tolerance)  # fmt: skip
    # The row measured is the tab's middle.
    middle = (piece.origin_px[0] + tab_rows.mean() + 0.5) * sheet.pixel_um - 700.0
    assert middle == pytest.approx(expected.tab_mid_y_um, abs=sheet.pixel_um)
    assert piece.area_um2 == pytest.approx(expected.area_um2, rel=0.005)


def test_the_compensated_path_runs_half_a_kerf_outside_the_outline():
    path = tab_path(100.0, 500.0, 1500.0, 4000.0, spot_um=40.0)
    assert path.kerf_um == pytest.approx(20.0)
    xs, ys = path.x_um, path.y_um
    assert np.isclose(xs.max(), 750.0 + 10.0) and np.isclose(ys.min(), -10.0)
    # The tab's sides: the path at +-(50 + 10) um above the handle.
    assert sorted(set(np.round(xs[(ys > 4100)], 6))) == [-60.0, 60.0]
    assert xs[0] == xs[-1] and ys[0] == ys[-1]  # closed


def test_a_pillar_is_cut_to_its_diameter():
    path = pillar_path(90.0, 300.0, spot_um=40.0, handle_width_um=600.0, handle_length_um=800.0)
    assert path.kind == "pillar"
    _, width, _ = _cut(path)
    assert width == pytest.approx(90.0, abs=5.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [(lambda: tab_path(30.0, 500.0, 1500.0, 4000.0, 40.0), "narrower than the 40 um spot"),
     (lambda: tab_path(55.0, 500.0, 1500.0, 4000.0, 40.0, compensate=False), "come out 35"),
     (lambda: tab_path(100.0, 20.0, 1500.0, 4000.0, 40.0), "length_um"),
     (lambda: tab_path(100.0, 500.0, 150.0, 4000.0, 40.0), "handle_width_um"),
     (lambda: tab_path(-1.0, 500.0, 1500.0, 4000.0, 40.0), "width_um"),
     (lambda: pillar_path(120.0, 300.0, 40.0, sheet_thickness_um=100.0), "sheet's thickness")],
)  # fmt: skip
def test_what_the_spot_cannot_cut_is_refused(call, match):
    with pytest.raises(PathError, match=match):
        call()


def test_a_path_off_the_table_is_refused():
    path = tab_path(100.0, 500.0, 1500.0, 4000.0).moved(800.0, 100.0)
    path.check_within((0.0, 6000.0), (0.0, 6000.0))  # 800 - 760 - 10 >= 0
    with pytest.raises(PathError, match="outside the table's range"):
        tab_path(100.0, 500.0, 1500.0, 4000.0).moved(700.0, 100.0).check_within(
            (0.0, 6000.0), (0.0, 6000.0)
        )


def test_length_and_time_at_the_cutting_speed():
    path = tab_path(100.0, 500.0, 1500.0, 4000.0)
    # The compensated outline: 2 x (1520 + 4520) um.
    assert path.length_um == pytest.approx(2 * (1520.0 + 4520.0))
    assert path.duration_s(2.0) == pytest.approx(path.length_um / 2000.0)
    assert path.duration_s(2.0) < 60.0  # under a minute per sample (seed 000)
    with pytest.raises(PathError):
        cut_time_s(100.0, 0.0)
