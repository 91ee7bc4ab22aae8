"""Demo of the PFIB-SEM: serial sectioning of two samples, a crash, a resume, scores.

1. **Correlative series** (seed 004's all-solid-state composite cathode, phantom
   ``assb``): ``slice_and_view`` with the SEM (CBS + TLD), EDS and SIMS on every slice.
   The acquiring process is killed (SIGKILL) during a cut, part-way through the
   series; ``slice_and_view(..., resume=uid)`` finishes it in this process. The live
   assembler (the session's pipeline) assembles the whole series, reading the killed
   run from the journal. Scored: the instrument's slice count equals the series' and
   no slice was milled twice; the drift measured against the truth; the EDS-SIMS
   registration against the truth; the aligned BSE volume against the phantom's
   labels at the right depths.
2. **Kintsugi** (seed 003's method on the chain's sample, phantom ``tab``): the NMC811
   tab the laser mill cut and the TXM imaged (:func:`multiscope.demos.chain.chain_tab`:
   the width the mill measured, read from this data directory's catalog, or the
   simulators' default tab when no cut is on record there; the IOC and its truth get
   ``--phantom tab`` and :meth:`~multiscope.demos.chain.ChainTab.ioc_args`, as the
   TXM's do, so all section the same particles). A few slices imaged without Pt
   infiltration, then with it, recorded under the chain's ``sample_id``; a pixel
   classifier trained on a few painted regions of the first face segments the
   others: Dice per class (pore, binder, active) against the truth, >= 0.9 with
   kintsugi and worse without it. Where the tab came from is printed and scored
   (``kintsugi sample``).

The ground truth comes from ``python -m sim_devices.fibsem_truth`` (a subprocess: no
runtime code imports the simulator), painted on each frame's true grid, which the
IOC records with the frame.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import simctl
from ..catalog import series_documents
from ..session import configure_session
from . import DemoResult, derived_run
from ._txm_ioc import _add_ca_port
from .chain import chain_tab_in
from .fibsem_scores import (
    score_assembly,
    score_kintsugi,
    score_milling,
    sem_file,
)

__all__ = ["FibsemDemoConfig", "run"]

TRUTH_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class FibsemDemoConfig:
    """What the demo simulates and acquires.

    The cut is slowed (``mill_current_na``) so that the kill lands inside one; the
    maps keep seed 004's 5 min (instrument time; the simulator's clock runs
    ``time_scale`` times faster).
    """

    n_slices: int = 8
    slice_thickness_um: float = 0.1
    kill_at_slice: int = 4
    eds_live_time_s: float = 300.0
    sims_frame_time_s: float = 300.0
    mill_current_na: float = 0.5
    assb_seed: int = 0
    kintsugi_slices: int = 3
    time_scale: float = 0.01

    def plan_kwargs(self) -> dict:
        """The correlative series' arguments (the killed run's and its resume's)."""
        return {"eds_live_time_s": self.eds_live_time_s,
                "sims_frame_time_s": self.sims_frame_time_s,
                "mill_current_na": self.mill_current_na}  # fmt: skip


KILLED_CLIENT = textwrap.dedent(
    """
    import json, sys
    from multiscope.session import configure_session

    data_dir, prefix, n, thickness, kwargs = sys.argv[1:6]
    session = configure_session({}, "fibsem", data_dir=data_dir, prefix=prefix,
                                table=False, progress=False)
    session.RE.subscribe(lambda name, doc: print("start", doc["uid"], flush=True), "start")
    session.RE(session.plans["slice_and_view"](session.devices["pfib"], int(n),
                                               float(thickness), **json.loads(kwargs)))
    """
)


class _IOC:
    """A dedicated simulated PFIB-SEM (unique prefix, free port), stopped by PID.

    ``sample`` are the IOC's (and its truth's) phantom options, ``--phantom`` first.
    """

    def __init__(self, data_dir: Path, sample: list[str], time_scale: float):
        tag = uuid.uuid4().hex[:4]
        self.prefix = f"FIBDEMO{tag}:"
        self.sample = list(sample)
        self.state_file = data_dir / "sim" / f"fibsem-demo-{sample[1]}-{tag}.json"
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        args = [*self.sample, "--time-scale", str(time_scale), "--state-file",
                str(self.state_file)]  # fmt: skip
        logs = data_dir / "sim" / "logs"
        self.process = simctl.start_ioc(
            "fibsem", prefix=self.prefix, port=simctl.free_port(), log_dir=logs, extra_args=args
        )
        try:
            simctl.wait_until_ready(self.process)
        except Exception:
            self.stop()
            raise
        _add_ca_port(self.process.port)

    def stop(self) -> None:
        simctl.stop_ioc(self.process.pid)


def _session(data_dir: Path, ioc: _IOC):
    session = configure_session({}, "fibsem", data_dir=data_dir, prefix=ioc.prefix,
                                table=False, progress=True)  # fmt: skip
    session.devices["pfib"].wait_for_connection(timeout=30)
    return session


