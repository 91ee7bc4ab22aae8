"""Metadata that survives a restart of the session (``RE.md``).

bluesky's ``PersistentDict`` needs ``zict`` and syncs mutations only on garbage
collection; this store writes one small JSON file atomically on every change, so
a crash never loses or corrupts what the user set (sample name, proposal, ...).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

__all__ = ["JSONMetadataStore"]


class JSONMetadataStore(MutableMapping):
    """A dict persisted as one JSON file, rewritten atomically on each change.

    Parameters
    ----------
    path : path-like
        The JSON file; created (with parents) on the first write.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "md.json"
    >>> md = JSONMetadataStore(p); md["sample"] = "NMC811 tab 3"
    >>> JSONMetadataStore(p)["sample"]
    'NMC811 tab 3'
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._data: dict[str, Any] = {}
        if self.path.exists():
            self._data = json.loads(self.path.read_text() or "{}")

    def _sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".md-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self._data, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, self.path)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        json.dumps(value, default=str)  # refuse unserialisable values before storing them
        self._data[key] = value
        self._sync()

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._sync()

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!s}, {self._data!r})"
