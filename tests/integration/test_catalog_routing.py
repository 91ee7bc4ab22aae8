"""Runs from two threads at once are filed apart: journal, live writer, catalog, recovery.

The RunEngine thread writes raw runs while the live-analysis thread publishes
derived runs through the same :class:`~multiscope.catalog.CatalogWriter`. The raw
runs' ``stream_resource`` documents carry no ``run_start``, as devices compose them
(bluesky's RunEngine adds it; the hardest case is a sender that does not); the
derived runs' do (``derived_run_documents``). The two
threads emit in lock-step, one document each per step, so the runs overlap in
ever-changing phases; the tests check that every resource and datum is filed
under its own run in the journal files, in what the live writer receives, in the
catalog read back through tiled, and after ``multiscope catalog recover``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from event_model import RunRouter, compose_run, compose_stream_resource

from multiscope.callbacks.storage import (
    COMMITTED_SUBDIR,
    BackgroundWriter,
    DocumentJournal,
    read_journal,
)
from multiscope.callbacks.tomo import derived_run_documents, write_volume
from multiscope.catalog import Catalog, CatalogWriter

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:uvicorn.*"),
]

NY, NX = 2, 3
CAMERA_KEY = "cam"


@dataclass
class SyntheticRun:
    """The documents of one run and what must be filed under it."""

    kind: str  # "raw" or "derived"
    documents: list[tuple[str, dict]]
    data_file: Path
    array_key: str
    frames: np.ndarray
    uid: str = field(init=False)
    resources: set[str] = field(init=False)
    datums: set[str] = field(init=False)
    events: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.uid = self.documents[0][1]["uid"]
        self.resources = {d["uid"] for n, d in self.documents if n == "stream_resource"}
        self.datums = {d["uid"] for n, d in self.documents if n == "stream_datum"}
        self.events = {d["uid"] for n, d in self.documents if n == "event"}

    def journal_documents(self) -> list[tuple[str, dict]]:
        """The documents as the journal must hold them: resources carry ``run_start``."""
        out = []
        for name, doc in self.documents:
            if name == "stream_resource":
                doc = {**doc, "run_start": self.uid}
            out.append((name, json.loads(json.dumps(doc))))
        return out


def raw_run(index: int, n_frames: int, directory: Path | None) -> SyntheticRun:
    """A step scan of a camera that writes one frame per point, as the RunEngine emits it.

    The frames of run ``index`` are all ``index``, so a frame read from the wrong
    run's file shows it. ``directory`` None: documents only, no file.
    """
    run = compose_run(metadata={"plan_name": "raw_scan", "index": index})
    path = (directory or Path("/nonexistent")) / f"raw_{index}.h5"
    frames = np.full((n_frames, 1, NY, NX), index, np.uint16)
    if directory is not None:
        with h5py.File(path, "w") as f:
            f.create_dataset("/entry/data/data", data=frames[:, 0], chunks=(1, NY, NX))
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            CAMERA_KEY: {
                "source": "sim", "dtype": "array", "dtype_numpy": "<u2",
                "shape": [1, NY, NX], "external": "STREAM:",
            },
            "x": {"source": "sim", "dtype": "number", "shape": []},
        },
    )  # fmt: skip
    # Composed without run_start, as ophyd devices do.
    resource = compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{path}",
        data_key=CAMERA_KEY,
        parameters={"dataset": "/entry/data/data", "chunk_shape": [1, NY, NX]},
    )
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs.append(("stream_resource", resource.stream_resource_doc))
    for i in range(n_frames):
        datum = resource.compose_stream_datum(
            indices={"start": i, "stop": i + 1},
            seq_nums={"start": i + 1, "stop": i + 2},
            descriptor=desc.descriptor_doc,
        )
        docs.append(("stream_datum", datum))
        event = desc.compose_event(
            data={"x": float(index + i)}, timestamps={"x": time.time()}, seq_num=i + 1
        )
        docs.append(("event", event))
    docs.append(("stop", run.compose_stop(exit_status="success")))
    return SyntheticRun("raw", docs, path, CAMERA_KEY, frames)


def derived_run(index: int, directory: Path | None) -> SyntheticRun:
    """A one-volume derived run as the reconstruction publishes it (volume filled ``index``)."""
    path = (directory or Path("/nonexistent")) / f"recon_{index}.h5"
    volume = np.full((2, 3, 3), index, np.float32)
    if directory is not None:
        write_volume(path, volume, {"index": index})
    docs = derived_run_documents(
        {"plan_name": "tomo_reconstruction", "index": index},
        volume_path=path,
        volume_shape=volume.shape,
        scalars={"center_px": float(index)},
    )
    # The catalog adds the event dimension to the datum's (1, z, y, x).
    return SyntheticRun("derived", docs, path, "volume", volume[None, None])


def make_runs(n_raw: int, directory: Path | None, seed: int = 0):
    """``n_raw`` raw runs of 1-6 frames (varied phases) and as many derived runs as make
    about as many documents, so that the two threads overlap from first to last."""
    rng = np.random.default_rng(seed)
    raw = [raw_run(i, int(rng.integers(1, 7)), directory) for i in range(n_raw)]
    derived = [derived_run(1000, directory)]
    n_documents = sum(len(run.documents) for run in raw)
    while len(derived) * len(derived[0].documents) < n_documents:
        derived.append(derived_run(1000 + len(derived), directory))
    return raw, derived


def emit_in_lockstep(writer, raw: list[SyntheticRun], derived: list[SyntheticRun]) -> int:
    """Send the raw runs from one thread and the derived runs from another, one document
    each per step (which of the two goes first in a step is up to the scheduler).

    Returns
    -------
    int
        Raw ``stream_resource`` documents sent while a derived run was open: the
        interleavings that a "last run started" rule files under the wrong run.
    """
    barrier = threading.Barrier(2)
    order = itertools.count()  # next() is atomic: one global sequence for both threads
    sent: dict[str, list[tuple[int, str, str]]] = {"raw": [], "derived": []}
    errors: list[BaseException] = []

    def emit(kind: str, runs: list[SyntheticRun]) -> None:
        try:
            for run in runs:
                for name, doc in run.documents:
                    with contextlib.suppress(threading.BrokenBarrierError):
                        barrier.wait(timeout=60)
                    writer(name, doc)
                    sent[kind].append((next(order), name, run.uid))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            barrier.abort()  # the other thread goes on alone

    threads = [
        threading.Thread(target=emit, args=("raw", raw), name="RunEngine"),
        threading.Thread(target=emit, args=("derived", derived), name="live-analysis"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive()
    assert not errors, errors
    windows = []  # (start seq, stop seq) of each derived run
    for seq, name, _ in sent["derived"]:
        if name == "start":
            windows.append([seq, None])
        elif name == "stop":
            windows[-1][1] = seq
    return sum(
        any(a < seq < b for a, b in windows)
        for seq, name, _ in sent["raw"]
        if name == "stream_resource"
    )


def check_journals(journal_dir: Path, runs: list[SyntheticRun]) -> None:
    """Each run's journal holds exactly its own documents, in order, resources with run_start."""
    for run in runs:
        path = journal_dir / COMMITTED_SUBDIR / f"{run.uid}.jsonl"
        if not path.exists():
            path = journal_dir / f"{run.uid}.jsonl"
        contents = read_journal(path)
        assert contents.bad_lines == 0
        assert contents.documents == run.journal_documents(), f"{run.kind} run {run.uid}"


