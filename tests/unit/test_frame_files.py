"""FrameReader reads the right frames while the same file is read elsewhere in the process.

HDF5 shares one open dataset among all identifiers of it in a process, whichever
``h5py.File`` opened them, and ``H5Drefresh`` with a second identifier open leaves the
chunk index unbuilt: every chunk then reads as the first (here: every frame as frame 0).
The live reconstruction and a plan reading its survey, two readers in two threads,
met exactly so (scout and zoom: 44 to 93 of 121 projections were frame 0).

The frames are written by the IOC's own HDF5 writer; frame ``k`` holds ``k`` everywhere,
so a wrong frame shows as a wrong value.
"""

import threading

import h5py
import numpy as np
import pytest
from waiting import wait_until

from multiscope.frame_files import DatasetOpenElsewhereError, FrameReader
from sim_devices.areadetector import DATA_PATH, HDF5FrameWriter

N_FRAMES = 24
SHAPE = (16, 16)


@pytest.fixture()
def frames_file(tmp_path):
    writer = HDF5FrameWriter(tmp_path / "frames.h5", SHAPE)
    for k in range(N_FRAMES):
        writer.write(np.full(SHAPE, k, np.uint16), {"theta": 0.5 * k}, k + 100, 0.0)
    writer.close()
    return writer.path


def _resource(path):
    return {"uid": "res", "uri": f"file://localhost{path}", "data_key": "cam_image",
            "parameters": {"dataset": DATA_PATH}}  # fmt: skip


def _datum(k):
    return {
        "uid": f"datum{k}",
        "stream_resource": "res",
        "descriptor": "desc",
        "indices": {"start": k, "stop": k + 1},
        "seq_nums": {"start": k + 1, "stop": k + 2},
    }


def _reader(path):
    reader = FrameReader()
    reader.add_resource(_resource(path))
    return reader


def _open_datasets(path):
    with h5py.File(path, "r", swmr=True) as f:
        return len(h5py.h5f.get_obj_ids(f.id, types=h5py.h5f.OBJ_DATASET))


def test_two_readers_in_two_threads_read_every_frame_right(frames_file):
    """The live reconstruction's reader and the plan's reader, interleaved by two threads."""
    rounds = 6
    start = threading.Barrier(2, timeout=30)
    wrong: dict[str, list] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def read_all(name):
        reader = _reader(frames_file)
        try:
            start.wait()
            for _ in range(rounds):
                for k in range(N_FRAMES):
                    block = reader.read(_datum(k), attributes=("theta",))
                    if int(block.data[0, 0, 0]) != k or block.attributes["theta"][0] != 0.5 * k:
                        wrong[name].append((k, int(block.data[0, 0, 0])))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            reader.close()

    threads = [threading.Thread(target=read_all, args=(name,)) for name in wrong]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert wrong == {"a": [], "b": []}, {k: len(v) for k, v in wrong.items()}


def test_a_dataset_held_open_elsewhere_is_refused_not_read_as_frame_0(frames_file):
    reader = _reader(frames_file)
    reader.timeout = 0.05  # the other handle stays open: waiting for it ends there
    with h5py.File(frames_file, "r", swmr=True) as other:
        held = other[DATA_PATH]
        with pytest.raises(DatasetOpenElsewhereError, match="open 1 more time"):
            reader.read(_datum(5))
        held.id.close()
        # Once the other handle is closed the frames read right again.
        assert [int(reader.read(_datum(k)).data[0, 0, 0]) for k in range(N_FRAMES)] == list(
            range(N_FRAMES)
        )
    reader.close()


def test_a_reader_waits_for_a_brief_handle_elsewhere_to_close(frames_file):
    reader = _reader(frames_file)
    reader.timeout = 30.0  # a limit: the handle closes as soon as the reader has met it
    attempts = []
    read_once = reader._read_once

    def counted(*args):
        attempts.append(1)
        return read_once(*args)

    reader._read_once = counted
    other = h5py.File(frames_file, "r", swmr=True)
    held = other[DATA_PATH]
    result = {}
    thread = threading.Thread(target=lambda: result.update(block=reader.read(_datum(7))))
    thread.start()
    wait_until(lambda: len(attempts) >= 2, timeout=30, message="the reader never met the handle")
    held.id.close()
    thread.join(timeout=30)
    other.close()
    assert not thread.is_alive() and int(result["block"].data[0, 0, 0]) == 7
    reader.close()


def test_no_dataset_stays_open_between_reads_even_after_a_timeout(frames_file):
    reader = _reader(frames_file)
    reader.timeout = 0.05
    assert int(reader.read(_datum(3), attributes=("theta",)).data[0, 0, 0]) == 3
    assert _open_datasets(frames_file) == 0
    late = {**_datum(N_FRAMES), "indices": {"start": N_FRAMES, "stop": N_FRAMES + 1}}
    with pytest.raises(TimeoutError) as caught:
        reader.read(late)
    # The error (and its traceback) keeps no dataset open: the next reader may refresh.
    assert caught.value is not None and _open_datasets(frames_file) == 0
    reader.close()