def _killed_series(session, ioc: _IOC, config: FibsemDemoConfig) -> str:
    """Start the series in a child process, SIGKILL it inside cut ``kill_at_slice``."""
    import json

    mill = session.devices["pfib"].mill
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, str(session.data_dir), ioc.prefix,
         str(config.n_slices), str(config.slice_thickness_um),
         json.dumps(config.plan_kwargs())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        first = None
        for line in child.stdout:
            if line.startswith("start "):
                first = line.split()[1]
                break
        if first is None:
            raise RuntimeError(f"the acquiring process ended without a run ({child.wait()})")
        deadline = time.monotonic() + 600
        while not (
            int(mill.busy.get(use_monitor=False)) == 1
            and int(mill.slices_milled.get(use_monitor=False)) == config.kill_at_slice
        ):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the acquiring process never reached the cut to kill in")
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        print(f"killed the acquiring process (SIGKILL) inside the cut of slice "
              f"{config.kill_at_slice}", flush=True)  # fmt: skip
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
    # Nobody stops the cut: the instrument finishes it.
    deadline = time.monotonic() + 120
    while int(mill.busy.get(use_monitor=False)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return first


def _truth(args: list[str], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "sim_devices.fibsem_truth", *args,
                           "--out", str(out)], capture_output=True, text=True,
                          timeout=TRUTH_TIMEOUT_S)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ground truth failed:\n{proc.stdout}{proc.stderr}")
    return out


def _correlative(data_dir: Path, config: FibsemDemoConfig, result: DemoResult) -> bool:
    ioc = _IOC(data_dir, ["--phantom", "assb", "--seed", str(config.assb_seed)],
               config.time_scale)  # fmt: skip
    session = None
    try:
        session = _session(data_dir, ioc)
        print(f"correlative series: {config.n_slices} slices of {config.slice_thickness_um} um, "
              "SEM + EDS + SIMS each (seed 004's composite cathode)", flush=True)  # fmt: skip
        first = _killed_series(session, ioc, config)
        pfib = session.devices["pfib"]
        (second,) = session.RE(session.plans["slice_and_view"](
            pfib, config.n_slices, config.slice_thickness_um, resume=first,
            **config.plan_kwargs()))  # fmt: skip
        session.drain(300)
        derived = derived_run(session, "slice_and_view_assembly", second)
        docs = series_documents(data_dir, first)
        truth_dir = data_dir / "derived" / "fibsem" / "truth"
        sem = sem_file(docs, first)
        truth_path = _truth(["--phantom", "assb", "--seed", str(config.assb_seed),
                             "--frames", str(sem), "--state-file", str(ioc.state_file)],
                            truth_dir / f"assb-{first[:8]}.h5")  # fmt: skip
        ok_mill = score_milling(docs, int(pfib.mill.slices_milled.get()), config, result)
        ok_assembly = score_assembly(docs, derived, truth_path, config, result, _truth,
                                     truth_dir)  # fmt: skip
        result.details.append(f"series: runs {first} (killed) and {second} (resume); "
                              f"derived {derived.metadata['start']['uid']}")  # fmt: skip
        result.details += [f"figure: {p}" for p in derived.metadata["start"]["figures"]]
        return ok_mill and ok_assembly
    finally:
        if session is not None:
            session.close()
        ioc.stop()


def _kintsugi(data_dir: Path, config: FibsemDemoConfig, result: DemoResult) -> bool:
    tab = chain_tab_in(data_dir)
    result.scores["kintsugi sample"] = f"{tab.sample_id}, seed {tab.seed}: {tab.source}"
    ioc = _IOC(data_dir, ["--phantom", "tab", *tab.ioc_args()], config.time_scale)
    session = None
    try:
        session = _session(data_dir, ioc)
        pfib, plan = session.devices["pfib"], session.plans["slice_and_view"]
        n = config.kintsugi_slices
        print(f"kintsugi: {n} slices without Pt, then {n} with (seed 003's method, on the "
              f"chain's {tab.width_um:g} um NMC811 tab)", flush=True)  # fmt: skip
        truths = {}
        for label, kintsugi in (("without", False), ("with", True)):
            (uid,) = session.RE(plan(pfib, n, config.slice_thickness_um, kintsugi=kintsugi,
                                     eds_every=0, sims_every=0,
                                     sample_id=tab.sample_id))  # fmt: skip
            docs = series_documents(data_dir, uid)
            out = data_dir / "derived" / "fibsem" / "truth" / f"tab-{label}-{uid[:8]}.h5"
            args = [*ioc.sample, "--frames", str(sem_file(docs, uid)), "--state-file",
                    str(ioc.state_file)]  # fmt: skip
            truths[label] = (session.catalog, uid, _truth(args, out))
        session.drain(300)
        return score_kintsugi(truths, result)
    finally:
        if session is not None:
            session.close()
        ioc.stop()


def run(data_dir: Path, *, config: FibsemDemoConfig | None = None) -> DemoResult:
    """Run the PFIB-SEM demo end to end and return its scores."""
    config = config or FibsemDemoConfig()
    data_dir = Path(data_dir)
    t0 = time.monotonic()
    result = DemoResult(name="fibsem", passed=False, elapsed_s=0.0)
    correlative = _correlative(data_dir, config, result)
    kintsugi = _kintsugi(data_dir, config, result)
    result.passed = correlative and kintsugi
    result.elapsed_s = time.monotonic() - t0
    return result
