"""The two-line XANES path a user types gives the best answer with its defaults.

``fit_whiteline(normalize(stack, energies, pre_edge, post_edge)[0], energies)``:
no edge-step threshold and no whiteline window given.  The maps are held-out
style: not the simulator's tab, but seeded discs of the element (edge steps 0.5-1,
Ni valences 2+..4+ from the simulator's Ni K-edge model) on a sloping background
everywhere, with Gaussian noise of 1 % of the largest edge step on every energy.
Element-free pixels must stay unfitted (>= 99 %) and the element's pixels fitted
(>= 99 %), on the unit tests' dense energy grid (11 pre-, 8 post-edge energies) and
on the sparse 3D one (3 and 3).  The default window must give the explicit
window's whitelines, at the Ni K edge (keV) and at an Fe-K-like edge (eV).
"""

import logging

import numpy as np
import pytest
from xanes_grid import E3_KEV, E_KEV, POST, PRE, WINDOW

import sim_devices.physics.xanes as xph
from multiscope.analysis import xanes as xa

NOISE = 0.01  # per energy, 1 % of the largest edge step (1.0)
GRIDS = {
    # energies, pre-edge, post-edge, explicit whiteline window, stencil
    "dense": (E_KEV, PRE, POST, WINDOW, 9),
    "sparse": (E3_KEV, (8.30, 8.32), (8.37, 8.39), (8.345, 8.359), 5),
}


