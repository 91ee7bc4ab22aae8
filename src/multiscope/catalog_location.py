"""Keep an embedded catalog working after its data directory is moved or copied.

tiled records where each run's data live as absolute URIs, one row per asset in the
catalog database's ``assets`` table: ``sqlite://localhost/<root>/catalog/tables.sqlite``
(event tables), ``file://localhost/<root>/catalog/data/...`` (arrays tiled wrote) and
``file://localhost/<root>/assets/...`` (detector files). Served from another place, a
moved catalog's event tables answered "No such field sqlite://localhost//<old
root>/catalog/tables.sqlite" (tiled finds a table's storage by that exact URI) and its
frames pointed at files that were no longer there.

So the server, before it starts (holding the start lock: nothing else has the
database open), rewrites every asset URI under the root the catalog was last served
from to the same path under the current root, and records the current root in
``catalog/location`` (decision 0023). URIs outside the old root (files a detector wrote
elsewhere) are left alone. A catalog from before this file existed has its old root
read off its event-table asset.

Only the standard library is imported, so any layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from pathlib import Path

__all__ = ["LOCATION_NAME", "relocate"]

LOCATION_NAME = "location"
_SCHEMES = ("file", "sqlite", "duckdb")
_TABLES_SUFFIX = "/catalog/tables.sqlite"


def _split(uri: str) -> tuple[str, str] | None:
    """``(scheme://netloc, path part)`` of a local URI, else None."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in _SCHEMES:
        return None
    head = f"{parsed.scheme}://{parsed.netloc}"
    return head, uri[len(head) :]


def _moved(uri: str, old: str, new: str) -> str | None:
    """``uri`` with its path moved from under ``old`` to under ``new`` (None if not under it)."""
    parts = _split(uri)
    if parts is None:
        return None
    head, tail = parts
    slashes = tail[: len(tail) - len(tail.lstrip("/"))]  # sqlite: "//abs", file: "/abs"
    body = tail[len(slashes) :]
    # Paths tiled writes are not percent-encoded; a detector's URI may be.
    for old_form, new_form in ((old, new), (urllib.parse.quote(old), urllib.parse.quote(new))):
        prefix = old_form.strip("/") + "/"
        if body.startswith(prefix):
            return f"{head}{slashes}{new_form.strip('/')}/{body[len(prefix) :]}"
    return None


def _old_root(catalog_dir: Path, connection: sqlite3.Connection) -> str | None:
    """Where the catalog was last served from: its record, else read off its table asset."""
    with contextlib.suppress(OSError):
        recorded = (catalog_dir / LOCATION_NAME).read_text().strip()
        if recorded:
            return recorded
    for (uri,) in connection.execute("SELECT data_uri FROM assets WHERE data_uri LIKE ?",
                                     (f"%{_TABLES_SUFFIX}",)):  # fmt: skip
        parts = _split(uri)
        if parts is not None:
            path = urllib.parse.unquote(parts[1])
            return "/" + path.lstrip("/")[: -len(_TABLES_SUFFIX)]
    return None


def _record(catalog_dir: Path, root: Path) -> None:
    tmp = catalog_dir / f".{LOCATION_NAME}.{os.getpid()}.tmp"
    tmp.write_text(f"{root}\n")
    os.replace(tmp, catalog_dir / LOCATION_NAME)


def relocate(root: str | os.PathLike) -> int:
    """Point the asset URIs of ``<root>/catalog/catalog.db`` at ``root``; record ``root``.

    Call before the catalog's server opens the database (nothing else may write it).

    Parameters
    ----------
    root : path-like
        The data directory, absolute, where the catalog is served from now.

    Returns
    -------
    int
        How many asset URIs were rewritten (0 when the catalog has not moved).
    """
    root = Path(root)
    catalog_dir = root / "catalog"
    db = catalog_dir / "catalog.db"
    if not db.exists():
        _record(catalog_dir, root)
        return 0
    connection = sqlite3.connect(db, timeout=30)
    try:
        tables = {name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}  # fmt: skip
        old = _old_root(catalog_dir, connection) if "assets" in tables else None
        changed = 0
        if old is not None and Path(old) != root:
            rows = connection.execute("SELECT id, data_uri FROM assets").fetchall()
            updates = [(new, id_) for id_, uri in rows
                       if uri and (new := _moved(uri, old, str(root))) is not None]  # fmt: skip
            with connection:  # one transaction: all rewritten or none
                connection.executemany("UPDATE assets SET data_uri = ? WHERE id = ?", updates)
            changed = len(updates)
    finally:
        connection.close()
    _record(catalog_dir, root)
    return changed
