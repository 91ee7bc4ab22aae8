"""Demo of 2D XANES at the TXM: a Ni K-edge chemical-state map of the simulated tab, scored.

Reads the chain's tab from the catalog (:func:`~multiscope.demos.chain.chain_tab`:
the width the laser mill measured when ``prep`` cut it in this data directory, else
the simulator's default 80 um tab; printed and listed with the scores), starts the
simulated TXM IOC building that tab with its Ni K-edge chemistry (every NMC811
particle has a seeded Ni valence field; the whiteline shifts by 1.5 eV per valence
unit) and a seeded sample jump at every energy, configures a ``txm`` session and runs
``xanes_2d`` across the Ni K-edge (the default :func:`~multiscope.plans.xanes.energy_grid`,
63 energies; the energy pseudo axis refocuses at each). The session's live
:class:`~multiscope.callbacks.xanes.LiveXANESMap` normalises each energy by its
flats, aligns it to the reference and fits the whiteline while the scan runs,
then stores the maps as a derived run. The demo reads that run back from the
catalog and scores it against the ground truth, which
``python -m sim_devices.xanes_truth`` computes in a subprocess from the same
seeded phantom (runtime code never imports the simulator)::

    whiteline map RMSE vs the true peak energies   <= 0.1 eV (over the fitted pixels)
    mask: pixels without NMC that were fitted      0
          pixels with >= 0.8 um of NMC masked      0
    drift correction (measured - applied jump)     < 0.3 px rms
    per-pixel SNR of each energy's image (median)  in 100-300, as seed 002 states

The map keeps a pixel when its edge step is significant against the scatter of
its own pre- and post-edge absorbance (>= 6 standard errors of ~0.005 absorbance
here, or a step >= 0.03) and it connects to certain material (>= 8), so it fits NMC
down to ~0.4 um (Ni K-edge jump 0.064 /um) and never an empty pixel
(:func:`~multiscope.analysis.xanes.material_mask`; thinner NMC is detectable but
its whiteline too noisy to map). Below that photon noise, not the sample, decides,
and at the laser-cut edge a pixel's thin NMC corner behind
tens of um of coating shows less than its mean thickness suggests (a camera pixel
averages transmission): pixels between no NMC and 0.8 um are counted and reported,
not scored. Pixels that some energy's jump moves out of the field are masked as out
of view and left out of every score.

The applied jump of every frame is the per-frame attribute ``drift_x_px`` /
``drift_y_px`` the IOC records in its HDF5 files (as a real detector records its
NDAttributes); only the reference-relative jump is observable, so that is scored.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from .. import simctl
from ..frame_files import FrameReader
from ..plans.xanes import energy_grid
from ..session import configure_session
from . import CHAIN_SAMPLE_ID, DemoResult, derived_run
from ._txm_ioc import txm_ioc
from .chain import ChainTab, chain_tab_in

__all__ = ["TOLERANCES", "XanesDemoConfig", "run"]

TOLERANCES = {
    "whiteline_rmse_eV": 0.1,
    "mask_mismatch_px": 0,
    "drift_rms_px": 0.3,
}
# NMC811 (um) every fitted map must keep: measured, the thickest masked in-view pixel
# was 0.70 um at the laser-cut edge (sample_x_um=30), none in the tab's middle.
SURE_NMC_UM = 0.8
# Per-pixel SNR seed 002 states for TXM XANES: the scores hold at this SNR.
SNR_RANGE = (100, 300)
TRUTH_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class XanesDemoConfig:
    """What the demo simulates and acquires.

    Binning 4 at 128 x 128 px images a 33 um field (0.26 um pixels) in the middle
    of the tab (80 um wide by default, the chain's cut ~96 um), face on
    (``sample:theta = 0``), as seed 002 maps the electrode's interior.
    ``sample_x_um=30`` puts the default tab's laser-cut edge (at ``x = 40`` um,
    half its width) in view instead (a quarter of the field empty); the same scores
    hold there (``docs/xanes.md``, "The demo and its scores"). ``supersample`` is the IOC's
    pixel-area integration (sub-rays per pixel and axis, ``--supersample``), which
    the truth repeats: a camera pixel averages the transmission over its area, and
    the alignment's re-sampling correction assumes it; pixel centres (1) make
    edges sharper than any camera sees and fail at the laser-cut edge. A synchrotron TXM's flux
    (``photons`` per pixel per second at 400 mA, well above the lab default) and a
    few frames per energy give the per-pixel SNR of ~100-300 of seed 002 where the
    beam still gets through the coating.

    The sample is not configured here: it is the chain's tab
    (:class:`~multiscope.demos.chain.ChainTab`, its seed and width). The IOC's one
    ``--seed`` also seeds its noise, flats, energy jumps and valence field, so the
    demo has no seed of its own.
    """

    binning: int = 4
    shape: tuple[int, int] = (128, 128)
    photons: float = 500000.0
    valence_pattern: str = "mixed"
    energy_drift_px: float = 1.0
    energy_drift_max_px: float = 3.0
    sample_x_um: float = 0.0
    exposure_s: float = 0.1
    num_frames: int = 2
    flat_policy: str = "interpolate"
    flat_every: int = 8
    num_flats: int = 4
    num_darks: int = 4
    supersample: int = 4

    def ioc_args(self, tab: ChainTab) -> list[str]:
        """Options of ``python -m sim_devices.txm`` for this configuration imaging ``tab``."""
        return [
            "--binning", str(self.binning),
            "--shape", str(self.shape[0]), str(self.shape[1]),
            *tab.ioc_args(),
            "--photons", repr(float(self.photons)),
            "--valence-pattern", self.valence_pattern,
            "--energy-drift-px", repr(float(self.energy_drift_px)),
            "--energy-drift-max-px", repr(float(self.energy_drift_max_px)),
            "--supersample", str(self.supersample),
        ]  # fmt: skip

    def truth_args(self, tab: ChainTab, jump_px=(0.0, 0.0), pixel_um: float = 0.0) -> list[str]:
        """Options of ``python -m sim_devices.xanes_truth`` for the same tab and field.

        ``jump_px`` (rows, columns) is the IOC's jump at the map's reference
        energy: the maps are in that frame. A jump of ``c`` columns is what moving
        ``sample:x`` by ``c * pixel`` does, one of ``r`` rows (down) what moving
        ``sample:z`` by ``-r * pixel`` does, so the truth is computed there.
        """
        rows, cols = (float(v) for v in jump_px)
        return [
            *tab.ioc_args(),
            "--binning", str(self.binning),
            "--shape", str(self.shape[0]), str(self.shape[1]),
            "--valence-pattern", self.valence_pattern,
            "--theta-deg", "0",
            "--sample-x-um", repr(float(self.sample_x_um) + cols * pixel_um),
            "--sample-z-um", repr(-rows * pixel_um),
            "--supersample", str(self.supersample),
        ]  # fmt: skip


class _RawFrames:
    """What the demo needs from the raw run's files: applied jumps and photon noise.

    Collects the jump the IOC applied to each sample frame (per-frame attributes)
    and, per energy, the sample frames themselves, to measure the per-pixel SNR
    the map was made at.
    """

    def __init__(self):
        self.reader = FrameReader(timeout=10.0)
        self.datums: list[dict] = []
        self.dark_datums: list[dict] = []
        self.index_of_seq: dict[int, int] = {}
        self._primary: set[str] = set()
        self._dark: set[str] = set()

    def __call__(self, name: str, doc: dict) -> None:
        if name == "stream_resource":
            self.reader.add_resource(doc)
        elif name == "descriptor":
            self.reader.add_descriptor(doc)
            if doc.get("name") == "primary":
                self._primary.add(doc["uid"])
            elif doc.get("name") == "dark":
                self._dark.add(doc["uid"])
        elif name == "stream_datum" and doc.get("descriptor") in self._primary:
            self.datums.append(doc)
        elif name == "stream_datum" and doc.get("descriptor") in self._dark:
            self.dark_datums.append(doc)
        elif name == "event" and doc["descriptor"] in self._primary:
            index = doc["data"].get("xanes_energy_index")
            if index is not None:
                self.index_of_seq[int(doc["seq_num"])] = int(index)

    def _frames(self, datum: dict, attributes=()):
        block = self.reader.read(datum, attributes=attributes)
        first, last = block.seq_nums
        seqs = range(first, last) if last > first else [first]
        frames = np.asarray(block.data, np.float64).reshape(-1, *block.data.shape[-2:])
        return list(seqs), frames, block.attributes

    def per_energy(self, n_energies: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean applied (row, column) jump per energy index (px) and per-pixel SNR maps.

        The SNR of energy ``i`` is that of the image the map is made from, the
        dark-subtracted mean of its ``n >= 2`` sample frames: signal over the
        standard error of that mean. The variance comes from the spread of the
        frames themselves (no noise model assumed), smoothed over 5 x 5 pixels
        because two frames give one degree of freedom per pixel. NaN for an
        energy with fewer than two frames.
        """
        sums = np.zeros((n_energies, 2))
        counts = np.zeros(n_energies)
        frames_of: dict[int, list[np.ndarray]] = {}
        for datum in self.datums:
            seqs, frames, attrs = self._frames(datum, ("drift_x_px", "drift_y_px"))
            dx = np.atleast_1d(attrs.get("drift_x_px", []))
            dy = np.atleast_1d(attrs.get("drift_y_px", []))
            for k, seq in enumerate(seqs):
                index = self.index_of_seq.get(seq)
                if index is None or k >= len(dx):
                    continue
                sums[index] += (dy[k], dx[k])
                counts[index] += 1
                frames_of.setdefault(index, []).append(frames[k])
        darks = [self._frames(d)[1] for d in self.dark_datums]
        self.reader.close()
        dark = np.concatenate(darks).mean(axis=0) if darks else 0.0
        shape = next(iter(frames_of.values()))[0].shape if frames_of else (0, 0)
        snr = np.full((n_energies, *shape), np.nan)
        for index, frames in frames_of.items():
            if len(frames) < 2:
                continue
            stack = np.stack(frames)
            n = len(stack)
            variance = ndimage.uniform_filter(stack.var(axis=0, ddof=1), 5, mode="nearest")
            snr[index] = (stack.mean(axis=0) - dark) / np.sqrt(np.maximum(variance, 1e-12) / n)
        return sums / np.maximum(counts, 1)[:, None], snr


