"""The PFIB-SEM sample state and renderer (sim_devices.physics.fibsem_scene), no network."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from sim_devices.fibsem_truth import frames_truth, truth_labels
from sim_devices.physics.fibsem_scene import (
    DRIFT_STEP_UM,
    PT_INFILTRATION_UM,
    SPUTTER_YIELD_UM3_PER_NC,
    FibsemScene,
    SampleState,
    mill_time_s,
)
from sim_devices.physics.serial_phantom import LABEL


@pytest.fixture(scope="module")
def scene():
    return FibsemScene.build("assb", seed=0)


def cut(state, n, thickness=0.06):
    for _ in range(n):
        state.start_cut()
        state.finish_cut(thickness)


def test_nominal_and_true_depth_after_cuts():
    state = SampleState(seed=3)
    cut(state, 50)
    assert state.slices == 50 and state.last_complete
    assert state.face_depth_um == pytest.approx(50 * 0.06, abs=1e-12)
    # True = nominal x (1 + 3 % g) per cut: the sum of 50 errors has sigma 0.03 * 0.06 * sqrt(50)
    # = 0.0127 um; 5 sigma bounds it, and it is not exactly nominal.
    error = state.true_depth_um - state.face_depth_um
    assert 1e-6 < abs(error) < 5 * 0.03 * 0.06 * np.sqrt(50)
    # Drift is a random walk of 0.04 um per cut and axis: 5 sigma after 50 cuts.
    assert 0 < np.hypot(state.drift_x_um, state.drift_y_um) < 5 * DRIFT_STEP_UM * np.sqrt(100)


def test_same_seed_same_sequence_even_across_a_reload(tmp_path):
    first, second = SampleState(seed=5), SampleState(seed=5)
    cut(first, 6)
    cut(second, 3)
    second.save(tmp_path / "state.json")
    reloaded = SampleState.load(tmp_path / "state.json")
    cut(reloaded, 3)
    assert reloaded == first
    assert SampleState(seed=6) != first


def test_stopped_cut_counts_pro_rata():
    state = SampleState(seed=1)
    state.start_cut()
    assert state.slices == 1 and not state.last_complete  # counted before it mills
    state.finish_cut(0.1, fraction=0.4)
    assert state.slices == 1 and not state.last_complete
    assert state.face_depth_um == pytest.approx(0.04, abs=1e-12)
    assert state.true_depth_um == pytest.approx(0.04, rel=0.2)  # 3 % sigma: 6 sigma


def test_deposit_fills_pores_and_polish_removes_the_cap_first():
    state = SampleState(seed=2)
    cut(state, 10)
    true_depth, nominal = state.true_depth_um, state.face_depth_um
    state.deposit(0.5)
    assert state.cap_um == pytest.approx(0.5)
    assert state.pt_filled == [[true_depth, true_depth + PT_INFILTRATION_UM]]
    assert state.filled_to_um == pytest.approx(nominal + PT_INFILTRATION_UM)
    assert state.face_state().pt_at(true_depth + 1.0)
    state.start_cut(polish=True)
    state.finish_cut(0.2, polish=True)  # all of it into the cap
    assert state.polishes == 1 and state.cap_um == pytest.approx(0.3)
    assert state.face_depth_um == pytest.approx(nominal)
    state.start_cut(polish=True)
    state.finish_cut(0.5, polish=True)  # 0.3 of cap, then 0.2 of sample
    assert state.cap_um == 0.0
    assert state.face_depth_um == pytest.approx(nominal + 0.2)


def test_state_json_round_trip_and_atomic_write(tmp_path):
    state = SampleState(kind="nmc", seed=4)
    cut(state, 2)
    state.deposit(0.3)
    path = tmp_path / "sub" / "state.json"
    state.save(path)
    assert json.loads(path.read_text())["slices"] == 2
    assert SampleState.load(path) == state
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary left


def test_mill_time_formula():
    # 40 x 20 x 0.06 um^3 at 2 um^3/nC and 1 nA: 48 / 2 = 24 s
    assert mill_time_s(40, 20, 0.06, 2.0, 1.0) == pytest.approx(24.0)
    assert mill_time_s(40, 20, 0.06, 2.0, 0.0) == np.inf
    assert all(1.0 <= y <= 5.0 for y in SPUTTER_YIELD_UM3_PER_NC.values())


def test_default_block_holds_every_field(scene):
    assert scene.contains_fields()
    g = scene.geometry
    assert g.sims_shape[0] * g.sims_pixel_um == pytest.approx(36.0)


def test_render_all_modalities_at_the_seed_sizes(scene):
    # Speed is measured in bench/fibsem.py (docs/benchmarks.md: ~0.5 s for all three),
    # not asserted here: a wall-clock limit fails on a loaded CI machine.
    state = SampleState()
    rng = np.random.default_rng(0)
    sem = scene.sem(state, rng=rng)
    eds = scene.eds(state, rng=rng)
    sims = scene.sims(state, rng=rng)
    assert sem["cbs"].shape == sem["tld"].shape == (384, 512)
    assert {m.shape for m in eds.values()} == {(216, 352)} and len(eds) == 7
    assert {m.shape for m in sims.values()} == {(500, 500)} and list(sims) == ["6Li+", "7Li+"]


def test_sims_counts_follow_the_primary_dose(scene):
    """Twice the ion current, or twice the frame time, twice the 6Li+ counts; none without."""
    state = SampleState()

    def counts(**dose):
        return float(scene.sims(state, rng=np.random.default_rng(1), **dose)["6Li+"].sum())

    reference = counts()  # 300 s at 1 nA
    assert reference > 1e5
    assert counts(current_na=2.0) == pytest.approx(2 * reference, rel=0.01)
    assert counts(frame_time_s=150.0) == pytest.approx(0.5 * reference, rel=0.01)
    assert counts(current_na=0.0) == 0.0


def test_fiducial_visible_and_follows_drift(scene):
    state = SampleState()
    g = scene.geometry
    pixel = g.sem_pixel_um
    labels = scene.sem(state, rng=np.random.default_rng(1))["labels"]
    cap_rows = int(g.cap_into_um / pixel)
    assert (labels[: cap_rows - 2] != LABEL["pt"]).sum() > 0  # the X's grooves
    cbs = scene.sem(state, rng=np.random.default_rng(1), dwell_us=10.0)["cbs"].astype(float)
    fy, fx = g.fiducial_um
    row = int((fy - g.sem_origin_um[0]) / pixel)
    col = int((fx - g.sem_origin_um[1]) / pixel)
    centre = cbs[row - 2 : row + 3, col - 2 : col + 3].mean()  # the X's crossing: a groove
    cap = cbs[row - 2 : row + 3, col + 40 : col + 45].mean()  # plain Pt beside the X
    assert centre < 0.3 * cap  # dark grooves in bright Pt
    assert cap > np.median(cbs[cap_rows + 10 :])  # Pt brighter than the face below
    # 1 um of drift in x moves the X 20 pixels left in the image.
    state.drift_x_um = 1.0
    shifted = scene.sem(state, rng=np.random.default_rng(1))["labels"]
    np.testing.assert_array_equal(shifted[:cap_rows, : 512 - 20], labels[:cap_rows, 20:])


def test_deposited_cap_hides_the_face_until_polished(scene):
    state = SampleState()
    state.deposit(0.2)
    labels = scene.sem(state, (32, 32), rng=np.random.default_rng(0))["labels"]
    assert (labels == LABEL["pt"]).all()
    state.start_cut(polish=True)
    state.finish_cut(0.3, polish=True)
    labels = scene.sem(state, (32, 32), rng=np.random.default_rng(0))["labels"]
    assert not (labels == LABEL["pt"]).all()


def test_truth_matches_the_rendered_face_below_the_cap(scene):
    state = SampleState()
    cut(state, 3)
    g = scene.geometry
    origin = scene.field_origin_um(state, g.sem_shape, g.sem_pixel_um)
    rendered = scene.sem(state, rng=np.random.default_rng(0))["labels"]
    truth = truth_labels("assb", 0, [state.true_depth_um], g.sem_shape, g.sem_pixel_um, origin)
    below = int(g.cap_into_um / g.sem_pixel_um) + 1
    np.testing.assert_array_equal(truth[0, below:], rendered[below:])


def test_truth_command_line_writes_labels(tmp_path):
    import h5py

    from sim_devices.fibsem_truth import main

    out = tmp_path / "truth.h5"
    main(["--phantom", "nmc", "--seed", "2", "--depths", "0.5", "1.5", "--shape", "20", "30",
          "--pixel-um", "0.1", "--origin-um", "10", "12", "--out", str(out)])  # fmt: skip
    with h5py.File(out, "r") as f:
        labels, depths = f["labels"][:], f["depths_um"][:]
        assert f.attrs["phase_4"] == "nmc811"
    assert labels.shape == (2, 20, 30)
    np.testing.assert_array_equal(depths, [0.5, 1.5])
    np.testing.assert_array_equal(
        labels, truth_labels("nmc", 2, [0.5, 1.5], (20, 30), 0.1, (10, 12))
    )


def test_the_truth_of_a_frame_file_is_painted_on_each_frames_true_grid(tmp_path):
    path = tmp_path / "frames.h5"
    rows = [(0, 0.10, 3.0, 5.0), (1, 0.10, 3.0, 5.0), (0, 0.25, 3.2, 4.9)]
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=np.zeros((3, 24, 32), np.uint16))
        group = f.create_group("/entry/instrument/NDAttributes")
        for i, name in enumerate(("channel", "true_depth_um", "origin_y_um", "origin_x_um")):
            group.create_dataset(name, data=np.array([r[i] for r in rows], float))
        group.create_dataset("pixel_um", data=np.full(3, 0.1))
    labels, depths = frames_truth("nmc", 1, path)
    np.testing.assert_allclose(depths, [0.10, 0.25])  # one per acquisition (channel 0)
    for k, row in enumerate((rows[0], rows[2])):
        expected = truth_labels("nmc", 1, [row[1]], (24, 32), 0.1, (row[2], row[3]))[0]
        np.testing.assert_array_equal(labels[k], expected)
