"""The PFIB-SEM's ``tab`` phantom is the TXM's tab: one sample, one ground truth (issue 11).

The PFIB-SEM's truth labels of a face are compared point by point with the material of
the TXM's phantom (``make_tab(seed, width_um=W)``, the TXM IOC's call) at the same
points, mapped through the frame mapping documented in ``docs/fibsem.md``: face ``x``
across the width, face ``y`` down from the coating's free surface, depth down the
tab's height from 10 um below its top end, the face centred on the coating.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim_devices.fibsem import FibsemIOC
from sim_devices.fibsem import main as ioc_main
from sim_devices.fibsem_truth import main as truth_main
from sim_devices.fibsem_truth import truth_labels
from sim_devices.physics.fibsem_scene import DEFAULT_SIZE_UM, SampleState
from sim_devices.physics.materials import MATERIAL_IDS
from sim_devices.physics.phantom import make_tab
from sim_devices.physics.serial_phantom import LABEL, SerialPhantom, make_serial_phantom

SEED = 5
PIXEL_UM = 0.1
ORIGIN_UM = (0.37, -0.21)  # (y, x): a drifted grid, off the pixel lattice, past the block edge
SHAPE = (436, 442)
# The TXM phantom's materials as the PFIB-SEM's labels; anything else (the Al foil,
# outside the tab) has no label, so it could never match.
TAB_TO_LABEL = {MATERIAL_IDS["pore"]: LABEL["pore"], MATERIAL_IDS["nmc811"]: LABEL["nmc811"],
                MATERIAL_IDS["cbd"]: LABEL["cbd"]}  # fmt: skip


def txm_material(tab, depth_um: float) -> np.ndarray:
    """The TXM phantom's material, as labels, at the points of the face grid at ``depth_um``.

    The documented mapping: ``x_tab = x - face_width / 2``, ``y_tab = coating centre +
    face_height / 2 - y``, ``z_tab = tab height - 10 um - depth``.
    """
    width, height, _ = DEFAULT_SIZE_UM
    c0, c1 = tab.coating_y_um
    x0, y0 = -width / 2, (c0 + c1) / 2 + height / 2
    z = tab.height_um - 10.0 - depth_um
    ny, nx = SHAPE
    left = x0 + ORIGIN_UM[1]  # tab x of the grid's outer edge; columns run along +x
    top = y0 - ORIGIN_UM[0]  # tab y of the grid's outer edge; rows run along -y
    region = (left, left + nx * PIXEL_UM, top - ny * PIXEL_UM, top, z - PIXEL_UM / 2,
              z + PIXEL_UM / 2)  # fmt: skip
    volume = tab.voxelize(PIXEL_UM, region)
    assert volume.material.shape == (1, ny, nx)
    lookup = np.full(256, -1, dtype=np.int16)
    for material, label in TAB_TO_LABEL.items():
        lookup[material] = label
    return lookup[volume.material[0, ::-1]]  # the voxels' y rises: flip to image rows


@pytest.mark.parametrize("width_um", [80.0, 62.5])
def test_the_pfib_truth_is_the_txm_phantom(width_um):
    tab = make_tab(seed=SEED, width_um=width_um)
    depths = [0.0, 3.31, 11.9]
    labels = truth_labels("tab", SEED, depths, SHAPE, PIXEL_UM, ORIGIN_UM, tab_width_um=width_um)
    for depth, face in zip(depths, labels, strict=True):
        expected = txm_material(tab, depth)
        np.testing.assert_array_equal(face, expected, err_msg=f"depth {depth} um")
        # A real face: every phase of the coating on it, no foil.
        shares = {name: float((face == LABEL[name]).mean()) for name in ("pore", "nmc811", "cbd")}
        assert shares["pore"] > 0.2 and shares["nmc811"] > 0.2 and shares["cbd"] > 0.03, shares


def test_the_tab_phantom_follows_the_width_and_the_default_is_make_tabs():
    at_80 = make_serial_phantom("tab", DEFAULT_SIZE_UM, SEED)
    # The documented window: the face's corner at (x, y) = (-22, 10 + 22) um in the tab
    # (its coating spans y -30..50), depth 0 at 250 - 10 um.
    window = at_80.tab_window
    np.testing.assert_allclose(window.to_tab(0.0, 0.0, 0.0), (-22.0, 32.0, 240.0))
    np.testing.assert_allclose(window.from_tab(*window.to_tab(1.0, 2.0, 3.0)), (1.0, 2.0, 3.0))
    explicit = make_serial_phantom("tab", DEFAULT_SIZE_UM, SEED, tab_width_um=80.0)
    face = at_80.labels(2.0, (220, 220), 0.2)
    np.testing.assert_array_equal(face, explicit.labels(2.0, (220, 220), 0.2))
    narrower = make_serial_phantom("tab", DEFAULT_SIZE_UM, SEED, tab_width_um=62.5)
    assert (narrower.labels(2.0, (220, 220), 0.2) != face).mean() > 0.2
    # No cracks, no coatings, no binder field: the TXM's spheres only.
    assert at_80.binder is None
    assert not at_80.spheres["crack"].any() and not at_80.spheres["coat"].any()


def test_a_face_wider_than_the_tab_or_a_width_for_another_phantom_is_refused(capsys):
    with pytest.raises(ValueError, match="does not fit"):
        SerialPhantom.from_tab(make_tab(seed=SEED, width_um=40.0, height_um=60.0),
                               DEFAULT_SIZE_UM)  # fmt: skip
    with pytest.raises(ValueError, match="for the 'tab' phantom"):
        make_serial_phantom("nmc", DEFAULT_SIZE_UM, SEED, tab_width_um=80.0)
    # The command lines say so before building anything.
    sample = ["--phantom", "nmc", "--seed", "1", "--tab-width-um", "80"]
    for main, argv in ((ioc_main, sample), (truth_main, [*sample, "--out", "x.h5"])):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert "--tab-width-um is for --phantom tab, not nmc" in capsys.readouterr().err


def test_the_ioc_refuses_a_state_file_of_another_tab_width(tmp_path):
    path = tmp_path / "state.json"
    SampleState(kind="tab", seed=SEED, tab_width_um=80.0).save(path)
    with pytest.raises(SystemExit, match="tab width 80.0, not 'tab' seed 5 .* tab width 62.5"):
        FibsemIOC(prefix="TABTEST:", phantom="tab", seed=SEED, tab_width_um=62.5,
                  state_file=path)  # fmt: skip
    # An old state file (no width) of another phantom still loads as before.
    assert SampleState.from_dict({"kind": "nmc", "seed": 1, "size_um": [44, 44, 12]}) == (
        SampleState(kind="nmc", seed=1)
    )
