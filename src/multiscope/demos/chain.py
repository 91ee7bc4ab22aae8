"""The chain's sample as the simulators must build it: the tab the laser mill cut.

At a facility the tab cut at the laser mill is carried to the TXM and then to the
PFIB-SEM. In simulation each instrument is its own IOC with its own phantom, so the
demos carry the sample for it: :func:`chain_tab` reads what the mill measured on the
piece it freed (its width, from the cut run's ``cut`` stream) out of the catalog, and
:meth:`ChainTab.ioc_args` gives the options that make the TXM's and the PFIB-SEM's
simulators (and their ground truths) build that tab: the same width and the same
microstructure seed, so both image the same particles.

When the tab was not cut in this data directory (a demo run alone), the simulators'
own default tab stands in, and :attr:`ChainTab.source` says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from . import CHAIN_SAMPLE_ID

__all__ = ["CHAIN_TAB_SEED", "DEFAULT_TAB_WIDTH_UM", "ChainTab", "chain_tab", "chain_tab_in"]

logger = logging.getLogger(__name__)

#: The seed of the sheet's microstructure (particles, carbon-binder, pores) that the
#: simulators of the TXM and the PFIB-SEM build the tab from.
CHAIN_TAB_SEED = 0
#: The simulators' tab width when no cut is on record (``make_tab``'s default), um.
DEFAULT_TAB_WIDTH_UM = 80.0
#: The plans that make a tab at the laser mill.
_CUT_PLANS = ("cut_tab",)


@dataclass(frozen=True)
class ChainTab:
    """The tab a simulator must build for the chain's sample.

    Attributes
    ----------
    sample_id : str
        The sample's id (:data:`multiscope.demos.CHAIN_SAMPLE_ID`).
    width_um : float
        Width of the tab across the cut (the laser mill's measurement), um.
    seed : int
        Seed of its microstructure.
    material : str
        The material the cut recorded (``""`` when not cut here).
    cut_uid : str
        The uid of the cut run, ``""`` when not cut here.
    """

    sample_id: str
    width_um: float
    seed: int = CHAIN_TAB_SEED
    material: str = ""
    cut_uid: str = ""

    @property
    def source(self) -> str:
        """Where the geometry comes from, for a demo's printout."""
        if self.cut_uid:
            return f"cut {self.cut_uid[:8]} at the laser mill, {self.width_um:.1f} um measured"
        return f"not cut in this data directory: the simulators' {self.width_um:g} um tab"

    def ioc_args(self) -> list[str]:
        """Options of the TXM's and PFIB-SEM's simulators (and their truths) for this tab."""
        return ["--seed", str(self.seed), "--tab-width-um", repr(float(self.width_um))]


def chain_tab(catalog, sample_id: str = CHAIN_SAMPLE_ID) -> ChainTab:
    """The tab ``sample_id`` as the laser mill cut it, or the default tab if it was not.

    Parameters
    ----------
    catalog : multiscope.catalog.Catalog
        The session's catalog.
    sample_id : str
        The sample (default the chain's).

    Returns
    -------
    ChainTab
        The width measured on the piece by the latest successful cut of the sample,
        rounded to 0.1 um (the mill's map has 2 um pixels); the default width when
        the catalog holds no successful cut of it.
    """
    history = catalog.sample_history(sample_id)
    cuts = [s for s in history if s.plan_name in _CUT_PLANS and s.exit_status == "success"]
    if not cuts:
        return ChainTab(sample_id=sample_id, width_um=DEFAULT_TAB_WIDTH_UM)
    cut = cuts[-1]
    run = catalog.run(cut.uid)
    width = float(run["cut"].read()["piece_row_width_um"].values[-1])
    if not (math.isfinite(width) and width > 0):
        raise RuntimeError(f"cut {cut.uid[:8]} of {sample_id!r} measured no width ({width})")
    material = history.record.material if history.record is not None else ""
    logger.info("chain tab %s: %.1f um from cut %s", sample_id, width, cut.uid[:8])
    return ChainTab(sample_id=sample_id, width_um=round(width, 1), material=material,
                    cut_uid=cut.uid)  # fmt: skip


def chain_tab_in(data_dir: str | Path, sample_id: str = CHAIN_SAMPLE_ID) -> ChainTab:
    """:func:`chain_tab` from the catalog of ``data_dir``, printed for the demo's reader.

    Read before a simulator starts: :meth:`ChainTab.ioc_args` are part of its options
    (and of its ground truth's).
    """
    from ..catalog import Catalog

    # With the bluesky clients: the cut's measured width is in its ``cut`` stream,
    # which a plain container cannot read.
    with Catalog.embedded(Path(data_dir)) as catalog:
        tab = chain_tab(catalog, sample_id)
    print(f"the chain's sample {tab.sample_id!r}: {tab.source}", flush=True)
    return tab
