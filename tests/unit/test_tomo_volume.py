"""Whole-volume reconstruction slab by slab: local threads and a dask LocalCluster.

Each pipeline is checked against :func:`multiscope.analysis.tomo.reconstruct` of
the whole stack at once (the single-process reference), on line integrals of a
scan of spheres (128 columns, 181 angles).
"""

import os
import threading

import h5py
import numpy as np
import pytest

from multiscope import compute
from multiscope.analysis import tomo
from multiscope.analysis.stitch import stitch_vertical as local_stitch
from multiscope.analysis.tomo_volume import reconstruct_volume

N, ANGLES, CENTER = 128, 181, 67.3


def line_integrals(rows, seed=0):
    """Chords of random spheres, ``(angles, rows, N)`` float32 (exact line integrals)."""
    rng = np.random.default_rng(seed)
    theta = np.linspace(0, np.pi, ANGLES)
    s = np.arange(N) - CENTER
    z = np.arange(rows)
    lines = np.zeros((ANGLES, rows, N), np.float32)
    for _ in range(12):
        x, y = rng.uniform(-35, 35, 2)
        zc, rad, mu = rng.uniform(0, rows), rng.uniform(4, 12), rng.uniform(0.01, 0.05)
        rho2 = np.clip(rad**2 - (z - zc) ** 2, 0, None)
        d2 = (s[None, :] - (x * np.cos(theta) - y * np.sin(theta))[:, None]) ** 2
        lines += 2 * mu * np.sqrt(np.clip(rho2[None, :, None] - d2[:, None, :], 0, None))
    return theta, lines


def close(a, b):
    """Equal within the NUFFT's float rounding (its sums run in another order)."""
    return np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))


