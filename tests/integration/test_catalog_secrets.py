"""The embedded catalog's API key stays out of logs, files and the process list.

Measured before the fix: tiled printed ``http://...?api_key=<key>`` to
``catalog/server.log`` (mode 0644), and with that key a node could be created and
deleted.
"""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from multiscope.plans.scans import line_scan
from multiscope.session import configure_session

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:uvicorn.*"),
]


def test_session_keeps_the_catalog_key_out_of_logs_and_readable_files(demo_ioc, tmp_path):
    session = configure_session(
        {}, "demo", data_dir=tmp_path, prefix=demo_ioc.prefix, table=False, progress=False
    )
    try:
        server = session.catalog._server
        key = server.api_key
        # It is the key that writes: looking for it below means something.
        with httpx.Client(base_url=server.url, trust_env=False) as http:
            authorised = {"Authorization": f"Apikey {key}"}
            assert http.get("/api/v1/metadata/", headers=authorised).status_code == 200
            assert http.get("/api/v1/metadata/").status_code == 401
        assert key.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        # Something for every file to hold: a stored scan with camera frames.
        cam, m1, beam = (session.devices[n] for n in ("cam", "m1", "beam_current"))
        session.devices["shutter"].set("open").wait(5)
        cam.cam.acquire_time.set(0.002).wait(5)
        (uid,) = session.RE(line_scan([cam, beam], m1, -1, 1, 3))
        assert session.catalog.drain(60)
        assert session.catalog.run(uid).metadata["stop"]["exit_status"] == "success"
    finally:
        session.close()

    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert {"server.log", "catalog.db", f"{uid}.jsonl"} <= names, names
    assert any(path.suffix == ".h5" for path in files)
    # Only the shared server's record holds it, readable by its owner alone (0015).
    holding_key = [path for path in files if key.encode() in path.read_bytes()]
    assert holding_key == [tmp_path / "catalog" / "server.json"]
    assert stat.S_IMODE(holding_key[0].stat().st_mode) == 0o600
    server_log = tmp_path / "catalog" / "server.log"
    assert "GET /api/v1/metadata/" in server_log.read_text()  # it does log requests
    assert stat.S_IMODE(server_log.stat().st_mode) == 0o600
