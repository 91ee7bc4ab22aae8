"""`python -m sim_devices.xanes_truth` against what the TXM IOC renders with the same arguments.

Both run in-process: the truth file is written by the command line's ``main``, the
IOC object is built as ``python -m sim_devices.txm`` builds it (no network). The
IOC's line integrals at the same positions, with no drift, must carry exactly the
resonant absorbance whose maximum the file calls the whiteline, on exactly the
pixels the file leaves unmasked.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace

import h5py
import numpy as np
import pytest

from sim_devices import xanes_truth
from sim_devices.physics import EnergyDriftModel, project
from sim_devices.physics import xanes as xph
from sim_devices.physics.materials import MATERIAL_IDS, mu_table
from sim_devices.physics.txm_scene import TXMScene, TXMState, in_focus
from sim_devices.txm import TXMIOC

SEED, PARTICLES, BINNING = 5, 400, 4
TAB_WIDTH_UM = 96.0  # not make_tab's 80: the chain's tab, as the laser mill measured it
SHAPE = (56, 72)  # not square: rows and columns cannot be swapped unnoticed
AXIS_OFFSET_PX = -2.3
THETA, SAMPLE_X, SAMPLE_Z = 25.0, 1.7, -14.0
PATTERN, VALENCE_SEED = "core-shell", 11


@pytest.fixture(scope="module", params=[1, 4], ids=["pixel-centres", "area-4x4"])
def supersample(request):
    """The IOC's ``--supersample``: pixel centres, or 4 x 4 sub-rays per pixel (XANES)."""
    return request.param


