"""ReplayFilter passes each document of a run once, as a RunEngine rewind re-emits them."""

from event_model import compose_run

from multiscope.callbacks.replay import ReplayFilter


def _collector():
    received: list[tuple[str, dict]] = []
    return received, ReplayFilter(lambda name, doc: received.append((name, doc)))


def test_repeated_event_datum_and_resource_are_dropped_the_first_copy_stands():
    received, replay = _collector()
    run = compose_run()
    replay("start", run.start_doc)
    keys = {"cam_image": {"source": "s", "dtype": "array", "shape": [1, 4, 4],
                          "external": "STREAM:"},
            "theta": {"source": "s", "dtype": "number", "shape": []}}  # fmt: skip
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    replay("descriptor", desc.descriptor_doc)
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri="file://localhost/f.h5",
        data_key="cam_image",
        parameters={},
    )

    def point(seq, theta, row):
        datum = resource.compose_stream_datum(indices={"start": row, "stop": row + 1})
        datum["descriptor"] = desc.descriptor_doc["uid"]
        datum["seq_nums"] = {"start": seq, "stop": seq + 1}
        event = desc.compose_event(data={"theta": theta}, timestamps={"theta": 0.0}, seq_num=seq)
        return [("stream_resource", resource.stream_resource_doc), ("stream_datum", datum),
                ("event", event)]  # fmt: skip

    documents = point(1, 0.0, 0) + point(2, 1.0, 1)
    # A rewind after point 2 was saved replays it (same seq_num, the same frame).
    documents += point(2, 1.01, 1) + point(3, 2.0, 2)
    for name, doc in documents:
        replay(name, doc)
    replay("stop", run.compose_stop())

    names = [name for name, _ in received]
    assert names.count("stream_resource") == 1
    assert [d["seq_nums"]["start"] for n, d in received if n == "stream_datum"] == [1, 2, 3]
    events = [d for n, d in received if n == "event"]
    assert [e["seq_num"] for e in events] == [1, 2, 3]
    assert events[1]["data"]["theta"] == 1.0  # the first copy
    assert names[0] == "start" and names[-1] == "stop"


def test_event_page_keeps_only_new_rows_and_each_resource_gets_its_datums():
    received, replay = _collector()
    run = compose_run()
    replay("start", run.start_doc)
    keys = {"x": {"source": "s", "dtype": "number", "shape": []}}
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    replay("descriptor", desc.descriptor_doc)
    uid = desc.descriptor_doc["uid"]

    def page(seqs):
        return {
            "descriptor": uid, "seq_num": list(seqs), "time": [0.0] * len(seqs),
            "uid": [f"e{s}" for s in seqs], "data": {"x": [float(s) for s in seqs]},
            "timestamps": {"x": [0.0] * len(seqs)}, "filled": {},
        }  # fmt: skip

    replay("event_page", page([1, 2, 3]))
    replay("event_page", page([2, 3, 4, 5]))  # a replay overlapping the first page
    replay("event_page", page([1, 2]))  # all repeated: dropped
    # A flyer's collect: one datum per data key with the same seq_nums: both pass.
    for resource in ("r-image", "r-theta"):
        datum = {"uid": f"{resource}/0", "stream_resource": resource, "descriptor": uid,
                 "indices": {"start": 0, "stop": 5},
                 "seq_nums": {"start": 1, "stop": 6}}  # fmt: skip
        replay("stream_datum", datum)
    pages = [d for n, d in received if n == "event_page"]
    assert [p["seq_num"] for p in pages] == [[1, 2, 3], [4, 5]]
    assert pages[1]["data"]["x"] == [4.0, 5.0] and pages[1]["uid"] == ["e4", "e5"]
    assert sum(n == "stream_datum" for n, _ in received) == 2


def test_runs_are_independent():
    received, replay = _collector()
    for _ in range(2):  # the same seq_nums in a second run are new
        run = compose_run()
        replay("start", run.start_doc)
        desc = run.compose_descriptor(
            name="primary", data_keys={"x": {"source": "s", "dtype": "number", "shape": []}}
        )
        replay("descriptor", desc.descriptor_doc)
        replay("event", desc.compose_event(data={"x": 1}, timestamps={"x": 0}, seq_num=1))
        replay("stop", run.compose_stop())
    assert sum(n == "event" for n, _ in received) == 2
