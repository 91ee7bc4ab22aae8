"""DocumentJournal and BackgroundWriter, without a tiled server."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
from event_model import compose_run, compose_stream_resource

from multiscope.callbacks.storage import (
    BackgroundWriter,
    DocumentJournal,
    RunTracker,
    journal_is_active,
    read_journal,
)


def make_run(n_events: int = 3) -> list[tuple[str, dict]]:
    """A small synthetic run with numpy values in its documents."""
    run = compose_run(metadata={"plan_name": "unit", "array_md": np.arange(3)})
    docs = [("start", run.start_doc)]
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "x": {"source": "sim", "dtype": "number", "shape": []},
            "img": {"source": "sim", "dtype": "array", "shape": [2, 2]},
        },
    )
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(n_events):
        ev = desc.compose_event(
            data={"x": np.float64(i), "img": np.full((2, 2), i, dtype=np.uint16)},
            timestamps={"x": time.time(), "img": time.time()},
        )
        docs.append(("event", ev))
    docs.append(("stop", run.compose_stop()))
    return docs


def test_journal_round_trip(tmp_path):
    journal = DocumentJournal(tmp_path)
    docs = make_run()
    for name, doc in docs:
        journal(name, doc)
    uid = docs[0][1]["uid"]
    contents = read_journal(journal.path(uid))
    assert contents.bad_lines == 0
    assert [n for n, _ in contents.documents] == [n for n, _ in docs]
    # numpy values come back as plain JSON values
    assert contents.start["array_md"] == [0, 1, 2]
    assert contents.documents[4][1]["data"]["img"] == [[2, 2], [2, 2]]
    assert contents.stop["uid"] == docs[-1][1]["uid"]
    assert not journal_is_active(journal.path(uid))
    assert journal.commit(uid) == tmp_path / "committed" / f"{uid}.jsonl"
    assert not journal.path(uid).exists()


def test_journal_open_run_is_locked_and_flushed(tmp_path):
    journal = DocumentJournal(tmp_path)
    docs = make_run()
    for name, doc in docs[:-1]:  # no stop yet
        journal(name, doc)
    path = journal.path(docs[0][1]["uid"])
    assert journal_is_active(path)
    # Every document is on disk already, without closing (one os.write per document).
    assert len(read_journal(path).documents) == len(docs) - 1
    journal.close()
    assert not journal_is_active(path)


def test_truncated_last_line_loses_only_that_document(tmp_path):
    journal = DocumentJournal(tmp_path)
    docs = make_run(5)
    for name, doc in docs[:-1]:
        journal(name, doc)
    journal.close()
    path = journal.path(docs[0][1]["uid"])
    good_size = path.stat().st_size
    with open(path, "ab") as f:  # a process killed in the middle of a write
        f.write(json.dumps({"name": "event", "doc": {"x": 1}}).encode()[:17])
    contents = read_journal(path)
    assert contents.bad_lines == 1
    assert len(contents.documents) == len(docs) - 1
    assert contents.good_bytes == good_size


def _feed(writer, docs) -> None:
    for name, doc in docs:
        writer(name, doc)


def test_slow_consumer_never_blocks_caller():
    # The consumer is held until every call has returned: had a call waited for it,
    # the consumer would have gone on (its gate times out) and the check below fail.
    gate = threading.Event()
    seen = []

    def slow(name, doc):
        gate.wait(10)
        seen.append(name)

    writer = BackgroundWriter(slow)
    docs = make_run(2)
    _feed(writer, docs)
    assert seen == []  # every call returned while the consumer was stuck on the first
    assert writer.status()["queued"] >= len(docs) - 1
    gate.set()
    assert writer.drain(timeout=10)
    assert seen == [n for n, _ in docs]
    assert writer.status()["written"] == len(docs)
    assert writer.close()


def test_raising_consumer_marks_run_for_recovery_and_recovers():
    gate = threading.Event()
    recovered = []
    written = []
    attempts = []
    consumed = []

    def broken(name, doc):
        gate.wait(10)  # storage hangs, then fails
        consumed.append(name)
        raise ConnectionError("storage down (simulated)")

    def recover(uid):
        attempts.append(uid)
        if len(attempts) == 1:
            raise ConnectionError("still down")
        recovered.append(uid)

    writer = BackgroundWriter(
        broken, recover=recover, on_written=written.append, retry_delays=(0.1, 0.1)
    )
    docs = make_run(3)
    _feed(writer, docs)
    assert consumed == [] and attempts == []  # the calls waited neither for storage nor recovery
    gate.set()
    uid = docs[0][1]["uid"]
    assert writer.drain(timeout=10)
    assert recovered == [uid]
    assert len(attempts) == 2  # first recovery failed, retried after back-off
    assert written == []  # the live write never completed
    status = writer.status()
    assert status["failed"] == 1 and status["recovered"] == 1
    assert status["pending_recovery"] == []
    writer.close()


def test_overflow_drops_run_from_live_writing_without_blocking():
    gate = threading.Event()
    recovered = []
    consumed = []

    def blocked(name, doc):
        gate.wait(10)  # storage hangs
        consumed.append(name)

    writer = BackgroundWriter(blocked, maxsize=3, recover=recovered.append)
    docs = make_run(20)
    _feed(writer, docs)
    assert consumed == []  # 24 documents into a queue of 3, all while storage hung
    uid = docs[0][1]["uid"]
    assert writer.pending_recovery == [uid]
    assert writer.status()["dropped"] > 0
    gate.set()  # storage is back
    assert writer.drain(timeout=10)
    assert recovered == [uid]
    writer.close()


def test_written_run_is_reported_and_close_is_idempotent():
    written = []
    docs_seen = []
    writer = BackgroundWriter(lambda n, d: docs_seen.append(n), on_written=written.append)
    docs = make_run(2)
    for name, doc in docs:
        writer(name, doc)
    assert writer.close(timeout=5)
    assert writer.close(timeout=5)
    assert written == [docs[0][1]["uid"]]
    # After close, documents are counted as dropped instead of queued.
    writer("start", docs[0][1])
    assert writer.status()["dropped"] == 1


@pytest.mark.parametrize("fsync", [False, True])
def test_journal_writes_each_document_once_and_syncs_only_as_asked(tmp_path, monkeypatch, fsync):
    # What keeps the journal cheap on the RunEngine thread: one write system call per
    # document (nothing buffered that a killed process could lose, nothing written
    # twice), and a sync per document only with fsync=True (the stop is always synced).
    journal = DocumentJournal(tmp_path, fsync=fsync)
    calls = {"write": 0, "fsync": 0}
    real_write, real_fsync = os.write, os.fsync

    def counted(name, real):
        def call(fd, *args):
            if fd in journal._fds.values():
                calls[name] += 1
            return real(fd, *args)

        return call

    monkeypatch.setattr(os, "write", counted("write", real_write))
    monkeypatch.setattr(os, "fsync", counted("fsync", real_fsync))
    docs = make_run(200)
    for name, doc in docs:
        journal(name, doc)
    monkeypatch.undo()
    assert calls["write"] == len(docs)
    assert calls["fsync"] == (len(docs) if fsync else 1)
    contents = read_journal(journal.path(docs[0][1]["uid"]))
    assert [n for n, _ in contents.documents] == [n for n, _ in docs]


# ---------------------------------------------------------------------------- run tracker
def _run_with_resource(run_start: bool):
    """start, descriptor, a stream_resource (with or without run_start), one datum, stop."""
    run = compose_run()
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "cam": {"source": "s", "dtype": "array", "shape": [1, 2], "external": "STREAM:"}
        },
    )
    compose = run.compose_stream_resource if run_start else compose_stream_resource
    resource = compose(
        mimetype="application/x-hdf5", uri="file://localhost/f.h5", data_key="cam", parameters={}
    )
    datum = resource.compose_stream_datum(
        indices={"start": 0, "stop": 1},
        seq_nums={"start": 1, "stop": 2},
        descriptor=desc.descriptor_doc,
    )
    stop = run.compose_stop()
    return run.start_doc, desc.descriptor_doc, resource.stream_resource_doc, datum, stop


def test_tracker_files_a_resource_without_run_start_under_the_only_open_run():
    tracker = RunTracker()
    start, desc, resource, _, _ = _run_with_resource(run_start=False)
    tracker.route("start", start)
    tracker.route("descriptor", desc)
    ((run, name, doc),) = tracker.route("stream_resource", resource)
    assert run == start["uid"] and doc["run_start"] == start["uid"]
    assert "run_start" not in resource  # a copy: other subscribers see the original


def test_tracker_holds_an_ambiguous_resource_until_its_datum_names_the_run():
    tracker = RunTracker()
    a = _run_with_resource(run_start=False)
    b = _run_with_resource(run_start=True)
    for start, desc, *_ in (a, b):
        tracker.route("start", start)
        tracker.route("descriptor", desc)
    # Run b started last, but a's resource is not b's: held until a datum names the run.
    assert tracker.route("stream_resource", a[2]) == []
    assert tracker.held() == [a[2]["uid"]]
    assert tracker.route("stream_resource", b[2]) == [(b[0]["uid"], "stream_resource", b[2])]
    released = tracker.route("stream_datum", a[3])
    assert [(run, name) for run, name, _ in released] == [
        (a[0]["uid"], "stream_resource"),
        (a[0]["uid"], "stream_datum"),
    ]
    assert released[0][2]["run_start"] == a[0]["uid"] and tracker.held() == []
    assert tracker.route("stream_datum", b[3])[0][0] == b[0]["uid"]
    for run in (a, b):
        assert tracker.route("stop", run[4])[0][0] == run[0]["uid"]


def test_tracker_forgets_an_unreferenced_held_resource_once_its_runs_end(caplog):
    tracker = RunTracker()
    a = _run_with_resource(run_start=False)
    b = _run_with_resource(run_start=True)
    for start, *_ in (a, b):
        tracker.route("start", start)
    assert tracker.route("stream_resource", a[2]) == []
    tracker.route("stop", a[4])
    assert tracker.held() == [a[2]["uid"]]  # b could still be its run
    tracker.route("stop", b[4])
    assert tracker.held() == []
    assert "no datum named its run" in caplog.text
