"""Demo of sample preparation: a tab cut by the laser mill, a coin cell scouted by the XRM.

The first links of the imaging chain, each on its own simulated IOC (unique prefix,
free port, stopped by PID), both recorded in one catalog:

1. **Laser mill.** The electrode sheet ``sheet-1`` (NMC811) is registered, then
   ``cut_tab`` cuts the tab ``tab-1`` from it, as wide as the thickness rule asks
   for the TXM's energy (two attenuation lengths of NMC811 at 8.0 keV,
   :func:`~multiscope.analysis.attenuation.plan_tab`). Scored: the tab width the
   instrument measured against that target (5 um, the issue's tolerance); the freed
   piece's area against the path's expected area (1 %); the sheet map against the
   programmed path (``python -m sim_devices.laser_truth``: no pixel removed beyond
   the kerf nor left inside it, 2 um = a map pixel of tolerance); one cut made.
2. **Lab XRM.** The coin cell ``coin-2`` (a sodium-ion cell with a null voltage) is
   registered and mounted (the short-circuit phantom), then ``scout_and_zoom`` surveys
   it, picks the strongest departure from rotational symmetry and images it in an
   interior tomogram. Scored: the pixel the geometry's pseudo positioner reports
   against :func:`~multiscope.analysis.optics.xrm_pixel_size_um`; the VOI against the
   IOC's ``truth:defect_mm`` (< 0.3 mm, ~3 survey voxels); the zoom's reconstruction
   shows the defect: contact zone minus the anode around it against the contrast
   ``python -m sim_devices.xrm_truth`` computes (35 %); both runs linked.
3. Both samples' histories read back from the catalog (``catalog.sample_history``),
   printed and checked: the expected plans in order.

One PNG (``derived/prep/``): the cut piece on the sheet map with the programmed path;
the survey slice through the VOI with the zoom's field; the zoom slice through the
defect. :data:`CHAIN_SAMPLE_ID` is the tab the later demos of the chain image.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import simctl
from ..analysis.attenuation import plan_tab
from ..session import configure_session
from . import CHAIN_SAMPLE_ID, DemoResult, derived_run
from ._txm_ioc import _add_ca_port
from .prep_scores import (
    prep_figure,
    score_cut,
    score_histories,
    score_scout,
    zoom_contrast,
)

__all__ = ["CHAIN_SAMPLE_ID", "COIN_ID", "SHEET_ID", "PrepDemoConfig", "run"]

SHEET_ID = "sheet-1"
COIN_ID = "coin-2"


@dataclass(frozen=True)
class PrepDemoConfig:
    """What the demo simulates and acquires.

    The XRM scans at binning 8 (256 x 256 frames, the recipes' geometry with 4x their
    pixel) with 121 projections, as its integration tests do; its clock runs 500x fast.
    """

    material: str = "NMC811"
    energy_keV: float = 8.0  # noqa: N815 - the TXM demo's energy, unit spelling
    laser_time_scale: float = 0.1
    xrm_time_scale: float = 0.002
    n_projections: int = 121
    binning: int = 8
    num_darks: int = 3
    num_flats: int = 3

    def scan_overrides(self) -> dict:
        """``xrm_tomo_scan`` overrides of both the survey and the zoom."""
        return {
            "n_projections": self.n_projections,
            "binning": self.binning,
            "num_darks": self.num_darks,
            "num_flats": self.num_flats,
        }


class _IOC:
    """A dedicated simulated IOC (unique prefix, free port), stopped by PID."""

    def __init__(self, data_dir: Path, name: str, stem: str, args: list[str]):
        self.prefix = f"{stem}{uuid.uuid4().hex[:4]}:"
        self.process = simctl.start_ioc(
            name,
            prefix=self.prefix,
            port=simctl.free_port(),
            log_dir=data_dir / "sim" / "logs",
            extra_args=args,
        )
        try:
            simctl.wait_until_ready(self.process)
        except Exception:
            simctl.stop_ioc(self.process.pid)
            raise
        _add_ca_port(self.process.port)

    def stop(self, result: DemoResult) -> None:
        simctl.stop_ioc(self.process.pid)
        process = self.process
        result.details.append(f"{process.name} IOC {self.prefix} (pid {process.pid}, port "
                              f"{process.port}) stopped")  # fmt: skip


def _session(data_dir: Path, instrument: str, ioc: _IOC):
    return configure_session(
        {}, instrument, data_dir=data_dir, prefix=ioc.prefix, table=False, progress=True
    )


def _laser(data_dir: Path, config: PrepDemoConfig, result: DemoResult) -> dict:
    """Register the sheet, cut the tab, score it; what the figure needs."""
    state = data_dir / "sim" / f"laser-demo-{uuid.uuid4().hex[:4]}.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    ioc = _IOC(
        data_dir,
        "laser",
        "LASDEMO",
        ["--state-file", str(state), "--time-scale", str(config.laser_time_scale)],
    )
    session = None
    try:
        session = _session(data_dir, "laser", ioc)
        laser, RE, plans = session.devices["laser"], session.RE, session.plans  # noqa: N806
        laser.wait_for_connection(timeout=30)
        RE(
            plans["register_sample"](
                SHEET_ID,
                material=config.material,
                description="NMC811 cathode sheet: ~80 um coating on "
                "~20 um Al foil, in a petri dish",
            )
        )
        target = plan_tab(config.material, config.energy_keV)
        print(
            f"laser mill: cutting {CHAIN_SAMPLE_ID} from {SHEET_ID}, "
            f"{target.target_width_um:.1f} um wide (2 attenuation lengths of "
            f"{config.material} at {config.energy_keV} keV)",
            flush=True,
        )
        (uid,) = RE(
            plans["cut_tab"](
                laser,
                None,
                material=config.material,
                energy_keV=config.energy_keV,
                sample_id=CHAIN_SAMPLE_ID,
                parent_id=SHEET_ID,
            )
        )
        if not session.catalog.drain(120):
            raise RuntimeError("the cut's run did not reach the catalog")
        run = session.catalog.run(uid)
        return score_cut(run, laser, ioc.prefix, target, result)
    finally:
        if session is not None:
            session.close()
        ioc.stop(result)


def _xrm(data_dir: Path, config: PrepDemoConfig, result: DemoResult, cut: dict) -> None:
    """Register and mount the coin cell, scout and zoom, score; histories; figure."""
    ioc = _IOC(data_dir, "xrm", "XRMDEMO", ["--time-scale", str(config.xrm_time_scale)])
    session = None
    try:
        session = _session(data_dir, "xrm", ioc)
        d, RE, plans = session.devices, session.RE, session.plans  # noqa: N806
        for device in (d["xrm"], d["geometry"], d["sample_changer"]):
            device.wait_for_connection(timeout=30)
        RE(
            plans["register_sample"](
                COIN_ID,
                material="Na-ion coin cell",
                description="null voltage: internal short suspected",
            )
        )
        d["sample_changer"].set("coin_short").wait(30)  # mount it
        d["sample"].theta.velocity.set(360).wait(10)  # step scans: fast moves between angles
        fast = config.scan_overrides()
        print(
            f"XRM: scout and zoom of {COIN_ID} ({config.n_projections} projections each, "
            f"binning {config.binning})",
            flush=True,
        )
        t0 = time.monotonic()
        survey_uid, zoom_uid = RE(
            plans["scout_and_zoom"](
                d["xrm"],
                survey="coin_survey",
                zoom="coin_zoom",
                select="auto",
                sample_id=COIN_ID,
                survey_overrides={**fast, "voi_mm": (0.0, 0.0, 0.0)},
                zoom_overrides=fast,
            )
        )
        result.details.append(f"scout and zoom acquired in {time.monotonic() - t0:.1f} s")
        if not session.drain(600) or session.pipeline.errors:
            raise RuntimeError(f"the reconstructions did not finish: {session.pipeline.errors}")
        runs = {
            name: session.catalog.run(uid)
            for name, uid in (("survey", survey_uid), ("zoom", zoom_uid))
        }
        volumes = {
            name: derived_run(session, "tomo_reconstruction", run.metadata["start"]["uid"])
            for name, run in runs.items()
        }
        scout = score_scout(runs, d, ioc.prefix, result)
        contrast = zoom_contrast(runs["zoom"], volumes["zoom"], scout, result)
        histories = score_histories(session.catalog, CHAIN_SAMPLE_ID, COIN_ID, SHEET_ID, result)
        for history in histories:
            print(history, flush=True)
        figure = data_dir / "derived" / "prep" / f"prep-{zoom_uid[:8]}.png"
        prep_figure(figure, cut, runs, volumes, scout, contrast)
        result.details.append(f"figure: {figure}")
        result.details.append(
            f"runs: cut {cut['uid'][:8]}, survey {survey_uid[:8]}, zoom {zoom_uid[:8]}"
        )
    finally:
        if session is not None:
            session.close()
        ioc.stop(result)


def run(data_dir: Path, *, config: PrepDemoConfig | None = None) -> DemoResult:
    """Run the laser mill and XRM demo end to end and return its scores.

    Parameters
    ----------
    data_dir : Path
        The data directory (catalog, assets, derived files, IOC logs and states).
    config : PrepDemoConfig, optional
        What to simulate and acquire; default :class:`PrepDemoConfig`.
    """
    config = config or PrepDemoConfig()
    data_dir = Path(data_dir)
    t0 = time.monotonic()
    result = DemoResult(name="prep", passed=True, elapsed_s=0.0)
    cut = _laser(data_dir, config, result)
    _xrm(data_dir, config, result, cut)
    result.passed = bool(result.passed)
    result.elapsed_s = time.monotonic() - t0
    return result
