"""RunFrames: a run's documents become frame records, each frame with its event's values."""

import h5py
import numpy as np
import pytest
from event_model import compose_run

from multiscope.callbacks.runs import RunFrames

NY, NX = 4, 5


class Recorder(RunFrames):
    plans = ("test_scan",)
    angle_attribute = "theta"

    def __init__(self, **kwargs):
        self.records = []
        self.stopped = None
        super().__init__(**kwargs)

    def event_fields(self, stream):
        return {"angle_deg": "sample_theta"} if stream == "primary" else {}

    def read_options(self, stream):
        return {"attributes": ("theta",)}

    def frame_arrived(self, record):
        self.records.append(record)

    def run_stopped(self, doc):
        self.stopped = doc["exit_status"]


def _frames(n, offset=0):
    return (np.arange(n * NY * NX, dtype=np.uint16).reshape(n, NY, NX) + offset).astype(np.uint16)


def _run(path, *, fly: bool, event_first: bool = False):
    """Documents of a run: 2 darks (no angle), 3 projections with an angle each."""
    darks, projections = _frames(2), _frames(3, offset=1000)
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.concatenate([darks, projections])
        if fly:  # the IOC's angle at mid-exposure, one per row
            f["/entry/instrument/NDAttributes/theta"] = np.array([0, 0, 10.5, 20.5, 30.5])
    run = compose_run(metadata={"plan_name": "test_scan"})
    image = {"source": "sim", "dtype": "array", "shape": [1, NY, NX], "external": "STREAM:"}
    keys = {"camera_image": image}
    dark_desc = run.compose_descriptor(name="dark", data_keys=dict(keys))
    if not fly:
        keys["sample_theta"] = {"source": "sim", "dtype": "number", "shape": []}
    primary_desc = run.compose_descriptor(name="primary", data_keys=keys)
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{path}",
        data_key="camera_image",
        parameters={"dataset": "/entry/data/data"},
    )
    docs = [
        ("start", run.start_doc),
        ("descriptor", dark_desc.descriptor_doc),
        ("descriptor", primary_desc.descriptor_doc),
        ("stream_resource", resource.stream_resource_doc),
        ("stream_datum", resource.compose_stream_datum(
            indices={"start": 0, "stop": 2}, seq_nums={"start": 1, "stop": 3},
            descriptor=dark_desc.descriptor_doc)),
    ]  # fmt: skip
    for k in range(3):
        datum = resource.compose_stream_datum(
            indices={"start": 2 + k, "stop": 3 + k},
            seq_nums={"start": k + 1, "stop": k + 2},
            descriptor=primary_desc.descriptor_doc,
        )
        pair = [("stream_datum", datum)]
        if not fly:
            event = primary_desc.compose_event_page(
                data={"sample_theta": [10.0 * (k + 1)]},
                timestamps={"sample_theta": [0.0]},
                seq_num=[k + 1],
            )
            pair.append(("event_page", event))
        docs.extend(reversed(pair) if event_first else pair)
    docs.append(("stop", run.compose_stop(exit_status="success")))
    return docs, darks, projections


@pytest.mark.parametrize("event_first", [False, True])
def test_step_frames_wait_for_their_event_in_either_order(tmp_path, event_first):
    docs, darks, projections = _run(tmp_path / "f.h5", fly=False, event_first=event_first)
    recorder = Recorder()
    for name, doc in docs:
        recorder(name, doc)
    assert recorder.stopped == "success"
    assert [(r.stream, r.seq_num) for r in recorder.records] == [
        ("dark", 1), ("dark", 2), ("primary", 1), ("primary", 2), ("primary", 3)
    ]  # fmt: skip
    assert [r.angle_deg for r in recorder.records] == [None, None, 10.0, 20.0, 30.0]
    assert recorder.records[2].angle_source == "event:sample_theta"
    np.testing.assert_array_equal([r.frame for r in recorder.records[2:]], projections)
    np.testing.assert_array_equal([r.frame for r in recorder.records[:2]], darks)
    assert recorder.frames_waiting == 0


def test_fly_frames_come_at_once_with_the_file_angle(tmp_path):
    docs, _, projections = _run(tmp_path / "f.h5", fly=True)
    recorder = Recorder()
    for name, doc in docs:
        recorder(name, doc)
    primary = [r for r in recorder.records if r.stream == "primary"]
    assert [r.angle_deg for r in primary] == [10.5, 20.5, 30.5]
    assert {r.angle_source for r in primary} == {"hdf5:theta"}
    assert [r.datum for r in primary] == [0, 1, 2]
    np.testing.assert_array_equal([r.frame for r in primary], projections)


def test_deferred_reading_gives_the_same_records_at_the_stop(tmp_path):
    docs, _, _ = _run(tmp_path / "f.h5", fly=False)
    live, deferred = Recorder(), Recorder(read_live=False)
    seen_at_stop = {}
    deferred.run_stopped = lambda doc: seen_at_stop.update(
        {s: deferred.read_records(s) for s in ("dark", "primary")}
    )
    for name, doc in docs:
        live(name, doc)
        deferred(name, doc)
    assert deferred.records == []  # nothing read while the run went on
    again = seen_at_stop["dark"] + seen_at_stop["primary"]
    assert [(r.stream, r.seq_num, r.angle_deg) for r in again] == [
        (r.stream, r.seq_num, r.angle_deg) for r in live.records
    ]
    for a, b in zip(again, live.records, strict=True):
        np.testing.assert_array_equal(a.frame, b.frame)


def test_a_missing_event_is_named_when_the_frames_are_read(tmp_path):
    docs, _, _ = _run(tmp_path / "f.h5", fly=False)
    docs = [d for d in docs if not (d[0] == "event_page" and d[1]["seq_num"] == [2])]
    deferred = Recorder(read_live=False)
    errors = []

    def stopped(doc):
        try:
            deferred.read_records("primary")
        except ValueError as error:
            errors.append(str(error))

    deferred.run_stopped = stopped
    for name, doc in docs:
        deferred(name, doc)
    assert errors == ["no sample_theta for primary event 2"]


def test_other_plans_are_ignored(tmp_path):
    docs, _, _ = _run(tmp_path / "f.h5", fly=False)
    recorder = Recorder()
    recorder.plans = ("another_plan",)
    for name, doc in docs:
        recorder(name, doc)
    assert recorder.records == [] and recorder.stopped is None
