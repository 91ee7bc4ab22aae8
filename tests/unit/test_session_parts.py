"""Unit tests of session helpers: persistent metadata, disconnect-aware suspender."""

import json
import threading
import time

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from ophyd.sim import Signal, det

from multiscope.metadata import JSONMetadataStore
from multiscope.suspenders import SuspendFloorOrDisconnect


def test_metadata_persists_and_refuses_unserialisable(tmp_path):
    path = tmp_path / "md" / "md.json"
    md = JSONMetadataStore(path)
    md["proposal"] = {"id": 123, "pi": "Tan"}
    md["sample"] = "tab 3"
    del md["sample"]
    assert json.loads(path.read_text()) == {"proposal": {"id": 123, "pi": "Tan"}}
    assert dict(JSONMetadataStore(path)) == {"proposal": {"id": 123, "pi": "Tan"}}
    md["when"] = object()  # stored via str(): JSON needs no custom types to reload
    assert "object" in JSONMetadataStore(path)["when"]


def test_metadata_used_by_run_engine(tmp_path):
    RE = RunEngine(JSONMetadataStore(tmp_path / "md.json"))
    RE.md["operator"] = "ada"
    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    RE(bp.count([det]))
    assert starts[0]["operator"] == "ada"
    assert JSONMetadataStore(tmp_path / "md.json")["scan_id"] == 1


def _slow_count():
    for _ in range(6):
        yield from bp.count([det])
        yield from bps.sleep(0.05)


def test_disconnect_trips_suspender_until_good_value():
    """Inject a disconnect during a plan; expect a suspension until reconnection."""
    current = Signal(name="ring_current", value=400.0)
    suspender = SuspendFloorOrDisconnect(current, 10.0, sleep=0.2)
    RE = RunEngine({})
    RE.install_suspender(suspender)

    def outage():
        time.sleep(0.1)
        current._run_subs(sub_type=current.SUB_META, connected=False)
        time.sleep(0.8)
        current._run_subs(sub_type=current.SUB_META, connected=True)
        current.put(401.0)

    thread = threading.Thread(target=outage)
    t0 = time.monotonic()
    thread.start()
    RE(_slow_count())
    elapsed = time.monotonic() - t0
    thread.join()
    # ~0.35 s unsuspended; the outage (0.8 s) plus the resume sleep (0.2 s) must be added.
    assert elapsed > 1.0
    assert not suspender.tripped


def test_low_value_trips_and_nan_counts_as_bad():
    current = Signal(name="ring_current", value=400.0)
    suspender = SuspendFloorOrDisconnect(current, 10.0)
    assert suspender._should_suspend(5.0)
    assert suspender._should_suspend(float("nan"))
    assert suspender._should_suspend(None)
    assert not suspender._should_suspend(50.0)
    assert not suspender._should_resume(None)


@pytest.mark.parametrize("value", [400.0])
def test_suspender_not_tripped_when_beam_is_good(value):
    current = Signal(name="ring_current", value=value)
    suspender = SuspendFloorOrDisconnect(current, 10.0)
    RE = RunEngine({})
    RE.install_suspender(suspender)
    t0 = time.monotonic()
    RE(bp.count([det], 3))
    assert time.monotonic() - t0 < 1.0
    assert not suspender.tripped
