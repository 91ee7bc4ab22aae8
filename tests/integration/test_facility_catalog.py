"""docs/catalog.md's facility server, followed step by step against real servers.

A throwaway PostgreSQL cluster (``tests/postgres_cluster.py``) holds the catalog, the
event tables and the authentication database; ``tiled serve config`` runs with the
configuration **read from docs/catalog.md**; the administrator issues a writer key and
a read-only key as documented. Two sessions (two processes, each a RunEngine writing
through ``Catalog.remote``) write runs at once, a third client reads every one back
with the read-only key, whose writes are refused, as are requests without a key or
with a wrong one; the CLI lists the runs (docs/stack-facts.md, fault row 11).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from postgres_cluster import start_cluster
from waiting import wait_until

from multiscope.catalog import Catalog
from multiscope.ports import free_port

pytestmark = [
    pytest.mark.integration,
    # The first test's limit also covers the module's set-up: PostgreSQL, tiled and two
    # sessions, ~1 min on an idle 2-core machine, over 5 min measured with load 30.
    pytest.mark.timeout(900),
    # tiled's database initialisation (step 4) stamps with alembic's older configuration.
    pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
WRITER_SCOPES = ["read:metadata", "read:data", "create:node", "write:metadata", "write:data",
                 "register"]  # fmt: skip
READER_SCOPES = ["read:metadata", "read:data"]
RUNS_PER_SESSION, POINTS = 3, 20


def documented_config() -> str:
    """The YAML block of docs/catalog.md's facility section, as an operator copies it."""
    text = (ROOT / "docs" / "catalog.md").read_text()
    section = text[text.index("## A facility tiled server (PostgreSQL)") :]
    (block,) = re.findall(r"```yaml\n(.*?)```", section.split("\n## ")[0], flags=re.S)
    return textwrap.dedent(block)


