"""docs/catalog.md's facility recipe, followed step by step (SQLite standing in for PostgreSQL).

A separately started `tiled serve catalog` with an API key; the container of
runs created as documented; a session writes to it with `Catalog.remote`; the
CLI lists it with `--catalog URL` and the key from the environment; a client
without the key is refused (docs/stack-facts.md, fault row 11).
"""

import os
import secrets
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plans as bp
from ophyd.sim import det, motor

from multiscope import simctl
from multiscope.catalog import Catalog

pytestmark = pytest.mark.integration


@pytest.fixture
def facility_server(tmp_path):
    key = secrets.token_hex(16)
    port = simctl.free_port()
    assets = tmp_path / "assets"
    assets.mkdir()
    command = [
        "tiled", "serve", "catalog", "--init", f"sqlite:///{tmp_path / 'catalog.db'}",
        "-w", str(tmp_path / "files"), "-w", f"sqlite:///{tmp_path / 'tables.sqlite'}",
        "-r", str(assets), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "TILED_SINGLE_USER_API_KEY": key}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        server.kill()
        pytest.fail((tmp_path / "server.log").read_text()[-2000:])
    from tiled.client import from_uri

    # Step 2 of the recipe: create the container of runs.
    from_uri(url, api_key=key).create_container("raw", specs=["CatalogOfBlueskyRuns"])
    yield url, key
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def test_session_writes_to_facility_server_and_cli_lists_it(facility_server, tmp_path):
    url, key = facility_server
    with Catalog.remote(url, key, data_dir=tmp_path / "local") as catalog:
        RE = RunEngine({})
        RE.subscribe(catalog.writer())
        (uid,) = RE(bp.scan([det], motor, -1, 1, 5))
        assert catalog.drain(30)
        data = catalog.run(uid)["primary"].read()
        np.testing.assert_allclose(np.asarray(data["motor"]), np.linspace(-1, 1, 5))
    listing = subprocess.run(
        [sys.executable, "-m", "multiscope", "--data-dir", str(tmp_path / "local"),
         "catalog", "--catalog", url, "list"],
        env={**os.environ, "MULTISCOPE_TILED_API_KEY": key},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert uid[:8] in listing.stdout and "scan" in listing.stdout


def test_anonymous_client_is_refused(facility_server):
    url, _ = facility_server
    response = httpx.get(f"{url}/api/v1/metadata/raw", timeout=5)
    assert response.status_code == 401
    response = httpx.get(
        f"{url}/api/v1/metadata/raw", headers={"Authorization": "Apikey wrong"}, timeout=5
    )
    assert response.status_code == 401
