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
``/exchange/theta_white``, ``/exchange/theta_dark``
    The rotation's angle at each flat and dark frame (deg), when the run recorded
    it (the flat and dark streams read the rotation; older runs: no dataset).
``/measurement/instrument/...``, ``/measurement/sample/name``
    Source, monochromator energy (keV), detector pixel size (um) and exposure (s).
``/process/acquisition/...``
    How the run was taken: plan, angle source, scan mode, the run's uid, the start
    document (JSON).

A tomography run (``tomo_scan``, ``fly_tomo_scan``, ``xrm_tomo_scan``; each tile
of a vertical mosaic is such a run) gives one file; an ``xanes_3d`` run one file
per energy; a ``mosaic_stitch`` derived run one file per tile (its raw runs, found
in the catalog).

Frames are never held whole: they are read from the catalog and written to the
file a chunk at a time (``CHUNK_BYTES``, ``multiscope.export._runs.Frames``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from multiscope.callbacks.tomo import TOMO_PLANS
from multiscope.contracts import MosaicBlock, TomoBlock, XanesBlock

from ._runs import (
    Frames,
    pixel_size_um,
    read_scalars,
    short_uid,
    start_of,
    stream_shapes,
)

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
    data : Frames or ndarray
        Projections ``(angles, rows, cols)``, the camera's dtype; read in chunks
        when written (:class:`~multiscope.export._runs.Frames`).
    white, dark : Frames or ndarray or None
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
    theta_white_deg, theta_dark_deg : ndarray or None
        The rotation's angle at each flat and dark frame (deg), where the run
        recorded it (the flat and dark streams read the rotation).
    """

    name: str
    data: Frames | np.ndarray
    white: Frames | np.ndarray | None
    dark: Frames | np.ndarray | None
    theta_deg: np.ndarray
    angle_source: str
    energy_keV: float | None = None  # noqa: N815
    process: dict = field(default_factory=dict)
    theta_white_deg: np.ndarray | None = None
    theta_dark_deg: np.ndarray | None = None


def _image_key(shapes: dict, stream: str, uid: str) -> str:
    keys = [key for key, shape in shapes.items() if len(shape) >= 3]
    if "camera_image" in keys:
        return "camera_image"
    if len(keys) != 1:
        raise ValueError(f"run {uid}: stream {stream!r} has no single image key ({keys})")
    return keys[0]


@dataclass
class _Stream:
    """A stream's images (unread) and scalars (read), as an export uses them."""

    frames: Frames
    scalars: object  # xarray Dataset of the one-number-per-event keys
    image_key: str


def _stream(run, stream: str, uid: str) -> _Stream:
    shapes = stream_shapes(run, stream)
    key = _image_key(shapes, stream, uid)
    return _Stream(Frames(run[stream][key]), read_scalars(run, stream, shapes), key)


def _optional_stream(run, stream: str, streams: list[str], uid: str) -> _Stream | None:
    return _stream(run, stream, uid) if stream in streams else None


def _angles(dataset, image_key: str, tomo: TomoBlock, uid: str) -> tuple[np.ndarray, str]:
    """Projection angles (deg) and their data key: the frames' own, else the rotation's."""
    recorded = f"{image_key.removesuffix('_image')}_theta"
    for key in (recorded, tomo.rotation):
        if key in dataset.data_vars:
            return np.asarray(dataset[key], np.float64).reshape(-1), key
    raise ValueError(f"run {uid}: no projection angles ({recorded!r} or {tomo.rotation!r})")


def _frame_angles(part: _Stream | None, tomo: TomoBlock, which=None) -> np.ndarray | None:
    """Angle (deg) of each flat or dark frame, if their stream recorded one per frame."""
    if part is None:
        return None
    try:
        theta, _ = _angles(part.scalars, part.image_key, tomo, "")
    except ValueError:  # runs taken before the flat and dark streams read the rotation
        return None
    if len(theta) != part.frames.source.shape[0]:  # one angle per event, or none usable
        return None
    theta = np.repeat(theta, part.frames.per_event)  # an event's frames share its angle
    return theta if which is None else theta[which]


def _tomogram_of_run(run, streams: list[str]) -> Tomogram:
    start = start_of(run)
    uid = short_uid(run)
    tomo = TomoBlock.from_md(start.get("tomo"))
    primary = _stream(run, "primary", uid)
    data = primary.frames
    theta, source = _angles(primary.scalars, primary.image_key, tomo, uid)
    if len(theta) != len(data):
        raise ValueError(f"run {uid}: {len(data)} projections but {len(theta)} angles")
    flat = _optional_stream(run, "flat", streams, uid)
    dark = _optional_stream(run, "dark", streams, uid)
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
    return Tomogram(
        name,
        data,
        flat.frames if flat else None,
        dark.frames if dark else None,
        theta,
        source,
        tomo.energy_keV,
        process,
        theta_white_deg=_frame_angles(flat, tomo),
        theta_dark_deg=_frame_angles(dark, tomo),
    )


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
    primary = _stream(run, "primary", uid)
    data, scalars = primary.frames, primary.scalars
    theta, source = _angles(scalars, primary.image_key, tomo, uid)
    index_key, energy_key = xanes.energy_index_field, xanes.energy_field
    if index_key in scalars.data_vars:  # step: every projection is an event
        index = np.asarray(scalars[index_key], int)
        readback = np.asarray(scalars[energy_key], float) if energy_key in scalars else None
    else:  # fly: num_projections frames per energy, in energy order; no events
        n = int(tomo.num_projections or 0)
        if n <= 0 or len(data) % n:
            raise ValueError(f"run {uid}: {len(data)} frames are no whole tomograms of {n}")
        index = np.arange(len(data)) // n
        readback = None
        if "xanes_energy" in streams:
            marks = read_scalars(run, "xanes_energy")
            by_index = dict(
                zip(
                    np.asarray(marks[index_key], int).tolist(),
                    np.asarray(marks[energy_key], float).tolist(),
                    strict=True,
                )
            )
            readback = np.array([by_index.get(int(i), np.nan) for i in index])
    flat = _optional_stream(run, "flat", streams, uid)
    flat_index = (
        np.repeat(np.asarray(flat.scalars[index_key], int), flat.frames.per_event)
        if flat is not None and index_key in flat.scalars
        else np.zeros(0 if flat is None else len(flat.frames), int)
    )
    dark = _optional_stream(run, "dark", streams, uid)
    out = []
    for i in np.unique(index):
        rows = index == i
        nominal = xanes.energies_keV[i] if i < len(xanes.energies_keV) else None
        measured = float(np.nanmean(readback[rows])) if readback is not None else None
        energy = measured if measured is not None and np.isfinite(measured) else nominal
        flats_from = _flat_sets_for(int(i), sorted(set(flat_index.tolist())), xanes)
        chosen = np.isin(flat_index, flats_from) if flats_from else None
        out.append(
            Tomogram(
                name=f"xanes_3d_{uid}_e{int(i):03d}",
                data=data.select(rows),
                white=flat.frames.select(chosen) if chosen is not None else None,
                dark=dark.frames if dark else None,
                theta_deg=theta[rows],
                angle_source=source,
                energy_keV=energy,
                process={
                    "energy_index": int(i),
                    "energy_nominal_keV": nominal,
                    "flats_from_energy_index": flats_from or None,
                    "edge": xanes.edge,
                },
                theta_white_deg=_frame_angles(flat, tomo, chosen) if chosen is not None else None,
                theta_dark_deg=_frame_angles(dark, tomo),
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


def _dataset(group, name: str, frames, max_bytes: int | None = None, **attrs):
    """Write ``frames`` (Frames or ndarray) to ``group[name]`` a chunk at a time."""
    frames = frames if isinstance(frames, Frames) else Frames(np.asarray(frames))
    n = len(frames)
    rows, cols = frames.image_shape
    ds = group.create_dataset(
        name,
        shape=(n, rows, cols),
        dtype=frames.dtype,
        chunks=(1, rows, cols) if n else None,  # one projection per chunk
        compression="gzip" if n else None,
        compression_opts=1 if n else None,
        shuffle=bool(n),
    )
    for position, block in frames.chunks(max_bytes):
        ds[position : position + len(block)] = block
    for key, value in attrs.items():
        ds.attrs[key] = value
    return ds


def _scalar(group, name: str, value, units: str | None = None) -> None:
    if value is None:
        return
    ds = group.create_dataset(name, data=value)
    if units:
        ds.attrs["units"] = units


def write_dxchange(path, tomogram: Tomogram, start: dict, max_bytes: int | None = None) -> Path:
    """Write one tomogram to a DXchange file at ``path`` (layout: module docstring).

    Written under a temporary name and renamed, so a reader never sees a partial file.
    Frames are read and written a chunk at a time, at most ``max_bytes`` (default
    :data:`~multiscope.export._runs.CHUNK_BYTES`) held at once.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tomo = TomoBlock.from_md(start.get("tomo"))
    pixel = pixel_size_um(start)
    rows, cols = tomogram.data.shape[-2:]
    chunk = {"max_bytes": max_bytes}
    with h5py.File(tmp, "w") as f:
        f.create_dataset("implements", data="exchange:measurement:process")
        ex = f.create_group("exchange")
        ex.create_dataset("title", data=f"{start.get('plan_name')} {start.get('uid', '')}")
        _dataset(ex, "data", tomogram.data, **chunk, axes="theta:y:x", units="counts")
        if tomogram.white is not None:
            _dataset(ex, "data_white", tomogram.white, **chunk, axes="theta_white:y:x",
                     units="counts")  # fmt: skip
        if tomogram.dark is not None:
            _dataset(ex, "data_dark", tomogram.dark, **chunk, axes="theta_dark:y:x",
                     units="counts")  # fmt: skip
        theta = ex.create_dataset("theta", data=np.asarray(tomogram.theta_deg, np.float64))
        theta.attrs["units"] = "deg"
        theta.attrs["source"] = tomogram.angle_source
        for key, angles in (("theta_white", tomogram.theta_white_deg),
                            ("theta_dark", tomogram.theta_dark_deg)):  # fmt: skip
            if angles is not None:
                ds = ex.create_dataset(key, data=np.asarray(angles, np.float64))
                ds.attrs["units"] = "deg"

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


def export_dxchange(run, out: Path, catalog=None, max_bytes: int | None = None) -> list[Path]:
    """Write a DXchange file per tomogram of ``run`` into ``out``.

    Parameters
    ----------
    run : BlueskyRun
        A tomography, ``xanes_3d`` or ``mosaic_stitch`` run.
    out : Path
        Output directory (exists).
    catalog : Catalog, optional
        Where a ``mosaic_stitch`` run's tiles are found (``catalog.run(uid)``).
    max_bytes : int, optional
        Most bytes of frames held at once (default
        :data:`~multiscope.export._runs.CHUNK_BYTES`).

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
            written += export_dxchange(catalog.run(uid), out, max_bytes=max_bytes)
        return written
    return [write_dxchange(Path(out) / f"{t.name}.h5", t, start, max_bytes) for t in tomograms(run)]
