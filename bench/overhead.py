"""Events per second: the same plans over Channel Access (simulated IOC) and on ophyd.sim.

Run:  python bench/overhead.py [--points 200] [--repeats 3]

Starts the demo IOC on a free loopback port, then times, side by side in one
process, a step scan (motor steps of 1 um so motion time is negligible) and a
``count`` of a scalar over CA, the same plans on ``ophyd.sim`` in-process
devices, and a ``count`` of file-referenced frames (64 x 64) over CA. Prints a
table with the ratios (CA / ophyd.sim); machines are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ioc import demo_ioc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _rate(RE, plan_factory, points, repeats):
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        RE(plan_factory())
        rates.append(points / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    with demo_ioc() as workdir:
        from bluesky import RunEngine
        from bluesky import plans as bp
        from ophyd.sim import SynAxis, SynGauss

        from multiscope.instruments import demo

        RE = RunEngine({})
        m1, beam, cam = demo.m1("BENCH:"), demo.beam_current("BENCH:"), demo.cam("BENCH:")
        for device in (m1, beam, cam):
            device.wait_for_connection(timeout=10)
        m1.acceleration.set(0).wait(5)  # measure overhead, not the acceleration ramps
        cam.write_path_template.put(f"{workdir}/assets/")
        cam.cam.acquire_time.set(0.001).wait(5)
        n, reps = args.points, args.repeats
        span = 0.001 * (n - 1)  # 1 um steps: the timing is overhead, not motion

        sim_motor = SynAxis(name="motor", delay=0)
        sim_det = SynGauss("det", sim_motor, "motor", center=0, Imax=1, sigma=1)

        rows = [
            (
                "step scan (motor + scalar)",
                _rate(RE, lambda: bp.scan([beam], m1, 0, span, n), n, reps),
                _rate(RE, lambda: bp.scan([sim_det], sim_motor, 0, span, n), n, reps),
            ),
            (
                "count (scalar)",
                _rate(RE, lambda: bp.count([beam], n), n, reps),
                _rate(RE, lambda: bp.count([sim_det], n), n, reps),
            ),
            (
                "count (64x64 frames to HDF5, file-referenced)",
                _rate(RE, lambda: bp.count([cam], n), n, reps),
                None,
            ),
        ]

    print(
        f"\nEvents per second, {args.points} points, median of {args.repeats} "
        f"(python {sys.version.split()[0]}, {os.cpu_count()} cores)\n"
    )
    print("| plan | over CA (sim IOC) | ophyd.sim | CA / ophyd.sim |")
    print("| --- | ---: | ---: | ---: |")
    for label, ca, sim in rows:
        ratio = f"{ca / sim:.2f}" if sim else "-"
        sim_text = f"{sim:.0f}" if sim else "-"
        print(f"| {label} | {ca:.0f} | {sim_text} | {ratio} |")


if __name__ == "__main__":
    main()
