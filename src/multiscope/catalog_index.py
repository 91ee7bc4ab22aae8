"""Run metadata straight from the embedded catalog server's HTTP API, for the CLI.

``multiscope catalog list`` and ``catalog show`` need the runs' start and stop
documents and their streams' names. Through tiled's Python client that cost ~1 s of
CPU per process (importing it and opening the container), which on a loaded 2-core
machine was most of a command's time; these few JSON requests over the standard
library cost milliseconds. Acquisition, reading data and recovery keep using tiled's
client (:class:`multiscope.catalog.Catalog`).

Only the standard library is imported, so any layer may use it.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "MIN_UID_PREFIX",
    "RUNS_NODE",
    "RUNS_SPEC",
    "RunIndex",
    "RunSummary",
    "describe_run",
    "uid_prefix_error",
]

RUNS_NODE = "raw"
#: The container's spec. Version 3.0 tells bluesky-tiled-plugins' client that the server
#: is SQL-backed; without it ``CatalogOfBlueskyRuns["<uid prefix>"]`` sends a query this
#: server ignores and reports "multiple matches" for any prefix, even one matching nothing.
RUNS_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}
#: A uid string shorter than this is never taken as a prefix (as bluesky-tiled-plugins).
MIN_UID_PREFIX = 5
_LISTED = 5


def uid_prefix_error(prefix: str, total: int, uids: list[str], scan_id: bool = False) -> KeyError:
    """The KeyError for a uid or prefix that matched ``total`` runs (not exactly one).

    Parameters
    ----------
    prefix : str
        What was looked up.
    total : int
        How many runs it matched (0, or 2 and more).
    uids : list of str
        Some of them (the first few are named).
    scan_id : bool
        Also a scan id that matched a run (an all-digit prefix): say both.
    """
    if scan_id and total:
        return KeyError(
            f"{prefix!r} is both scan id {int(prefix)} and the beginning of uid {uids[0]}: "
            f"ask for catalog[{int(prefix)}] (a number: the scan id) or give more uid characters"
        )
    if not total:
        short = (f" (a uid prefix needs at least {MIN_UID_PREFIX} characters)"
                 if len(prefix) < MIN_UID_PREFIX else "")  # fmt: skip
        return KeyError(f"no run in the catalog has a uid beginning with {prefix!r}{short}")
    named = ", ".join(uids[:_LISTED]) + (", ..." if total > _LISTED else "")
    return KeyError(f"uid prefix {prefix!r} matches {total} runs ({named}): give more characters")


@dataclass(frozen=True)
class RunSummary:
    """One line of ``Catalog.runs``; :attr:`HEADER` names its columns."""

    HEADER: ClassVar[str] = (
        f"{'scan':>6}  {'uid':<8}  {'started':<19}  {'plan':<20} {'status':<8} events"
    )

    uid: str
    scan_id: int | None
    plan_name: str | None
    time: float | None
    exit_status: str | None
    num_events: dict[str, int]

    @classmethod
    def from_metadata(cls, uid: str, metadata: dict) -> RunSummary:
        """The summary of a run from its tiled metadata (``start`` and ``stop`` documents)."""
        start, stop = metadata.get("start") or {}, metadata.get("stop") or {}
        return cls(
            uid=uid,
            scan_id=start.get("scan_id"),
            plan_name=start.get("plan_name"),
            time=start.get("time"),
            exit_status=stop.get("exit_status"),
            num_events=dict(stop.get("num_events") or {}),
        )

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time)) if self.time else "?"
        events = ", ".join(f"{k}={v}" for k, v in self.num_events.items()) or "-"
        return (
            f"{self.scan_id!s:>6}  {self.uid[:8]}  {when}  {self.plan_name or '?':<20} "
            f"{self.exit_status or 'running?':<8} {events}"
        )


def describe_run(metadata: dict, streams: dict[str, list[str]]) -> str:
    """A human-readable account of one run: identity, outcome and streams.

    Parameters
    ----------
    metadata : dict
        The run's tiled metadata (``start`` and ``stop`` documents).
    streams : dict
        Stream name to the names it holds.
    """
    start, stop = metadata.get("start") or {}, metadata.get("stop") or {}
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start.get("time", 0)))
    lines = [
        f"uid:         {start.get('uid')}",
        f"scan_id:     {start.get('scan_id')}",
        f"plan:        {start.get('plan_name')} {start.get('plan_args', '')}",
        f"started:     {when}",
        f"exit_status: {stop.get('exit_status', 'no stop document (running or lost)')}",
    ]
    if stop.get("reason"):
        lines.append(f"reason:      {stop['reason']}")
    counts = stop.get("num_events") or {}
    for stream, keys in streams.items():
        lines.append(f"stream {stream}: {counts.get(stream, '?')} events  [{', '.join(keys)}]")
    return "\n".join(lines)


class RunIndex:
    """The runs of a tiled server's ``raw`` container, read with plain HTTP.

    Parameters
    ----------
    url : str
        ``http://host:port`` of the server.
    api_key : str
        Its API key.
    timeout : float
        Seconds per request.
    """

    def __init__(self, url: str, api_key: str, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http":
            raise ValueError(f"RunIndex reads plain-HTTP loopback servers, not {url}")
        self._connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
        self._headers = {"Authorization": f"Apikey {api_key}", "Accept": "application/json"}

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def __enter__(self) -> RunIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, path: str, **params: Any) -> dict:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        self._connection.request("GET", f"{path}?{query}", headers=self._headers)
        response = self._connection.getresponse()
        body = response.read()
        if response.status == 404:
            raise KeyError(path)
        if response.status != 200:
            raise OSError(f"catalog server answered {response.status} to {path}: {body[:200]!r}")
        return json.loads(body)

    def _search(self, offset: int, limit: int, **filters: Any) -> tuple[int, list[dict]]:
        try:
            reply = self._get(
                f"/api/v1/search/{RUNS_NODE}",
                **{"page[offset]": offset, "page[limit]": limit, "fields": "metadata"},
                **filters,
            )
        except KeyError:  # no container of runs yet: nothing was ever stored
            return 0, []
        return int(reply["meta"]["count"]), reply["data"]

    def count(self) -> int:
        """How many runs the catalog holds."""
        return self._search(0, 0)[0]

    def recent(self, limit: int) -> list[tuple[str, dict]]:
        """(uid, metadata) of the last ``limit`` runs, oldest first (as ``Catalog.runs``)."""
        total = self.count()
        _, items = self._search(max(0, total - limit), limit)
        return [(item["id"], item["attributes"]["metadata"]) for item in items]

    def _all(self, **filters: Any) -> list[tuple[str, dict]]:
        found: list[tuple[str, dict]] = []
        while True:
            total, items = self._search(len(found), 100, **filters)
            found += [(item["id"], item["attributes"]["metadata"]) for item in items]
            if not items or len(found) >= total:
                return found

    def where(self, key: str, value: Any) -> list[tuple[str, dict]]:
        """(uid, metadata) of every run whose metadata ``key`` (dotted) equals ``value``."""
        return self._all(**{"filter[eq][condition][key]": key,
                            "filter[eq][condition][value]": json.dumps(value)})  # fmt: skip

    def having(self, key: str) -> list[tuple[str, dict]]:
        """(uid, metadata) of every run whose metadata has ``key`` (dotted)."""
        return self._all(**{"filter[keypresent][condition][key]": key,
                            "filter[keypresent][condition][exists]": "true"})  # fmt: skip

    def find(self, run: str | int) -> tuple[str, dict]:
        """(uid, metadata) of one run, named as :meth:`multiscope.catalog.Catalog.run` takes it.

        A negative number counts back from the latest (-1), a positive one is a scan
        id (its latest run), a string is a uid or a unique beginning of one.

        Raises
        ------
        KeyError
            No run, or several runs, match (the message says which).
        """
        if isinstance(run, str):
            try:
                number = int(run)
            except ValueError:
                return self._find_uid(run)
            if number > 0 and len(run) >= MIN_UID_PREFIX:  # all digits: a uid prefix too?
                try:
                    found = self._find_scan(number)
                except KeyError:  # no such scan id: a uid prefix, or the prefix's error
                    return self._find_uid(run)
                total, items = self._uid_matches(run)
                if total:
                    raise uid_prefix_error(run, total, [item["id"] for item in items], True)
                return found
            run = number
        if run < 0:
            total = self.count()
            if -run > total:
                raise KeyError(f"no run {run} in the catalog: it holds {total} run(s)")
            (item,) = self._search(total + run, 1)[1]
            return item["id"], item["attributes"]["metadata"]
        return self._find_scan(run)

    def _find_scan(self, run: int) -> tuple[str, dict]:
        scan = {"filter[eq][condition][key]": "start.scan_id"}
        scan["filter[eq][condition][value]"] = json.dumps(run)
        total, _ = self._search(0, 0, **scan) if run else (0, [])
        if not total:
            raise KeyError(
                f"no run with scan id {run} in the catalog "
                "(a negative number counts back from the latest, -1)"
            )
        (item,) = self._search(total - 1, 1, **scan)[1]  # the latest run of that scan id
        return item["id"], item["attributes"]["metadata"]

    def _uid_matches(self, prefix: str) -> tuple[int, list[dict]]:
        """How many runs' uids begin with ``prefix``, and the first few."""
        if len(prefix) < MIN_UID_PREFIX:
            return 0, []
        like = {"filter[like][condition][key]": "start.uid"}
        like["filter[like][condition][pattern]"] = json.dumps(f"{prefix}%")
        return self._search(0, _LISTED + 1, **like)

    def _find_uid(self, uid: str) -> tuple[str, dict]:
        try:
            reply = self._get(f"/api/v1/metadata/{RUNS_NODE}/{urllib.parse.quote(uid)}")
            return uid, reply["data"]["attributes"]["metadata"]
        except KeyError:
            pass
        total, items = self._uid_matches(uid)
        if total == 1:
            return items[0]["id"], items[0]["attributes"]["metadata"]
        raise uid_prefix_error(uid, total, [item["id"] for item in items])

    def _children(self, path: str) -> list[str]:
        names: list[str] = []
        while True:
            reply = self._get(
                f"/api/v1/search/{path}", **{"page[offset]": len(names), "fields": ""}
            )
            names += [item["id"] for item in reply["data"]]
            if not reply["data"] or len(names) >= int(reply["meta"]["count"]):
                return names

    def streams(self, uid: str) -> dict[str, list[str]]:
        """Stream name to the names it holds (its table and its arrays), for a run."""
        run_path = f"{RUNS_NODE}/{urllib.parse.quote(uid)}"
        return {
            stream: self._children(f"{run_path}/{urllib.parse.quote(stream)}")
            for stream in self._children(run_path)
        }