@pytest.fixture(scope="module")
def truth_file(tmp_path_factory, supersample):
    out = tmp_path_factory.mktemp("xanes-truth") / "truth.h5"
    xanes_truth.main(
        [
            "--seed", str(SEED), "--particles", str(PARTICLES),
            "--tab-width-um", str(TAB_WIDTH_UM), "--binning", str(BINNING),
            "--shape", *map(str, SHAPE), "--axis-offset-px", str(AXIS_OFFSET_PX),
            "--theta-deg", str(THETA), "--sample-x-um", str(SAMPLE_X),
            "--sample-z-um", str(SAMPLE_Z), "--valence-pattern", PATTERN,
            "--valence-seed", str(VALENCE_SEED), "--supersample", str(supersample),
            "--out", str(out),
        ]
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def ioc(supersample):
    # As `python -m sim_devices.txm --seed 5 --particles 400 --tab-width-um 96 --binning 4
    # --shape 56 72 --axis-offset-px -2.3 --valence-pattern core-shell --valence-seed 11
    # --supersample N` builds it.
    return TXMIOC(
        prefix="XT:", shape=SHAPE, binning=BINNING, seed=SEED, particles=PARTICLES,
        tab_width_um=TAB_WIDTH_UM, axis_offset_px=AXIS_OFFSET_PX, valence_pattern=PATTERN,
        valence_seed=VALENCE_SEED, supersample=supersample,
    )  # fmt: skip


def state_at(energy: float) -> TXMState:
    """The IOC at the truth's positions, moved in energy by the energy pseudo-axis."""
    base = TXMState(
        theta_deg=THETA, sample_um=(SAMPLE_X, 0.0, SAMPLE_Z), binning=BINNING, shutter_open=True
    )
    return in_focus(base, energy)


def test_layout_of_the_truth_file(truth_file, supersample):
    with h5py.File(truth_file, "r") as f:
        assert f.attrs["format"] == "multiscope.xanes_truth" and f.attrs["version"] == 1
        for name in ("whiteline_eV", "mask", "nmc_thickness_um", "mean_whiteline_eV"):
            assert f[name].shape == SHAPE, name
        assert f["mask"].dtype == bool
        assert set(f["valence"]) == {"radius_fraction", "valence", "center_um", "radius_um"}
        a = dict(f.attrs)
    assert (a["seed"], a["particles"], a["binning"]) == (SEED, PARTICLES, BINNING)
    assert a["tab_width_um"] == TAB_WIDTH_UM
    assert (a["rows"], a["cols"]) == SHAPE
    assert a["valence_pattern"] == PATTERN and a["valence_seed"] == VALENCE_SEED
    assert a["supersample"] == supersample
    assert a["pixel_size_um"] == pytest.approx(0.26)
    assert a["axis_column_px"] == pytest.approx(
        (SHAPE[1] - 1) / 2 + AXIS_OFFSET_PX + SAMPLE_X / 0.26
    )
    truth = xanes_truth.read_truth(truth_file)
    wl, mask = truth.whiteline_eV, truth.mask
    assert 200 < a["n_fitted"] == np.count_nonzero(~mask) < mask.size  # some rays miss NMC
    assert np.all(np.isnan(wl[mask])) and np.all(np.isfinite(wl[~mask]))
    assert np.all(truth.nmc_thickness_um[mask] == 0) and np.all(truth.nmc_thickness_um[~mask] > 0)
    assert 2.0 <= a["valence_min"] < a["valence_max"] <= 4.0
    lo, hi = a["whiteline_min_eV"], a["whiteline_max_eV"]
    assert lo == pytest.approx(xph.whiteline_energy_eV(a["valence_min"]))
    assert np.all((wl[~mask] >= lo - 2e-3) & (wl[~mask] <= hi + 2e-3))
    assert np.ptp(wl[~mask]) > 1.0  # eV: the chemistry differs across the field


def test_truth_is_the_phantom_and_chemistry_the_ioc_renders(truth_file, ioc):
    truth = xanes_truth.read_truth(truth_file)
    # The tab the IOC was given: its width (as truth:tab_width_um serves it), not the default.
    assert ioc.physics.tab.width_um == ioc.tab_width_um == TAB_WIDTH_UM
    assert truth.attrs["tab_width_um"] == TAB_WIDTH_UM
    default = xanes_truth.phantom(SEED, PARTICLES)
    assert default.width_um == 80.0
    assert not np.array_equal(default.centers_um[: default.n_nmc], truth.valence["center_um"])
    vf = ioc.physics.valence
    np.testing.assert_array_equal(truth.valence["valence"], vf.valence)
    np.testing.assert_array_equal(truth.valence["radius_fraction"], vf.radius_fraction)
    n = ioc.physics.tab.n_nmc
    np.testing.assert_array_equal(truth.valence["center_um"], ioc.physics.tab.centers_um[:n])
    state = state_at(8.35)
    geometry = ioc.physics.geometry(state, SHAPE)
    assert truth.attrs["pixel_size_um"] == pytest.approx(geometry.pixel_size_um, rel=1e-12)
    assert truth.attrs["axis_column_px"] == pytest.approx(geometry.u0, abs=1e-9)
    # Without drift: at 8 keV there is none; at the edge the truth removes it.
    np.testing.assert_allclose(truth.attrs["center_um"], ioc.physics.center_um(state_at(8.0)))
    assert ioc.physics.energy_drift_px(state) != (0.0, 0.0)
    np.testing.assert_allclose(truth.attrs["center_um"], drift_free(ioc).center_um(state))


def drift_free(ioc) -> TXMScene:
    """The IOC's renderer without energy drift (a copy: the IOC keeps its own)."""
    return replace(ioc.physics, energy_drift=EnergyDriftModel(), _cache=OrderedDict())


def _resonant(scene: TXMScene, energy: float) -> np.ndarray:
    """Line integrals minus the same projection with NMC's non-resonant mu only.

    Both integrated over each pixel's area as the IOC renders at this energy.
    """
    state = state_at(energy)
    rendered = scene.line_integrals(state, SHAPE).astype(np.float64)
    mus = mu_table(energy)
    mus[MATERIAL_IDS["nmc811"]] = float(xph.nmc_mu_background(energy))
    geometry, center = scene.geometry(state, SHAPE), scene.center_um(state)
    sub = scene.supersample
    background = project(
        scene.tab, math.radians(THETA), energy, geometry, center, mu=mus, supersample=sub
    )
    return rendered - background.astype(np.float64)


def test_ioc_frames_carry_the_truth_whiteline_on_exactly_the_unmasked_pixels(truth_file, ioc):
    truth = xanes_truth.read_truth(truth_file)
    scene = drift_free(ioc)
    # Above the edge every ray through NMC absorbs resonantly; no other ray does.
    step = _resonant(scene, 8.36)
    assert np.abs(step[truth.mask]).max() < 1e-5
    assert step[~truth.mask].min() > 1e-4
    # The maximum over energy of the IOC's resonant absorbance is the file's whiteline.
    h = 0.05  # eV
    grid = np.arange(
        truth.attrs["whiteline_min_eV"] - 0.2, truth.attrs["whiteline_max_eV"] + 0.2, h
    )
    spectra = np.stack([_resonant(scene, e * 1e-3)[~truth.mask] for e in grid])
    k = np.clip(np.argmax(spectra, axis=0), 1, grid.size - 2)
    cols = np.arange(spectra.shape[1])
    ym, y0, yp = spectra[k - 1, cols], spectra[k, cols], spectra[k + 1, cols]
    peak = grid[k] + h * 0.5 * (ym - yp) / (ym - 2 * y0 + yp)
    error = np.abs(peak - truth.whiteline_eV[~truth.mask])
    print(f"IOC resonant maximum - truth whiteline: max {error.max() * 1e3:.2f} meV")
    # float32 line integrals of the IOC against the truth's float64: < 1 meV here.
    assert error.max() < 5e-3


def test_pattern_none_has_no_truth(tmp_path):
    with pytest.raises(SystemExit):
        xanes_truth.main(
            ["--seed", "1", "--binning", "4", "--shape", "8", "8", "--valence-pattern", "none",
             "--out", str(tmp_path / "t.h5")]
        )  # fmt: skip
    with pytest.raises(ValueError):
        xanes_truth.read_truth(_not_truth(tmp_path / "x.h5"))


def _not_truth(path):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "something else"
    return path
