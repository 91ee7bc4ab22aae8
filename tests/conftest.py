"""Shared by every test directory: ``tests/`` is on ``sys.path`` (``from waiting import ...``).

pytest's default import mode puts the directory of this rootless conftest first on
``sys.path``, as it does ``tests/unit`` and ``tests/integration`` for their modules.
"""

import os

# Every test data directory gets its own shared catalog server (decision 0015); a
# user's idles out after 10 min, a test's after this, so a suite leaves none behind.
os.environ.setdefault("MULTISCOPE_CATALOG_IDLE_S", "20")
