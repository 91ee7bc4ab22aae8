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

from ._runs import Frames, pixel_size_um, short_uid, start_of, stream_shapes

__all__ = ["IMAGEJ_DTYPES", "export_tiff", "write_frames", "write_stack"]

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
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tifffile.imwrite(tmp, array, imagej=True, **_imagej_options(array.ndim, pixel_um))
    tmp.replace(path)
    return path


def _imagej_options(ndim: int, pixel_um: float | None) -> dict:
    metadata = {"axes": "ZYX" if ndim == 3 else "YX"}
    kwargs = {"metadata": metadata}
    if pixel_um:
        kwargs["resolution"] = (1.0 / pixel_um, 1.0 / pixel_um)
        metadata["unit"] = "um"
        if ndim == 3:
            metadata["spacing"] = float(pixel_um)
    return kwargs


def write_frames(path, frames: Frames, pixel_um: float | None = None, max_bytes=None) -> Path:
    """Write ``frames`` as a ``(z, y, x)`` ImageJ stack, a chunk at a time.

    As :func:`write_stack` (same tags), but the frames are read from their source
    and handed to tifffile page by page: at most ``max_bytes`` of them held at once.
    """
    import tifffile

    dtype = frames.dtype if frames.dtype.type in IMAGEJ_DTYPES else np.dtype(np.float32)

    def pages():
        for _, block in frames.chunks(max_bytes):
            yield from block.astype(dtype, copy=False)

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tifffile.imwrite(tmp, pages(), shape=frames.shape, dtype=dtype, imagej=True,
                     **_imagej_options(3, pixel_um))  # fmt: skip
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


def export_tiff(run, out: Path, max_bytes: int | None = None) -> list[Path]:
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
        for key, shape in stream_shapes(run, stream).items():
            if len(shape) < 3:
                continue
            frames = Frames(run[stream][key])  # a volume's z slices, or a camera's frames
            name = (
                "volume.tif" if plan in _VOLUME_RUNS and key == "volume" else f"{stream}_{key}.tif"
            )
            written.append(write_frames(out / name, frames, pixel, max_bytes))
    if not written:
        raise ValueError(f"run {short_uid(run)} ({plan}) has no images to write as TIFF")
    return written
