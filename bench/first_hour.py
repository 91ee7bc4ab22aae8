"""A new user's first hour, timed: ``sim start``, a session, catalog commands, a typo.

Run ``python bench/first_hour.py [--repeats 3] [--before /path/to/other/checkout]``.

In a fresh temporary data directory, as the README's tour does, times (wall clock,
each in a fresh process, as a user's terminal would):

* ``multiscope sim start demo txm``;
* ``configure_session`` for ``demo`` and for ``txm`` (the profiles' one call):
  from the start of the Python process until the namespace is ready;
* ``multiscope catalog list``, ``catalog show -1``, ``catalog show 999`` (no such
  run) and ``catalog show x!`` (an argument error);
* the first ``catalog list`` after the IOCs were stopped and the catalog server
  left idle (``--cold``: the worst case, the server starting).

``--before TREE`` times the same steps with the ``src/`` of another checkout first on
``PYTHONPATH`` (e.g. the tree before decision 0015) and puts both in the table.
Prints a Markdown table and writes it to its section of ``docs/benchmarks.md``
(``--no-write``: print only). The load average is printed: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

__all__ = ["main"]

HEADING = "## A new user's first hour (bench/first_hour.py)"
HERE = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: imports are part of what a user waits for.
SESSION = """
import sys
from multiscope.session import configure_session
session = configure_session({}, sys.argv[2], data_dir=sys.argv[1], table=False)
print("READY", flush=True)
if sys.argv[3] == "scan":  # one stored run, for `catalog show -1`
    from bluesky import plans as bp
    session.RE(bp.count([session.devices["beam_current"]], 2))
session.close()
"""


READING = """\
Targets (issue 9): a session ready in < 5 s, catalog commands in < 1.5 s, argument
errors at once. Where the time went before: every process started its own
`tiled serve catalog` (importing tiled's server, ~5 s of CPU) and the catalog opened
before the arguments were checked. Now (decision 0015) one server per data directory
is shared and `sim start` starts it in the background (which is why `sim start`
itself takes a little longer: the server starts beside the IOCs); arguments are
checked first; `catalog list/show` read the server over plain HTTP; a session opens
plain tiled clients and builds bluesky-tiled-plugins' clients, the TXM's live
pipeline and the catalog's TiledWriter on first use or on threads once it is ready. What is
left of a session is ophyd, bluesky and the devices' connections (the demo), plus
the TXM's plans' imports of numba, scipy and scikit-image. The first catalog command
with no server running still pays the server's start-up. The same tree at load 7-9
(2026-12-06, an earlier run): demo session 3.6-4.3 s, TXM session 4.5-6.2 s,
`catalog list` 0.5-0.6 s, `catalog show` 0.4-0.8 s.
"""


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}


def _timed_cli(tree: Path, data_dir: Path, *args: str) -> tuple[float, int]:
    """Seconds ``multiscope ARGS`` took (start of the process to its end), its exit code."""
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "multiscope", "--data-dir", str(data_dir), *args],
        env=_env(tree),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return time.perf_counter() - t0, result.returncode


def _session_ready(tree: Path, data_dir: Path, instrument: str, scan: bool = False) -> float:
    """Seconds from starting a Python process until its ``configure_session`` returned."""
    with tempfile.TemporaryFile("w+") as errors:
        t0 = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", SESSION, str(data_dir), instrument, "scan" if scan else "-"],
            env=_env(tree),
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        ready = None
        for line in process.stdout:
            if line.startswith("READY"):
                ready = time.perf_counter() - t0
                break
        process.communicate(timeout=600)
        if process.returncode or ready is None:
            errors.seek(0)
            raise RuntimeError(f"session {instrument} failed:\n{errors.read()[-2000:]}")
    return ready


def _median(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def measure(tree: Path, repeats: int, cold: bool) -> dict[str, str]:
    """Every step's median (range) in seconds for the checkout ``tree``."""
    data_dir = Path(tempfile.mkdtemp(prefix="multiscope-first-hour-"))
    rows: dict[str, list[float]] = {}
    try:
        seconds, code = _timed_cli(tree, data_dir, "sim", "start", "demo", "txm")
        if code:
            raise RuntimeError("sim start failed")
        rows["`multiscope sim start demo txm`"] = [seconds]
        _session_ready(tree, data_dir, "demo", scan=True)  # a run to show
        for instrument in ("demo", "txm"):
            rows[f"session ready: `configure_session(ns, {instrument!r})`"] = [
                _session_ready(tree, data_dir, instrument) for _ in range(repeats)
            ]
        for label, args in [
            ("`multiscope catalog list`", ("catalog", "list")),
            ("`multiscope catalog show -1`", ("catalog", "show", "-1")),
            ("`multiscope catalog show 999` (no such run)", ("catalog", "show", "999")),
            ("`multiscope catalog show x!` (argument error)", ("catalog", "show", "x!")),
        ]:
            rows[label] = [_timed_cli(tree, data_dir, *args)[0] for _ in range(repeats)]
    finally:
        _timed_cli(tree, data_dir, "sim", "stop")
    if cold:  # nothing running: the first command starts (or, before, always started) a server
        rows["`multiscope catalog list`, no server running"] = [
            _timed_cli(tree, data_dir, "catalog", "list")[0]
        ]
        _timed_cli(tree, data_dir, "sim", "stop")
    shutil.rmtree(data_dir, ignore_errors=True)
    return {label: _median(values) for label, values in rows.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each timed step")
    parser.add_argument("--before", type=Path, help="another checkout to time alongside")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip cold start")
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args(argv)
    columns = {}
    if args.before is not None:
        columns[f"before ({args.before})"] = measure(args.before.resolve(), args.repeats, args.cold)
    columns["this tree"] = measure(HERE, args.repeats, args.cold)
    load = os.getloadavg()
    labels = list(columns["this tree"])
    header = "| step | " + " | ".join(columns) + " |"
    lines = [header, "| --- |" + " ---: |" * len(columns)]
    for label in labels:
        cells = " | ".join(column.get(label, "-") for column in columns.values())
        lines.append(f"| {label} | {cells} |")
    table = "\n".join(lines)
    print(table)
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.write:
        body = (
            f"{HEADING}\n\n`python bench/first_hour.py --before <checkout>`: seconds, "
            f"median (range) of {args.repeats}, each step a fresh process as a user's "
            "terminal runs it, in a fresh data directory; 2 cores shared with other "
            f"jobs, load average {load[0]:.1f} at the end ({time.strftime('%Y-%m-%d')}).\n\n"
            f"{table}\n\n{READING}"
        )
        print(f"written to {write_section(HEADING, body)}")


if __name__ == "__main__":
    main()
