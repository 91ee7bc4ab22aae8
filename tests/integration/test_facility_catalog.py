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

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
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


def documented_scopes(key: str) -> list[str]:
    """The scopes docs/catalog.md's step 5 gives the ``writer`` or ``reader`` key."""
    text = (ROOT / "docs" / "catalog.md").read_text()
    call = re.search(rf"{key}_key = context\.admin\.create_api_key\((.*?)\)\[", text, re.S)
    return json.loads(re.search(r"scopes=(\[.*?\])", call.group(1), re.S).group(1))


WRITER_SCOPES = documented_scopes("writer")
READER_SCOPES = documented_scopes("reader")
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


class FacilityServer:
    """``tiled serve config`` on a fixed port and databases: killed and restarted at will."""

    def __init__(self, tmp: Path, env: dict, port: int):
        self.tmp, self.env, self.port = tmp, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.writer_key = self.reader_key = ""

    def start(self) -> None:
        with open(self.tmp / "server.log", "ab") as log:  # the server keeps its own descriptor
            self.process = subprocess.Popen(
                ["tiled", "serve", "config", str(self.tmp / "config.yml"), "--host",
                 "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_until(self.healthy, timeout=300, interval=0.1)

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError((self.tmp / "server.log").read_text()[-3000:])
        # A bare connection per poll: httpx.get would build a client, and its SSL
        # context (tens of ms of CPU), ten times a second while the server starts.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, requests in flight cut off."""
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def facility_server(tmp_path_factory):
    """A PostgreSQL-backed tiled server set up as documented, keys issued."""
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
        server = FacilityServer(tmp, env, free_port())
        server.start()
        print(f"tiled server up: {time.perf_counter() - t0:.1f} s")
        server.writer_key, server.reader_key = issue_keys(server.url, env["TILED_ADMIN_PASSWORD"])
        print(f"keys issued: {time.perf_counter() - t0:.1f} s")
        server.cluster = cluster
        yield server
    finally:
        if server is not None:
            server.stop()
        cluster.stop()


@pytest.fixture(scope="module")
def facility(facility_server):
    """(url, writer key, reader key) of the facility server."""
    return facility_server.url, facility_server.writer_key, facility_server.reader_key


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


def _killing(catalog, kill, then=None):
    """A per-step hook: ``kill()`` once this run's first events reached the server."""
    from bluesky.plan_stubs import one_nd_step
    from ophyd.sim import motor

    written_before = catalog.status().get("written", 0)
    killed = []

    def step(detectors, step, pos_cache):
        yield from one_nd_step(detectors, step, pos_cache)
        if not killed and step[motor] > 0:
            # start, descriptor and a few events stored: the run is half in the catalog
            wait_until(lambda: catalog.status()["written"] >= written_before + 5,
                       timeout=60, message=lambda: str(catalog.status()))  # fmt: skip
            kill()
            killed.append(time.perf_counter())
            if then is not None:
                then.start()

    step.killed = killed
    return step


@contextlib.contextmanager
def _writing_session(server, data_dir):
    """A session writing to ``server`` one event per request; yields (catalog, RE).

    Its live writer is made (its imports) and drained once before any timing.
    """
    from bluesky import RunEngine
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    with Catalog.remote(server.url, server.writer_key, data_dir=data_dir,
                        batch_size=1) as catalog:  # fmt: skip
        RE = RunEngine({}, context_managers=[])
        RE.subscribe(catalog.writer())
        RE(scan([det], motor, -1, 1, 3))
        assert catalog.drain(60), catalog.status()
        yield catalog, RE


def _runs_while_down(catalog, RE, kill):
    """A run cut by ``kill()`` halfway and the next one acquired while down.

    Returns their uids and the seconds both took after the kill. Checks that neither
    is lost silently: both are reported pending and nothing drains.
    """
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    hook = _killing(catalog, kill)
    cut = RE(scan([det], motor, -1, 1, POINTS, per_step=hook))[0]
    down = RE(scan([det], motor, -1, 1, POINTS))[0]
    acquired_s = time.perf_counter() - hook.killed[0]
    wait_until(lambda: {cut, down} <= set(catalog.status()["pending_recovery"]),
               timeout=60, message=lambda: str(catalog.status()))  # fmt: skip
    assert not catalog.drain(1)
    return cut, down, acquired_s


def _check_stored_once(server, uids, data_dir):
    """Each run listed once, complete, each of its events once (read with the reader key)."""
    expected_motor = np.linspace(-1, 1, POINTS)
    with Catalog.remote(server.url, server.reader_key, data_dir=data_dir) as reader:
        listed = [s.uid for s in reader.runs(1000)]
        for uid in uids:
            assert listed.count(uid) == 1, uid
            run = reader.run(uid)
            assert run.metadata["stop"]["exit_status"] == "success"
            assert run.metadata["stop"]["num_events"] == {"primary": POINTS}
            data = run["primary"].read()
            assert len(data["time"]) == POINTS, uid  # no row lost or repeated
            np.testing.assert_allclose(np.asarray(data["motor"]), expected_motor)


# Deletes every event table's rows with seq_num <= 3 and inserts them again: PostgreSQL
# stores them after the others (heap and index order alike), so a read without
# ORDER BY seq_num returns 4, 5, ..., 1, 2, 3. (An in-place UPDATE would not do: a
# HOT update keeps the row's place in the index.)
MOVE_FIRST_ROWS_TO_THE_END = """
DO $$
DECLARE name text; moved bigint := 0; n bigint;
BEGIN
  FOR name IN SELECT table_name FROM information_schema.columns
              WHERE table_schema = 'public' AND column_name = 'seq_num'
  LOOP
    EXECUTE format('CREATE TEMP TABLE first_rows AS SELECT * FROM %I WHERE seq_num <= 3', name);
    EXECUTE format('DELETE FROM %I WHERE seq_num <= 3', name);
    EXECUTE format('INSERT INTO %I SELECT * FROM first_rows', name);
    GET DIAGNOSTICS n = ROW_COUNT;
    moved := moved + n;
    DROP TABLE first_rows;
  END LOOP;
  IF moved = 0 THEN
    RAISE EXCEPTION 'no event rows moved: no table with a seq_num column';
  END IF;
END $$;
"""


def test_events_read_back_in_seq_num_order_whatever_the_storage_order(facility_server, tmp_path):
    # PostgreSQL returns rows in storage order, which an update or a deleted run's reused
    # space changes (a run rewritten after an outage read 14, 15, 16, 0, 1, ... in CI).
    # The session creates its event tables ordered by seq_num.
    server = facility_server
    with _writing_session(server, tmp_path / "s") as (catalog, RE):
        from bluesky.plans import scan
        from ophyd.sim import det, motor

        uid = RE(scan([det], motor, -1, 1, POINTS))[0]
        assert catalog.drain(60), catalog.status()
    server.cluster.run_sql(MOVE_FIRST_ROWS_TO_THE_END, database="tiled_tables")
    _check_stored_once(server, (uid,), tmp_path / "r")


def test_a_server_killed_mid_run_loses_nothing_and_duplicates_nothing(
    facility_server, tmp_path, monkeypatch
):
    # tiled killed (SIGKILL) while a session writes a run, one event per request so that
    # writes are in flight. (1) Down for longer than tiled's client retries (shortened
    # here from 45 s to 2 s): the session neither stalls nor drops the run nor the next
    # one acquired meanwhile; they wait in its journal, reported pending, and are
    # rewritten whole once the server is back. (2) Restarted within the retries: the live
    # writes resume. Either way each run is stored once with each event once.
    # Near the end of the module: it restarts the server the other tests share.
    import tiled.client.utils
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    server = facility_server
    with _writing_session(server, tmp_path / "s") as (catalog, RE):
        # (1) a long outage. Not silent: both runs reported pending, journals kept.
        monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", 2.0)
        cut, down, acquired_s = _runs_while_down(catalog, RE, server.kill)
        journals = sorted(p.stem for p in (tmp_path / "s" / "journal").glob("*.jsonl"))
        assert journals == sorted([cut, down])
        server.start()
        assert catalog.drain(120), catalog.status()
        assert catalog.status()["pending_recovery"] == []
        monkeypatch.undo()

        # (2) a restart within the client's retries
        restart = threading.Thread(target=server.start, daemon=True)
        hook = _killing(catalog, server.kill, then=restart)
        blip = RE(scan([det], motor, -1, 1, POINTS, per_step=hook))[0]
        restart.join(120)
        assert catalog.drain(120), catalog.status()
        assert server.healthy()
        status = catalog.status()
    print(f"acquired with the server down: {acquired_s:.1f} s; storage: {status}")
    assert acquired_s < 30  # the RunEngine never waited out the outage
    _check_stored_once(server, (cut, down, blip), tmp_path / "r")


def test_postgresql_killed_mid_run_loses_nothing_and_duplicates_nothing(
    facility_server, tmp_path, monkeypatch
):
    # The database killed (SIGKILL to the postmaster) under a live tiled server while a
    # session writes a run: tiled answers errors, the session's runs wait in its
    # journal, reported pending, and are stored once each when PostgreSQL is back,
    # with the same tiled server (its connection pool reconnects). Last in the module.
    import tiled.client.utils
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    server = facility_server
    cluster = server.cluster
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", 2.0)
    with _writing_session(server, tmp_path / "s") as (catalog, RE):
        cut, down, acquired_s = _runs_while_down(catalog, RE, cluster.kill)
        assert server.process.poll() is None  # tiled itself stayed up
        cluster.restart()
        assert catalog.drain(120), catalog.status()
        after = RE(scan([det], motor, -1, 1, POINTS))[0]  # live again
        assert catalog.drain(60), catalog.status()
        status = catalog.status()
    print(f"acquired with PostgreSQL down: {acquired_s:.1f} s; storage: {status}")
    assert acquired_s < 30
    _check_stored_once(server, (cut, down, after), tmp_path / "r")
