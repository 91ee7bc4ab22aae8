"""The PV names a doc page's table of a simulated IOC promises (for the IOC tests).

Importable from every test directory (``tests/conftest.py`` puts ``tests/`` on
``sys.path``): ``from pv_docs import documented_pvs``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["documented_pvs"]


def documented_pvs(
    doc: Path,
    heading: str,
    *,
    end: str = "\n## ",
    expand: Mapping[str, Sequence[str]] | None = None,
    by_kind: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """PV names (after the prefix) of the table under ``heading`` in ``doc``.

    Parameters
    ----------
    doc : Path
        The Markdown page.
    heading : str
        The section's heading (its text up to ``end`` is read).
    end : str
        What ends the section (the next heading of that level).
    expand : mapping, optional
        A documented name standing for several PVs (``"cam1:"`` -> its main PVs).
    by_kind : mapping, optional
        A table's type column to the suffixes of each name of that type (``"motor
        record"`` -> ``("", ".RBV", ...)``).
    """
    section = doc.read_text().split(heading)[1].split(end)[0]
    expand, by_kind = dict(expand or {}), dict(by_kind or {})
    names: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first, kind = (cell.strip() for cell in line.strip().strip("|").split("|")[:2])
        for name in re.findall(r"`([^`]+)`", first):
            if name in expand:
                names += list(expand[name])
            elif kind in by_kind:
                names += [name + suffix for suffix in by_kind[kind]]
            else:
                names.append(name)
    return names
