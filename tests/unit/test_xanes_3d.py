"""3D XANES with a sample jump at every energy: drift estimate, correction, per-voxel maps.

Scene: an NMC811 tab of 4.4 x 4.4 x 6.4 um with "mixed" Ni valences (the whiteline
varies inside every particle), 40 x 40 px of 0.2 um, 4 x 4 sub-rays per pixel
(pixel-area integration), 22 energies across the Ni K-edge, 36 angles over 180
deg, 1e5 photons per pixel, rendered by ``sim_devices.physics.xanes`` and the
camera model.  At every energy but the first (the reference) the image jumps by
a drift drawn uniformly in [-3, 3] px per axis, applied as the IOC applies it
(``TXMScene.center_um``: an image-plane shift, the same at every angle).

Documents: as decision 0006 describes a ``xanes_3d`` run, in both scan modes:
``step`` (a primary event per projection with its angle and energy index) and
``fly`` (primary frames only as stream_resource/stream_datum, the angle in the
frames' HDF5 attribute ``theta``, ``num_frames`` frames per energy in order).

Truth: ``sim_devices.physics.xanes.true_whiteline_volume`` on the reconstruction's
voxel grid; the whiteline error is measured on NMC voxels at least 2 voxels inside a
particle (rims mix materials in a 0.2 um voxel) and in view.
"""

import time

import h5py
import numpy as np
import pytest
from event_model import compose_run
from scipy import ndimage
from xanes_grid import E3_KEV as E_KEV
from xanes_grid import small_tab

import sim_devices.physics as phys
import sim_devices.physics.xanes as xph
from multiscope.analysis import xanes_drift as xd
from multiscope.callbacks.xanes import LiveXANESMap
from sim_devices.areadetector import HDF5FrameWriter

PIXEL_UM = 0.2
NX = 40
SS = 4
ANGLES_DEG = np.arange(36) * 5.0
PRE, POST, WINDOW = (8.30, 8.325), (8.37, 8.39), (8.3455, 8.3581)
IMAGE, ENERGY, INDEX, THETA = "camera_image", "energy_energy", "xanes_energy_index", "sample_theta"
CENTER_Z_UM = 3.2  # the tab's mid-height on the detector's centre row


# ---------------------------------------------------------------------- scene
def make_tab():
    t = small_tab()
    return t, xph.assign_valence(t, seed=3, pattern="mixed")


@pytest.fixture(scope="module")
def tab():
    return make_tab()


def render(tab, drift_px, seed=3):
    """Darks and per energy (flats, [(frame, angle_deg)]); ``drift_px`` (energies, 2) rows/cols.

    The drift is the content's displacement in the image (rows down, columns right),
    made as the IOC makes it: the tab point on the axis moves by (-cols, rows) px
    across and up, turned into the tab frame at each angle.
    """
    t, vf = tab
    geo = phys.DetectorGeometry(NX, NX, PIXEL_UM)
    fine = xph.supersampled_geometry(geo, SS)
    model = phys.DetectorModel(geometry=geo, photons_per_s=1e5, gain_adu_per_photon=0.6)
    rng = np.random.default_rng(seed)
    base = xph.mu_tables(E_KEV)
    darks = [phys.render_dark(1.0, rng, model) for _ in range(4)]
    per_energy = []
    for k, e in enumerate(E_KEV):
        sy, sx = drift_px[k] * PIXEL_UM
        flats = [phys.render_flat(1.0, rng, model) for _ in range(4)]
        samples = []
        for a in ANGLES_DEG:
            r = np.deg2rad(a)
            center = (-sx * np.cos(r), sx * np.sin(r), CENTER_Z_UM + sy)
            pf = xph.project_xanes(t, vf, r, e, fine, center_um=center, base_mu=base[k])
            p = -np.log(xph.bin_pixels(np.exp(-pf.astype(np.float64)), SS))
            samples.append((phys.render_frame(p, 1.0, rng, model, energy_keV=e), a))
        per_energy.append((flats, samples))
    return darks, per_energy


@pytest.fixture(scope="module")
def drift():
    d = np.random.default_rng(11).uniform(-3.0, 3.0, (E_KEV.size, 2))
    d[0] = 0.0  # the reference energy: the maps are in its frame, the truth's frame
    return d


@pytest.fixture(scope="module")
def frames(tab, drift):
    return {"none": render(tab, np.zeros_like(drift)), "drift": render(tab, drift)}


