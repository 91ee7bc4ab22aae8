"""Shared by every test directory: ``tests/`` is on ``sys.path`` (``from waiting import ...``).

pytest's default import mode puts the directory of this rootless conftest first on
``sys.path``, as it does ``tests/unit`` and ``tests/integration`` for their modules.
"""
