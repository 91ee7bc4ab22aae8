"""The lab XRM's pixel size from its geometry (``analysis.optics.xrm_*``).

The seed's recipe pixels are reproduced with the documented detector (13.5 um camera
pixels, binning 2) at an ODD of 100 mm and the SODs of ``docs/xrm.md``.
"""

import math

import pytest

from multiscope.analysis.optics import (
    xrm_geometric_magnification,
    xrm_geometry_for_pixel,
    xrm_objective,
    xrm_odd_for_pixel_mm,
    xrm_pixel_size_um,
    xrm_sod_for_pixel_mm,
)

DETECTOR_PIXEL_UM = 13.5
ODD_MM = 100.0
# recipe: (objective, pixel um from the seed, SOD mm of docs/xrm.md at ODD 100 mm)
RECIPE_GEOMETRY = {
    "coin_survey": (0.4, 27.3, 67.91),
    "coin_zoom": (0.4, 12.16, 21.97),
    "pouch": (4.0, 3.74, 124.25),
    "nimh_survey": (0.4, 52.53, 350.9),
    "nimh_zoom": (4.0, 3.62, 115.65),
}


def test_pixel_size_is_the_formula():
    sod, odd, objective, binning = 40.0, 160.0, 4.0, 2
    m_geo = (sod + odd) / sod
    assert m_geo == pytest.approx(5.0)
    expected = DETECTOR_PIXEL_UM * binning / (m_geo * objective)
    assert xrm_pixel_size_um(DETECTOR_PIXEL_UM, sod, odd, "4x", binning) == pytest.approx(expected)
    assert xrm_geometric_magnification(sod, 0.0) == 1.0


@pytest.mark.parametrize("recipe", sorted(RECIPE_GEOMETRY))
def test_recipe_pixels_from_the_documented_geometry(recipe):
    objective, pixel, sod = RECIPE_GEOMETRY[recipe]
    # The documented SOD (rounded to 0.01 mm) gives the seed's pixel within 0.05 %.
    got = xrm_pixel_size_um(DETECTOR_PIXEL_UM, sod, ODD_MM, objective, binning=2)
    assert got == pytest.approx(pixel, rel=5e-4)
    # and the inverse finds that SOD again
    assert xrm_sod_for_pixel_mm(pixel, DETECTOR_PIXEL_UM, ODD_MM, objective, 2) == pytest.approx(
        sod, abs=0.01
    )


def test_inverse_helpers_round_trip():
    odd = xrm_odd_for_pixel_mm(2.0, DETECTOR_PIXEL_UM, 30.0, 4, 1)
    assert xrm_pixel_size_um(DETECTOR_PIXEL_UM, 30.0, odd, 4, 1) == pytest.approx(2.0)
    sod = xrm_sod_for_pixel_mm(0.5, DETECTOR_PIXEL_UM, 250.0, "20x", 1)
    assert xrm_pixel_size_um(DETECTOR_PIXEL_UM, sod, 250.0, 20, 1) == pytest.approx(0.5)


def test_geometry_keeps_the_odd_when_it_can_and_moves_it_when_the_sod_would_be_too_small():
    sod, odd = xrm_geometry_for_pixel(
        27.3, DETECTOR_PIXEL_UM, 0.4, 2, odd_mm=100, sod_limits_mm=(12, 600),
        odd_limits_mm=(10, 400),
    )  # fmt: skip
    assert odd == pytest.approx(100.0) and sod == pytest.approx(67.91, abs=0.01)
    # 1 um at 4x needs M_geo 6.75: SOD 17.4 mm at ODD 100 < 20 mm minimum -> ODD grows
    sod, odd = xrm_geometry_for_pixel(
        1.0, DETECTOR_PIXEL_UM, 4, 2, odd_mm=100, sod_limits_mm=(20, 600), odd_limits_mm=(10, 400)
    )
    assert sod == pytest.approx(20.0)
    assert xrm_pixel_size_um(DETECTOR_PIXEL_UM, sod, odd, 4, 2) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: xrm_pixel_size_um(13.5, 0.0, 100, 4), "sod_mm"),
        (lambda: xrm_pixel_size_um(13.5, 10.0, -1, 4), "odd_mm"),
        (lambda: xrm_pixel_size_um(13.5, 10.0, 100, "tenx"), "objective"),
        (lambda: xrm_pixel_size_um(13.5, 10.0, 100, 4, binning=1.5), "binning"),
        (lambda: xrm_pixel_size_um(-13.5, 10.0, 100, 4), "detector_pixel_um"),
        # 0.4x, bin 2: pixels are at most 67.5 um (M_geo >= 1)
        (lambda: xrm_sod_for_pixel_mm(80.0, 13.5, 100, 0.4, 2), "at most 67.5 um"),
        (
            lambda: xrm_geometry_for_pixel(
                0.05, 13.5, 4, 1, odd_mm=100, sod_limits_mm=(12, 600), odd_limits_mm=(10, 400)
            ),
            "out of reach",
        ),  # fmt: skip
    ],
)
def test_invalid_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_objective_names():
    assert xrm_objective("0.4x") == 0.4 and xrm_objective(20) == 20.0
    assert math.isclose(xrm_objective(" 4X "), 4.0)
