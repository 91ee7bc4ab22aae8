"""Runs in a tiled container, through tiled's client: found by uid or prefix, and checked.

Used by :mod:`multiscope.catalog` (lookups, the writer's check of each stored run,
recovery). Imports tiled only inside the functions.
"""

from __future__ import annotations

import contextlib

from multiscope.catalog_index import MIN_UID_PREFIX, RUNS_SPEC, uid_prefix_error

__all__ = [
    "find_run",
    "has_run",
    "has_runs_spec_version",
    "is_run_catalog",
    "stored_as_recorded",
    "uid_matches",
]


def has_runs_spec_version(client) -> bool:
    """Whether the container carries the runs' spec at the version the project creates."""
    return any(s.name == RUNS_SPEC["name"] and s.version == RUNS_SPEC["version"]
               for s in getattr(client, "specs", ()))  # fmt: skip


def uid_matches(client, prefix: str) -> tuple[int, list[str]]:
    """How many runs' uids begin with ``prefix``, and the first few of them."""
    from tiled.queries import Like

    if len(prefix) < MIN_UID_PREFIX:
        return 0, []
    found = client.search(Like("start.uid", f"{prefix}%"))
    return len(found), list(found.keys()[:6])


def find_run(client, uid: str):
    """Look a run up by uid, exactly first, else by unique prefix.

    Works on plain and bluesky clients alike, whatever the container's spec version
    (``CatalogOfBlueskyRuns.__getitem__`` of bluesky-tiled-plugins 2.0.12 reported
    "multiple matches" for any prefix of a container created without spec version 3.0).
    """
    from tiled.client.container import Container

    with contextlib.suppress(KeyError):
        return Container.__getitem__(client, uid)
    total, uids = uid_matches(client, uid)
    if total == 1:
        return Container.__getitem__(client, uids[0])
    raise uid_prefix_error(uid, total, uids)


def has_run(client, uid: str) -> bool:
    """Whether a run of exactly this uid is in the container."""
    from tiled.client.container import Container

    try:
        Container.__getitem__(client, uid)
    except KeyError:
        return False
    return True


def stored_as_recorded(client, uid: str, events: dict[str, int]) -> bool:
    """Whether run ``uid`` in ``client`` holds each of its event documents as one row.

    Per stream of ``events`` (the event documents of the run's journal, by stream
    name): as many rows in the stream's event table as events. A write retried after
    its reply was lost (bluesky-tiled-plugins forces that retry) may have stored rows
    twice; a cut-off write, fewer. Streams without event documents (frames referenced
    by StreamDatum only, as a fly scan's; the stop document counts those as events
    too) have no table and are not checked; a point retaken after a pause is an event
    document of its own, with the seq_num of the first take, and a row of its own.

    Raises
    ------
    KeyError
        The run is not in ``client``.
    """
    from tiled.client.container import Container

    for stream, expected in events.items():
        if not expected or stream == "?":  # "?": events of a descriptor the journal lost
            continue
        try:
            node = Container.__getitem__(client, f"{uid}/{stream}")
        except KeyError:
            if has_run(client, uid):
                return False  # the stream is missing
            raise
        # ``internal``, or, for very many columns, ``internal_0``, ``internal_1``, ...
        # (split by sorted column names): all parts hold every row.
        part = None
        for key in ("internal", "internal_0"):
            with contextlib.suppress(KeyError):
                part = Container.__getitem__(node, key)
                break
        if part is None:
            return False
        column = part.structure().columns[0]
        if len(part.read([column])) != expected:
            return False
    return True


def is_run_catalog(client) -> bool:
    """Whether the container is a catalog of bluesky runs (its spec)."""
    return any(s.name == "CatalogOfBlueskyRuns" for s in getattr(client, "specs", ()))