def make_truth(tab):
    """True whiteline (eV) per voxel of the reconstruction grid, NaN outside NMC; core voxels.

    Slices are centred on the rotation axis (slice pixel NX // 2); slice columns follow
    the tab's x, slice rows its y, volume index z runs down the detector rows.
    """
    t, vf = tab
    h = PIXEL_UM
    lo = -(NX // 2) * h - h / 2
    hi = lo + NX * h
    z_top = CENTER_Z_UM + (NX - 1) / 2 * h  # tab z of detector row 0
    region = (lo, hi, lo, hi, z_top - (NX - 0.5) * h, z_top + h / 2)
    wl = xph.true_whiteline_volume(t, vf, h, region=region)[::-1]  # z up -> rows down
    assert wl.shape == (NX, NX, NX)
    nmc = np.isfinite(wl)
    core = ndimage.binary_erosion(nmc, iterations=2)
    return {"whiteline_eV": wl, "core": core}


@pytest.fixture(scope="module")
def truth(tab):
    return make_truth(tab)


# ---------------------------------------------------------------------- documents
def xanes_3d_documents(directory, darks, per_energy, scan_mode):
    """A xanes_3d run's documents (decision 0006) in ``scan_mode`` "step" or "fly"."""
    directory.mkdir(parents=True, exist_ok=True)
    n_proj = len(ANGLES_DEG)
    block = {
        "edge": "Ni", "edge_keV": 8.333, "energies_keV": [float(e) for e in E_KEV],
        "pre_edge_keV": list(PRE), "post_edge_keV": list(POST), "whiteline_keV": list(WINDOW),
        "flat_policy": "every", "flat_every": None, "num_frames": n_proj, "num_flats": 4,
        "num_darks": 4, "image_field": IMAGE, "energy_field": ENERGY,
        "energy_index_field": INDEX, "pixel_size_um": PIXEL_UM, "sample_id": "NMC811 3D",
    }  # fmt: skip
    tomo = {"num_projections": n_proj, "angle_range_deg": 180.0, "rotation": THETA,
            "pixel_size_um": PIXEL_UM, "center_guess_px": None, "scan_mode": scan_mode}  # fmt: skip
    run = compose_run(metadata={"plan_name": "xanes_3d", "xanes": block, "tomo": tomo})
    yield "start", run.start_doc
    shape = darks[0].shape
    image = {"source": "PV:HDF1", "dtype": "array", "dtype_numpy": "<u2",
             "shape": [1, *shape], "external": "STREAM:"}  # fmt: skip
    number = {"source": "PV", "dtype": "number", "shape": []}
    keys = {"dark": {IMAGE: image}, "flat": {IMAGE: image, ENERGY: number, INDEX: number}}
    if scan_mode == "fly":
        keys["primary"] = {IMAGE: image, "camera_theta": {**number, "external": "STREAM:"}}
    else:
        keys["primary"] = {**keys["flat"], THETA: number}
    descriptors, seq = {}, {"dark": 1, "flat": 1, "primary": 1}
    blocks = [("dark", 0, [(f, None) for f in darks])]
    for i, (flats, samples) in enumerate(per_energy):
        blocks += [("flat", i, [(f, None) for f in flats]), ("primary", i, samples)]
    for n, (stream, i, frames) in enumerate(blocks):
        if stream not in descriptors:
            descriptors[stream] = run.compose_descriptor(name=stream, data_keys=keys[stream])
            yield "descriptor", descriptors[stream].descriptor_doc
        desc = descriptors[stream]
        path = directory / f"{stream}_{n:03d}_{time.monotonic_ns()}.h5"
        writer = HDF5FrameWriter(path, shape)
        fly = scan_mode == "fly" and stream == "primary"
        resources = [
            run.compose_stream_resource(
                mimetype="application/x-hdf5",
                uri=f"file://localhost{path.absolute()}",
                data_key=key,
                parameters={"dataset": dataset},
            )  # fmt: skip
            for key, dataset in [(IMAGE, "/entry/data/data")]
            + ([("camera_theta", "/entry/instrument/NDAttributes/theta")] if fly else [])
        ]
        for r in resources:
            yield "stream_resource", r.stream_resource_doc
        for k, (frame, angle) in enumerate(frames):
            writer.write(frame, {"theta": angle} if fly else {}, k + 1, time.time())
        writer.close()
        chunk = 7 if fly else 1  # fly: frames collected a few at a time
        for k0 in range(0, len(frames), chunk):
            k1 = min(len(frames), k0 + chunk)
            s = seq[stream]
            for r in resources:
                yield (
                    "stream_datum",
                    r.compose_stream_datum(
                        indices={"start": k0, "stop": k1},
                        seq_nums={"start": s, "stop": s + k1 - k0},
                        descriptor=desc.descriptor_doc,
                    ),
                )
            if not fly:
                data = {}
                if stream != "dark":
                    data = {ENERGY: float(E_KEV[i]), INDEX: i}
                if stream == "primary":
                    data[THETA] = float(frames[k0][1])
                ts = {key: time.time() for key in data}
                yield "event", desc.compose_event(data=data, timestamps=ts, seq_num=s)
            seq[stream] += k1 - k0
    yield "stop", run.compose_stop(exit_status="success")


def analyse(tmp_path, frames, scan_mode="step", **kwargs):
    live = LiveXANESMap(tmp_path / "maps", **kwargs)
    for name, doc in xanes_3d_documents(tmp_path / "raw", *frames, scan_mode):
        live(name, doc)
    with h5py.File(live.paths["maps"], "r") as f:
        maps = {k: f[k][()] for k in ("whiteline_eV", "mask", "shifts_px", "out_of_view")}
    return live, maps


def whiteline_rmse(maps, truth):
    sel = truth["core"] & ~maps["mask"]
    d = maps["whiteline_eV"][sel] - truth["whiteline_eV"][sel]
    return float(np.sqrt(np.mean(d * d))), int(sel.sum()), int(truth["core"].sum())


# ---------------------------------------------------------------------- tests
def test_register_projections_recovers_a_known_shift():
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((20, 48, 56)), (0, 1.5, 1.5))
    angles = np.deg2rad(np.arange(20) * 9.0)
    ref = xd.projection_reference(base, angles, max_angles=8)
    assert ref.features.shape == (8, 48, 56)
    for true in [(2.37, -1.81), (-0.4, 2.9)]:
        moved = np.stack([ndimage.shift(p, true, order=3, mode="nearest") for p in base])
        shift = xd.register_projections(ref, moved, angles)
        np.testing.assert_allclose(shift, -np.asarray(true), atol=0.05)
    # shift_rows undoes a row drift; the rows it cannot fill are named.
    moved = xd.shift_rows(base, 1.6)
    np.testing.assert_allclose(xd.shift_rows(moved, -1.6)[:, 3:-3], base[:, 3:-3], atol=0.02)
    assert xd.out_of_view_rows([0.0, 1.6, -0.2], 48).nonzero()[0].tolist() == [0, 1]


