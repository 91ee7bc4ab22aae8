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
import urllib.parse
from typing import Any

__all__ = ["RunIndex"]

RUNS_NODE = "raw"


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
                run = int(run)
            except ValueError:
                return self._find_uid(run)
        if run < 0:
            total = self.count()
            if -run > total:
                raise KeyError(f"no run {run} in the catalog: it holds {total} run(s)")
            (item,) = self._search(total + run, 1)[1]
            return item["id"], item["attributes"]["metadata"]
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

    def _find_uid(self, uid: str) -> tuple[str, dict]:
        try:
            reply = self._get(f"/api/v1/metadata/{RUNS_NODE}/{urllib.parse.quote(uid)}")
            return uid, reply["data"]["attributes"]["metadata"]
        except KeyError:
            pass
        if len(uid) >= 5:
            like = {"filter[like][condition][key]": "start.uid"}
            like["filter[like][condition][pattern]"] = json.dumps(f"{uid}%")
            total, items = self._search(0, 2, **like)
            if total == 1:
                return items[0]["id"], items[0]["attributes"]["metadata"]
            if total > 1:
                raise KeyError(f"uid prefix {uid!r} matches several runs")
        raise KeyError(f"no run with uid {uid!r} in the catalog")

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
