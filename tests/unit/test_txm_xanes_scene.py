"""XANES in the TXM scene: Ni chemistry inside the window, continuity at its ends, energy drift.

The scene renders the Ni K-edge model (per-valence mu, nested-sphere projection)
inside :data:`~sim_devices.physics.xanes.XANES_WINDOW_KEV` and xraydb outside it;
frames normalised with flats and darks and fitted with
:mod:`multiscope.analysis.xanes` must give the ground-truth whiteline map
(:func:`~sim_devices.physics.xanes.true_whiteline_map`) within a tolerance derived
from their photon noise; the energy drift must be what the frames record.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from multiscope.analysis.xanes import fit_whiteline, normalize
from sim_devices.physics import DriftModel, EnergyDriftModel, make_tab
from sim_devices.physics import xanes as xph
from sim_devices.physics.txm_scene import (
    DEFAULT_ENERGY_DRIFT_MAX_PX,
    DEFAULT_ENERGY_DRIFT_PX,
    DEFAULT_PHOTONS,
    SAMPLE_OUT_UM,
    TXMScene,
    TXMState,
    energy_drift_model,
    in_focus,
    start_pixel_um,
)
from sim_devices.txm import TXMIOC

BINNING = 4
PIXEL_UM = start_pixel_um(BINNING)  # 0.26 um
SHAPE = (64, 64)
THETA = 20.0
STATE = TXMState(binning=BINNING, theta_deg=THETA, sample_um=(0.0, 0.0, -20.0))
LO, HI = xph.XANES_WINDOW_KEV
# A 2D XANES grid: 5 eV steps before and after the edge, 0.5 eV across it.
ENERGIES = np.round(
    np.concatenate(
        [
            np.arange(8.250, 8.3201, 0.005),
            np.arange(8.325, 8.3751, 0.0005),
            np.arange(8.380, 8.4501, 0.005),
        ]
    ),
    5,
)
PRE_EDGE, POST_EDGE = (8.25, 8.32), (8.38, 8.45)
WINDOW = (8.344, 8.360)  # whiteline search (keV): Ni2+ 8.3501 ... Ni4+ 8.3531
N_POINTS = 9  # quadratic stencil of 4 eV at 0.5 eV steps, as fit_whiteline recommends
EXPOSURE_S = 2.5  # per energy at the default flux: sample pixels 1e4 counts below the edge
N_FLATS = N_DARKS = 10


@pytest.fixture(scope="module")
def tab():
    # 400 particles in the 80 x 80 x 250 um coating: many rays miss NMC (masked pixels).
    return make_tab(seed=5, n_particles=400)


@pytest.fixture(scope="module")
def valence(tab):
    return xph.assign_valence(tab, seed=5, pattern="mixed")


def make_scene(tab, valence=None, **kwargs) -> TXMScene:
    return TXMScene(
        tab=tab, seed=5, valence=valence, axis_offset_um=3.7 * PIXEL_UM, **kwargs
    )  # fmt: skip


@pytest.fixture(scope="module")
def scene(tab, valence):
    return make_scene(tab, valence, cache_size=1)


@pytest.fixture(scope="module")
def truth(tab, valence, scene):
    geometry = scene.geometry(STATE, SHAPE)
    return xph.true_whiteline_map(
        tab, valence, geometry, math.radians(THETA), scene.center_um(STATE)
    )  # fmt: skip


def at(state: TXMState, energy: float) -> TXMState:
    """``state`` at ``energy``, zone plate and detector in focus (M = 50, as TXMEnergy)."""
    return in_focus(state, float(energy))


def stage_equivalent(state: TXMState, shift_px: tuple[float, float]) -> TXMState:
    """The drift-free state whose image is ``state``'s shifted by (x, y) px (x +right, y +down).

    The x stage carries the sample and the rotation axis (+x: image right); +z moves
    the image up.
    """
    x, y, z = state.sample_um
    return replace(state, sample_um=(x + shift_px[0] * PIXEL_UM, y, z - shift_px[1] * PIXEL_UM))


# --------------------------------------------------------------------------------------
# The window and its boundary
# --------------------------------------------------------------------------------------
def test_chemistry_only_inside_the_window_and_continuous_at_its_ends(tab, valence):
    chem, plain = make_scene(tab, valence), make_scene(tab)
    state = replace(STATE, theta_deg=70.0)

    def diff(energy):
        a = chem.line_integrals(at(state, energy), SHAPE).astype(np.float64)
        b = plain.line_integrals(at(state, energy), SHAPE).astype(np.float64)
        return a - b, b

    # Outside and exactly at the boundary: the xraydb rendering, unchanged.
    for energy in (8.0, 8.05, LO, HI, 8.9):
        d, b = diff(energy)
        assert b.max() > 0.1
        np.testing.assert_allclose(d, 0.0, atol=2e-6 * b.max())
    # Inside the tapers the model fades in smoothly: the jump over 1 eV next to the
    # boundary is tiny, the difference grows with the raised-cosine weight, and it
    # stays below the model's own departure from xraydb there (< 0.6 % of NMC's mu).
    taper = xph.XANES_TAPER_KEV
    for end, inward in ((LO, 1.0), (HI, -1.0)):
        steps = [end + inward * taper * f for f in (0.001, 0.02, 0.25, 0.5, 1.0)]
        sizes = [np.abs(diff(e)[0]).max() for e in steps]
        weights = [xph.xanes_weight(e) for e in steps]
        assert sizes[0] < 1e-4 * diff(end + inward * taper)[1].max()  # 0.05 eV in: continuous
        assert all(a <= b * (1 + 1e-6) for a, b in zip(sizes, sizes[1:], strict=False))
        for e, w in zip(steps[1:4], weights[1:4], strict=True):
            # Attenuation is blended linearly: the difference is w times the model's.
            s = at(state, e)
            model = xph.project_xanes(
                tab, valence, math.radians(70.0), e, chem.geometry(s, SHAPE), chem.center_um(s)
            ).astype(np.float64)
            d, b = diff(e)
            assert 0.0 < w < 1.0
            np.testing.assert_allclose(d, w * (model - b), atol=1e-3 * np.abs(model - b).max())
    # Near the whiteline the chemistry is there: mu depends on the valence.
    d, b = diff(8.3515)
    assert np.abs(d).max() > 0.2 * b.max()


def test_first_derivative_in_energy_is_continuous_at_the_boundary(tab, valence):
    chem = make_scene(tab, valence)
    state = replace(STATE, theta_deg=70.0)
    h = 0.0005  # keV
    for end in (LO, HI):
        e = end + np.array([-2, -1, 0, 1, 2]) * h
        p = np.stack([chem.line_integrals(at(state, x), SHAPE).astype(np.float64) for x in e])
        slope_out = (p[2] - p[0]) / (2 * h)
        slope_in = (p[4] - p[2]) / (2 * h)
        curvature = np.abs(np.diff(p, 2, axis=0)).max()
        # One-sided slopes agree to second order: no kink at the window boundary.
        assert np.abs(slope_in - slope_out).max() * h < 4 * curvature + 1e-6


# --------------------------------------------------------------------------------------
# Whiteline of rendered, normalised spectra against the truth
# --------------------------------------------------------------------------------------
def _stack(scene, state, exposure_s, seed):
    """Dark/flat-normalised absorbance (energies, rows, cols) and the counts behind it."""
    rng = np.random.default_rng(seed)
    out = replace(state, sample_um=(SAMPLE_OUT_UM, *state.sample_um[1:]))
    closed = replace(state, shutter_open=False)
    dark = np.mean([scene.render(closed, exposure_s, SHAPE, rng)[0] for _ in range(N_DARKS)], 0)
    flats = [scene.render(at(out, 8.30), exposure_s, SHAPE, rng)[0] for _ in range(N_FLATS)]
    flat = np.mean(flats, axis=0) - dark
    frames = np.stack([scene.render(at(state, e), exposure_s, SHAPE, rng)[0] for e in ENERGIES])
    counts = frames - dark
    absorbance = -np.log(np.clip(counts, 1.0, None) / flat)
    return absorbance, counts, flat


def _predicted_sigma_eV(scene, state, exposure_s, clean_norm, jump, mask):  # noqa: N802
    """Photon-noise sigma (eV) of the 9-point quadratic whiteline of every pixel.

    The normalised absorbance at energy E has variance
    ``(1/N(E) + 1/(n_flats N_flat)) / jump^2`` (Poisson counts N, read noise and
    dark current added); the vertex ``x* = -b / 2c`` of the least-squares
    quadratic ``a + b x + c x^2`` over the stencil then has
    ``sigma = sigma_y ||pb + 2 x* pc|| / (2 |c|)`` (first order).
    """
    rows, cols = SHAPE
    model = scene.detector_model(state, SHAPE)
    extra = model.read_noise_adu**2 + model.dark_current_adu_per_s * exposure_s
    i0 = model.flat_field().astype(np.float64) * model.photons_per_s * exposure_s
    p = np.stack([scene.line_integrals(at(state, e), SHAPE) for e in ENERGIES])
    n = i0 * np.exp(-p.astype(np.float64))
    var_a = (n + extra) / n**2 + (i0 + extra) / (N_FLATS * i0**2)
    var_y = var_a / np.where(mask, 1.0, jump) ** 2
    idx = np.flatnonzero((ENERGIES - WINDOW[0]) * (ENERGIES - WINDOW[1]) <= 0)
    y = clean_norm[idx].reshape(idx.size, -1)
    k = np.argmax(y, axis=0)
    half = N_POINTS // 2
    start = np.clip(k - half, 0, idx.size - N_POINTS)
    sigma = np.full(rows * cols, np.nan)
    for pix in np.flatnonzero(~mask.ravel()):
        sel = idx[start[pix] : start[pix] + N_POINTS]
        x = (ENERGIES[sel] - ENERGIES[sel[half]]) * 1000.0  # eV, centred
        pinv = np.linalg.pinv(np.stack([np.ones_like(x), x, x * x], axis=1))
        _, b, c = pinv @ clean_norm[sel].reshape(len(sel), -1)[:, pix]
        vertex = -b / (2 * c)
        w = pinv[1] + 2 * vertex * pinv[2]
        s_y = np.sqrt(var_y[sel].reshape(len(sel), -1)[:, pix])
        sigma[pix] = np.sqrt(np.sum((w * s_y) ** 2)) / (2 * abs(c))
    return sigma.reshape(SHAPE)


def test_rendered_spectra_give_the_true_whiteline_within_photon_noise(scene, truth):
    # Noise-free absorbance is the line integral itself (in focus, flat-field cancels).
    clean = np.stack([scene.line_integrals(at(STATE, e), SHAPE) for e in ENERGIES])
    clean_norm, clean_jump, clean_mask = normalize(
        clean.astype(np.float64), ENERGIES, PRE_EDGE, POST_EDGE, min_edge_jump=1e-3
    )
    # Pixels without NMC have no edge at all; every pixel with NMC has one.
    assert np.abs(clean_jump[truth.mask]).max() < 1e-4
    assert np.array_equal(clean_mask, truth.mask | (truth.nmc_thickness_um < 0.03))
    # Model bias of normalise + 9-point quadratic on a 0.5 eV grid, without noise.
    clean_wl = fit_whiteline(clean_norm, ENERGIES, WINDOW, mask=clean_mask, n_points=N_POINTS)
    bias = clean_wl * 1e3 - truth.whiteline_eV
    fitted = ~clean_mask
    print(f"noise-free whiteline - truth: max {np.nanmax(np.abs(bias)):.4f} eV")
    assert np.nanmax(np.abs(bias[fitted])) < 0.06  # eV: grid + stencil + background

    absorbance, counts, flat = _stack(scene, STATE, EXPOSURE_S, seed=11)
    norm, jump, mask = normalize(absorbance, ENERGIES, PRE_EDGE, POST_EDGE, min_edge_jump=0.1)
    wl = fit_whiteline(norm, ENERGIES, WINDOW, mask=mask, n_points=N_POINTS) * 1e3
    # Particle pixels: an edge step of >= 0.1 absorbance (>= ~1.5 um of NMC on the ray).
    particle = ~mask & ~truth.mask & (clean_jump >= 0.1)
    assert particle.sum() > 500
    sigma = _predicted_sigma_eV(scene, STATE, EXPOSURE_S, clean_norm, clean_jump, truth.mask)
    err = wl - truth.whiteline_eV
    noise = wl * 1e-3 - clean_wl
    z = (noise * 1e3 / sigma)[particle]
    below = counts[ENERGIES < 8.32][:, particle]
    snr_pre = np.sqrt(np.median(below))
    print(
        f"{particle.sum()} particle pixels; per-pixel SNR below the edge {snr_pre:.0f} "
        f"(flat {np.sqrt(np.median(flat)):.0f}); predicted whiteline sigma median "
        f"{np.median(sigma[particle]):.3f} eV; rms z {np.sqrt(np.mean(z**2)):.2f}; "
        f"|fit - truth| median {np.median(np.abs(err[particle])):.3f} eV, "
        f"max {np.abs(err[particle]).max():.3f} eV"
    )
    # The noise model is right: fitted - noise-free whiteline is ~N(0, sigma).
    assert 0.7 < np.sqrt(np.mean(z**2)) < 1.4
    # Tolerance per pixel: the noise-free bias bound plus 5 predicted sigma.
    tolerance = 0.06 + 5.0 * sigma[particle]
    outliers = np.abs(err[particle]) > tolerance
    assert outliers.sum() <= max(1, int(1e-3 * particle.sum())), err[particle][outliers]
    # The whiteline resolves the chemistry: different valences, different maps.
    assert np.corrcoef(wl[particle], truth.whiteline_eV[particle])[0, 1] > 0.9


def test_default_photons_give_the_documented_snr():
    """docs/txm.md: per-pixel SNR of the default phantom at the default flux, 2.5 s frames.

    SNR = mean / std of one pixel's dark-subtracted counts over repeated frames
    (photon noise plus read noise and dark current), as in the review (SNR ~100-300
    is 1e4-1e5 counts).
    """
    tab = make_tab(seed=0)  # the IOC's default phantom
    scene = TXMScene(tab=tab, valence=xph.assign_valence(tab, seed=0, pattern="mixed"))
    shape, n = (24, 24), 40
    rng = np.random.default_rng(2)
    snr = {}
    for name, energy, sample_x in (
        ("flat", 8.30, SAMPLE_OUT_UM),
        ("pre-edge", 8.30, 0.0),
        ("whiteline", 8.3515, 0.0),
        ("post-edge", 8.40, 0.0),
    ):
        state = at(TXMState(binning=BINNING, sample_um=(sample_x, 0.0, 0.0)), energy)
        frames = np.stack([scene.render(state, EXPOSURE_S, shape, rng)[0] for _ in range(n)])
        counts = frames.astype(np.float64) - 100.0  # the camera bias
        snr[name] = float(np.median(counts.mean(axis=0) / counts.std(axis=0, ddof=1)))
    print(", ".join(f"{k} {v:.0f}" for k, v in snr.items()))
    assert scene.photons_per_s == DEFAULT_PHOTONS
    assert 100 <= snr["pre-edge"] <= 300 and 100 <= snr["flat"] <= 300
    # Through all 80 um of coating the edge leaves 1-4 % of the beam (docs/txm.md).
    assert 10 < snr["whiteline"] < snr["post-edge"] < 60


# --------------------------------------------------------------------------------------
# Energy drift
# --------------------------------------------------------------------------------------
def test_energy_drift_is_seeded_per_energy_and_bounded():
    model = energy_drift_model(1.0, 3.0, PIXEL_UM, seed=7)
    again = energy_drift_model(1.0, 3.0, PIXEL_UM, seed=7)
    other = energy_drift_model(1.0, 3.0, PIXEL_UM, seed=8)
    energies = np.round(np.linspace(8.2, 8.6, 801), 5)
    jumps = np.array([model.offset_um(e) for e in energies]) / PIXEL_UM
    assert np.array_equal(jumps, np.array([again.offset_um(e) for e in energies]) / PIXEL_UM)
    assert not np.allclose(jumps, np.array([other.offset_um(e) for e in energies]) / PIXEL_UM)
    assert np.all(np.hypot(*jumps.T) <= 3.0 + 1e-9)
    assert np.std(jumps, axis=0) == pytest.approx([1.0, 1.0], rel=0.15)
    assert np.abs(np.diff(jumps, axis=0)).mean() > 0.5  # a new place at every energy
    # A motor read-back a hair off the set point is the same energy.
    assert model.offset_um(8.3505 + 1e-9) == model.offset_um(8.3505)
    # No jump outside the XANES window, nor when switched off.
    assert model.offset_um(8.0) == model.offset_um(8.9) == (0.0, 0.0)
    assert energy_drift_model(0.0, 3.0, PIXEL_UM, 7).offset_um(8.35) == (0.0, 0.0)
    with pytest.raises(ValueError):
        energy_drift_model(-1.0, 3.0, PIXEL_UM, 7)


@pytest.mark.parametrize("theta", [0.0, 37.0])
def test_frames_record_the_drift_they_were_rendered_with(tab, valence, theta):
    drifted = make_scene(tab, valence, energy_drift=energy_drift_model(1.5, 3.0, PIXEL_UM, 3))
    still = make_scene(tab, valence)
    state = replace(STATE, theta_deg=theta)
    for energy in (8.2, 8.3505, 8.41):
        s = at(state, energy)
        _, attrs = drifted.render(s, 0.01, SHAPE, np.random.default_rng(0))
        expected = drifted.energy_drift_px(s)
        assert (attrs["drift_x_px"], attrs["drift_y_px"]) == pytest.approx(expected, abs=1e-12)
        assert math.hypot(*expected) > 0.1
        # The projection is exactly the drift-free one shifted by (x, y) px.
        moved = still.line_integrals(stage_equivalent(s, expected), SHAPE)
        np.testing.assert_allclose(drifted.line_integrals(s, SHAPE), moved, atol=1e-5)
        assert np.abs(moved - still.line_integrals(s, SHAPE)).max() > 0.05


def test_time_drift_and_energy_drift_add_up_in_the_attributes(tab, valence):
    scene = make_scene(
        tab,
        valence,
        energy_drift=energy_drift_model(1.0, 3.0, PIXEL_UM, 4),
        drift=DriftModel(rms_um=(0.5, 0.5, 0.5), correlation_time_s=20.0, seed=1),
    )
    still = make_scene(tab, valence)
    s = replace(at(STATE, 8.33), theta_deg=55.0, time_s=30.0)
    attrs = scene.attributes(s)
    energy_only = scene.energy_drift_px(s)
    total = (attrs["drift_x_px"], attrs["drift_y_px"])
    assert math.hypot(total[0] - energy_only[0], total[1] - energy_only[1]) > 0.1
    # Time drift along the beam changes nothing in a parallel beam; across it, it adds.
    moved = still.line_integrals(stage_equivalent(s, total), SHAPE)
    np.testing.assert_allclose(scene.line_integrals(s, SHAPE), moved, atol=1e-4)


def test_ioc_defaults_chemistry_and_drift(tab):
    ioc = TXMIOC(prefix="XU:", shape=SHAPE, binning=BINNING, seed=5, tab=tab)
    scene = ioc.physics
    assert scene.valence is not None and scene.valence.pattern == "mixed"
    assert scene.valence.seed == 5 and ioc.valence_seed == 5
    assert scene.energy_drift == EnergyDriftModel(
        rms_um=DEFAULT_ENERGY_DRIFT_PX * PIXEL_UM,
        max_um=DEFAULT_ENERGY_DRIFT_MAX_PX * PIXEL_UM,
        seed=5,
        window_keV=xph.XANES_WINDOW_KEV,
    )
    custom = TXMIOC(
        prefix="XV:", shape=SHAPE, binning=BINNING, seed=5, tab=tab,
        valence_pattern="gradient", valence_seed=9, energy_drift_px=0.0,
    )  # fmt: skip
    assert custom.physics.valence.pattern == "radial" and custom.physics.valence.seed == 9
    assert custom.physics.energy_drift_px(at(STATE, 8.35)) == (0.0, 0.0)
    none = TXMIOC(
        prefix="XW:", shape=SHAPE, binning=BINNING, seed=5, tab=tab, valence_pattern="none"
    )
    assert none.physics.valence is None and none.physics.xanes_weight(at(STATE, 8.35)) == 0.0
    with pytest.raises(ValueError):
        TXMIOC(prefix="XX:", shape=SHAPE, tab=tab, valence_pattern="spiral")


def test_line_integral_cache_keeps_sample_in_and_out(tab, valence):
    scene = make_scene(tab, valence)
    state = at(STATE, 8.35)
    out = replace(state, sample_um=(SAMPLE_OUT_UM, 0.0, -20.0))
    first = scene.line_integrals(state, SHAPE)
    scene.line_integrals(out, SHAPE)  # a flat in between
    assert scene.line_integrals(state, SHAPE) is first
    for k in range(scene.cache_size):
        scene.line_integrals(replace(state, theta_deg=THETA + 1 + k), SHAPE)
    assert scene.line_integrals(state, SHAPE) is not first  # least recently used: gone
    assert len(scene._cache) == scene.cache_size
