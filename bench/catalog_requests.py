"""CPU per request of the embedded catalog's tiled server, with and without the dependency fix.

Run ``python bench/catalog_requests.py [--runs 30] [--rounds 6]``.

Builds the embedded catalog's tiled app in this process (a new catalog in a temporary
directory, single-user API key, as :mod:`multiscope.catalog` serves it) and drives it
through tiled's own client over an in-process ASGI transport, so the time measured is
the server's request handling, not the network. One round: create ``--runs`` run
containers with metadata (what the writer does at each run's start), then read each
one's metadata back and search the catalog (what a reader does), each arm in a catalog
of its own so that both grow alike. Rounds alternate, in alternating order,
FastAPI as installed (every request analyses its dependencies again, since tiled's app
has a dependency override) and :func:`multiscope.compat.analyse_overridden_dependencies_once`
(analysed once per process), side by side in one process; the process CPU time per
request is the median over ``--rounds`` rounds of each.

Prints a Markdown table with the ratio and writes it to its section of
``docs/benchmarks.md`` (``--no-write``: print only). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

__all__ = ["main"]

HEADING = "## Catalog server CPU per request (bench/catalog_requests.py)"


def _client(root: Path, key: str):
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.config import Authentication
    from tiled.server.app import build_app

    (root / "data").mkdir(parents=True)
    adapter = from_uri(
        root / "catalog.db",
        writable_storage=[root / "data", f"sqlite:///{root / 'tables.sqlite'}"],
        init_if_not_exists=True,
    )
    app = build_app(adapter, authentication=Authentication(single_user_api_key=key))
    return from_context(Context.from_app(app, api_key=key))


def _round(client, runs: int) -> tuple[float, int]:
    """Process CPU seconds and number of requests for one round of writes and reads."""
    from tiled.queries import Key

    start = time.process_time()
    keys = []
    for number in range(runs):
        key = uuid.uuid4().hex
        client.create_container(key, metadata={"start": {"uid": key, "scan_id": number}})
        keys.append(key)
    for key in keys:
        assert client[key].metadata["start"]["uid"] == key
    assert len(client.search(Key("start.scan_id") >= 0)) >= runs
    return time.process_time() - start, 2 * runs + 2


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; return (and unless ``--no-write`` record) its Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from fastapi.dependencies import utils

    from multiscope import compat

    warnings.simplefilter("ignore")  # Starlette's test client, under tiled's Context.from_app
    installed = utils.get_dependant
    compat.analyse_overridden_dependencies_once()
    analysed_once = utils.get_dependant
    per_request = {"installed": [], "analysed once": []}
    arms = (("installed", installed), ("analysed once", analysed_once))
    with tempfile.TemporaryDirectory() as tmp:
        # A catalog per arm, so that both grow alike (a search costs more in a larger one).
        # One key for both: tiled's server settings are per process.
        key = secrets.token_hex(16)
        clients = {arm: _client(Path(tmp, str(n)), key) for n, (arm, _) in enumerate(arms)}
        for arm, function in arms:
            utils.get_dependant = function
            _round(clients[arm], 5)  # warm: imports, first queries, caches
        for repeat in range(args.rounds):
            for arm, function in arms if repeat % 2 == 0 else arms[::-1]:
                utils.get_dependant = function
                seconds, requests = _round(clients[arm], args.runs)
                per_request[arm].append(1e3 * seconds / requests)
        utils.get_dependant = analysed_once
    plain = statistics.median(per_request["installed"])
    fixed = statistics.median(per_request["analysed once"])
    rounds = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(*per_request.values(), strict=True))
    body = "\n".join([
        HEADING,
        "",
        f"`python bench/catalog_requests.py --runs {args.runs} --rounds {args.rounds}`: the",
        "embedded catalog's tiled app in process (tiled's client over an ASGI transport),",
        f"rounds of {args.runs} run containers created, their metadata read back and one",
        "search; FastAPI as installed (tiled's app overrides `get_settings`, so every request",
        "analyses its dependencies again) against `compat.analyse_overridden_dependencies_once`,",
        "alternating in one process, each in its own catalog. Process CPU per request",
        f"(client included), median of the rounds, 2 cores, {time.strftime('%Y-%m-%d')}.",
        f"Per round (as installed/analysed once, ms): {rounds}.",
        "",
        "| FastAPI | CPU per request (ms) | / installed |",
        "| --- | ---: | ---: |",
        f"| as installed | {plain:.1f} | 1.00 |",
        f"| dependencies analysed once | {fixed:.1f} | {fixed / plain:.2f} |",
        "",
    ])  # fmt: skip
    print(body)
    if not args.no_write:
        write_section(HEADING, body)
    return body


if __name__ == "__main__":
    main()
