"""Serial-section phantoms and what the PFIB-SEM's detectors see of them, against truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sim_devices.physics import serial_render as render
from sim_devices.physics.serial_phantom import LABEL, PHASES, make_serial_phantom


@pytest.fixture(scope="module")
def assb():
    return make_serial_phantom("assb", size_um=(24.0, 24.0, 6.0), seed=3)


@pytest.fixture(scope="module")
def nmc():
    return make_serial_phantom("nmc", size_um=(30.0, 30.0, 6.0), seed=4)


def _share(labels, name):
    return float((labels == LABEL[name]).mean())


def test_phantoms_hold_their_phases(assb, nmc):
    face = assb.labels(2.0, (240, 240), 0.1)
    for name in ("pore", "carbon", "lco", "llzto", "crack"):
        assert _share(face, name) > 0.001, name
    # Seed 004: 47.5 / 47.5 wt % LLZTO / LCO (densities alike): about equal volumes.
    faces = np.stack([assb.labels(d, (120, 120), 0.2) for d in np.linspace(0.5, 5.5, 11)])
    ratio = _share(faces, "llzto") / (_share(faces, "lco") + _share(faces, "al2o3"))
    assert 0.7 < ratio < 1.4, ratio
    # 1 wt % Al2O3 coating: t = w R rho_LCO / (3 rho_Al2O3), a few nm, seen on a fine grid.
    sp = assb.spheres
    lco = sp[(sp["label"] == LABEL["lco"]) & (sp["z"] > 1.5) & (sp["z"] < 4.5)]
    expected = 0.01 * lco["r"] * PHASES["lco"].density_g_cm3 / (3 * PHASES["al2o3"].density_g_cm3)
    np.testing.assert_allclose(lco["coat"], expected)
    big = lco[np.argmax(lco["r"])]
    window = assb.labels(big["z"], (200, 200), 0.002, (big["y"] - 0.2, big["x"] + big["r"] - 0.2))
    assert _share(window, "al2o3") > 0  # the shell at the particle's rim
    # LLZTO grains (2-8 um) are far fewer and larger than LCO particles (0.5-3 um).
    sp = assb.spheres
    llzto_r, lco_r = sp["r"][sp["label"] == LABEL["llzto"]], sp["r"][sp["label"] == LABEL["lco"]]
    assert llzto_r.max() <= 4.0 and lco_r.max() <= 1.5 and np.median(llzto_r) > 2 * np.median(lco_r)
    nface = nmc.labels(2.0, (300, 300), 0.1)
    assert {int(v) for v in np.unique(nface)} <= {LABEL[n] for n in ("pore", "cbd", "nmc811",
                                                                      "crack")}  # fmt: skip
    cbd_of_solid = _share(nface, "cbd") / (_share(nface, "cbd") + _share(nface, "nmc811"))
    assert 0.12 < cbd_of_solid < 0.35, cbd_of_solid  # seeds: CBD 20-30 % of the solid
    assert 0.15 < _share(nface, "pore") < 0.5


def test_faces_are_exact_on_any_grid(assb):
    again = make_serial_phantom("assb", size_um=(24.0, 24.0, 6.0), seed=3)
    np.testing.assert_array_equal(assb.labels(1.0, (50, 60), 0.1), again.labels(1.0, (50, 60), 0.1))
    # Drift is a shifted origin: 7 rows and 4 columns later, the same face.
    base = assb.labels(1.0, (80, 80), 0.1, (2.0, 3.0))
    moved = assb.labels(1.0, (80, 80), 0.1, (2.7, 3.4))
    assert (moved[:-7, :-4] == base[7:, 4:]).mean() > 0.999
    fractions = assb.fractions(1.0, (40, 40), 0.25, (1.0, 1.0))
    np.testing.assert_allclose(fractions.sum(axis=0), 1.0, atol=1e-6)
    assert ((fractions > 0) & (fractions < 1)).any()  # mixed pixels on boundaries


def test_milling_reveals_new_structure_gradually(assb):
    face = assb.labels(2.0, (200, 200), 0.1)
    next_slice = assb.labels(2.06, (200, 200), 0.1)  # 60 nm deeper (seed 004's slice)
    far = assb.labels(5.0, (200, 200), 0.1)
    assert 0.9 < (face == next_slice).mean() < 1.0
    assert (face == far).mean() < 0.8


def test_backscatter_contrast_follows_atomic_number_and_sees_back_walls(assb):
    eta = {name: render._ETA[p.label] for name, p in PHASES.items()}
    assert eta["pt"] > eta["llzto"] > eta["lco"] > eta["al2o3"] > eta["carbon"] > 0 == eta["pore"]
    images = render.bse_images(assb, 2.0, (200, 200), 0.1, (1.0, 1.0),
                               rng=np.random.default_rng(0))  # fmt: skip
    labels, cbs, tld = images["labels"], images["cbs"].astype(float), images["tld"].astype(float)
    pore = labels == LABEL["pore"]

    def mean(img, name):
        return img[labels == LABEL[name]].mean()

    assert mean(cbs, "llzto") > mean(cbs, "lco") > mean(cbs, "carbon")
    seen = pore & np.isfinite(images["back_wall_um"])
    assert seen.any()  # open pores show their back walls
    # ... more on the through-lens TLD than on the partly shadowed CBS (seed 003), away
    # from the pores' rims, where each detector's blur brings in the solid around them.
    seen &= ndimage.binary_erosion(pore, iterations=3)
    # The ratio of the two relative signals is the ratio of the detectors' back-wall
    # weights (TLD 0.9, CBS 0.5), up to their blur and noise.
    weights = render.DETECTORS["tld"].back_wall / render.DETECTORS["cbs"].back_wall
    assert weights > 1.5
    relative = (tld[seen].mean() / mean(tld, "lco")) / (cbs[seen].mean() / mean(cbs, "lco"))
    assert relative == pytest.approx(weights, rel=0.15)
    # The TLD is noisier: relative spread within LLZTO.
    llzto = labels == LABEL["llzto"]
    assert tld[llzto].std() / tld[llzto].mean() > cbs[llzto].std() / cbs[llzto].mean()


def test_kintsugi_pores_read_as_bright_pt(assb):
    state = render.FaceState(pt_filled=[(1.5, 3.0)])
    images = render.bse_images(assb, 2.0, (200, 200), 0.1, (1.0, 1.0), state=state,
                               rng=np.random.default_rng(1))  # fmt: skip
    labels, cbs = images["labels"], images["cbs"].astype(float)
    assert _share(labels, "pore") == 0 and _share(labels, "pt") > 0.05
    assert cbs[labels == LABEL["pt"]].mean() > cbs[labels == LABEL["llzto"]].mean()
    deeper = render.bse_images(assb, 3.5, (50, 50), 0.1, (1.0, 1.0), state=state)["labels"]
    assert _share(deeper, "pt") == 0  # below the infiltration: open pores again


def test_eds_counts_follow_the_element_mass_fractions(assb):
    shape, pixel = (108, 176), 0.1628  # seed 004's map binned 2x
    maps = render.eds_maps(assb, 2.0, shape, pixel, (0.5, 0.5), lines=("Zr La", "Co La"),
                           rng=np.random.default_rng(2))  # fmt: skip
    fractions = assb.fractions(2.0, shape, pixel, (0.5, 0.5))
    zr_mass = render._composition(PHASES["llzto"].formula)["Zr"]
    expected = (render.EDS_COUNTS_PER_S * 300.0 / (shape[0] * shape[1]) * zr_mass
                * fractions[LABEL["llzto"]].sum())  # fmt: skip
    assert maps["Zr La"].sum() == pytest.approx(expected, rel=0.05)
    llzto = fractions[LABEL["llzto"]] > 0.99
    lco = fractions[LABEL["lco"]] > 0.99
    assert maps["Zr La"][llzto].mean() > 5 * maps["Zr La"][lco].mean()
    assert maps["Co La"][lco].mean() > 5 * maps["Co La"][llzto].mean()
    with pytest.raises(ValueError, match="unknown EDS line"):
        render.eds_maps(assb, 2.0, shape, pixel, (0, 0), lines=("U Ma",))


def test_sims_intensity_is_not_concentration(assb):
    shape, pixel = (250, 250), 0.072
    maps = render.sims_maps(assb, 2.0, shape, pixel, (1.0, 1.0), dwell_ms=20.0,
                            rng=np.random.default_rng(3))  # fmt: skip
    fractions = assb.fractions(2.0, shape, pixel, (1.0, 1.0))
    li6, li7 = maps["6Li+"].astype(float), maps["7Li+"].astype(float)
    assert li6.sum() / li7.sum() == pytest.approx(0.0759 / 0.9241, rel=0.05)
    llzto, lco = fractions[LABEL["llzto"]] > 0.99, fractions[LABEL["lco"]] > 0.99
    measured = li7[llzto].mean() / li7[lco].mean()
    li_density = render._li_per_nm3(PHASES["llzto"]) / render._li_per_nm3(PHASES["lco"])
    assert measured == pytest.approx(li_density * render.SIMS_YIELD["llzto"], rel=0.1)
    assert abs(measured - li_density) > 0.3 * li_density  # the matrix effect is visible
    assert li7[fractions[LABEL["pore"]] > 0.99].max() == 0
