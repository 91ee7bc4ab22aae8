"""DocumentJournal and BackgroundWriter, without a tiled server."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from event_model import compose_run

from multiscope.callbacks.storage import (
    BackgroundWriter,
    DocumentJournal,
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


def _timed_calls(writer, docs) -> list[float]:
    times = []
    for name, doc in docs:
        t0 = time.perf_counter()
        writer(name, doc)
        times.append(time.perf_counter() - t0)
    return times


def test_slow_consumer_never_blocks_caller():
    seen = []

    def slow(name, doc):
        time.sleep(1.0)
        seen.append(name)

    writer = BackgroundWriter(slow)
    docs = make_run(2)
    times = _timed_calls(writer, docs)
    assert max(times) < 0.01, times  # ms, not the consumer's 1 s
    assert writer.status()["queued"] >= len(docs) - 1
    assert writer.drain(timeout=len(docs) + 5)
    assert seen == [n for n, _ in docs]
    assert writer.status()["written"] == len(docs)
    assert writer.close()


def test_raising_consumer_marks_run_for_recovery_and_recovers():
    recovered = []
    written = []
    attempts = []

    def broken(name, doc):
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
    times = _timed_calls(writer, docs)
    assert max(times) < 0.01, times
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

    def blocked(name, doc):
        gate.wait(10)  # storage hangs

    writer = BackgroundWriter(blocked, maxsize=3, recover=recovered.append)
    docs = make_run(20)
    times = _timed_calls(writer, docs)
    assert max(times) < 0.01, times
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
def test_journal_cost_per_event_is_small(tmp_path, fsync):
    journal = DocumentJournal(tmp_path, fsync=fsync)
    docs = make_run(200)
    t0 = time.perf_counter()
    for name, doc in docs:
        journal(name, doc)
    per_doc = (time.perf_counter() - t0) / len(docs)
    assert per_doc < (0.05 if fsync else 0.005), per_doc
