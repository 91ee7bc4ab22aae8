"""The energy grids (keV), analysis windows and tabs the XANES unit tests share."""

import numpy as np

import sim_devices.physics as phys
import sim_devices.physics.xanes as xph

# Coarse pre-edge, 1 eV through the edge, 0.5 eV over the whiteline, coarse post-edge.
E_KEV = (
    np.concatenate(
        [
            np.arange(8200, 8326, 12.5),
            np.arange(8330, 8346, 1.0),
            np.arange(8346, 8358.1, 0.5),
            np.arange(8360, 8441, 10.0),
        ]
    )
    / 1000
)
PRE, POST, WINDOW = (8.2, 8.325), (8.37, 8.44), (8.3455, 8.3581)

# The 3D runs: 22 energies, coarse off the edge, 1 eV over the whiteline.
E3_KEV = np.concatenate(
    [
        [8.30, 8.31, 8.32],
        [8.330, 8.336, 8.340, 8.343],
        np.arange(8346, 8358.1, 1.0) / 1000,
        [8.37, 8.38, 8.39],
    ]
)


def small_tab():
    """The 3D runs' NMC811 tab: 4.4 x 4.4 x 6.4 um, no foil, 1.2-3 um particles (seed 2)."""
    return phys.make_tab(
        seed=2,
        width_um=4.4,
        coating_thickness_um=4.4,
        foil_thickness_um=0.0,
        height_um=6.4,
        diameter_median_um=2.0,
        diameter_range_um=(1.2, 3.0),
    )


def wide_tab():
    """The 2D runs' NMC811 tab (28 x 28 um, 8 um coating on 2 um foil, seed 5) and its
    mixed Ni valence field (seed 1)."""
    tab = phys.make_tab(
        seed=5,
        width_um=28,
        coating_thickness_um=8,
        foil_thickness_um=2,
        height_um=28,
        diameter_median_um=4.0,
        diameter_range_um=(1.5, 7.0),
    )
    return tab, xph.assign_valence(tab, seed=1, pattern="mixed")
