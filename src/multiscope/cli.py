"""The ``multiscope`` command: simulated hardware, catalog, demos, export.

Examples
--------
::

    multiscope sim start demo          # start simulated IOCs in the background
    multiscope sim status
    multiscope demo                    # the whole chain, simulated, with a summary
    multiscope catalog list --limit 5
    multiscope catalog show -1
    multiscope catalog recover         # load runs a crashed session left in the journal
    multiscope catalog history tab-3   # one sample across instruments: cut, surveyed, imaged
    multiscope export -1 --out ./run   # CSV tables (+ HDF5 arrays) of one run
    multiscope export -1 --format dxchange --out ./tomo   # DXchange HDF5 for tomopy
    multiscope export -1 --format tiff  # ImageJ TIFF stacks with the pixel size
    multiscope sim stop
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial
from pathlib import Path

from . import __version__, catalog_server, simctl
from .config import DATA_DIR_ENV
from .config import data_dir as resolve_data_dir

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """An error reported to the user as one line, with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``multiscope`` command."""
    parser = argparse.ArgumentParser(
        prog="multiscope",
        description="Multi-scale battery-electrode imaging under bluesky, "
        "on real or simulated hardware.",
    )
    parser.add_argument("--version", action="version", version=f"multiscope {__version__}")
    parser.add_argument(
        "--data-dir",
        help=f"data directory (default: ${DATA_DIR_ENV} or the user's data directory)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    sim = commands.add_parser("sim", help="start, stop and list simulated IOCs")
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="ACTION")
    sim_commands.required = True
    start = sim_commands.add_parser("start", help="start simulated IOCs in the background")
    start.add_argument("names", nargs="*", help=f"instruments (default: all of {simctl.names()})")
    sim_commands.add_parser("status", help="list simulated IOCs, prefixes, ports, PIDs")
    stop = sim_commands.add_parser("stop", help="stop simulated IOCs by PID")
    stop.add_argument("names", nargs="*", help="instruments (default: all running)")

    catalog = commands.add_parser("catalog", help="list, show and recover runs")
    catalog.add_argument(
        "--catalog", dest="catalog_uri", help="URL of a tiled server (default: embedded)"
    )
    catalog.add_argument("--api-key", help="API key (default: $MULTISCOPE_TILED_API_KEY)")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", metavar="ACTION")
    catalog_commands.required = True
    listing = catalog_commands.add_parser("list", help="the most recent runs")
    listing.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    show = catalog_commands.add_parser("show", help="one run: metadata and streams")
    show.add_argument("run", help="uid (or its beginning) or index such as -1")
    catalog_commands.add_parser(
        "recover", help="load journals of runs that never reached the catalog"
    )
    history = catalog_commands.add_parser(
        "history", help="everything done to one sample, oldest first, across instruments"
    )
    history.add_argument("sample_id", help="the sample's id, e.g. tab-3")
    catalog_commands.add_parser("samples", help="the registered samples")

    from .demos import DEMOS  # the chain order lives with the demos

    demo = commands.add_parser("demo", help="run simulated experiments end to end")
    demo.add_argument(
        "names", nargs="*", help=f"demos to run, in chain order (default: all of {list(DEMOS)})"
    )

    export = commands.add_parser("export", help="write one run to files other tools read")
    export.add_argument("run", help="uid (or its beginning) or index such as -1")
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="raw",
        help="raw: CSV tables + HDF5 arrays (default); dxchange: DXchange HDF5 per tomogram "
        "(tomopy); tiff: ImageJ TIFF stacks (Fiji, Avizo); csv: event tables",
    )
    export.add_argument("--out", help="output directory (default: ./<format>-<uid 8>)")
    export.add_argument("--catalog", dest="catalog_uri", help="URL of a tiled server")
    export.add_argument("--api-key", help="API key (default: $MULTISCOPE_TILED_API_KEY)")
    return parser


#: ``multiscope.export.FORMATS`` (not imported here: the command line starts fast).
EXPORT_FORMATS = ("raw", "dxchange", "tiff", "csv")

_RUN_FORMS = "an index such as -1 (latest), a scan id such as 12, or a uid (5+ characters of it)"
_UID_CHARACTERS = frozenset("0123456789abcdefABCDEF-")


def _check_run_argument(run: str) -> None:
    """Refuse at once what cannot name a run, before the catalog is opened."""
    try:
        if int(run) != 0:
            return
    except ValueError:
        if len(run) >= 5 and set(run) <= _UID_CHARACTERS:
            return
    raise CLIError(f"{run!r} names no run: give {_RUN_FORMS}")


def _check_output_directory(out: str) -> None:
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {out}: a file is in the way; give a directory (new or existing)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise CLIError(f"--out {out}: {parent} is a file, so no directory can be made there")


def _open_catalog(args, root: Path, *, bluesky_clients: bool = True):
    from .catalog import Catalog

    if args.catalog_uri:
        return Catalog.remote(
            args.catalog_uri,
            args.api_key or os.environ.get("MULTISCOPE_TILED_API_KEY"),
            bluesky_clients=bluesky_clients,
        )
    return Catalog.embedded(root, bluesky_clients=bluesky_clients)


def _run_sim(args, root: Path) -> int:
    if args.sim_command == "start":
        unknown = sorted(set(args.names) - set(simctl.names()))
        if unknown:
            raise CLIError(
                f"unknown simulated instrument(s) {unknown}; choose from {simctl.names()}"
            )
        before = {n for n, r in simctl.status(root).items() if r["alive"]}
        # The shared catalog server starts meanwhile, ready for the session (0015).
        catalog_state, catalog_pid = catalog_server.start_in_background(root)
        explain = partial(print, file=sys.stderr, flush=True)
        for name, ioc in simctl.start(args.names or simctl.names(), root, progress=explain).items():
            state = "already running" if name in before else "started"
            print(f"{name:<8} {state:<16} prefix {ioc.prefix:<12} port {ioc.port:<6} pid {ioc.pid}")
        pid = f", pid {catalog_pid}" if catalog_pid else ""
        print(f"{'catalog':<8} {catalog_state:<16} tiled server of {root}{pid}")
    elif args.sim_command == "status":
        records = simctl.status(root)
        if not records:
            print("no simulated IOCs recorded; start some with `multiscope sim start`")
        for name, record in records.items():
            alive = "running" if record["alive"] else "dead"
            print(
                f"{name:<8} {alive:<8} prefix {record['prefix']:<12} port {record['port']:<6} "
                f"pid {record['pid']:<8} log {record['log_path']}"
            )
    elif args.sim_command == "stop":
        stopped = simctl.stop(args.names or None, root)
        print(f"stopped {len(stopped)} IOC(s)" + (f": {', '.join(stopped)}" if stopped else ""))
        if not args.names:  # all of it: the catalog server too, unless a session uses it
            outcome = catalog_server.stop(root)
            if outcome == "stopped":
                print("stopped the catalog server")
            elif outcome in ("in use", "starting"):
                why = "a session or command uses it" if outcome == "in use" else "still starting"
                print(
                    f"catalog server left running ({why}); it stops itself "
                    f"{catalog_server.idle_seconds():.0f} s after its last user"
                )
    return 0


def _run_catalog(args, root: Path) -> int:
    if args.catalog_command == "recover":
        from .catalog import recover

        with _open_catalog(args, root) as catalog:
            reports = recover(root, catalog)
        if not reports:
            print("nothing to recover: every journal is already in the catalog")
        for report in reports:
            print(report)
        return 0
    if args.catalog_command == "list" and args.limit < 1:
        raise CLIError(f"--limit {args.limit}: give a number of runs, 1 or more")
    if args.catalog_command == "show":
        _check_run_argument(args.run)
    if not args.catalog_uri:
        return _read_embedded_catalog(args, root)
    from .catalog import RunSummary

    # Metadata only: plain tiled clients open ~3 s faster than bluesky's.
    with _open_catalog(args, root, bluesky_clients=False) as catalog:
        if args.catalog_command == "list":
            _print_runs(catalog.runs(limit=args.limit), RunSummary.HEADER)
        elif args.catalog_command == "show":
            print(catalog.describe(args.run))
        elif args.catalog_command == "history":
            print(catalog.sample_history(args.sample_id))
        else:
            _print_samples(catalog.samples())
    return 0


def _print_samples(records) -> None:
    if not records:
        print("no sample registered (register_sample, or a laser cut, registers one)")
        return
    print(f"{'sample':<20} {'material':<12} {'cut from':<16} description")
    for r in records:
        print(f"{r.sample_id:<20} {r.material or '-':<12} {r.parent_id or '-':<16} {r.description}")


def _print_runs(rows, header: str) -> None:
    if not rows:
        print("the catalog is empty")
        return
    print(header)
    for row in rows:
        print(row)


def _read_embedded_catalog(args, root: Path) -> int:
    """``catalog list`` / ``show`` on the data directory's server, over plain HTTP.

    tiled's client costs ~1 s of CPU per process; these commands need metadata only.
    """
    from .catalog import RunSummary, describe_run
    from .catalog_index import RunIndex
    from .samples import history_from_metadata, samples_from_metadata

    lease = catalog_server.acquire(root)
    try:
        with RunIndex(lease.url, lease.api_key) as index:
            if args.catalog_command == "list":
                runs = index.recent(args.limit)
                _print_runs([RunSummary.from_metadata(u, md) for u, md in runs], RunSummary.HEADER)
            elif args.catalog_command == "history":
                runs = index.where("start.sample_id", args.sample_id)
                print(history_from_metadata(args.sample_id, runs))
            elif args.catalog_command == "samples":
                _print_samples(samples_from_metadata(index.having("start.sample")))
            else:
                uid, metadata = index.find(args.run)
                print(describe_run(metadata, index.streams(uid)))
    finally:
        lease.release()
    return 0


def _run_export(args, root: Path) -> int:
    _check_run_argument(args.run)
    if args.out:
        _check_output_directory(args.out)
    from .export import export_run

    with _open_catalog(args, root) as catalog:
        run = catalog.run(args.run)
        out = args.out or f"{args.format}-{str(run.metadata['start']['uid'])[:8]}"
        written = export_run(run, Path(out).expanduser(), args.format, catalog=catalog)
    for path in written:
        print(path)
    return 0


def _run_demo(args, root: Path) -> int:
    from .demos import DEMOS, run_demos

    unknown = [name for name in args.names if name not in DEMOS]
    if unknown:
        raise CLIError(f"unknown demo(s) {unknown}; choose from {list(DEMOS)}")
    results = run_demos(args.names or list(DEMOS), root)
    return 0 if all(r.passed for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``multiscope`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        root = resolve_data_dir(args.data_dir)
        handler = {
            "sim": _run_sim,
            "catalog": _run_catalog,
            "demo": _run_demo,
            "export": _run_export,
        }
        return handler[args.command](args, root)
    except CLIError as err:
        print(f"multiscope: error: {err}", file=sys.stderr)
        return 2
    except (LookupError, ValueError, OSError, simctl.IOCNotReadyError) as err:
        if args.verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"multiscope: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("multiscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