@pytest.mark.parametrize(("rows", "slab_rows", "circle"), [(36, 16, False), (37, 8, True)])
def test_slabs_equal_one_reconstruction(rows, slab_rows, circle):
    # 37 rows: the last slab holds an odd row (the lone-slice path of reconstruct).
    theta, lines = line_integrals(rows)
    reference = tomo.reconstruct(lines, theta, CENTER, circle=circle)
    volume = np.full_like(reference, np.nan)

    def write(r0, slab):
        volume[r0 : r0 + len(slab)] = slab

    timings = reconstruct_volume(
        lambda a, b: lines[:, a:b], write, rows, theta, CENTER, N,
        slab_rows=slab_rows, threads=2, circle=circle,
    )  # fmt: skip
    assert timings.slabs == -(-rows // slab_rows)
    assert timings.compute > 0 and len(timings.per_slab) == timings.slabs
    assert close(volume, reference)
    # Not all zero: the comparison compares something.
    assert np.abs(reference).max() > 0.01


def test_reading_and_writing_overlap_computing():
    # The writer of slab 0 waits for the reader to start slab 2: a pipeline that
    # read, computed and wrote in turn would never call read(2) before write(0) ends.
    theta, lines = line_integrals(24)
    read_slab_2 = threading.Event()
    seen = {}

    def read(a, b):
        if a == 16:
            read_slab_2.set()
        return lines[:, a:b]

    def write(r0, slab):
        if r0 == 0:
            seen["read 2 before write 0 ended"] = read_slab_2.wait(timeout=30)
        seen.setdefault("threads", set()).add(threading.current_thread().name)

    reconstruct_volume(read, write, 24, theta, CENTER, N, slab_rows=8, threads=1)
    assert seen["read 2 before write 0 ended"]
    assert seen["threads"] != {threading.main_thread().name}


def test_h5_file_to_file(tmp_path):
    theta, lines = line_integrals(20)
    source = tmp_path / "lines.h5"
    with h5py.File(source, "w") as f:
        f.create_dataset("/exchange/data", data=lines, chunks=(1, 20, N))
    out = tmp_path / "recon.h5"
    timings = compute.reconstruct_volume_h5(
        source, out, theta, CENTER, slab_rows=8, scheduler=None, attrs={"center_px": CENTER}
    )
    with h5py.File(out, "r") as f:
        volume = f[compute.VOLUME_DATASET][()]
        assert f[compute.VOLUME_DATASET].attrs["center_px"] == CENTER
    assert close(volume, tomo.reconstruct(lines, theta, CENTER))
    assert timings.slabs == 3 and not out.with_name("recon.h5.part").exists()


def test_scheduler_address_from_the_environment(monkeypatch):
    monkeypatch.delenv(compute.SCHEDULER_ENV, raising=False)
    assert compute.scheduler_address() is None
    monkeypatch.setenv(compute.SCHEDULER_ENV, " tcp://10.1.2.3:8786 ")
    assert compute.scheduler_address() == "tcp://10.1.2.3:8786"
    assert compute.scheduler_address("tcp://a:1") == "tcp://a:1"


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each; closed, with their processes, after."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        memory_limit="1GiB",
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        processes = [w.process.process for w in cluster.workers.values()]
        cluster.close()
        assert all(not p.is_alive() for p in processes if p is not None)


def test_cluster_volume_equals_single_process(cluster, tmp_path):
    theta, lines = line_integrals(64)
    source = tmp_path / "lines.h5"
    with h5py.File(source, "w") as f:
        f.create_dataset("/exchange/data", data=lines)
    out = tmp_path / "recon.h5"
    timings = compute.reconstruct_volume_h5(
        source, out, theta, CENTER, slab_rows=16, scheduler=cluster
    )
    with h5py.File(out, "r") as f:
        volume = f[compute.VOLUME_DATASET][()]
    assert timings.slabs == 4
    assert close(volume, tomo.reconstruct(lines, theta, CENTER))
    # Both workers took slabs (each task reads its own rows from the file).
    assert len(cluster.scheduler_info()["workers"]) == 2

    # In-memory line integrals (the end-of-scan reconstruction) go as slabs.
    in_memory, _ = compute.reconstruct_array(lines[:, :20], theta, CENTER, scheduler=cluster)
    assert close(in_memory, volume[:20])


def test_cluster_stitching_equals_local(cluster):
    rng = np.random.default_rng(3)
    from scipy import ndimage

    whole = ndimage.gaussian_filter(rng.random((70, 32, 32), dtype=np.float32), 1.5)
    tiles = [whole[:30], whole[22:52], whole[44:]]
    merged, offsets = compute.stitch_vertical(tiles, 8, scheduler=cluster)
    ref_merged, ref_offsets = local_stitch(tiles, 8)
    np.testing.assert_allclose(offsets, ref_offsets, atol=1e-9)
    np.testing.assert_allclose(merged, ref_merged, atol=1e-6)
    assert np.allclose(offsets[:, 0], [0, 22, 44], atol=0.1)


def test_the_pipeline_reconstructs_on_the_configured_cluster(cluster, tmp_path):
    # The session option reaches the end-of-scan reconstruction: the same run
    # reconstructed here and on the cluster gives the same volume.
    from synthetic_tomo import RunSpec, random_spheres, tomo_run

    from multiscope.callbacks.pipelines import TomographyPipeline

    spheres = random_spheres(np.random.default_rng(0), 3, z_range=(0, 12), lateral=18)
    spec = RunSpec(spheres, ny=12, nx=48, num_projections=36, center=23.5, seed=0)
    docs = list(tomo_run(spec, tmp_path / "raw"))
    volumes = []
    for scheduler in ("", cluster):
        pipeline = TomographyPipeline(
            tmp_path / str(len(volumes)), publish=lambda *_: None, dask_scheduler=scheduler
        )
        for name, doc in docs:
            pipeline(name, doc)
        recon = pipeline.reconstructions[-1]
        assert recon.dask_scheduler is scheduler and recon.volume is not None
        volumes.append(recon.volume)
    assert close(volumes[1], volumes[0])
    assert np.abs(volumes[0]).max() > 0.005


# ----------------------------------------------------------------- a worker dies mid-slab


def _stall_first_slab(marker: str, dask_worker=None):
    """In one worker: its first slab task writes ``marker`` (its PID) and never returns.

    Tasks name ``multiscope.compute._slab_task`` by reference, so the worker runs this
    stand-in; the test kills the worker while it is inside the task. A restarted worker
    is a new process with the real function.
    """
    import os  # noqa: PLC0415 (runs in the worker)
    import threading  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import multiscope.compute as worker_compute  # noqa: PLC0415

    def stalled(*_args):
        Path(marker).write_text(str(os.getpid()))
        threading.Event().wait()

    worker_compute._slab_task = stalled


def _kill_a_worker_mid_slab(client, tmp_path) -> threading.Thread:
    """Stall one worker's first slab, and SIGKILL that worker from a thread once inside it."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from waiting import wait_until  # noqa: PLC0415

    marker = tmp_path / "stalled.pid"
    doomed = next(iter(client.scheduler_info()["workers"]))
    client.run(_stall_first_slab, str(marker), workers=[doomed])

    def kill():
        pid = wait_until(lambda: marker.exists() and marker.read_text(), timeout=60,
                         interval=0.01, message="no slab reached the stalled worker")  # fmt: skip
        kill.pid = int(pid)
        os.kill(kill.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer, kill


def _lines_file(tmp_path, rows):
    theta, lines = line_integrals(rows)
    source = tmp_path / "lines.h5"
    with h5py.File(source, "w") as f:
        f.create_dataset("/exchange/data", data=lines)
    return theta, lines, source


def test_a_worker_killed_mid_slab_leaves_the_volume_complete_and_identical(cluster, tmp_path):
    # dask re-runs the slab of the dead worker elsewhere; each slab is written once.
    client = cluster
    client.wait_for_workers(2, timeout=60)  # a worker killed before has been restarted
    theta, lines, source = _lines_file(tmp_path, 48)
    killer, kill = _kill_a_worker_mid_slab(client, tmp_path)
    out = tmp_path / "recon.h5"
    timings = compute.reconstruct_volume_h5(
        source, out, theta, CENTER, slab_rows=8, scheduler=client
    )
    killer.join(30)
    assert kill.pid not in client.run(os.getpid).values()  # that worker really died
    assert timings.slabs == 6
    with h5py.File(out, "r") as f:
        volume = f[compute.VOLUME_DATASET][()]
    assert close(volume, tomo.reconstruct(lines, theta, CENTER))
    assert not out.with_name("recon.h5.part").exists()


def test_a_slab_lost_for_good_raises_and_leaves_no_volume(cluster, tmp_path):
    # No retry allowed: the death of the worker fails the slab; the reconstruction
    # says so, and neither the volume nor its partial file is left behind.
    from distributed import KilledWorker

    client = cluster
    client.wait_for_workers(2, timeout=60)
    scheduler = client.cluster.scheduler  # a LocalCluster's, in this process
    theta, _, source = _lines_file(tmp_path, 48)
    scheduler.allowed_failures = 0
    try:
        killer, _ = _kill_a_worker_mid_slab(client, tmp_path)
        out = tmp_path / "recon.h5"
        with pytest.raises(KilledWorker):
            compute.reconstruct_volume_h5(source, out, theta, CENTER, slab_rows=8, scheduler=client)
        killer.join(30)
    finally:
        scheduler.allowed_failures = 3  # distributed's default, for the module's later use
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.h5", "stalled.pid"]