def issue_keys(url: str, admin_password: str) -> tuple[str, str]:
    """Step 5 of the recipe: the administrator's writer and reader keys, and the container."""
    from tiled.client import from_uri
    from tiled.client.context import Context, password_grant
    from tiled.structures.core import Spec

    context, _ = Context.from_any_uri(url)
    tokens = password_grant(context.http_client, f"{url}/api/v1/auth/provider/local/token",
                            "local", "admin", admin_password)  # fmt: skip
    context.configure_auth(tokens, remember_me=False)
    writer = context.admin.create_service_principal("admin")
    writer_key = context.admin.create_api_key(writer["uuid"], scopes=WRITER_SCOPES)["secret"]
    reader = context.admin.create_service_principal("user")
    reader_key = context.admin.create_api_key(reader["uuid"], scopes=READER_SCOPES)["secret"]
    context.close()
    client = from_uri(url, api_key=writer_key)
    client.create_container("raw", specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
    client.context.close()
    return writer_key, reader_key


@pytest.fixture(scope="module")
def facility(tmp_path_factory):
    """(url, writer key, reader key) of a PostgreSQL-backed tiled server set up as documented."""
    tmp = tmp_path_factory.mktemp("facility")
    t0 = time.perf_counter()
    cluster = start_cluster(free_port())
    print(f"PostgreSQL cluster up: {time.perf_counter() - t0:.1f} s")
    server = None
    try:
        env = {
            **os.environ,
            "TILED_CATALOG_DB": cluster.create_database("tiled_catalog"),
            "TILED_TABLES_DB": cluster.create_database("tiled_tables"),
            "TILED_AUTHN_DB": cluster.create_database("tiled_authn"),
            "TILED_FILES_DIR": str(tmp / "files"),
            "MULTISCOPE_ASSETS_DIR": str(tmp / "assets"),
            "TILED_SECRET_KEY": os.urandom(32).hex(),
            "TILED_ADMIN_PASSWORD": os.urandom(12).hex(),
        }
        for name in ("files", "assets"):
            (tmp / name).mkdir()
        (tmp / "config.yml").write_text(documented_config())
        # Step 4: the functions `tiled admin initialize-database` and `tiled catalog init`
        # run, called here rather than in two more interpreters (~5 s each, loaded).
        from tiled.commandline._admin import initialize_database
        from tiled.commandline._catalog import init

        initialize_database(env["TILED_AUTHN_DB"])
        init(env["TILED_CATALOG_DB"], if_not_exists=False)
        print(f"databases initialised: {time.perf_counter() - t0:.1f} s")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
        server = subprocess.Popen(
            ["tiled", "serve", "config", str(tmp / "config.yml"), "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

        def healthy() -> bool:
            if server.poll() is not None:
                raise RuntimeError((tmp / "server.log").read_text()[-3000:])
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=300, interval=0.1)
        print(f"tiled server up: {time.perf_counter() - t0:.1f} s")
        keys = issue_keys(url, env["TILED_ADMIN_PASSWORD"])
        print(f"keys issued: {time.perf_counter() - t0:.1f} s")
        yield (url, *keys)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
            log.close()
        cluster.stop()


SESSION = """
import json, sys, time
from pathlib import Path
from bluesky import RunEngine
from bluesky.plans import scan
from bluesky.plan_stubs import one_nd_step
from ophyd.sim import det, motor
from multiscope.catalog import Catalog

url, key, data_dir, me, peer, runs, points = sys.argv[1:8]
runs, points = int(runs), int(points)
rendezvous = Path(data_dir).parent
inside = {"done": False}

def step(detectors, step, pos_cache):
    yield from one_nd_step(detectors, step, pos_cache)
    if not inside["done"] and step[motor] > 0:
        # Halfway through the first run: tell the peer, wait until it is inside its own.
        (rendezvous / f"{me}.inside").touch()
        deadline = time.monotonic() + 300
        while not (rendezvous / f"{peer}.inside").exists():
            assert time.monotonic() < deadline, "the other session never started a run"
            time.sleep(0.01)
        inside["done"] = True

with Catalog.remote(url, key, data_dir=data_dir) as catalog:
    RE = RunEngine({}, context_managers=[])
    RE.subscribe(catalog.writer())
    uids = [RE(scan([det], motor, -1, 1, points, per_step=step), session=me)[0]
            for _ in range(runs)]
    assert catalog.drain(120), catalog.status()
print(json.dumps(uids))
"""


@pytest.fixture(scope="module")
def two_sessions(facility, tmp_path_factory):
    """Uids per session, written by two processes at once with the writer key."""
    url, writer_key, _ = facility
    tmp = tmp_path_factory.mktemp("sessions")
    sessions = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-c",
                SESSION,
                url,
                writer_key,
                str(tmp / name),
                name,
                peer,
                str(RUNS_PER_SESSION),
                str(POINTS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name, peer in (("a", "b"), ("b", "a"))
    }
    t0 = time.perf_counter()
    uids = {}
    try:
        for name, process in sessions.items():
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-3000:]
            uids[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        for process in sessions.values():  # a failed or interrupted set-up leaves none
            if process.poll() is None:
                process.kill()
                process.communicate()
    print(f"two sessions done: {time.perf_counter() - t0:.1f} s")
    return uids


def test_two_sessions_write_at_once_and_a_third_client_reads_every_run(
    facility, two_sessions, tmp_path
):
    url, _, reader_key = facility
    expected_motor = np.linspace(-1, 1, POINTS)
    with Catalog.remote(url, reader_key, data_dir=tmp_path) as reader:
        stored = {s.uid: s for s in reader.runs(100)}
        for name, uids in two_sessions.items():
            assert len(set(uids)) == RUNS_PER_SESSION
            for uid in uids:
                assert stored[uid].exit_status == "success"
                assert stored[uid].num_events == {"primary": POINTS}
                run = reader.run(uid)
                assert run.metadata["start"]["session"] == name
                data = run["primary"].read()
                np.testing.assert_allclose(np.asarray(data["motor"]), expected_motor)
                np.testing.assert_allclose(
                    np.asarray(data["det"]), np.exp(-(expected_motor**2) / 2)
                )
        # The writes overlapped: each session's first run was open while the other's was.
        first = {name: reader.run(uids[0]).metadata for name, uids in two_sessions.items()}
        a, b = first["a"], first["b"]
        assert a["start"]["time"] < b["stop"]["time"] and b["start"]["time"] < a["stop"]["time"]


def test_read_only_key_cannot_write(facility, two_sessions, tmp_path):
    from tiled.client.utils import ClientError

    url, _, reader_key = facility
    with Catalog.remote(url, reader_key, data_dir=tmp_path) as reader:
        assert len(reader) >= 2 * RUNS_PER_SESSION
        with pytest.raises(ClientError, match="Not enough permissions") as refused:
            reader.client.create_container("not-allowed")
        assert refused.value.response.status_code == 401  # tiled 0.2.20: 401, not 403
        assert "not-allowed" not in reader.client
    # Through the writer's own path, too: a session given the reader key stores nothing.
    body = {"data": {"type": "container", "attributes": {
        "structure_family": "container", "metadata": {}, "specs": []}}}  # fmt: skip
    response = httpx.post(f"{url}/api/v1/metadata/raw", json=body, timeout=10,
                          headers={"Authorization": f"Apikey {reader_key}"})  # fmt: skip
    assert response.status_code == 401 and "write:metadata" in response.text


def test_no_key_or_a_wrong_key_is_refused(facility):
    url, writer_key, _ = facility
    for headers in ({}, {"Authorization": "Apikey " + "0" * len(writer_key)}):
        for path in ("/api/v1/metadata/raw", "/api/v1/search/raw"):
            assert httpx.get(f"{url}{path}", headers=headers, timeout=10).status_code == 401
    ok = httpx.get(f"{url}/api/v1/metadata/raw", timeout=10,
                   headers={"Authorization": f"Apikey {writer_key}"})  # fmt: skip
    assert ok.status_code == 200


def test_cli_lists_the_runs_with_the_key_from_the_environment(facility, two_sessions, tmp_path):
    url, writer_key, _ = facility
    listing = subprocess.run(
        [sys.executable, "-m", "multiscope", "--data-dir", str(tmp_path / "local"),
         "catalog", "--catalog", url, "list", "--limit", "50"],
        env={**os.environ, "MULTISCOPE_TILED_API_KEY": writer_key},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    for uids in two_sessions.values():
        for uid in uids:
            assert uid[:8] in listing.stdout
