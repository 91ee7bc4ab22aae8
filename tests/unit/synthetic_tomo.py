"""Synthetic tomography runs for callback tests: sphere phantoms, HDF5 frames, documents.

Frames are written with the simulated IOC's own writer
(:class:`sim_devices.areadetector.HDF5FrameWriter`: ``/entry/data/data`` uint16, one
frame per chunk, SWMR, per-frame attributes under ``/entry/instrument/NDAttributes``)
and referenced by ``stream_resource``/``stream_datum`` documents as the ophyd device
and the RunEngine emit them: descriptor, stream_resource (once), then per event its
stream_datum followed by the event (step scans) or one stream_datum per block of
frames and no events (fly scans, angles in the ``theta`` attribute).

Geometry (that of :func:`multiscope.analysis.tomo.reconstruct`): a sphere at
column offset ``x`` and row offset ``y`` from the rotation axis in the slice,
at detector row ``z``, projects at angle ``theta`` onto column
``x cos(theta) - y sin(theta) + center``. All lengths in pixels, ``mu`` per pixel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from event_model import compose_run

from sim_devices.areadetector import HDF5FrameWriter

CAMERA_KEY = "camera_image"
DARK_LEVEL = 100.0


@dataclass(frozen=True)
class Sphere:
    x: float
    y: float
    z: float
    r: float
    mu: float


def random_spheres(rng, n, *, z_range, radius=(3.0, 5.0), lateral=30.0, mu=0.02, gap=2.0):
    """Non-overlapping spheres in a cylinder of radius ``lateral`` between ``z_range``."""
    spheres: list[Sphere] = []
    tries = 0
    while len(spheres) < n:
        tries += 1
        if tries > 100_000:
            raise RuntimeError("could not place the spheres")
        r = rng.uniform(*radius)
        rho = rng.uniform(0, lateral - r)
        phi = rng.uniform(0, 2 * np.pi)
        x, y = rho * np.cos(phi), rho * np.sin(phi)
        z = rng.uniform(z_range[0] + r, z_range[1] - r)
        if all(
            (s.x - x) ** 2 + (s.y - y) ** 2 + (s.z - z) ** 2 > (s.r + r + gap) ** 2 for s in spheres
        ):
            spheres.append(Sphere(x, y, z, r, mu * rng.uniform(0.8, 1.2)))
    return spheres


def project(spheres, theta, ny, nx, center, *, z_shift=0.0, ss=2):
    """Line integrals (ny, nx) at angle ``theta`` (rad), ``ss`` x ``ss`` samples per pixel.

    ``z_shift``: the sample stage moved up by this many pixels, so features appear
    ``z_shift`` rows higher (smaller row index).
    """
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    u = (np.arange(nx)[:, None] + sub[None, :]).ravel()
    v = (np.arange(ny)[:, None] + sub[None, :]).ravel()
    out = np.zeros((v.size, u.size))
    c, s = np.cos(theta), np.sin(theta)
    for sp in spheres:
        s0 = sp.x * c - sp.y * s + center
        z0 = sp.z - z_shift
        du = (u - s0) ** 2
        dv = (v - z0) ** 2
        if dv.min() > sp.r**2:
            continue
        r2 = sp.r**2 - dv[:, None] - du[None, :]
        out += 2 * sp.mu * np.sqrt(np.maximum(r2, 0.0))
    return out.reshape(ny, ss, nx, ss).mean(axis=(1, 3))


def truth_slice(spheres, row, n, *, z_shift=0.0, ss=4):
    """Attenuation (per pixel) of the slice at detector ``row``, pixels centred on the axis."""
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    half = n // 2
    q = (np.arange(n)[:, None] + sub[None, :]).ravel() - half
    out = np.zeros((q.size, q.size))
    for sp in spheres:
        dz2 = (row - (sp.z - z_shift)) ** 2
        if dz2 > sp.r**2:
            continue
        inside = (q[None, :] - sp.x) ** 2 + (q[:, None] - sp.y) ** 2 <= sp.r**2 - dz2
        out += sp.mu * inside
    return out.reshape(n, ss, n, ss).mean(axis=(1, 3))


def truth_volume(spheres, nz, n, *, ss=2):
    """Attenuation volume (nz, n, n) of the phantom, rows 0..nz-1 of the unshifted sample."""
    return np.stack([truth_slice(spheres, z, n, ss=ss) for z in range(nz)])


def flat_profile(ny, nx, photons):
    """Smoothly varying beam (+-10 %) so flat-field correction matters."""
    yy, xx = np.mgrid[:ny, :nx]
    return photons * (1 + 0.1 * np.sin(xx / nx * 3.0) * np.cos(yy / ny * 2.0))


def _counts(rng, expected):
    frame = rng.poisson(expected) + rng.poisson(DARK_LEVEL, expected.shape)
    return np.clip(frame, 0, 65535).astype(np.uint16)


@dataclass
class RunSpec:
    """What to acquire. Lengths in pixels, ``angle_range_deg`` of ``num_projections``."""

    spheres: list
    ny: int = 48
    nx: int = 96
    num_projections: int = 180
    angle_range_deg: float = 180.0
    center: float = 47.5
    center_guess_px: float | None = None
    photons: float = 5000.0
    num_darks: int = 4
    num_flats: int = 4
    order: tuple[str, ...] = ("dark", "flat", "primary")
    fly: bool = True
    frames_per_datum: int = 10
    z_shift: float = 0.0
    pixel_size_um: float = 0.13
    seed: int = 0
    mosaic: dict | None = None
    plan_name: str | None = None
    exit_status: str = "success"
    # (nx,) gain of each detector column in the projections but not in the flats:
    # a response the flat field missed, which reconstructs as rings.
    column_gain: np.ndarray | None = None


def tomo_run(spec: RunSpec, directory: Path) -> Iterator[tuple[str, dict]]:
    """Yield the documents of one tomography run, writing each frame just before its datum."""
    rng = np.random.default_rng(spec.seed)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"tomo_{spec.seed}_{time.monotonic_ns()}.h5"
    writer = HDF5FrameWriter(path, (spec.ny, spec.nx))
    angles_deg = np.arange(spec.num_projections) * spec.angle_range_deg / spec.num_projections
    flat = flat_profile(spec.ny, spec.nx, spec.photons)
    md = {
        "plan_name": spec.plan_name or ("fly_tomo_scan" if spec.fly else "tomo_scan"),
        "sample_id": "spheres",
        "tomo": {
            "num_projections": spec.num_projections,
            "angle_range_deg": spec.angle_range_deg,
            "exposure_s": 0.05,
            "pixel_size_um": spec.pixel_size_um,
            "energy_keV": 8.0,
            "center_guess_px": spec.center_guess_px,
            "sample_id": "spheres",
            "flat_policy": "start",
            "dark_policy": "start",
        },
    }
    if spec.mosaic is not None:
        md["mosaic"] = spec.mosaic
    run = compose_run(metadata=md)
    yield "start", run.start_doc
    image_key = {
        "source": "PV:TXM:HDF1:FullFileName_RBV",
        "dtype": "array",
        "dtype_numpy": "<u2",
        "shape": [1, spec.ny, spec.nx],
        "external": "STREAM:",
    }
    resource = None
    written = 0

    def frames_of(stream):
        if stream == "dark":
            return [(np.zeros((spec.ny, spec.nx)), None)] * spec.num_darks
        if stream == "flat":
            return [(flat, None)] * spec.num_flats
        gain = 1.0 if spec.column_gain is None else spec.column_gain
        return [
            (
                gain * flat * np.exp(-project(spec.spheres, np.deg2rad(a), spec.ny, spec.nx,
                                              spec.center, z_shift=spec.z_shift)),
                float(a),
            )
            for a in angles_deg
        ]  # fmt: skip

    for stream in spec.order:
        step = stream == "primary" and not spec.fly
        keys = {CAMERA_KEY: image_key}
        if step:
            keys["sample_theta"] = {"source": "PV:TXM:sample:theta", "dtype": "number", "shape": []}
        desc = run.compose_descriptor(name=stream, data_keys=keys)
        yield "descriptor", desc.descriptor_doc
        if resource is None:
            resource = run.compose_stream_resource(
                mimetype="application/x-hdf5",
                uri=f"file://localhost{path.absolute()}",
                data_key=CAMERA_KEY,
                parameters={"dataset": "/entry/data/data", "chunk_shape": [1, spec.ny, spec.nx]},
            )
            yield "stream_resource", resource.stream_resource_doc
        frames = frames_of(stream)
        per = spec.frames_per_datum if (stream == "primary" and spec.fly) else 1
        seq = 1
        for k in range(0, len(frames), per):
            block = frames[k : k + per]
            for expected, theta in block:
                attrs = {"theta": theta} if (spec.fly and theta is not None) else {}
                if spec.fly and theta is None:
                    attrs = {"theta": np.nan}
                writer.write(_counts(rng, expected), attrs, written + 1, time.time())
                written += 1
            datum = resource.compose_stream_datum(
                indices={"start": written - len(block), "stop": written},
                seq_nums={"start": seq, "stop": seq + len(block)},
                descriptor=desc.descriptor_doc,
            )
            yield "stream_datum", datum
            if step:
                yield (
                    "event",
                    desc.compose_event(
                        data={"sample_theta": block[0][1]},
                        timestamps={"sample_theta": time.time()},
                        seq_num=seq,
                    ),
                )
            seq += len(block)
    writer.close()
    yield "stop", run.compose_stop(exit_status=spec.exit_status)