def _run_collector(received: dict[str, dict[str, set]]):
    """A RunRouter factory (as TiledWriter's) noting the uids each run's callback receives."""

    def factory(name, start):
        seen = received.setdefault(start["uid"], {})

        def callback(name, doc):
            uids = doc["uid"] if name == "event_page" else [doc["uid"]]
            seen.setdefault(name.replace("event_page", "event"), set()).update(uids)

        return [callback], []

    return factory


def test_two_threads_file_every_document_under_its_run(tmp_path):
    """200 raw and ~370 derived runs from two threads: the journal files and the live
    writer (through event-model's RunRouter, as TiledWriter routes) get each resource,
    datum and event under its own run."""
    received: dict[str, dict[str, set]] = {}
    background = BackgroundWriter(RunRouter([_run_collector(received)]))
    writer = CatalogWriter(DocumentJournal(tmp_path / "journal"), background)
    raw, derived = make_runs(200, None, seed=1)

    ambiguous = emit_in_lockstep(writer, raw, derived)

    assert background.drain(60)
    status = writer.status()
    assert status["failed"] == status["dropped"] == 0, status
    assert status["open_runs"] == [] and writer.tracker.held() == []
    # Most raw resources arrived while a derived run was open: the case under test.
    assert ambiguous >= len(raw) // 2, ambiguous
    check_journals(tmp_path / "journal", raw + derived)
    for run in raw + derived:
        seen = received[run.uid]
        assert seen["stream_resource"] == run.resources, run.uid
        assert seen["stream_datum"] == run.datums, run.uid
        assert seen["event"] == run.events, run.uid
    assert len(received) == len(raw) + len(derived)
    background.close()


