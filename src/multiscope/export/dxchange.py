"""DXchange (Data Exchange HDF5) files of tomography runs, for tomopy, TomocuPy, Tomviz.

One file per tomogram (layout and units in ``docs/export.md``):

``/implements``
    ``"exchange:measurement:process"``.
``/exchange/data``
    Projections ``(angles, rows, cols)``, the camera's dtype (uint16), one chunk
    per projection.
``/exchange/data_white``, ``/exchange/data_dark``
    Flat and dark frames ``(n, rows, cols)``, in acquisition order (a run without
    darks or flats has no such dataset).
``/exchange/theta``
    Angle of each projection, float64, **degrees** (attribute ``units="deg"``), as
    DXchange specifies; tomopy's reader ``dxchange.read_aps_32id`` multiplies it by
    pi/180 for tomopy's radians.
``/measurement/instrument/...``, ``/measurement/sample/name``
    Source, monochromator energy (keV), detector pixel size (um) and exposure (s).
``/process/acquisition/...``
    How the run was taken: plan, angle source, scan mode, the run's uid, the start
    document (JSON).

A tomography run (``tomo_scan``, ``fly_tomo_scan``, ``xrm_tomo_scan``; each tile
of a vertical mosaic is such a run) gives one file; an ``xanes_3d`` run one file
per energy; a ``mosaic_stitch`` derived run one file per tile (its raw runs, found
in the catalog).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from multiscope.callbacks.tomo import TOMO_PLANS
from multiscope.contracts import MosaicBlock, TomoBlock, XanesBlock

from ._runs import frame_keys, frames, pixel_size_um, read_stream, short_uid, start_of

__all__ = ["DXCHANGE_PLANS", "Tomogram", "export_dxchange", "tomograms", "write_dxchange"]

#: Unit attribute of a ``/process/acquisition`` value, by its key's suffix.
_UNITS = {"keV": "keV", "um": "um", "px": "px"}

#: Plans whose runs hold tomograms (plus ``mosaic_stitch``, through its tiles).
DXCHANGE_PLANS = (*TOMO_PLANS, "xanes_3d")


@dataclass
class Tomogram:
    """One tomogram of a run, as a DXchange file holds it.

    Attributes
    ----------
    name : str
        File stem.
    data : ndarray
        Projections ``(angles, rows, cols)``, the camera's dtype.
    white, dark : ndarray or None
        Flat and dark frames ``(n, rows, cols)``.
    theta_deg : ndarray
        Angle of each projection (deg).
    angle_source : str
        The data key the angles come from (``camera_theta``: the frame's
        mid-exposure angle the IOC recorded, fly scans; ``sample_theta``: the
        rotation's readback at each step).
    energy_keV : float or None
    process : dict
        Scalars for ``/process/acquisition`` (energy index, tile index...).
    """

    name: str
    data: np.ndarray
    white: np.ndarray | None
    dark: np.ndarray | None
    theta_deg: np.ndarray
    angle_source: str
    energy_keV: float | None = None  # noqa: N815
    process: dict = field(default_factory=dict)


def _image_key(dataset, stream: str, uid: str) -> str:
    keys = frame_keys(dataset)
    if "camera_image" in keys:
        return "camera_image"
    if len(keys) != 1:
        raise ValueError(f"run {uid}: stream {stream!r} has no single image key ({keys})")
    return keys[0]


def _stream_frames(run, stream: str, streams: list[str]):
    """``(frames, dataset)`` of ``stream``; ``(None, None)`` if the run has none."""
    if stream not in streams:
        return None, None
    dataset = read_stream(run, stream)
    key = _image_key(dataset, stream, short_uid(run))
    return frames(dataset, key), dataset


def _angles(dataset, image_key: str, tomo: TomoBlock, uid: str) -> tuple[np.ndarray, str]:
    """Projection angles (deg) and their data key: the frames' own, else the rotation's."""
    recorded = f"{image_key.removesuffix('_image')}_theta"
    for key in (recorded, tomo.rotation):
        if key in dataset.data_vars:
            return np.asarray(dataset[key], np.float64).reshape(-1), key
    raise ValueError(f"run {uid}: no projection angles ({recorded!r} or {tomo.rotation!r})")


def _tomogram_of_run(run, streams: list[str]) -> Tomogram:
    start = start_of(run)
    uid = short_uid(run)
    tomo = TomoBlock.from_md(start.get("tomo"))
    primary = read_stream(run, "primary")
    key = _image_key(primary, "primary", uid)
    data = frames(primary, key)
    theta, source = _angles(primary, key, tomo, uid)
    if len(theta) != len(data):
        raise ValueError(f"run {uid}: {len(data)} projections but {len(theta)} angles")
    white, _ = _stream_frames(run, "flat", streams)
    dark, _ = _stream_frames(run, "dark", streams)
    name = f"{start.get('plan_name')}_{uid}"
    process = {}
    if start.get("mosaic"):
        mosaic = MosaicBlock.from_md(start["mosaic"])
        name += f"_tile{int(mosaic.tile_index or 0):02d}"
        process = {
            "mosaic_id": mosaic.mosaic_id,
            "tile_index": mosaic.tile_index,
            "num_tiles": mosaic.num_tiles,
            "tile_z_um": mosaic.z_um,
        }
    return Tomogram(name, data, white, dark, theta, source, tomo.energy_keV, process)


def _flat_sets_for(index: int, have: list[int], xanes: XanesBlock) -> list[int]:
    """Energy indices whose flats go with energy ``index``, as the live XANES map picks them.

    Its own if it has flats; ``interpolate``: the sets before and after (a DXchange
    reader averages them: no interpolation in energy); else the nearest set in
    energy (a tie: the lower index).
    """
    if not have or index in have:
        return [index] if index in have else []
    if xanes.flat_policy == "interpolate":
        before = [i for i in have if i < index][-1:]
        after = [i for i in have if i > index][:1]
        return before + after
    e = xanes.energies_keV
    if all(i < len(e) for i in [*have, index]):
        return [min(have, key=lambda i: (abs(e[i] - e[index]), i))]
    return [min(have, key=lambda i: (abs(i - index), i))]


def _xanes_tomograms(run, streams: list[str]) -> list[Tomogram]:
    """One tomogram per energy of an ``xanes_3d`` run (docs/xanes.md: its streams)."""
    start = start_of(run)
    uid = short_uid(run)
    tomo = TomoBlock.from_md(start.get("tomo"))
    xanes = XanesBlock.from_md(start.get("xanes"))
    primary = read_stream(run, "primary")
    key = _image_key(primary, "primary", uid)
    data = frames(primary, key)
    theta, source = _angles(primary, key, tomo, uid)
    index_key, energy_key = xanes.energy_index_field, xanes.energy_field
    if index_key in primary.data_vars:  # step: every projection is an event
        index = np.asarray(primary[index_key], int)
        readback = np.asarray(primary[energy_key], float) if energy_key in primary else None
    else:  # fly: num_projections frames per energy, in energy order; no events
        n = int(tomo.num_projections or 0)
        if n <= 0 or len(data) % n:
            raise ValueError(f"run {uid}: {len(data)} frames are no whole tomograms of {n}")
        index = np.arange(len(data)) // n
        readback = None
        if "xanes_energy" in streams:
            marks = read_stream(run, "xanes_energy")
            by_index = dict(
                zip(
                    np.asarray(marks[index_key], int).tolist(),
                    np.asarray(marks[energy_key], float).tolist(),
                    strict=True,
                )
            )
            readback = np.array([by_index.get(int(i), np.nan) for i in index])
    white, flat_ds = _stream_frames(run, "flat", streams)
    flat_index = (
        np.asarray(flat_ds[index_key], int)
        if flat_ds is not None and index_key in flat_ds
        else np.zeros(0 if white is None else len(white), int)
    )
    dark, _ = _stream_frames(run, "dark", streams)
    out = []
    for i in np.unique(index):
        rows = index == i
        nominal = xanes.energies_keV[i] if i < len(xanes.energies_keV) else None
        measured = float(np.nanmean(readback[rows])) if readback is not None else None
        energy = measured if measured is not None and np.isfinite(measured) else nominal
        flats_from = _flat_sets_for(int(i), sorted(set(flat_index.tolist())), xanes)
        white_i = white[np.isin(flat_index, flats_from)] if flats_from else None
        out.append(
            Tomogram(
                name=f"xanes_3d_{uid}_e{int(i):03d}",
                data=data[rows],
                white=white_i,
                dark=dark,
                theta_deg=theta[rows],
                angle_source=source,
                energy_keV=energy,
                process={
                    "energy_index": int(i),
                    "energy_nominal_keV": nominal,
                    "flats_from_energy_index": flats_from or None,
                    "edge": xanes.edge,
                },
            )
        )
    return out


def tomograms(run) -> list[Tomogram]:
    """The tomograms of a tomography or ``xanes_3d`` run.

    Raises
    ------
    ValueError
        The run holds no tomogram (another plan, or no projections).
    """
    start = start_of(run)
    plan = start.get("plan_name")
    streams = list(run)
    if plan not in DXCHANGE_PLANS:
        raise ValueError(
            f"run {short_uid(run)} ({plan}) is not a tomography run: DXchange files are "
            f"written for {', '.join(DXCHANGE_PLANS)} and mosaic_stitch runs "
            "(try --format tiff or csv)"
        )
    if "primary" not in streams:
        raise ValueError(f"run {short_uid(run)} ({plan}) has no projections (no primary stream)")
    if plan == "xanes_3d":
        return _xanes_tomograms(run, streams)
    return [_tomogram_of_run(run, streams)]


def _dataset(group, name: str, array: np.ndarray, **attrs):
    array = np.ascontiguousarray(array)
    rows, cols = array.shape[-2:]
    ds = group.create_dataset(
        name,
        data=array,
        chunks=(1, rows, cols) if len(array) else None,  # one projection per chunk
        compression="gzip" if len(array) else None,
        compression_opts=1 if len(array) else None,
        shuffle=bool(len(array)),
    )
    for key, value in attrs.items():
        ds.attrs[key] = value
    return ds


def _scalar(group, name: str, value, units: str | None = None) -> None:
    if value is None:
        return
    ds = group.create_dataset(name, data=value)
    if units:
        ds.attrs["units"] = units


def write_dxchange(path, tomogram: Tomogram, start: dict) -> Path:
    """Write one tomogram to a DXchange file at ``path`` (layout: module docstring).

    Written under a temporary name and renamed, so a reader never sees a partial file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tomo = TomoBlock.from_md(start.get("tomo"))
    pixel = pixel_size_um(start)
    rows, cols = tomogram.data.shape[-2:]
    with h5py.File(tmp, "w") as f:
        f.create_dataset("implements", data="exchange:measurement:process")
        ex = f.create_group("exchange")
        ex.create_dataset("title", data=f"{start.get('plan_name')} {start.get('uid', '')}")
        _dataset(ex, "data", tomogram.data, axes="theta:y:x", units="counts")
        if tomogram.white is not None:
            _dataset(ex, "data_white", tomogram.white, axes="theta_white:y:x", units="counts")
        if tomogram.dark is not None:
            _dataset(ex, "data_dark", tomogram.dark, axes="theta_dark:y:x", units="counts")
        theta = ex.create_dataset("theta", data=np.asarray(tomogram.theta_deg, np.float64))
        theta.attrs["units"] = "deg"
        theta.attrs["source"] = tomogram.angle_source

        inst = f.create_group("measurement/instrument")
        inst.create_dataset("name", data=str(start.get("instrument") or "multiscope TXM"))
        inst.create_dataset("source/name", data=str(start.get("source") or "simulated"))
        _scalar(inst, "monochromator/energy", tomogram.energy_keV, "keV")
        det = inst.create_group("detector")
        det.create_dataset("name", data=str((start.get("detectors") or ["camera"])[0]))
        _scalar(det, "pixel_size_x", pixel, "um")
        _scalar(det, "pixel_size_y", pixel, "um")
        _scalar(det, "dimension_x", int(cols))
        _scalar(det, "dimension_y", int(rows))
        _scalar(det, "exposure_time", tomo.exposure_s, "s")
        f.create_group("measurement/sample").create_dataset(
            "name", data=str(start.get("sample_id") or tomo.sample_id or "")
        )

        acq = f.create_group("process/acquisition")
        acq.create_dataset("plan_name", data=str(start.get("plan_name")))
        acq.create_dataset("run_uid", data=str(start.get("uid", "")))
        acq.create_dataset("angle_source", data=tomogram.angle_source)
        acq.create_dataset("scan_mode", data=str(tomo.scan_mode or _scan_mode(start)))
        _scalar(acq, "center_guess_px", tomo.center_guess_px, "px")
        _scalar(acq, "rotation_speed", tomo.theta_velocity_deg_s, "deg/s")
        for key, value in tomogram.process.items():
            if value is not None:
                _scalar(acq, key, value, _UNITS.get(key.rsplit("_", 1)[-1]))
        acq.create_dataset("start_document", data=json.dumps(start, default=str))
    tmp.replace(path)
    return path


def _scan_mode(start: dict) -> str:
    return "fly" if start.get("plan_name") == "fly_tomo_scan" else "step"


def export_dxchange(run, out: Path, catalog=None) -> list[Path]:
    """Write a DXchange file per tomogram of ``run`` into ``out``.

    Parameters
    ----------
    run : BlueskyRun
        A tomography, ``xanes_3d`` or ``mosaic_stitch`` run.
    out : Path
        Output directory (exists).
    catalog : Catalog, optional
        Where a ``mosaic_stitch`` run's tiles are found (``catalog.run(uid)``).

    Returns
    -------
    list of Path
    """
    start = start_of(run)
    if start.get("plan_name") == "mosaic_stitch":
        if catalog is None:
            raise ValueError(
                f"run {short_uid(run)} is a stitched mosaic: its tiles' DXchange files "
                "need the catalog (export_run(..., catalog=...)), or export each tile's run"
            )
        written = []
        for uid in start.get("derived_from") or []:
            written += export_dxchange(catalog.run(uid), out)
        return written
    return [write_dxchange(Path(out) / f"{t.name}.h5", t, start) for t in tomograms(run)]
