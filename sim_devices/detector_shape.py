"""Changing a simulated camera's frame shape (binning) while it serves.

Shared by the IOCs whose cameras bin (the TXM, the XRM): the driver's and the
plugins' size PVs follow the new shape, and a shape change is refused while the camera
acquires or captures (a file holds frames of one shape).
"""

from __future__ import annotations

from sim_devices.areadetector import SimAreaDetector

__all__ = ["camera_busy", "resize_camera"]


def camera_busy(camera: SimAreaDetector) -> bool:
    """True while ``camera`` acquires or captures."""
    return camera.cam.acquiring or camera.hdf.capturing


async def resize_camera(camera: SimAreaDetector, shape: tuple[int, int]) -> None:
    """Give ``camera`` frames of ``shape`` (ny, nx) and publish it in its size PVs."""
    ny, nx = (int(shape[0]), int(shape[1]))
    camera.shape = (ny, nx)
    cam = camera.cam
    for prop, value in (
        (cam.array_size_x, nx),
        (cam.array_size_y, ny),
        (cam.array_size0, nx),
        (cam.array_size1, ny),
        (cam.array_size_bytes, 2 * nx * ny),
        (cam.size_x.setpoint, nx),
        (cam.size_x.readback, nx),
        (cam.size_y.setpoint, ny),
        (cam.size_y.readback, ny),
    ):
        await prop.write(value, verify_value=False)
    for plugin in camera.plugins:  # primed with the new shape (a frame would re-publish it)
        await plugin.publish_shape((ny, nx))
