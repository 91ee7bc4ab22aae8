"""The live assembler on a real slice_and_view run over Channel Access (simulated IOC).

The session drives ``sim_devices.fibsem``; its live pipeline is the assembler
(``session.INSTRUMENTS["fibsem"]``), which reads the IOC's HDF5 frames and stores the
series' derived run in the catalog. Scored against the IOC's ground truth: a field's
origin on the face is its nominal origin + the true drift (per-frame file attributes
``drift_x_um``, ``drift_y_um``) - the beam shift (events; the SEM and EDS fields only,
the SIMS field is the ion beam's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import fibsem_session

from multiscope.callbacks.slice_and_view import DERIVED_PLAN, SliceAndViewAssembler
from multiscope.frame_files import FrameReader
from sim_devices.physics.fibsem_scene import FieldGeometry

pytestmark = pytest.mark.integration

FAST = {"eds_live_time_s": 20.0, "sims_frame_time_s": 20.0}
SHIFT_KEYS = ("electron_column_beam_shift_y_um", "electron_column_beam_shift_x_um")


def _sem_origins(docs) -> dict[int, np.ndarray]:
    """Per slice, the SEM field's origin (um, (y, x)) relative to nominal: drift - shift."""
    reader, streams, events, datums = FrameReader(), {}, {}, {}
    for name, doc in docs:
        if name == "descriptor":
            reader.add_descriptor(doc)
            streams[doc["uid"]] = doc["name"]
        elif name == "stream_resource":
            reader.add_resource(doc)
        elif name == "stream_datum" and streams.get(doc["descriptor"]) == "sem":
            datums[doc["seq_nums"]["start"]] = doc
        elif name == "event" and streams.get(doc["descriptor"]) == "sem":
            events[doc["seq_num"]] = doc["data"]
    origins = {}
    for seq, data in events.items():
        attrs = reader.read(datums[seq], attributes=("drift_y_um", "drift_x_um")).attributes
        drift = np.array([attrs["drift_y_um"][0], attrs["drift_x_um"][0]])
        origins[int(data["slice_number"])] = drift - np.array([data[k] for k in SHIFT_KEYS])
    reader.close()
    return origins


def test_the_assembler_assembles_the_plans_run(ca_port_pool, tmp_path_factory):
    docs = []
    with fibsem_session(ca_port_pool, tmp_path_factory, "sv-assembly") as (session, _):
        pfib = session.devices["pfib"]
        session.RE.subscribe(lambda name, doc: docs.append((name, doc)))
        (uid,) = session.RE(session.plans["slice_and_view"](pfib, 3, 0.1, **FAST))
        # The session's live pipeline: one assembler behind a background thread.
        assert session.pipeline.drain(60)
        assembler = session.pipeline.callback.build()
        assert isinstance(assembler, SliceAndViewAssembler)
        assert session.catalog.drain(60)
        derived = [
            session.catalog.run(r.uid).metadata["start"]
            for r in session.catalog.runs(limit=100)
            if r.plan_name == DERIVED_PLAN
        ]
    block = assembler.series.block
    table = assembler.series_table()
    assert list(table["slice_numbers"]) == [1, 2, 3]
    # Per-slice time is measured by bench/fibsem.py (docs/benchmarks.md), not asserted here.
    # SEM drift against the truth (what the beam shift left of the sample's drift).
    origins = _sem_origins(docs)
    for k, number in enumerate(table["slice_numbers"]):
        expected = (origins[number] - origins[1]) / block.sem_pixel_um
        assert np.abs(table["drift_px"][k] - expected).max() < 0.5, (number, expected)
    # EDS-SIMS: SIMS's first pixel centre in EDS coordinates, from the nominal fields.
    g = FieldGeometry()
    nominal = np.subtract(g.origin_um(g.sims_shape, g.sims_pixel_um),
                          g.origin_um(g.eds_shape, g.eds_pixel_um))  # fmt: skip
    assert list(table["registered_slices"]) == [1, 2, 3]
    for k, number in enumerate(table["registered_slices"]):
        shift_x, shift_y = assembler.series.slices[number].beam_shift_um
        truth = nominal + (g.sims_pixel_um - g.eds_pixel_um) / 2 + np.array([shift_y, shift_x])
        error = np.hypot(*(table["registration_shift_um"][k] - truth)) / g.eds_pixel_um
        assert error < 0.5, (number, table["registration_shift_um"][k], truth)
    volumes = assembler.volumes()
    cbs, voxel, numbers = volumes["bse_cbs"]
    assert numbers == [1, 2, 3] and voxel == pytest.approx((0.1, block.sem_pixel_um,
                                                            block.sem_pixel_um))  # fmt: skip
    assert volumes["sims_6Li+"][0].shape[1:] == g.eds_shape
    assert assembler.paths["volumes"].exists()
    assert [start["derived_from"] for start in derived] == [uid]
    assert all(Path(figure).exists() for figure in derived[0]["figures"])
