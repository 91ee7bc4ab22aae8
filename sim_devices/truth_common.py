"""What the ground-truth command lines share: the IOC's phantom, renderer and options.

:mod:`sim_devices.tomo_truth` and :mod:`sim_devices.xanes_truth` rebuild what the
TXM IOC (:mod:`sim_devices.txm`) renders from the same options; both build the
phantom and the drift-free renderer here, as :class:`~sim_devices.txm.TXMIOC` does.
"""

from __future__ import annotations

import argparse
import math

from sim_devices.physics import ElectrodeTab, cached_tab
from sim_devices.physics.phantom import DEFAULT_TAB_WIDTH_UM
from sim_devices.physics.txm_scene import DEFAULT_AXIS_OFFSET_PX, TXMScene, start_pixel_um

__all__ = ["add_ioc_arguments", "phantom", "scene"]


def phantom(
    seed: int, particles: int | None = None, tab_width_um: float = DEFAULT_TAB_WIDTH_UM
) -> ElectrodeTab:
    """The tab the TXM IOC builds for ``--seed``, ``--particles`` and ``--tab-width-um``.

    The same call as :class:`sim_devices.txm.TXMIOC` makes, so the same particles.
    """
    tab_width_um = float(tab_width_um)
    if not (math.isfinite(tab_width_um) and tab_width_um > 0):
        raise ValueError(f"tab_width_um must be finite and positive, not {tab_width_um}")
    return cached_tab(seed=int(seed), width_um=tab_width_um, n_particles=particles)


def scene(
    tab: ElectrodeTab,
    binning: int,
    axis_offset_px: float = DEFAULT_AXIS_OFFSET_PX,
    seed: int = 0,
    photons_per_s: float | None = None,
) -> TXMScene:
    """The IOC's renderer for this tab, with its axis offset (px at the start-up optics).

    Built as :class:`sim_devices.txm.TXMIOC` builds it, without drift or chemistry, so
    its geometry and projection centre are exactly those of the IOC's frames.
    """
    kwargs = {} if photons_per_s is None else {"photons_per_s": float(photons_per_s)}
    return TXMScene(
        tab=tab,
        seed=int(seed),
        axis_offset_um=float(axis_offset_px) * start_pixel_um(binning),
        **kwargs,
    )


def add_ioc_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the IOC options a truth must repeat: seed, particles, width, binning, shape, axis."""
    parser.add_argument("--seed", type=int, required=True, help="the IOC's phantom seed")
    parser.add_argument(
        "--particles", type=int, default=None, help="the IOC's --particles (default: fill)"
    )
    parser.add_argument(
        "--tab-width-um", type=float, default=DEFAULT_TAB_WIDTH_UM,
        help="the IOC's --tab-width-um (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--binning", type=int, choices=(1, 2, 4), required=True)
    parser.add_argument(
        "--shape", type=int, nargs=2, metavar=("ROWS", "COLS"), required=True,
        help="binned frame shape",
    )  # fmt: skip
    parser.add_argument(
        "--axis-offset-px",
        type=float,
        default=DEFAULT_AXIS_OFFSET_PX,
        help="the IOC's --axis-offset-px (default %(default)s)",
    )
    return parser
