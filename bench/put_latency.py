"""Put-with-completion latency and a detector-less step scan: over CA and on ophyd.sim.

Run ``python bench/put_latency.py [--puts 200] [--points 101] [--repeats 3]``.

Starts the demo IOC on a free loopback port and, side by side in one process, times

* a put with completion: ``m1.velocity.put(v, wait=True)`` over Channel Access (a
  field of the simulated motor record, so no motion), against ``ophyd.sim``'s
  ``SynAxis(delay=0).set(v).wait()`` in process;
* a step scan with no detector, ``scan([], m1, -0.5, 0.5, points)`` with ``m1`` at
  1000 mm/s and no acceleration (the time is overhead, not travel), against the same
  scan of a ``SynAxis``.

Prints a Markdown table with the ratios (CA / ophyd.sim; machines are noisy, ratios
less so) and writes it to its section of ``docs/benchmarks.md`` (``--no-write``: print
only). Nothing is asserted: the integration tests check behaviour, this measures cost.
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
from _report import write_section  # noqa: E402

__all__ = ["main"]

HEADING = "## Put latency and detector-less step scan over Channel Access (bench/put_latency.py)"


def _median_seconds(action, repeats: int) -> float:
    """Median wall time of ``action()`` over ``repeats`` calls (s)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _puts(put, n: int):
    """A callable doing ``n`` alternating puts with completion through ``put(value)``."""

    def run():
        for i in range(n):
            put(1000 + (i % 2))

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=200, help="puts per repeat")
    parser.add_argument("--points", type=int, default=101, help="points of the step scan")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    with demo_ioc():
        from bluesky import RunEngine
        from bluesky.plans import scan
        from ophyd.sim import SynAxis

        from multiscope.instruments import demo

        RE = RunEngine({})
        m1 = demo.m1("BENCH:")
        m1.wait_for_connection(timeout=10)
        m1.acceleration.set(0).wait(5)
        m1.velocity.set(1000).wait(5)
        sim_axis = SynAxis(name="motor", delay=0)
        n, points, reps = args.puts, args.points, args.repeats

        put_ca = _median_seconds(_puts(lambda v: m1.velocity.put(v, wait=True), n), reps) / n
        put_sim = _median_seconds(_puts(lambda v: sim_axis.set(v).wait(5), n), reps) / n
        scan_ca = points / _median_seconds(lambda: RE(scan([], m1, -0.5, 0.5, points)), reps)
        scan_sim = points / _median_seconds(lambda: RE(scan([], sim_axis, -0.5, 0.5, points)), reps)

    rows = [
        ("put with completion (ms)", put_ca * 1e3, put_sim * 1e3, "{:.3f}"),
        (f"step scan, no detector ({points} points, events/s)", scan_ca, scan_sim, "{:.0f}"),
    ]
    table = [
        "| measure | over CA (sim IOC) | ophyd.sim | CA / ophyd.sim |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, ca, sim, fmt in rows:
        table.append(f"| {label} | {fmt.format(ca)} | {fmt.format(sim)} | {ca / sim:.1f} |")
    setup = (
        f"{n} puts and {points}-point scans, median of {reps}, python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    body = (
        f"{HEADING}\n\n"
        f"`python bench/put_latency.py --puts {n} --points {points} --repeats {reps}`: "
        "a put with completion to a field of the simulated motor record over real Channel "
        "Access (loopback, own port), against `ophyd.sim.SynAxis(delay=0).set().wait()` in "
        "process; a step scan of `m1` (1000 mm/s, acceleration 0: overhead, not travel) "
        f"with no detector against the same scan of a `SynAxis`. {setup}.\n\n"
        + "\n".join(table)
        + "\n\nReading: the put's CA / ophyd.sim ratio is the price of a round trip to an "
        "IOC; the step scan's is that of a motor move whose completion is the record's "
        "done-moving handshake (see the acquisition overhead section above).\n"
    )
    print()
    print("\n".join(table))
    if not args.no_write:
        print(f"wrote {write_section(HEADING, body)}")


if __name__ == "__main__":
    main()