def run(
    data_dir: Path, *, config: XanesDemoConfig | None = None, port: int | None = None
) -> DemoResult:
    """Run the XANES demo end to end and return its scores.

    Parameters
    ----------
    data_dir : Path
        The data directory (catalog, assets, derived files, IOC logs); the tab imaged
        is the one its catalog records the laser mill cutting (else the default tab).
    config : XanesDemoConfig, optional
        What to simulate and acquire; default :class:`XanesDemoConfig`.
    port : int, optional
        CA port for a dedicated IOC (default: reuse a matching recorded IOC or a
        free port). Tests pass one of their reserved ports.
    """
    config = config or XanesDemoConfig()
    data_dir = Path(data_dir)
    t_start = time.monotonic()
    session = None
    truth_proc = None
    tab = chain_tab_in(data_dir)
    print("starting the simulated TXM IOC (Ni K-edge chemistry) ...", flush=True)
    prefix, beam_prefix, iocs = txm_ioc(config.ioc_args(tab), data_dir, port, "XANESDEMO")
    try:
        session = configure_session(
            {},
            "txm",
            data_dir=data_dir,
            prefix=prefix,
            beam_prefix=beam_prefix,
            table=False,
            progress=True,
        )
        d = session.devices
        camera, energy, sample, shutter = d["camera"], d["energy"], d["sample"], d["shutter"]
        for device in (camera, energy, sample, shutter, d["objective"]):
            device.wait_for_connection(timeout=20)
        pixel_um = d["objective"].pixel_size.get() / 1000.0
        # The truth is for the sample face on, at the tab's middle height, x as configured.
        for axis, target in ((sample.x, config.sample_x_um), (sample.y, 0.0),
                             (sample.z, 0.0), (sample.theta, 0.0)):  # fmt: skip
            axis.set(target).wait(60)
        grid = energy_grid("Ni")
        truth_path = data_dir / "derived" / "txm" / "truth" / f"xanes-{uuid.uuid4().hex}.h5"
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        raw_frames = _RawFrames()
        token = session.RE.subscribe(raw_frames)
        print(
            f"2D XANES: {len(grid.energies_keV)} energies {grid.energies_keV[0]:.3f}-"
            f"{grid.energies_keV[-1]:.3f} keV, {config.num_frames} x {config.exposure_s} s "
            f"frames, flats '{config.flat_policy}'",
            flush=True,
        )
        t0 = time.monotonic()
        try:
            (uid,) = session.RE(
                session.plans["xanes_2d"](
                    camera, energy, sample, shutter, grid,
                    exposure_s=config.exposure_s, num_frames=config.num_frames,
                    flat_policy=config.flat_policy, flat_every=config.flat_every,
                    num_flats=config.num_flats, num_darks=config.num_darks,
                    pixel_size_um=pixel_um, sample_id=CHAIN_SAMPLE_ID,
                    md={"purpose": "multiscope demo xanes"},
                )
            )  # fmt: skip
        finally:
            session.RE.unsubscribe(token)
        acquisition_s = time.monotonic() - t0
        print("waiting for the chemical-state map ...", flush=True)
        t0 = time.monotonic()
        drained = session.drain(300)
        analysis_s = time.monotonic() - t0
        errors = list(session.pipeline.errors) if session.pipeline is not None else []
        applied_px, snr = raw_frames.per_energy(len(grid.energies_keV))
        derived = derived_run(session, "xanes_map", uid)
        reference = int(derived.metadata["start"]["parameters"]["reference_index"])
        truth_proc = subprocess.Popen(
            [sys.executable, "-m", "sim_devices.xanes_truth",
             *config.truth_args(tab, applied_px[reference], pixel_um), "--out",
             str(truth_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        out, _ = truth_proc.communicate(timeout=TRUTH_TIMEOUT_S)
        if truth_proc.returncode != 0:
            raise RuntimeError(f"ground truth failed:\n{out}")
        result = _score(session, uid, derived, truth_path, applied_px, snr)
        result.scores = {"tab imaged": f"{tab.sample_id}, {tab.source}", **result.scores}
        result.details += [
            f"timings: acquisition {acquisition_s:.0f} s, map after the last energy "
            f"{analysis_s:.0f} s",
            f"raw run {uid}",
            f"ground truth: {truth_path}",
        ]
        if not drained or errors:
            result.passed = False
            result.details.append(
                f"analysis incomplete: drained={drained}, errors: "
                + "; ".join(f"{e.name}: {e.exception!r}" for e in errors)
            )
        result.elapsed_s = time.monotonic() - t_start
        return result
    finally:
        if truth_proc is not None and truth_proc.poll() is None:
            truth_proc.kill()
            truth_proc.wait()
        if session is not None:
            session.close()
        for ioc in iocs:
            simctl.stop_ioc(ioc.pid)


def _score(
    session, uid: str, derived, truth_path: Path, applied_px: np.ndarray, snr: np.ndarray
) -> DemoResult:
    """Score the derived map (read back from the catalog) and the raw run's exit.

    ``snr`` (energies, rows, cols) is the measured per-pixel SNR of each energy's
    image: the whiteline score only means what it says if it was made at the SNR
    seed 002 states (~100-300), so that range is checked too.
    """
    exit_status = session.catalog.run(uid).metadata["stop"]["exit_status"]
    start = derived.metadata["start"]
    with h5py.File(start["results"]["maps"], "r") as f:
        whiteline = f["whiteline_eV"][()]
        masked = f["mask"][()].astype(bool)
        out_of_view = f["out_of_view"][()].astype(bool)
        shifts = f["shifts_px"][()]
    with h5py.File(truth_path, "r") as f:
        true_whiteline = f["whiteline_eV"][()]
        true_masked = f["mask"][()].astype(bool)
        nmc_um = f["nmc_thickness_um"][()]
        whiteline_range = (f.attrs["whiteline_min_eV"], f.attrs["whiteline_max_eV"])

    # Pixels some energy's jump moved out of the field have no complete spectrum: the
    # map masks them as out of view; everything else is scored.
    in_view = ~out_of_view
    both = ~masked & ~true_masked & np.isfinite(whiteline)
    rmse = float(np.sqrt(np.mean((whiteline[both] - true_whiteline[both]) ** 2)))
    fitted_empty = int(np.count_nonzero(~masked & true_masked & in_view))
    masked_sure = int(np.count_nonzero(masked & (nmc_um >= SURE_NMC_UM) & in_view))
    mismatch = fitted_empty + masked_sure
    thin = in_view & ~true_masked & (nmc_um < SURE_NMC_UM)
    thin_masked = int(np.count_nonzero(thin & masked))
    # Only jumps relative to the reference energy are observable.
    reference = int(start["parameters"]["reference_index"])
    applied_rel = applied_px - applied_px[reference]
    measured_rel = shifts - shifts[reference]
    # The map records the shift that re-aligns each energy: minus the IOC's jump.
    drift_error = np.sqrt(np.mean(np.sum((measured_rel + applied_rel) ** 2, axis=1)))
    jump = float(np.abs(applied_rel).max())
    ok_rmse = rmse <= TOLERANCES["whiteline_rmse_eV"]
    ok_mask = mismatch <= TOLERANCES["mask_mismatch_px"]
    ok_drift = drift_error < TOLERANCES["drift_rms_px"]
    # SNR over the fitted pixels (frames are not aligned; jumps of <= 3 px do not
    # matter to these percentiles).
    fitted_snr = snr[:, both]
    snr_median = float(np.nanmedian(fitted_snr))
    snr_low, snr_high = (float(v) for v in np.nanpercentile(fitted_snr, [5, 95]))
    ok_snr = SNR_RANGE[0] <= snr_median <= SNR_RANGE[1]
    passed = exit_status == "success" and ok_rmse and ok_mask and ok_drift and ok_snr
    figures = start.get("figures", [])

    def verdict(ok: bool) -> str:
        return "ok" if ok else "FAIL"

    return DemoResult(
        name="xanes",
        passed=passed,
        elapsed_s=0.0,
        scores={
            "whiteline RMSE vs truth (eV)": f"{rmse:.3f} over {both.sum()} px "
            f"(tolerance {TOLERANCES['whiteline_rmse_eV']}) {verdict(ok_rmse)}",
            "whiteline range found / true (eV)": f"{np.nanmin(whiteline[both]):.2f}-"
            f"{np.nanmax(whiteline[both]):.2f} / {whiteline_range[0]:.2f}-"
            f"{whiteline_range[1]:.2f}",
            f"mask: fitted without NMC / masked >= {SURE_NMC_UM:g} um NMC": f"{fitted_empty} / "
            f"{masked_sure} px of {in_view.sum()} in view {verdict(ok_mask)}",
            f"mask: pixels under {SURE_NMC_UM:g} um of NMC": f"{thin.sum()}, of which "
            f"{thin_masked} masked (mapping limit ~0.4 um); {out_of_view.sum()} px out of "
            "view",
            "drift correction error (px rms)": f"{drift_error:.3f} for jumps up to "
            f"{jump:.2f} px (tolerance {TOLERANCES['drift_rms_px']}) {verdict(ok_drift)}",
            "per-pixel SNR of each energy's image, fitted px": f"median {snr_median:.0f}, "
            f"5-95 % {snr_low:.0f}-{snr_high:.0f} (seed 002: {SNR_RANGE[0]}-{SNR_RANGE[1]}) "
            f"{verdict(ok_snr)}",
            "raw run": f"exit {exit_status}",
        },
        details=[f"figures: {', '.join(str(Path(p).name) for p in figures)}"],
    )
