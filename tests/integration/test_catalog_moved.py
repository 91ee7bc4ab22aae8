"""A moved data directory keeps its catalog; runs are found by uid prefix, or clearly not.

Issue 12, section 3. A catalog filled in directory A (an event table, frames in an HDF5
file, runs with chosen uids) is served, stopped, renamed to B and opened from B the
normal way (the data directory's catalog server): its event tables were "No such field
sqlite://localhost//.../A/catalog/tables.sqlite" and its frames pointed into A
(decision 0022). The uid lookups run on the moved catalog, through ``Catalog`` and
through bluesky-tiled-plugins' own ``CatalogOfBlueskyRuns.__getitem__``, which reported
"multiple matches" for any prefix (even one matching nothing) of a container created
without spec version 3.0; the fixture makes its container so, as older catalogs have it.
"""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import scan
from event_model import compose_run
from ophyd.sim import det, motor
from test_catalog import FrameCamera
from tiled.structures.core import Spec

from multiscope import catalog_server
from multiscope.catalog import Catalog
from multiscope.catalog_location import LOCATION_NAME

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:uvicorn.*"),
]

# Chosen uids: two sharing a prefix, one all digits; scan id 12345 shares a uid's start.
CHOSEN = {
    "abcdef01-0000-4000-8000-000000000001": 12345,
    "abcdef02-0000-4000-8000-000000000002": 2,
    "12345678-0000-4000-8000-000000000003": 3,
}


def _write_chosen_run(writer, uid: str, scan_id: int) -> None:
    run = compose_run(uid=uid, metadata={"scan_id": scan_id, "plan_name": "chosen"})
    writer("start", run.start_doc)
    stream = run.compose_descriptor(
        name="primary",
        data_keys={"x": {"source": "test", "dtype": "number", "shape": []}},
    )
    writer("descriptor", stream.descriptor_doc)
    writer("event", stream.compose_event(data={"x": float(scan_id)}, timestamps={"x": 0.0}))
    writer("stop", run.compose_stop())


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """(catalog opened from B, the scan's uid, its frames, A, B)."""
    base = tmp_path_factory.mktemp("moving")
    a, b = base / "A", base / "B"
    with Catalog.embedded(a) as catalog:
        RE = RunEngine({})
        RE.subscribe(catalog.writer())
        cam = FrameCamera("cam", a / "assets" / "cam")
        (uid,) = RE(scan([det, cam], motor, -1, 1, 5))
        for chosen, scan_id in CHOSEN.items():
            _write_chosen_run(catalog.writer(), chosen, scan_id)
        assert catalog.drain(60)
        # As a catalog made before the container's spec carried its version.
        catalog.client.update_metadata(specs=[Spec("CatalogOfBlueskyRuns")], drop_revision=True)
        frames = np.stack(cam.frames)
    assert catalog_server.stop(a) == "stopped"
    a.rename(b)
    catalog = Catalog.embedded(b)
    yield catalog, uid, frames, a, b
    catalog.close()
    catalog_server.stop(b)


def test_moved_catalog_reads_its_event_table_and_frames(moved):
    catalog, uid, frames, a, b = moved
    assert not a.exists()
    data = catalog.run(uid)["primary"].read()
    np.testing.assert_allclose(np.asarray(data["motor"]), np.linspace(-1, 1, 5))
    read = np.asarray(data["cam"]).reshape(frames.shape)
    np.testing.assert_array_equal(read, frames)
    assert (b / "catalog" / LOCATION_NAME).read_text().strip() == str(b)
    # The moved catalog still takes new runs (its table storage is the one in B).
    RE = RunEngine({})
    RE.subscribe(catalog.writer())
    (new,) = RE(scan([det], motor, 0, 1, 3))
    assert catalog.drain(60)
    np.testing.assert_allclose(np.asarray(catalog.run(new)["primary"].read()["motor"]), [0, 0.5, 1])


def test_uid_prefix_finds_the_run(moved):
    catalog, uid, *_ = moved
    assert catalog[uid[:8]].metadata["start"]["uid"] == uid
    assert catalog[uid].metadata["start"]["uid"] == uid
    # bluesky-tiled-plugins' own lookup, unchanged, on the container made by older versions.
    assert catalog.client[uid[:8]].metadata["start"]["uid"] == uid
    # A prefix of digits only is a uid prefix when no scan has that number.
    assert catalog["12345678"].metadata["start"]["uid"] == "12345678-0000-4000-8000-000000000003"


def test_uid_prefix_matching_nothing_says_so(moved):
    catalog, *_ = moved
    with pytest.raises(KeyError, match="no run .*'fedcba98'"):
        catalog["fedcba98"]
    with pytest.raises(KeyError) as info:  # was ValueError "multiple matches"
        catalog.client["fedcba98"]
    assert "multiple" not in str(info.value)


def test_uid_prefix_matching_several_lists_them(moved):
    catalog, *_ = moved
    with pytest.raises(KeyError, match="matches 2 runs") as info:
        catalog["abcdef0"]
    for uid in list(CHOSEN)[:2]:
        assert uid in str(info.value)
    # Both a scan id and a uid's beginning: ambiguous, and said so; a number is the scan id.
    with pytest.raises(KeyError, match="both scan id 12345 and the beginning of uid 12345678"):
        catalog["12345"]
    assert catalog[12345].metadata["start"]["uid"] == list(CHOSEN)[0]
