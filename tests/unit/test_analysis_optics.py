"""Zone-plate optics against hand calculations and the numbers in docs/stack-facts.md."""

import doctest

import numpy as np
import pytest

import multiscope.analysis.optics as optics
from multiscope.analysis.optics import (
    FocusCalibration,
    depth_of_focus_um,
    focal_length_mm,
    lens_distances_mm,
    wavelength_nm,
)


def test_docstring_examples():
    assert doctest.testmod(optics).failed == 0


def test_wavelength_and_focal_length():
    assert wavelength_nm(12.398) == pytest.approx(0.1, rel=1e-4)
    # f = D dr / lambda = 60 um * 30 nm / 0.15498 nm = 11.614 mm
    assert focal_length_mm(60, 30, 8.0) == pytest.approx(60e-3 * 30 / (1.23984 / 8.0), rel=1e-5)
    # f grows linearly with energy
    assert focal_length_mm(60, 30, 10.0) / focal_length_mm(60, 30, 5.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        wavelength_nm(0)


def test_lens_equation_and_magnification():
    f = focal_length_mm(60, 30, 8.333)
    for magnification in (10, 44.2, 80):
        p, q = lens_distances_mm(f, magnification)
        assert 1 / p + 1 / q == pytest.approx(1 / f, rel=1e-12)
        assert q / p == pytest.approx(magnification)


def test_depth_of_focus_matches_domain_example():
    # docs/stack-facts.md: 30 nm resolution at 8 keV gives a depth of focus of ~23 um.
    assert depth_of_focus_um(30, 8.0) == pytest.approx(23, abs=0.5)


def test_calibration_spline_interpolates_smooth_correction():
    energies = np.array([8.2, 8.3, 8.4, 8.5, 8.6])
    truth = lambda e: 0.05 * (e - 8.4) ** 2 - 0.01 * (e - 8.4)  # noqa: E731
    calibration = FocusCalibration(list(energies), {"zp_z": list(truth(energies))})
    grid = np.linspace(8.2, 8.6, 41)
    # A cubic spline through five samples of a quadratic reproduces it (to rounding).
    np.testing.assert_allclose(calibration.offset("zp_z", grid), truth(grid), atol=1e-12)
    assert calibration.offset("det_z", 8.3) == 0
    assert calibration.covers == (8.2, 8.6)
    with pytest.raises(ValueError, match="outside the focus calibration"):
        calibration.offset("zp_z", 8.7)
    again = FocusCalibration.from_dict(calibration.to_dict())
    assert again.offset("zp_z", 8.45) == pytest.approx(calibration.offset("zp_z", 8.45))


def test_calibration_rejects_bad_tables():
    with pytest.raises(ValueError, match="strictly increasing"):
        FocusCalibration([8.3, 8.2], {"zp_z": [0, 0]})
    with pytest.raises(ValueError, match="has 1 values for 2 energies"):
        FocusCalibration([8.2, 8.3], {"zp_z": [0]})
    assert FocusCalibration().covers_energy(5.0)
