"""analysis.serial: one slice's drift, grid placement and EDS-SIMS correlation, on
constructions whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from multiscope.analysis.serial import (
    correlate_slice,
    li_host_reference,
    place_on_grid,
    shift_map,
    slice_drift,
)


def _scene(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.5) * 100


def test_shift_map_follows_scikit_image_sign_and_marks_outside_nan():
    image = _scene((60, 80))
    moved = shift_map(image, (3, -5))
    np.testing.assert_allclose(moved[3:, :-5], image[:-3, 5:])  # out[o] = in[o - shift]
    assert np.isnan(moved[:3]).all() and np.isnan(moved[:, -5:]).all()
    half = shift_map(image, (0.5, 0.0))
    np.testing.assert_allclose(
        half[10:-10, 10:-10], ndimage.shift(image, (0.5, 0), order=1)[10:-10, 10:-10]
    )


def test_place_on_grid_puts_the_first_pixel_where_asked():
    image = np.arange(12.0).reshape(3, 4)
    out = place_on_grid(image, (6, 7), (2, 1))
    np.testing.assert_allclose(out[2:5, 1:5], image)
    assert np.isnan(out[:2]).all() and np.isnan(out[:, 0]).all() and np.isnan(out[5]).all()


def test_slice_drift_finds_a_known_subpixel_shift_in_the_window():
    reference = _scene((120, 160), seed=1)
    true = np.array([2.4, -3.7])
    image = ndimage.shift(reference, -true, order=3, mode="nearest")  # the face drifted
    window = (slice(20, 100), slice(30, 130))
    shift, residual = slice_drift(reference, image, fiducial=window)
    np.testing.assert_allclose(shift, true, atol=0.1)
    assert np.abs(residual).max() < 0.1


def test_li_host_reference_sums_the_host_lines_or_falls_back():
    maps = {"Co La": _scene((40, 50), 1), "Zr La": _scene((40, 50), 2), "C Ka": _scene((40, 50), 3)}
    total, lines = li_host_reference(maps)
    assert lines == ("Co La", "Zr La") and total.min() >= 0 and total.max() <= 2
    _, lines = li_host_reference({"C Ka": maps["C Ka"]})
    assert lines == ("C Ka",)
    with pytest.raises(ValueError, match="at least one"):
        li_host_reference({})


def test_correlate_slice_with_a_given_shift_and_no_eds_map():
    sims = {"6Li+": _scene((50, 50), 4), "7Li+": _scene((50, 50), 5)}
    result = correlate_slice({}, sims, 0.1, 0.1, shift_um=(0.5, -0.3), grid_shape=(40, 60))
    assert result.sims_on_eds["6Li+"].shape == (40, 60)
    np.testing.assert_allclose(result.sims_on_eds["6Li+"][5:40, 0:47], sims["6Li+"][:35, 3:50])
    assert np.isnan(result.covariance) and result.covariance_map is None
    with pytest.raises(ValueError, match="EDS maps or a shift"):
        correlate_slice({}, sims, 0.1, 0.1)