def test_drift_up_to_3px_is_corrected_per_energy(tmp_path, frames, drift, truth):
    live, maps = analyse(tmp_path / "drift", frames["drift"], live=False)
    _, still = analyse(tmp_path / "still", frames["none"], live=False)
    _, uncorrected = analyse(tmp_path / "off", frames["drift"], live=False, correct_drift=False)
    # Applied shifts undo the drift relative to the reference (first) energy.
    err = maps["shifts_px"] + drift
    rmse, n, n_core = whiteline_rmse(maps, truth)
    rmse_still, _, _ = whiteline_rmse(still, truth)
    rmse_off, n_off, _ = whiteline_rmse(uncorrected, truth)
    print(
        f"shift error max {np.abs(err).max():.3f} px, rms {np.sqrt(np.mean(err**2)):.3f} px; "
        f"whiteline rmse on {n}/{n_core} core voxels: {rmse:.3f} eV corrected, "
        f"{rmse_still:.3f} eV without drift, {rmse_off:.3f} eV uncorrected ({n_off} voxels)"
    )
    assert np.abs(drift).max() > 2.5
    assert np.abs(err).max() < 0.3  # the requirement (measured 0.115 px)
    # Measured 0.154 eV corrected vs 0.140 eV without drift (1.17 eV uncorrected): the
    # residual is the row re-sampling of the projections and the shift error.
    assert rmse <= 1.25 * rmse_still
    assert rmse_off > 3 * rmse_still  # the control: drift matters at this scale
    assert n == n_core  # no core voxel masked or out of view
    # Rotation centre per energy: the reference's minus the column shift.
    params = live.parameters
    assert params["drift_correction"] and params["drift_reference_index"] == 0
    for i, (_rows, cols) in params["shifts_px"].items():
        assert params["centers_px"][i] == pytest.approx(live.center - cols)
    assert live.metrics["max_shift_px"] == pytest.approx(np.abs(maps["shifts_px"]).max())
    # z-slices a row shift left unfilled (> 0.5 px) are out of view and masked.
    oov = maps["out_of_view"][:, 0, 0]
    np.testing.assert_array_equal(oov, xd.out_of_view_rows(maps["shifts_px"][:, 0], NX))
    assert oov.any() and maps["mask"][oov].all()
    assert live.metrics["fraction_out_of_view"] == pytest.approx(oov.mean())


