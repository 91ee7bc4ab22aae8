"""Ground truth of the simulated lab XRM's coin cell with a short circuit, as JSON.

The XRM IOC (:mod:`sim_devices.xrm`) renders analytic phantoms
(:func:`sim_devices.physics.xrm_scene.make_phantom`); this module rebuilds the one named
and prints what a scout-and-zoom is scored against: the defect's centre and size (mm)
how much more it attenuates than the anode it replaces at the effective energy, and the
height of the anode's middle (where that contrast is measured)::

    python -m sim_devices.xrm_truth --phantom coin_short --energy-keV 52
    {"phantom": "coin_short", "defect_mm": [1.6, -1.2, -1.2475], "defect_radius_mm": 0.75,
     "defect_height_mm": 0.3, "contrast_per_mm": 0.406, "anode_mid_z_mm": -1.195, ...}

Runtime code reads it in a subprocess (it never imports the simulator).
"""

from __future__ import annotations

import argparse
import json

from sim_devices.physics.xrm_scene import make_phantom, mu_per_mm

__all__ = ["defect_truth", "main"]


def defect_truth(phantom_name: str, energy_keV: float, seed: int = 0) -> dict:  # noqa: N803
    """The defect of ``phantom_name`` (centre, radius, height in mm) and its contrast (1/mm)."""
    phantom = make_phantom(phantom_name, seed)
    out = {"phantom": phantom_name, "energy_keV": float(energy_keV), "defect_mm": None}
    defects = [s for s in phantom.solids if getattr(s, "label", "") == "short"]
    if phantom.defect_center_mm is None or not defects:
        return out
    (defect,) = defects
    anode = next(s for s in phantom.solids if getattr(s, "label", "") == "anode")
    out.update(
        anode_mid_z_mm=float(anode.z0 + anode.z1) / 2.0,
        defect_mm=[float(v) for v in phantom.defect_center_mm],
        defect_radius_mm=float(defect.radius),
        defect_height_mm=float(defect.z1 - defect.z0),
        contrast_per_mm=mu_per_mm(defect.material, energy_keV)
        - mu_per_mm(defect.replaces, energy_keV),
    )
    return out


def main(argv=None) -> None:
    """Print the phantom's defect truth as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phantom", default="coin_short")
    parser.add_argument("--energy-keV", type=float, required=True, dest="energy_keV")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(defect_truth(args.phantom, args.energy_keV, args.seed)))


if __name__ == "__main__":
    main()
