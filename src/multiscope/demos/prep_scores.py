"""Scores and figure of the sample-preparation demo (laser mill, lab XRM).

The truth comes from the simulated IOCs (``map:file_RBV``, ``truth:defect_mm``,
``truth:phantom``) and from ``python -m sim_devices.laser_truth`` and
``python -m sim_devices.xrm_truth`` in subprocesses (runtime code never imports the
simulator). Each score states its tolerance and ends in PASS or FAIL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import h5py
import numpy as np

from ..analysis.optics import xrm_pixel_size_um
from ..analysis.xrm_scout import sample_mm_to_voxel
from ..contracts import ScoutBlock, XrmBlock

__all__ = [
    "TOLERANCES",
    "prep_figure",
    "score_cut",
    "score_histories",
    "score_scout",
    "zoom_contrast",
]

TOLERANCES = {
    "tab_width_um": 5.0,  # the issue's
    "area_fraction": 0.01,  # pixels counted on a 2 um map along a ~12 mm outline
    "kerf_band_um": 2.0,  # one map pixel either side of the kerf's edge
    "pixel_fraction": 1e-4,  # the pseudo positioner against the formula
    "voi_mm": 0.3,  # ~3 survey voxels (109 um at binning 8)
    "contrast_fraction": 0.35,  # noise of a 121-projection interior tomogram
}
TRUTH_TIMEOUT_S = 120.0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _pv(name: str, string: bool = False):
    from ophyd import EpicsSignalRO

    signal = EpicsSignalRO(name, name=name.replace(":", "_"), string=string)
    signal.wait_for_connection(timeout=30)
    return signal.get(use_monitor=False)


def _truth(module: str, args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=TRUTH_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


# ----------------------------------------------------------------------------- laser


def score_cut(run, laser, prefix: str, target, result) -> dict:
    """Width against the thickness rule, area against the path, the map against the kerf."""
    start = run.metadata["start"]
    block = start["laser_cut"]
    cut = {k: float(v.values[0]) for k, v in run["cut"].read().items() if v.ndim == 1}
    width, target_um = cut["piece_row_width_um"], float(target.target_width_um)
    ok_width = abs(width - target_um) <= TOLERANCES["tab_width_um"]
    area, expected = cut["piece_area_um2"], cut["expected_area_um2"]
    ok_area = abs(area / expected - 1) <= TOLERANCES["area_fraction"]
    map_file = str(_pv(f"{prefix}map:file_RBV", string=True))
    pixel_um = float(_pv(f"{prefix}map:pixel_um_RBV"))
    path = [v for xy in zip(block["path_x_um"], block["path_y_um"], strict=True) for v in xy]
    printed = _truth(
        "sim_devices.laser_truth",
        [
            "--map",
            map_file,
            "--kerf-um",
            repr(float(block["kerf_um"])),
            "--tolerance-um",
            repr(TOLERANCES["kerf_band_um"]),
            "--path",
            *map(repr, path),
        ],
    )
    outside, left = (int(n) for n in re.findall(r"(\d+) px", printed))
    ok_map = outside == 0 and left == 0
    count = int(laser.cut.count.get(use_monitor=False))
    ok_count = count == 1 and int(cut["cut_count"]) == 1 and int(block["cut_number"]) == 1
    ok_count &= int(cut["piece_count"]) == 1 and run.metadata["stop"]["exit_status"] == "success"
    result.passed &= ok_width and ok_area and ok_map and ok_count
    result.scores["tab width vs thickness rule"] = (
        f"{width:.1f} um measured vs {target_um:.1f} um target (2 attenuation lengths at "
        f"{target.energy_keV:g} keV; tolerance {TOLERANCES['tab_width_um']:g}) {_verdict(ok_width)}"
    )
    result.scores["piece area vs path"] = (
        f"{area / 1e6:.4f} vs {expected / 1e6:.4f} mm^2 ({100 * (area / expected - 1):+.2f} %, "
        f"tolerance {100 * TOLERANCES['area_fraction']:g} %) {_verdict(ok_area)}"
    )
    result.scores["sheet map vs programmed kerf"] = (
        f"{outside} px removed beyond it, {left} px left inside it ({pixel_um:g} um pixels, "
        f"band {TOLERANCES['kerf_band_um']:g} um) {_verdict(ok_map)}"
    )
    result.scores["cuts made"] = (
        f"{count} (instrument count), cut number {block['cut_number']}, "
        f"{int(cut['piece_count'])} piece freed {_verdict(ok_count)}"
    )
    return {
        "uid": start["uid"],
        "sample_id": start["sample_id"],
        "path_x": np.asarray(block["path_x_um"]),
        "path_y": np.asarray(block["path_y_um"]),
        "map_file": map_file,
        "pixel_um": pixel_um,
        "width": width,
        "target": target_um,
        "row_y": float(block["tab_mid_y_um"]),
    }


# ----------------------------------------------------------------------------- XRM


def score_scout(runs: dict, devices: dict, prefix: str, result) -> dict:
    """Pixel against the geometry formula, VOI against the truth, the runs linked."""
    geometry = devices["geometry"]
    binning = int(devices["camera"].cam.bin_x.get(use_monitor=False))
    objective = str(devices["turret"].objective.get(use_monitor=False))
    formula = xrm_pixel_size_um(
        float(geometry.detector_pixel_um.get()),
        geometry.sod.position,
        geometry.odd.position,
        objective,
        binning,
    )
    reported = float(geometry.pixel_size.position)
    zoom_start, survey_start = (runs[n].metadata["start"] for n in ("zoom", "survey"))
    recorded = float(zoom_start["tomo"]["pixel_size_um"])
    rel = max(abs(reported / formula - 1), abs(recorded / formula - 1))
    ok_pixel = rel <= TOLERANCES["pixel_fraction"]
    truth_mm = np.asarray(_pv(f"{prefix}truth:defect_mm"), float)
    scout = ScoutBlock.from_md(zoom_start["scout"])
    voi = np.asarray(scout.voi_mm, float)
    error = float(np.linalg.norm(voi - truth_mm))
    ok_voi = error < TOLERANCES["voi_mm"]
    linked = (
        scout.survey_uid == survey_start["uid"]
        and XrmBlock.from_md(zoom_start["xrm"]).voi_mm == scout.voi_mm
        and survey_start["sample_id"] == zoom_start["sample_id"]
        and all(r.metadata["stop"]["exit_status"] == "success" for r in runs.values())
    )
    result.passed &= ok_pixel and ok_voi and linked
    result.scores["zoom pixel vs geometry formula"] = (
        f"{reported:.4f} um reported (run {recorded:.4f}) vs {formula:.4f} um (SOD "
        f"{geometry.sod.position:.2f}, ODD {geometry.odd.position:.1f} mm, {objective}, bin "
        f"{binning}): rel. error {rel:.1e} (tolerance {TOLERANCES['pixel_fraction']:g}) "
        f"{_verdict(ok_pixel)}"
    )
    result.scores["VOI vs true defect (mm)"] = (
        f"{np.round(voi, 3).tolist()} vs {np.round(truth_mm, 4).tolist()}: {error:.3f} mm "
        f"(score {scout.score if scout.score is not None else float('nan'):.1f} sigma; "
        f"tolerance "
        f"{TOLERANCES['voi_mm']}) {_verdict(ok_voi)}"
    )
    result.scores["survey -> zoom linked"] = (
        f"zoom's scout.survey_uid {scout.survey_uid[:8]}, same sample "
        f"{zoom_start['sample_id']!r}, VOI recorded {_verdict(linked)}"
    )
    energy = float(_pv(f"{prefix}source:energy_RBV"))
    phantom = str(_pv(f"{prefix}truth:phantom", string=True))
    return {
        "voi_mm": voi,
        "truth_mm": truth_mm,
        "energy_keV": energy,
        "phantom": phantom,
        "error_mm": error,
    }


def _volume(derived) -> tuple[np.ndarray, dict]:
    start = derived.metadata["start"]
    with h5py.File(start["files"]["volume"], "r") as f:
        return np.asarray(f["/entry/data/data"][0], np.float32), start


def zoom_contrast(zoom_run, zoom_derived, scout: dict, result) -> dict:
    """The zoom's contact zone minus the anode around it, against the truth's contrast."""
    truth = json.loads(
        _truth(
            "sim_devices.xrm_truth",
            ["--phantom", scout["phantom"], "--energy-keV", repr(scout["energy_keV"])],
        )
    )
    volume, _ = _volume(zoom_derived)
    pixel_um = float(zoom_run.metadata["start"]["tomo"]["pixel_size_um"])
    pixel_mm = pixel_um * 1e-3
    volume = volume / pixel_mm  # 1/mm
    x, y, _ = truth["defect_mm"]
    iz, iy, ix = sample_mm_to_voxel(
        (x, y, truth["anode_mid_z_mm"]), volume.shape, pixel_um, scout["voi_mm"]
    )
    image = volume[int(round(iz))]
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    distance = np.hypot(yy - iy, xx - ix) * pixel_mm
    radius = truth["defect_radius_mm"]
    contact = float(image[distance < 2 * radius / 3].mean())
    around = float(image[(distance > 4 * radius / 3) & (distance < 2 * radius)].mean())
    expected = float(truth["contrast_per_mm"])
    rel = (contact - around) / expected - 1
    ok = abs(rel) <= TOLERANCES["contrast_fraction"]
    interior = volume.shape[-1] * pixel_mm < 20.0  # the 20 mm cell is wider than the field
    result.passed &= ok and interior
    result.scores["zoom shows the defect"] = (
        f"contact zone - anode = {contact - around:.3f}/mm vs {expected:.3f}/mm "
        f"({100 * rel:+.0f} %, tolerance {100 * TOLERANCES['contrast_fraction']:.0f} %), "
        f"field {volume.shape[-1] * pixel_mm:.1f} mm (interior) {_verdict(ok and interior)}"
    )
    return {
        "image": image,
        "pixel_mm": pixel_mm,
        "center_px": (iy, ix),
        "radius_mm": radius,
        "z_mm": truth["anode_mid_z_mm"],
    }


# ----------------------------------------------------------------------------- histories


def score_histories(catalog, tab_id: str, coin_id: str, sheet_id: str, result) -> list:
    """Both samples' histories from the catalog; the expected plans, in order."""
    tab, coin = catalog.sample_history(tab_id), catalog.sample_history(coin_id)
    raw_tab = [s.plan_name for s in tab if s.derived_from is None]
    raw_coin = [s for s in coin if s.derived_from is None]
    scans = [s.uid for s in raw_coin if s.plan_name == "xrm_tomo_scan"]
    derived = sorted(s.derived_from for s in coin if s.plan_name == "tomo_reconstruction")
    ok_tab = raw_tab == ["cut_tab"] and tab.record is not None and tab.record.parent_id == sheet_id
    expected_coin = ["register_sample", "xrm_tomo_scan", "xrm_tomo_scan"]
    ok_coin = (
        [s.plan_name for s in raw_coin] == expected_coin
        and derived == sorted(scans)
        and all(s.exit_status == "success" for s in coin)
    )
    result.passed &= ok_tab and ok_coin
    result.scores[f"history of {tab_id}"] = (
        f"{' -> '.join(raw_tab)} (cut from {tab.record.parent_id if tab.record else '?'}) "
        f"{_verdict(ok_tab)}"
    )
    result.scores[f"history of {coin_id}"] = (
        f"{' -> '.join(s.plan_name for s in raw_coin)}, {len(derived)} reconstructions "
        f"{_verdict(ok_coin)}"
    )
    return [tab, coin]


