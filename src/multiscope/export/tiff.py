"""TIFF stacks (ImageJ layout) for Fiji, Avizo, Dragonfly: volumes, maps and frames.

Every file is written by tifffile with ``imagej=True``: axes ``ZYX`` (a stack) or
``YX`` (one image), no singleton axis; with the pixel size known, ``XResolution``
and ``YResolution`` hold pixels per um, the ImageJ description ``unit=um`` and,
for stacks, ``spacing`` the z step in um, so Fiji's *Image > Properties* shows the
voxel size. ImageJ takes uint8, uint16 and float32 only: other dtypes are written
as float32.

What a run gives (``docs/export.md``):

==========================  ========================================================
run                         files
==========================  ========================================================
``tomo_reconstruction``     ``volume.tif``: the reconstructed volume ``(z, y, x)``
``mosaic_stitch``           ``volume.tif``: the stitched volume
``xanes_map``               ``<map>.tif`` per map of ``maps.h5`` (its datasets of the
                            whiteline map's image shape: ``whiteline_eV``, ``edge_eV``,
                            ``mask``...; 2D or, for 3D, ``(z, y, x)``)
any run with frames         ``<stream>_<key>.tif``: the frames ``(n, rows, cols)``
==========================  ========================================================
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ._runs import frame_keys, frames, pixel_size_um, read_stream, short_uid, start_of

__all__ = ["IMAGEJ_DTYPES", "export_tiff", "write_stack"]

IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)

_VOLUME_RUNS = ("tomo_reconstruction", "mosaic_stitch")


def write_stack(path, array, pixel_um: float | None = None) -> Path:
    """Write a 2D image or a ``(z, y, x)`` stack as an ImageJ TIFF with its pixel size.

    Parameters
    ----------
    path : path-like
    array : array_like
        2D, or 3D and more with every leading axis of size 1 but the stack's (a
        ``(1, z, y, x)`` volume is written ``(z, y, x)``).
    pixel_um : float, optional
        Pixel (and z step) size in um.

    Returns
    -------
    Path
    """
    import tifffile

    array = np.asarray(array)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim > 3 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"a TIFF stack is 2D or (z, y, x); got shape {array.shape}")
    if array.dtype.type not in IMAGEJ_DTYPES:
        array = array.astype(np.float32)
    metadata = {"axes": "ZYX" if array.ndim == 3 else "YX"}
    kwargs = {}
    if pixel_um:
        kwargs["resolution"] = (1.0 / pixel_um, 1.0 / pixel_um)
        metadata["unit"] = "um"
        if array.ndim == 3:
            metadata["spacing"] = float(pixel_um)
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tifffile.imwrite(tmp, array, imagej=True, metadata=metadata, **kwargs)
    tmp.replace(path)
    return path


def _map_files(start: dict, out: Path, pixel: float | None) -> list[Path]:
    results = start.get("results") or {}
    maps = results.get("maps")
    if not maps or not Path(maps).exists():
        raise ValueError(
            f"xanes_map run {str(start.get('uid'))[:8]}: its maps file {maps!r} is not there"
        )
    written = []
    with h5py.File(maps, "r") as f:
        image = f["whiteline_eV"].shape[-2:] if "whiteline_eV" in f else None
        for name, ds in f.items():
            # The maps: the whiteline map's image shape; tables (shifts_px...) stay in maps.h5.
            if isinstance(ds, h5py.Dataset) and ds.ndim >= 2 and ds.shape[-2:] == image:
                data = ds[()]
                if data.dtype == bool:
                    data = data.astype(np.uint8)
                written.append(write_stack(out / f"{name}.tif", data, pixel))
    return written


def export_tiff(run, out: Path) -> list[Path]:
    """Write the TIFF stacks of ``run`` into ``out`` (what each run gives: module docstring).

    Raises
    ------
    ValueError
        The run holds no image.
    """
    out = Path(out)
    start = start_of(run)
    plan = start.get("plan_name")
    pixel = pixel_size_um(start)
    if plan == "xanes_map":
        return _map_files(start, out, pixel)
    written = []
    for stream in list(run):
        dataset = read_stream(run, stream)
        for key in frame_keys(dataset):
            if plan in _VOLUME_RUNS and key == "volume":
                written.append(write_stack(out / "volume.tif", np.asarray(dataset[key]), pixel))
            else:
                stack = frames(dataset, key)
                written.append(write_stack(out / f"{stream}_{key}.tif", stack, pixel))
    if not written:
        raise ValueError(f"run {short_uid(run)} ({plan}) has no images to write as TIFF")
    return written