def held_out_map(energies, seed, shape=(96, 96)):
    """Discs of the element (steps 0.5-1, one valence each) on a sloping background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    step = np.zeros(shape)
    valence = np.full(shape, 3.0)
    for _ in range(14):
        r0, c0 = rng.uniform(0, shape[0], 2)
        inside = (rows - r0) ** 2 + (cols - c0) ** 2 < rng.uniform(4, 11) ** 2
        step[inside] = rng.uniform(0.5, 1.0)
        valence[inside] = rng.uniform(2.0, 4.0)
    shape_of_edge = xph.nmc_mu_resonant(energies[:, None], valence.ravel()[None, :])
    shape_of_edge /= xph.nmc_edge_jump(8.3425)  # 0 before the edge, ~1 after it
    background = 0.4 - 0.8 * (energies - 8.3)  # every pixel, with or without the element
    stack = background[:, None] + step.ravel() * shape_of_edge
    stack += rng.normal(0.0, NOISE, stack.shape)
    return stack.reshape(energies.size, *shape).astype(np.float32), step > 0


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_line_path_masks_the_pixels_without_the_element(grid, seed):
    energies, pre, post, _, n_points = GRIDS[grid]
    stack, element = held_out_map(energies, seed)
    norm = xa.normalize(stack, energies, pre, post)[0]
    whiteline = xa.fit_whiteline(norm, energies, n_points=n_points)
    fitted = np.isfinite(whiteline)
    assert element.mean() > 0.2 and (~element).mean() > 0.5  # both kinds well sampled
    assert 1.0 - fitted[~element].mean() >= 0.99
    assert fitted[element].mean() >= 0.99
    # The absolute threshold the default replaced kept a whiteline on too many empty
    # pixels of the same map: the map tests what the issue measured.
    legacy = xa.normalize(stack, energies, pre, post, min_edge_jump=0.02)[0]
    legacy_fitted = np.isfinite(xa.fit_whiteline(legacy, energies, n_points=n_points))
    assert legacy_fitted[~element].mean() > 0.01


def test_explicit_threshold_keeps_the_per_pixel_mask():
    stack, _ = held_out_map(E_KEV, 0)
    _, jump, mask = xa.normalize(stack, E_KEV, PRE, POST, min_edge_jump=0.3)
    np.testing.assert_array_equal(mask, ~(jump >= 0.3))
    _, _, nothing = xa.normalize(stack, E_KEV, PRE, POST, min_edge_jump=-np.inf)
    assert not nothing.any()


def test_significance_mask_needs_enough_edge_energies():
    stack, _ = held_out_map(E3_KEV, 0, shape=(8, 8))
    with pytest.raises(ValueError, match="min_edge_jump"):
        xa.normalize(stack, E3_KEV, (8.30, 8.31), (8.38, 8.39))  # 2 + 2 energies
    _, jump, mask = xa.normalize(stack, E3_KEV, (8.30, 8.31), (8.38, 8.39), min_edge_jump=0.1)
    np.testing.assert_array_equal(mask, ~(jump >= 0.1))  # an explicit threshold still works


def test_default_window_gives_the_explicit_windows_whitelines_at_the_ni_k_edge(caplog):
    stack, element = held_out_map(E_KEV, 3)
    norm = xa.normalize(stack, E_KEV, PRE, POST)[0]
    with caplog.at_level(logging.INFO, logger="multiscope.analysis.xanes"):
        default = xa.fit_whiteline(norm, E_KEV, n_points=9)
    explicit = xa.fit_whiteline(norm, E_KEV, WINDOW, n_points=9)
    lo, hi = xa.whiteline_window(norm, E_KEV, min_points=9)
    assert 8.340 < lo < 8.346 and WINDOW[1] <= hi < 8.365  # edge .. beyond the peaks
    assert f"window {lo:.6g} to {hi:.6g}" in caplog.text  # the user is told which
    np.testing.assert_array_equal(np.isfinite(default), np.isfinite(explicit))
    both = np.isfinite(explicit)
    assert both.sum() > 0.99 * element.sum()
    np.testing.assert_allclose(default[both], explicit[both], rtol=0, atol=0.01e-3)  # 0.01 eV


def fe_like_spectra(energies_eV, whiteline_eV):
    """An Fe-K-like edge in eV: edge 9 eV below a 0.45 whiteline, EXAFS-like wiggles."""
    e = energies_eV[:, None]
    edge = 1.0 / (1.0 + np.exp(-(e - (whiteline_eV - 9.0)) / 1.5))
    peak = 0.45 * np.exp(-0.5 * ((e - whiteline_eV) / 2.2) ** 2)
    wiggles = 0.08 * np.sin((e - whiteline_eV) / 12.0) * (e > whiteline_eV + 10.0)
    return edge + peak + wiggles


def test_default_window_gives_the_explicit_windows_whitelines_at_another_edge_in_ev():
    energies = np.concatenate(
        [
            np.arange(7050, 7106, 5.0),
            np.arange(7106, 7120, 1.0),
            np.arange(7120, 7140.1, 0.5),
            np.arange(7145, 7251, 10.0),
        ]
    )
    rng = np.random.default_rng(4)
    truth = rng.uniform(7128.0, 7132.0, 4000)
    stack = 0.3 + 0.2 * fe_like_spectra(energies, truth)
    stack += rng.normal(0.0, 0.01 * 0.2, stack.shape)  # 1 % of the edge step
    norm, _, mask = xa.normalize(stack, energies, (7050, 7100), (7160, 7250))
    assert not mask.any()
    lo, hi = xa.whiteline_window(norm, energies, min_points=9)
    assert 7118 < lo < 7124 and 7134 < hi < 7145
    default = xa.fit_whiteline(norm, energies, n_points=9)
    explicit = xa.fit_whiteline(norm, energies, (7123.0, 7138.0), n_points=9)
    np.testing.assert_allclose(default, explicit, rtol=0, atol=0.01)  # eV
    assert np.sqrt(np.mean((default - truth) ** 2)) < 0.1  # eV: the fit itself is good


def test_default_window_on_an_all_masked_map_fits_nothing():
    norm = np.full((E_KEV.size, 4, 5), np.nan, np.float32)
    assert np.isnan(xa.fit_whiteline(norm, E_KEV)).all()
    with pytest.raises(ValueError, match="no finite"):
        xa.whiteline_window(norm, E_KEV)