# ----------------------------------------------------------------------------- figure


def _sheet(path: str) -> tuple[np.ndarray, float]:
    """The laser IOC's material map (True: material) and its pixel (um)."""
    with np.load(path) as saved:
        shape = tuple(int(n) for n in saved["shape"])
        bits = np.unpackbits(saved["bits"])[: shape[0] * shape[1]]
        return bits.reshape(shape).astype(bool), float(saved["pixel_um"])


def _slice_extent(n: int, pixel_mm: float, x0: float, y0: float) -> tuple:
    """imshow extent (sample mm) of a reconstructed slice about the VOI ``(x0, y0)``."""
    low, high = (-(n // 2) - 0.5) * pixel_mm, (n - n // 2 - 0.5) * pixel_mm
    return (x0 + low, x0 + high, y0 + high, y0 + low)


def prep_figure(path, cut: dict, runs: dict, volumes: dict, scout: dict, zoom: dict) -> None:
    """PNG: the cut on the sheet map; the survey slice with the zoom's field; the zoom slice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(15, 5.2))
    FigureCanvasAgg(fig)
    ax_cut, ax_survey, ax_zoom = fig.subplots(1, 3)
    material, pixel_um = _sheet(cut["map_file"])
    # The tab and the top of its handle: the kerf (20 um) shows at the map's 2 um pixels.
    x_mid, y_top = float(np.median(cut["path_x"])), float(cut["path_y"].max())
    x0, x1 = x_mid - 350.0, x_mid + 350.0
    y0, y1 = y_top - 900.0, y_top + 150.0
    rows = slice(max(int(y0 / pixel_um), 0), int(y1 / pixel_um))
    cols = slice(max(int(x0 / pixel_um), 0), int(x1 / pixel_um))
    extent = tuple(v * pixel_um for v in (cols.start, cols.stop, rows.start, rows.stop))
    ax_cut.imshow(material[rows, cols], cmap="gray", origin="lower", vmin=0, vmax=1,
                  extent=extent)  # fmt: skip
    ax_cut.plot(cut["path_x"], cut["path_y"], color="tab:red", lw=0.6, ls=":",
                label="programmed path (kerf: black)")  # fmt: skip
    ax_cut.set_xlim(extent[0], extent[1])
    ax_cut.set_ylim(extent[2], extent[3])
    ax_cut.axhline(cut["row_y"], color="tab:blue", lw=0.6, ls="--", label="width measured here")
    ax_cut.set_title(
        f"tab cut from the sheet: {cut['width']:.0f} um wide (target {cut['target']:.0f} um)",
        fontsize=9,
    )
    ax_cut.set_xlabel("table x (um)")
    ax_cut.set_ylabel("table y (um)")
    ax_cut.legend(fontsize=7, loc="lower right")

    survey, _ = _volume(volumes["survey"])
    raw = runs["survey"].metadata["start"]
    survey_um = float(raw["tomo"]["pixel_size_um"])
    survey_voi = XrmBlock.from_md(raw["xrm"]).voi_mm
    iz, _, _ = sample_mm_to_voxel(scout["voi_mm"], survey.shape, survey_um, survey_voi)
    p_mm = survey_um * 1e-3
    ax_survey.imshow(
        survey[int(round(iz))] / p_mm,
        cmap="gray",
        extent=_slice_extent(survey.shape[-1], p_mm, *survey_voi[:2]),
    )
    zoom_start = runs["zoom"].metadata["start"]
    field = zoom["image"].shape[-1] * zoom["pixel_mm"]
    vx, vy = scout["voi_mm"][:2]
    ax_survey.add_patch(
        Rectangle(
            (vx - field / 2, vy - field / 2),
            field,
            field,
            fill=False,
            color="tab:orange",
            lw=1.2,
            label="zoom field (VOI)",
        )
    )
    ax_survey.plot(*scout["truth_mm"][:2], "+", color="tab:red", ms=10, label="true defect")
    ax_survey.set_title(
        f"survey ({survey_um:.0f} um voxels), z = {scout['voi_mm'][2]:.2f} mm: "
        f"VOI {scout['error_mm']:.2f} mm from the defect",
        fontsize=9,
    )
    ax_survey.legend(fontsize=7, loc="lower right")
    ax_survey.set_xlabel("sample x (mm)")
    ax_survey.set_ylabel("sample y (mm)")

    zvoi = zoom_start["xrm"]["voi_mm"]
    image = zoom["image"]
    lo, hi = np.percentile(image, [1, 99.5])
    ax_zoom.imshow(
        image,
        cmap="gray",
        vmin=lo,
        vmax=hi,
        extent=_slice_extent(image.shape[-1], zoom["pixel_mm"], *zvoi[:2]),
    )
    ax_zoom.add_patch(
        Circle(
            tuple(scout["truth_mm"][:2]),
            zoom["radius_mm"],
            fill=False,
            color="tab:red",
            lw=0.8,
            ls="--",
            label="true contact zone",
        )
    )
    ax_zoom.set_title(
        f"zoom ({zoom['pixel_mm'] * 1e3:.1f} um voxels, interior), anode at "
        f"z = {zoom['z_mm']:.2f} mm",
        fontsize=9,
    )
    ax_zoom.legend(fontsize=7, loc="lower right")
    ax_zoom.set_xlabel("sample x (mm)")
    fig.suptitle(
        f"sample preparation: {cut['sample_id']} cut by the laser mill; "
        f"{raw['sample_id']} surveyed and zoomed by the XRM",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
