"""Attenuation coefficients of the tab materials (sim_devices.physics.materials)."""

import numpy as np
import pytest
import xraydb

from sim_devices.physics import (
    MATERIAL_IDS,
    MATERIALS,
    attenuation_length_um,
    material_mu,
    mu_table,
)


@pytest.mark.parametrize("name", ["nmc811", "cbd", "al", "electrolyte"])
def test_mu_matches_xraydb_at_8kev(name):
    mat = MATERIALS[MATERIAL_IDS[name]]
    ref = xraydb.material_mu(mat.formula, 8000.0, density=mat.density_g_cm3) * 1e-4
    assert material_mu(name, 8.0) == pytest.approx(ref, rel=1e-12)


def test_al_against_nist_table():
    # NIST XCOM/Hubbell-Seltzer: Al mu/rho(8 keV) = 50.33 cm^2/g -> 135.9 /cm.
    assert material_mu("al", 8.0) == pytest.approx(50.33 * 2.70 * 1e-4, rel=0.02)


def test_pore_is_transparent():
    assert material_mu("pore", 8.0) == 0.0
    assert attenuation_length_um("pore", 8.0) == np.inf


@pytest.mark.parametrize(("edge_keV", "min_jump"), [(8.333, 2.5), (7.709, 1.2), (6.539, 1.1)])
def test_nmc_k_edge_jumps(edge_keV, min_jump):
    below = material_mu("nmc811", edge_keV - 0.010)
    above = material_mu("nmc811", edge_keV + 0.010)
    assert above / below > min_jump


def test_mu_table_is_indexed_by_id_and_a_copy():
    t = mu_table(8.0)
    assert t.shape == (len(MATERIALS),)
    assert t[MATERIAL_IDS["nmc811"]] == material_mu("nmc811", 8.0)
    t[:] = -1.0
    assert mu_table(8.0)[MATERIAL_IDS["al"]] > 0


def test_cbd_is_light_and_nmc_dense():
    # Sanity of the physics ranking at a TXM energy.
    assert material_mu("cbd", 5.4) < material_mu("al", 5.4) < 2 * material_mu("nmc811", 5.4)


def test_bad_inputs():
    with pytest.raises(KeyError):
        material_mu("unobtainium", 8.0)
    with pytest.raises(ValueError):
        material_mu("al", 0.0)
