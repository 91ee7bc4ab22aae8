"""The energy grid and analysis windows the XANES unit tests share (keV)."""

import numpy as np

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