def test_fly_documents_give_the_maps_of_step_documents(tmp_path, frames):
    _, step = analyse(tmp_path / "step", frames["drift"], "step", live=False)
    live, fly = analyse(tmp_path / "fly", frames["drift"], "fly")
    assert live.parameters["scan_mode"] == "fly"
    assert len(live.energies_done) == E_KEV.size and live.history  # live maps while acquiring
    for key in ("whiteline_eV", "mask", "shifts_px"):
        np.testing.assert_array_equal(fly[key], step[key])


# ---------------------------------------------------------------------- the plan, fly
@pytest.fixture
def energy():
    from fakes import fake_txm_energy

    return fake_txm_energy()


@pytest.fixture
def fly_rig(energy):
    from fakes import FakeCamera, FakeFlyer, FakeSample, FakeShutter

    class Flyer(FakeFlyer):
        def kickoff(self):  # one acquisition per energy, as FlyingCamera's kickoff resets
            self._collected = 0
            return super().kickoff()

    camera = FakeCamera(name="camera")
    return (
        camera,
        energy,
        FakeSample(),
        FakeShutter(name="shutter", value="close"),
        Flyer(camera),
    )


def _fly_plan(fly_rig, **kwargs):
    from multiscope.plans.xanes import energy_grid, xanes_3d

    camera, optics, sample, shutter, flyer = fly_rig
    energies = [8.30, 8.31, 8.32, 8.333, 8.34, 8.35, 8.36, 8.38, 8.39]
    grid = energy_grid("Ni", energies_keV=energies, whiteline_eV=(-5, 30), post_edge_eV=(40, 60))
    args = dict(num_projections=6, exposure_s=0.02, frame_period_s=0.2, num_flats=2,
                num_darks=2, flat_policy="every_n", flat_every=4, tomo_flat_policy="start",
                scan_mode="fly", flyer=flyer)  # fmt: skip
    return xanes_3d(camera, optics, sample, shutter, grid, **{**args, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"scan_mode": "spiral"}, 'scan_mode must be "step" or "fly"'),
        ({"tomo_flat_policy": "every", "tomo_flat_every": 2}, "for fly tomograms"),
        ({"frame_period_s": 0.01}, "frame_period_s must be >= 0.02"),
        (
            {"num_projections": 2, "frame_period_s": 0.2, "max_velocity_deg_s": 100},
            "exceeds max_velocity_deg_s",
        ),  # fmt: skip
        ({"start_deg": 700}, "limits"),
        ({"scan_mode": "step", "flyer": None}, "for scan_mode"),
    ],
)
def test_fly_xanes_3d_refuses_bad_arguments_before_any_message(fly_rig, kwargs, fragment):
    from multiscope.plans.preflight import PlanArgumentError

    plan = _fly_plan(fly_rig, **kwargs)
    with pytest.raises(PlanArgumentError, match=fragment):
        next(plan)
    assert fly_rig[4].calls == []


def test_fly_xanes_3d_documents(fly_rig):
    from bluesky import RunEngine

    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    flyer, theta = fly_rig[4], fly_rig[2].theta
    velocity = theta.velocity.get()
    RE(_fly_plan(fly_rig))
    start = docs[0][1]
    stop = docs[-1][1]
    assert stop["exit_status"] == "success", stop.get("reason")
    tomo = start["tomo"]
    assert tomo["scan_mode"] == "fly" and start["plan_args"]["scan_mode"] == "fly"
    assert tomo["frame_period_s"] == 0.2 and tomo["theta_velocity_deg_s"] == pytest.approx(150)
    assert start["xanes"]["num_frames"] == 6 and start["num_points"] == 9 * 6
    assert stop["num_events"] == {"primary": 54, "xanes_energy": 9, "dark": 2, "flat": 3 * 2}
    descriptors = {d["uid"]: d for n, d in docs if n == "descriptor"}
    assert [d["name"] for d in descriptors.values()].count("primary") == 1  # declared once
    energy_events = [
        d
        for n, d in docs
        if n == "event" and descriptors[d["descriptor"]]["name"] == "xanes_energy"
    ]
    assert [e["data"]["xanes_energy_index"] for e in energy_events] == list(range(9))
    # Each energy's projections: num_frames consecutive seq_nums, in energy order.
    datums = [d for n, d in docs if n == "stream_datum" and d["stream_resource"]]
    image = [d for d in datums if descriptors[d["descriptor"]]["name"] == "primary"][::2]
    assert [(d["seq_nums"]["start"], d["seq_nums"]["stop"]) for d in image] == [
        (1 + 6 * i, 7 + 6 * i) for i in range(9)
    ]
    assert flyer.calls.count("kickoff") == 9 and theta.velocity.get() == velocity
    assert start["estimated_duration_s"] > 9 * 1.2  # nine sweeps of 6 x 0.2 s at least
