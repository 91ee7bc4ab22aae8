"""A moved catalog's asset URIs (decision 0023) and the uid lookup's messages.

The rewrite runs on a SQLite database shaped as tiled's ``assets`` table, with the URI
forms tiled 0.2.20 wrote in a real catalog (docs/stack-facts.md, tiled): the event
tables ``sqlite://localhost//<root>/...``, files ``file://localhost/<root>/...``.
"""

from __future__ import annotations

import sqlite3

import pytest

from multiscope.catalog_index import uid_prefix_error
from multiscope.catalog_location import LOCATION_NAME, relocate


def _catalog(root, uris):
    (root / "catalog").mkdir(parents=True)
    connection = sqlite3.connect(root / "catalog" / "catalog.db")
    connection.execute("CREATE TABLE assets (id INTEGER PRIMARY KEY, data_uri VARCHAR(1023))")
    connection.executemany("INSERT INTO assets (data_uri) VALUES (?)", [(u,) for u in uris])
    connection.commit()
    connection.close()


def _uris(root):
    connection = sqlite3.connect(root / "catalog" / "catalog.db")
    try:
        return [u for (u,) in connection.execute("SELECT data_uri FROM assets ORDER BY id")]
    finally:
        connection.close()


def test_a_moved_catalog_points_at_its_new_place_and_nothing_else_changes(tmp_path):
    old, new = "/data/run dir/A", tmp_path / "B"
    uris = [
        f"sqlite://localhost/{old}/catalog/tables.sqlite",
        f"file://localhost{old}/catalog/data/abc",
        f"file://localhost{old}/assets/cam/frames_1.h5",
        "file://localhost/data/run%20dir/A/assets/cam/quoted.h5",  # a detector's quoting
        "file://localhost/data/run dir/AB/assets/other.h5",  # a sibling: not under A
        "file://localhost/elsewhere/frames.h5",
    ]
    _catalog(new, uris)
    # No `location` yet (a catalog from before 0023): the old root is read off the table.
    assert relocate(new) == 4
    assert _uris(new) == [
        f"sqlite://localhost//{str(new).lstrip('/')}/catalog/tables.sqlite",
        f"file://localhost{new}/catalog/data/abc",
        f"file://localhost{new}/assets/cam/frames_1.h5",
        f"file://localhost{new}/assets/cam/quoted.h5",
        uris[4],
        uris[5],
    ]
    assert (new / "catalog" / LOCATION_NAME).read_text().strip() == str(new)
    assert relocate(new) == 0  # served again where it is: nothing to do
    assert _uris(new)[0].endswith(f"{new}/catalog/tables.sqlite")


def test_the_recorded_place_is_used_when_there_is_no_table_yet(tmp_path):
    new = tmp_path / "moved"
    _catalog(new, ["file://localhost/old/place/assets/a.h5"])
    assert relocate(new) == 0  # nothing tells where it was
    (new / "catalog" / LOCATION_NAME).write_text("/old/place\n")
    assert relocate(new) == 1
    assert _uris(new) == [f"file://localhost{new}/assets/a.h5"]


def test_a_new_catalog_only_records_its_place(tmp_path):
    (tmp_path / "catalog").mkdir()
    assert relocate(tmp_path) == 0
    assert (tmp_path / "catalog" / LOCATION_NAME).read_text().strip() == str(tmp_path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("fedcba98", 0, []), "no run in the catalog has a uid beginning with 'fedcba98'"),
        (("abc", 0, []), "at least 5 characters"),
        (("abcde", 7, [f"abcde{i}" for i in range(6)]), "matches 7 runs (abcde0, abcde1, "
                                                        "abcde2, abcde3, abcde4, ...)"),
        (("12345", 1, ["12345678-x"], True), "both scan id 12345 and the beginning of uid"),
    ],
)  # fmt: skip
def test_uid_prefix_errors_say_what_matched(args, expected):
    error = uid_prefix_error(*args)
    assert isinstance(error, KeyError) and expected in error.args[0]