# ---------------------------------------------------------------------------- with tiled
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("routing")


@pytest.fixture(scope="module")
def catalog(data_dir):
    cat = Catalog.embedded(data_dir)
    yield cat
    cat.close()


def snapshot(catalog: Catalog, run: SyntheticRun) -> dict:
    """What the catalog holds of a run: metadata, event table, array and its file.

    Few requests on purpose: the test runs on a loaded machine.
    """
    node = catalog.run(run.uid)
    stream = node["primary"]
    table = stream.base["internal"].read()
    array = stream[run.array_key]
    sources = [
        (s.mimetype, s.parameters, s.structure["shape"], [a.data_uri for a in s.assets])
        for s in array.data_sources()
    ]
    return {
        "metadata": dict(node.metadata),
        "stream": dict(stream.metadata),
        "table": {column: table[column].tolist() for column in table.columns},
        "array": array.read().tolist(),
        "sources": sources,
    }


def check_catalog(catalog: Catalog, run: SyntheticRun, snap: dict) -> None:
    """The run's array is read from its own file, with one row per datum (frame) of its own."""
    assert snap["metadata"]["start"]["uid"] == run.uid
    assert snap["metadata"]["stop"]["exit_status"] == "success"
    ((mimetype, _, shape, uris),) = snap["sources"]
    assert mimetype == "application/x-hdf5"
    assert uris == [f"file://localhost{run.data_file}"], run.uid
    assert shape == list(run.frames.shape)
    np.testing.assert_array_equal(snap["array"], run.frames)
    assert len(snap["table"]["seq_num"]) == len(run.events)


def test_interleaved_runs_are_filed_apart_in_catalog_and_recover_identically(catalog, data_dir):
    """5 raw and ~9 derived runs from two threads: each in the catalog with its own
    resource and datums, journals likewise; `multiscope catalog recover` rebuilds them
    identically after they are deleted from the catalog."""
    assets = data_dir / "assets" / "routing"
    assets.mkdir(parents=True)
    raw, derived = make_runs(5, assets, seed=2)
    runs = raw + derived

    t0 = time.perf_counter()
    ambiguous = emit_in_lockstep(catalog.writer(), raw, derived)
    assert catalog.drain(120)
    t_written = time.perf_counter()
    status = catalog.status()
    assert status["failed"] == status["dropped"] == 0, status
    assert ambiguous >= len(raw) // 2, ambiguous
    check_journals(data_dir / "journal", runs)
    before = {run.uid: snapshot(catalog, run) for run in runs}
    t_read = time.perf_counter()
    for run in runs:
        check_catalog(catalog, run, before[run.uid])

    # Lose the runs from the catalog; keep their journals; recover with the CLI.
    catalog.client.delete_contents([r.uid for r in runs], recursive=True, external_only=False)
    journal_dir = data_dir / "journal"
    for run in runs:
        os.replace(journal_dir / COMMITTED_SUBDIR / f"{run.uid}.jsonl",
                   journal_dir / f"{run.uid}.jsonl")  # fmt: skip
    server = catalog._server
    result = subprocess.run(
        [sys.executable, "-m", "multiscope", "--data-dir", str(data_dir),
         "catalog", "--catalog", f"{server.url}/api/v1/metadata/raw", "recover"],
        env={**os.environ, "MULTISCOPE_TILED_API_KEY": server.api_key},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    t_recovered = time.perf_counter()
    written = [line for line in result.stdout.splitlines() if "  written  " in line]
    assert len(written) == len(runs), result.stdout
    after = {run.uid: snapshot(catalog, run) for run in runs}
    for run in runs:
        assert after[run.uid] == before[run.uid], f"{run.kind} run {run.uid}"
    print(
        f"{len(runs)} runs: written {t_written - t0:.1f} s, read {t_read - t_written:.1f} s, "
        f"recovered by the CLI {t_recovered - t_read:.1f} s"
    )
    check_journals(data_dir / "journal", runs)
