"""Slice-and-view runs for tests and benchmarks: frames rendered from a serial phantom
with known drift and field offsets, written to HDF5 and referenced by event-model
documents as ``plans.slice_and_view``'s would be (``contracts.SliceViewBlock``).

The SEM frames carry a Pt cap with a milled cross in their top rows (the fiducial
window ``FIDUCIAL_PX``); the sizes are the instrument's (SEM 384 x 512 at 50 nm, EDS
216 x 352 at 81.4 nm, SIMS 500 x 500 at 72 nm).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from event_model import compose_run

from multiscope.contracts import SliceViewBlock
from sim_devices.areadetector import HDF5FrameWriter
from sim_devices.physics.serial_phantom import make_serial_phantom
from sim_devices.physics.serial_render import EDS_LINES, bse_images, eds_maps, sims_maps

PHANTOM = {"kind": "assb", "size_um": (48.0, 48.0, 4.0), "seed": 4}


def phantom():
    """Seed 004's composite cathode, large enough for the SIMS field's offsets."""
    return make_serial_phantom(**PHANTOM)


SEM_SHAPE, EDS_SHAPE, SIMS_SHAPE = (384, 512), (216, 352), (500, 500)
SEM_PX, EDS_PX, SIMS_PX = 0.05, 0.0814, 0.072
THICKNESS_UM = 0.25  # thicker than the seed's 60 nm: neighbouring faces must differ (order)
SEM_ORIGIN, EDS_ORIGIN = (10.0, 8.0), (11.0, 7.0)  # field corners on the face at no drift
CAP_ROWS = 96  # the Pt cap above the face in the SEM images (at no drift)
FIDUCIAL_PX = (4, 76, 176, 336)  # (row0, row1, col0, col1): the cross, in the cap at any drift
LINES, MASSES = tuple(EDS_LINES), ("6Li+", "7Li+")


def truth(n, seed):
    """Per slice: drift (um, a random walk of 0.15 um steps) and the SIMS field offset."""
    rng = np.random.default_rng(seed)
    drift = np.cumsum(np.vstack([[0, 0], rng.normal(0, 0.15, (n - 1, 2))]), axis=0)
    offset = rng.choice([-1.0, 1.0], (n, 2)) * rng.uniform(1.0, 2.0, (n, 2))
    return drift, offset


def _fiducial(shape, origin):
    """A Pt cap over the top of the face (bright) with a milled 'x' (dark), on the face.

    Returns the cap's area fraction per pixel and the cross's depth (0-1): both smooth
    at the pixel scale, as a detector integrates a pixel's area (a binary edge would
    jump by whole pixels as the drift moves it).
    """
    y = origin[0] + (np.arange(shape[0]) + 0.5) * SEM_PX
    x = origin[1] + (np.arange(shape[1]) + 0.5) * SEM_PX
    y, x = y[:, None] - SEM_ORIGIN[0], x[None, :] - SEM_ORIGIN[1]
    cap = np.clip((CAP_ROWS * SEM_PX - y) / SEM_PX + 0.5, 0.0, 1.0) * np.ones_like(x)
    cy, cx = 40 * SEM_PX, 256 * SEM_PX
    u, v = (y - cy) + (x - cx), (y - cy) - (x - cx)
    arm = np.clip((1.0 - np.hypot(y - cy, x - cx)) / SEM_PX + 0.5, 0.0, 1.0)
    cross = arm * (np.exp(-(u**2) / 0.02) + np.exp(-(v**2) / 0.02)).clip(0, 1)
    return cap, cross


def render_slice(phantom, number, drift_um, offset_um, *, eds=True, sims=True, seed=0):
    """Frames of slice ``number`` (depth ``number * THICKNESS_UM``) and its truth labels."""
    rng = np.random.default_rng(1000 + seed * 97 + number)
    depth = number * THICKNESS_UM
    sem_origin = (SEM_ORIGIN[0] + drift_um[0], SEM_ORIGIN[1] + drift_um[1])
    images = bse_images(phantom, depth, SEM_SHAPE, SEM_PX, sem_origin, rng=rng)
    cap, cross = _fiducial(SEM_SHAPE, sem_origin)
    sem = []
    for name, level in (("cbs", 400.0), ("tld", 100.0)):
        capped = rng.poisson(cap * level * (1.0 - 0.8 * cross))
        sem.append(np.round(capped + (1.0 - cap) * images[name]).astype(np.uint16))
    out = {"depth": depth, "sem": sem, "labels": images["labels"], "cap": cap > 0}
    eds_origin = (EDS_ORIGIN[0] + drift_um[0], EDS_ORIGIN[1] + drift_um[1])
    if eds:
        maps = eds_maps(phantom, depth, EDS_SHAPE, EDS_PX, eds_origin, lines=LINES, rng=rng)
        out["eds"] = [maps[line] for line in LINES]
    if sims:
        origin = (eds_origin[0] + offset_um[0], eds_origin[1] + offset_um[1])
        maps = sims_maps(phantom, depth, SIMS_SHAPE, SIMS_PX, origin, rng=rng)
        out["sims"] = [np.clip(maps[m], 0, 65535).astype(np.uint16) for m in MASSES]
        # register()'s answer: SIMS's first pixel centre in EDS coordinates.
        out["registration_um"] = np.asarray(offset_um) + (SIMS_PX - EDS_PX) / 2.0
    return out


def block_md(n_slices, first_slice=1, resume_of=None, eds_every=1, sims_every=1):
    return SliceViewBlock(
        n_slices=n_slices, first_slice=first_slice, slice_thickness_um=THICKNESS_UM,
        start_depth_um=(first_slice - 1) * THICKNESS_UM, sem_pixel_um=SEM_PX,
        eds_pixel_um=EDS_PX, sims_pixel_um=SIMS_PX, eds_lines=LINES, sims_masses=MASSES,
        eds_every=eds_every, sims_every=sims_every, fiducial_px=FIDUCIAL_PX,
        resume_of=resume_of, sample_id="assb seed 004 phantom",
    ).to_md()  # fmt: skip


def run_documents(directory, block, slices):
    """``[(name, doc, slice_number or None)]`` of one run, laid out as the plan's.

    One HDF5 file per acquisition (per-frame ``channel`` and ``face_depth_um``), its
    resource with ``multiplier`` = frames per acquisition and one datum row per event,
    as ``devices.areadetector.StreamingCamera`` writes them; the event keys of
    ``contracts.SliceViewBlock``. ``slices``: ``{number: render_slice(...)}`` in
    milling order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    run = compose_run(metadata={"plan_name": "slice_and_view", "slice_and_view": block})
    docs = [("start", run.start_doc, None)]
    number_key = {"dtype": "number", "shape": [], "source": "sim"}
    integer, text = {**number_key, "dtype": "integer"}, {**number_key, "dtype": "string"}
    common = {"slice_number": integer, "mill_face_depth_um": number_key,
              "mill_slices_milled": integer, "stage_pose": text, "stage_tilt": number_key,
              "stage_rot": number_key, "ion_column_beam": text,
              "electron_column_beam_shift_x_um": number_key,
              "electron_column_beam_shift_y_um": number_key}  # fmt: skip
    counts = {"sem": 2, "eds": len(LINES), "sims": len(MASSES)}
    descriptors = {"mill": run.compose_descriptor(name="mill", data_keys=dict(common))}
    shapes = {"sem": SEM_SHAPE, "eds": EDS_SHAPE, "sims": SIMS_SHAPE}
    for stream, count in counts.items():
        image = {"dtype": "array", "dtype_numpy": "<u2", "shape": [count, *shapes[stream]],
                 "external": "STREAM:", "source": f"PV:{stream.upper()}:HDF1"}  # fmt: skip
        keys = {f"{stream}_image": image, **common}
        descriptors[stream] = run.compose_descriptor(name=stream, data_keys=keys)
    docs += [("descriptor", d.descriptor_doc, None) for d in descriptors.values()]
    seq = defaultdict(lambda: 1)

    def event(stream, values, number):
        doc = descriptors[stream].compose_event(
            data=values, timestamps={k: time.time() for k in values}, seq_num=seq[stream]
        )
        seq[stream] += 1
        return ("event", doc, number)

    for number, frames in slices.items():
        values = {
            "slice_number": number, "mill_face_depth_um": frames["depth"],
            "mill_slices_milled": number, "stage_pose": "mill", "stage_tilt": 16.0,
            "stage_rot": 0.0, "ion_column_beam": "Blanked",
            "electron_column_beam_shift_x_um": 0.0, "electron_column_beam_shift_y_um": 0.0,
        }  # fmt: skip
        docs.append(event("mill", values, number))
        for stream in ("sem", "eds", "sims"):
            if stream not in frames:
                continue
            path = directory / f"{stream}_{number:03d}.h5"
            writer = HDF5FrameWriter(path, shapes[stream])
            for channel, frame in enumerate(frames[stream]):
                attrs = {"channel": channel, "face_depth_um": frames["depth"]}
                writer.write(frame, attrs, channel + 1, time.time())
            writer.close()
            resource = run.compose_stream_resource(
                mimetype="application/x-hdf5", uri=f"file://localhost{path.absolute()}",
                data_key=f"{stream}_image",
                parameters={"dataset": "/entry/data/data", "multiplier": counts[stream],
                            "chunk_shape": [1, *shapes[stream]]},
            )  # fmt: skip
            datum = resource.compose_stream_datum(
                indices={"start": 0, "stop": 1},
                seq_nums={"start": seq[stream], "stop": seq[stream] + 1},
                descriptor=descriptors[stream].descriptor_doc,
            )
            pose = {"stage_pose": "sims" if stream == "sims" else "sem"}
            docs += [("stream_resource", resource.stream_resource_doc, number),
                     ("stream_datum", datum, number),
                     event(stream, {**values, **pose}, number)]  # fmt: skip
    docs.append(("stop", run.compose_stop(exit_status="success"), None))
    return docs


def feed(assembler, docs):
    """Send the documents; seconds spent per slice (reading its frames included)."""
    seconds = defaultdict(float)
    for name, doc, number in docs:
        t0 = time.perf_counter()
        assembler(name, doc)
        if number is not None:
            seconds[number] += time.perf_counter() - t0
    return dict(seconds)


def render_series(phantom, numbers, drift, offset, *, eds_every=1, sims_every=1, seed=0):
    return {
        n: render_slice(
            phantom,
            n,
            drift[n - 1],
            offset[n - 1],
            seed=seed,
            eds=bool(eds_every) and n % eds_every == 0,
            sims=bool(sims_every) and n % sims_every == 0,
        )  # fmt: skip
        for n in numbers
    }
