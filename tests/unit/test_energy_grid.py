"""XANES energy grids, the edge table and flat schedules (pure, no devices)."""

import json

import numpy as np
import pytest
import xraydb

from multiscope.plan_stubs.xanes import EDGES_KEV, EnergyGrid, flat_indices
from multiscope.plans.preflight import PlanArgumentError
from multiscope.plans.xanes import energy_grid


def test_edge_table_holds_the_cathode_metals():
    assert {"Mn": 6.539, "Fe": 7.112, "Co": 7.709, "Ni": 8.333}.items() <= EDGES_KEV.items()
    for element, edge in EDGES_KEV.items():
        assert edge == pytest.approx(xraydb.xray_edge(element, "K").energy / 1000, abs=1e-3)


def test_default_ni_grid_shape_spacing_and_windows():
    grid = energy_grid("Ni")
    e = grid.energies
    assert grid.edge == "Ni" and grid.edge_keV == 8.333
    assert len(grid) == 63  # ~60 energies across the Ni K-edge
    assert e[0] == pytest.approx(8.283) and e[-1] == pytest.approx(8.433)
    steps_eV = np.round(np.diff(e) * 1000, 6)
    relative = np.round((e[:-1] - 8.333) * 1000, 6)
    # 5 eV before -15 eV, 1 eV from -15 to +25 eV (edge and whiteline), 5 eV after.
    assert np.all(steps_eV[relative < -15] == 5)
    assert np.all(steps_eV[(relative >= -15) & (relative < 25)] == 1)
    assert np.all(steps_eV[relative >= 25] == 5)
    assert np.count_nonzero((relative >= -15) & (relative < 25)) == 40
    assert grid.pre_edge_keV == (8.283, 8.318)
    assert grid.post_edge_keV == (8.373, 8.433)
    assert grid.whiteline_keV == (8.333, 8.358)


@pytest.mark.parametrize("edge", ["Mn", "Fe", "Co", "Ni"])
def test_every_table_edge_has_a_default_grid_centred_on_it(edge):
    grid = energy_grid(edge)
    assert len(grid) == 63
    assert grid.energies[0] < grid.edge_keV < grid.energies[-1]
    assert grid.pre_edge_keV[1] < grid.edge_keV <= grid.whiteline_keV[0]


def test_edges_outside_the_table_come_from_xraydb_and_case_is_normalised():
    assert energy_grid("ga").edge_keV == pytest.approx(xraydb.xray_edge("Ga", "K").energy / 1e3)
    assert energy_grid("nI").edge == "Ni"


def test_custom_regions_and_steps():
    regions = {"pre_start_eV": -40, "fine_start_eV": -10, "fine_stop_eV": 30, "post_stop_eV": 90}
    grid = energy_grid("Co", **regions, pre_step_eV=10, fine_step_eV=2, post_step_eV=15)
    relative = np.round((grid.energies - 7.709) * 1000, 6)
    np.testing.assert_allclose(
        relative, [-40, -30, -20, *range(-10, 30, 2), 30, 45, 60, 75, 90], atol=1e-6
    )


def test_explicit_list_and_windows():
    energies = [8.28, 8.30, 8.32, 8.333, 8.35, 8.37, 8.40, 8.43]
    grid = energy_grid("Ni", energies_keV=energies, whiteline_eV=(-5, 40))
    assert grid.energies_keV == tuple(energies)
    assert grid.pre_edge_keV == (8.28, 8.318)  # first energy to -15 eV
    assert grid.post_edge_keV == (8.373, 8.43)  # +40 eV to the last energy
    assert grid.whiteline_keV == (8.328, 8.373)
    md = grid.to_md()
    assert json.loads(json.dumps(md)) == md
    assert md["energies_keV"] == energies and md["edge"] == "Ni" and md["edge_keV"] == 8.333


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"energies_keV": [8.30, 8.32, 8.31, 8.35]}, "strictly increasing"),
        ({"energies_keV": [8.30, 8.32, 8.32, 8.35]}, "8.32 then 8.32 keV at indices 1, 2"),
        ({"energies_keV": [8.3]}, "at least 2"),
        ({"energies_keV": "8.3"}, "must be a number"),
        ({"energies_keV": [8.3, float("nan")]}, "must be finite"),
        ({"fine_step_eV": 0}, "fine_step_eV must be > 0"),
        ({"fine_start_eV": 30}, "pre_start_eV < fine_start_eV < fine_stop_eV < post_stop_eV"),
        ({"whiteline_eV": (10, 11)}, r"whiteline_keV = \[8.343, 8.344\] .* \(holds 2\)"),
        ({"pre_edge_eV": (-20, -30)}, "must be increasing"),
        ({"post_edge_eV": 40}, "post_edge_eV must be a pair"),
        ({"edge_keV": -1}, "edge_keV must be > 0"),
    ],
)
def test_bad_grids_refused_with_a_clear_message(kwargs, fragment):
    with pytest.raises(PlanArgumentError, match=fragment):
        energy_grid("Ni", **kwargs)


def test_unknown_edge_refused():
    with pytest.raises(PlanArgumentError, match="unknown edge 'Qq'"):
        energy_grid("Qq")
    with pytest.raises(PlanArgumentError, match="element symbol"):
        energy_grid("")


def test_grid_objects_validate_themselves():
    with pytest.raises(ValueError, match="strictly increasing"):
        EnergyGrid("Ni", 8.333, (8.3, 8.2, 8.4), (8.2, 8.3), (8.3, 8.4), (8.2, 8.4))


def test_flat_schedules():
    assert flat_indices(5, "every") == (0, 1, 2, 3, 4)
    assert flat_indices(10, "every_n", 3) == (0, 3, 6, 9)
    assert flat_indices(10, "every_n", 4) == (0, 4, 8)
    # interpolate: every energy lies between two flat sets (the last one included)
    assert flat_indices(10, "interpolate", 4) == (0, 4, 8, 9)
    assert flat_indices(10, "interpolate", 10) == (0, 9)


@pytest.mark.parametrize(
    ("policy", "every", "fragment"),
    [
        ("sometimes", None, "flat_policy must be one of"),
        ("every_n", None, "flat_every .* is required"),
        ("interpolate", 0, r"flat_every must be in \[1, 10\]"),
        ("every_n", 11, r"flat_every must be in \[1, 10\]"),
        ("every", 3, "flat_every is only used"),
        ("every_n", 2.5, "flat_every .* is required"),
    ],
)
def test_bad_flat_schedules_refused(policy, every, fragment):
    with pytest.raises(ValueError, match=fragment):
        flat_indices(10, policy, every)
