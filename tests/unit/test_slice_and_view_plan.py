"""The slice-and-view plan's pure parts: the time estimate, reading a series, the journal."""

from __future__ import annotations

import json

import pytest

from multiscope.catalog import series_documents
from multiscope.contracts import SliceViewBlock
from multiscope.plans.preflight import PlanArgumentError
from multiscope.plans.slice_and_view import estimate_slice_and_view_s, series_progress


def test_seed_004_settings_take_about_twelve_hours():
    """39 slices with 5 min EDS and SIMS maps per slice: seed 004 reports ~12 h."""
    sem_frame_s = 4096 * 3816 * 3e-6  # the seed's scan: 4096 x 3816 px at 3 us
    hours = estimate_slice_and_view_s(
        39, cut_s=60.0, sem_frame_s=sem_frame_s, eds_live_time_s=300.0,
        sims_frame_time_s=300.0,
    ) / 3600.0  # fmt: skip
    assert 10.0 <= hours <= 14.0


def test_estimate_counts_only_the_maps_that_are_due():
    every = estimate_slice_and_view_s(4, cut_s=1, sem_frame_s=1, eds_live_time_s=100,
                                      sims_frame_time_s=0.0, sims_every=0,
                                      pose_change_s=0)  # fmt: skip
    half = estimate_slice_and_view_s(4, cut_s=1, sem_frame_s=1, eds_live_time_s=100,
                                     sims_frame_time_s=0.0, eds_every=2, sims_every=0,
                                     pose_change_s=0)  # fmt: skip
    assert every == pytest.approx(4 * 2 + 400)
    assert half == pytest.approx(4 * 2 + 200)


def _run(uid, first_slice, milled, imaged, resume_of=None, t=0.0):
    block = SliceViewBlock(n_slices=5, first_slice=first_slice, series_first_slice=1,
                           slice_thickness_um=0.1, resume_of=resume_of)  # fmt: skip
    docs = [("start", {"uid": uid, "time": t, "plan_name": "slice_and_view",
                       "slice_and_view": block.to_md()})]  # fmt: skip
    for stream, numbers in (("mill", milled), ("sem", imaged)):
        desc = f"{uid}-{stream}"
        docs.append(("descriptor", {"uid": desc, "name": stream, "run_start": uid}))
        if stream == "sem":
            docs.append(
                (
                    "stream_resource",
                    {
                        "uid": f"{uid}-res",
                        "uri": "file://localhost/x.h5",
                        "data_key": "sem_image",
                        "parameters": {},
                    },
                )
            )
            docs.append(
                (
                    "stream_datum",
                    {
                        "uid": f"{uid}-dat",
                        "descriptor": desc,
                        "stream_resource": f"{uid}-res",
                        "indices": {"start": 0, "stop": 1},
                    },
                )
            )
        for seq, number in enumerate(numbers, start=1):
            docs.append(
                (
                    "event",
                    {
                        "uid": f"{uid}-{stream}-{seq}",
                        "descriptor": desc,
                        "seq_num": seq,
                        "data": {"slice_number": number},
                    },
                )
            )
    docs.append(("stop", {"uid": f"{uid}-stop", "run_start": uid, "exit_status": "fail"}))
    return docs


def test_series_progress_joins_the_runs_of_a_series():
    docs = _run("first", 1, [1, 2, 3], [1, 2]) + _run("second", 4, [4], [3, 4],
                                                      resume_of="first")  # fmt: skip
    progress = series_progress(docs)
    assert progress.first_uid == "first"
    assert progress.runs == ["first", "second"]
    assert progress.milled == {1, 2, 3, 4}
    assert progress.imaged["sem"] == {1, 2, 3, 4}
    resource, datum = progress.reference
    assert resource["uid"] == "first-res" and datum["stream_resource"] == "first-res"


def test_series_progress_refuses_a_run_that_is_not_slice_and_view():
    with pytest.raises(PlanArgumentError, match="not a slice_and_view run"):
        series_progress([("start", {"uid": "u", "plan_name": "tomo_scan"})])
    with pytest.raises(PlanArgumentError, match="no start document"):
        series_progress([])


def _journal(directory, docs, committed=False):
    target = directory / "journal" / ("committed" if committed else "")
    target.mkdir(parents=True, exist_ok=True)
    uid = docs[0][1]["uid"]
    with open(target / f"{uid}.jsonl", "w") as f:
        for name, doc in docs:
            f.write(json.dumps({"name": name, "doc": doc}) + "\n")


def test_series_documents_reads_the_first_run_and_its_resumes_by_prefix(tmp_path):
    _journal(tmp_path, _run("aaaa1111", 1, [1, 2], [1, 2], t=1.0), committed=True)
    _journal(tmp_path, _run("bbbb2222", 3, [3], [3], resume_of="aaaa1111", t=3.0))
    _journal(tmp_path, _run("cccc3333", 4, [4, 5], [4, 5], resume_of="aaaa1111", t=2.0))
    _journal(tmp_path, _run("aaaa9999", 1, [1], [1], t=0.5))  # another series
    docs = series_documents(tmp_path, "aaaa1")
    starts = [doc["uid"] for name, doc in docs if name == "start"]
    assert starts == ["aaaa1111", "cccc3333", "bbbb2222"]  # the first run, then by time
    with pytest.raises(KeyError, match="2 runs"):
        series_documents(tmp_path, "aaaa")
    with pytest.raises(KeyError, match="no run"):
        series_documents(tmp_path, "ffff")
