"""The database backend that follows the cluster's member list
(``pamportal.replication.backend``): each new connection takes HOST/PORT from
database.json as it is now (a parse only when the file changed), a file broken while
running keeps the last good list, ``database_hosts_update`` refuses what would strand
the node and writes atomically; then for real, a running Django process listing only
member A follows a switchover to a member B that joined after it started, once the
list is updated and without a restart (and does not without the update).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLWrapper
from django.db.utils import load_backend

from pamportal.core import files
from pamportal.replication import database
from pamportal.replication.backend.base import DatabaseWrapper
from pamportal.replication.database import DatabaseFile, DatabaseHost, HostsUpdateRefused
from tests.replication.support import Lab, missing_tools, wait_until

REPO = Path(__file__).resolve().parents[2]
OWN = DatabaseHost(host="127.0.0.54", port=5432)
OTHER = DatabaseHost(host="127.0.0.55", port=5433)
LOGGER = "pamportal.replication.database"


def tls(tmp_path: Path) -> dict:
    found = {"ca_file": tmp_path / "tls" / "cluster-ca.crt", "cert_file": tmp_path / "tls" / "node.crt",
             "key_file": tmp_path / "tls" / "node.key"}
    found["ca_file"].parent.mkdir(exist_ok=True)
    for path in found.values():
        path.write_text("x")
    return found


def node_file(tmp_path: Path, *hosts: DatabaseHost) -> Path:
    return database.write_database_file(tmp_path, DatabaseFile(hosts=hosts or (OWN,), member="node-127-0-0-54",
                                                               moved_at="20260101T000000Z", sqlite_kept="kept"))


def wrapper(entry: dict, alias: str = "backend-probe"):
    """The connection Django would make for ``entry`` (its ENGINE loaded as Django does)."""
    configured = connections.configure_settings({"default": entry})["default"]
    return load_backend(configured["ENGINE"]).DatabaseWrapper(configured, alias=alias)


def started(tmp_path: Path, *hosts: DatabaseHost):
    """A node's ``default`` connection as settings build it at process start."""
    node_file(tmp_path, *hosts)
    entry = database.databases(data_dir=tmp_path, database_url=None, **tls(tmp_path))["default"]
    return wrapper(entry)


def hosts_of(conn) -> tuple[str, str]:
    params = conn.get_connection_params()
    return params["host"], params["port"]


@pytest.fixture
def parses(monkeypatch):
    """How many times database.json is parsed."""
    count = {"n": 0}
    parse = database.parse_database_file

    def counting(raw, path=database.FILE_NAME):
        count["n"] += 1
        return parse(raw, path)

    monkeypatch.setattr(database, "parse_database_file", counting)
    return count


# --- the backend ---------------------------------------------------------------------------
def test_the_engine_is_djangos_postgresql_backend(tmp_path):
    conn = started(tmp_path)
    assert type(conn) is DatabaseWrapper and isinstance(conn, PostgreSQLWrapper)
    assert conn.vendor == "postgresql"  # what the audit code and migrations branch on
    params = conn.get_connection_params()
    # every option of the multi-host setup reaches psycopg as before
    assert params["target_session_attrs"] == "read-write" and params["sslmode"] == "verify-full"
    assert (params["dbname"], params["user"], params["connect_timeout"]) == ("pamportal", "pamportal", 3)
    assert (params["host"], params["port"]) == ("127.0.0.54", "5432")
    assert database.HOSTS_FILE not in params


def test_each_new_connection_takes_the_list_in_the_file_now(tmp_path):
    conn = started(tmp_path)
    assert hosts_of(conn) == ("127.0.0.54", "5432")
    database.database_hosts_update(tmp_path, [OWN, OTHER], own=OWN)
    assert hosts_of(conn) == ("127.0.0.54,127.0.0.55", "5432,5433")
    database.database_hosts_update(tmp_path, [OTHER, OWN], own=OWN)  # the order is libpq's order
    assert hosts_of(conn) == ("127.0.0.55,127.0.0.54", "5433,5432")
    # settings are not rewritten: HOST/PORT stay the list read at start (the fallback)
    assert (conn.settings_dict["HOST"], conn.settings_dict["PORT"]) == ("127.0.0.54", "5432")


def test_the_file_is_parsed_only_when_it_changed(tmp_path, parses):
    conn = started(tmp_path)
    assert parses["n"] == 1  # settings at start, which also primes the cache
    for _ in range(50):
        assert hosts_of(conn) == ("127.0.0.54", "5432")
    assert parses["n"] == 1  # fifty connections: a stat each, no parse

    database.database_hosts_update(tmp_path, [OWN, OTHER], own=OWN)
    parses["n"] = 0
    for _ in range(20):
        assert hosts_of(conn) == ("127.0.0.54,127.0.0.55", "5432,5433")
    assert parses["n"] == 1  # the first connection after the update; the others a stat each

    # an edit in place (same inode, same size) is seen too
    path = database.database_file_path(tmp_path)
    inode = path.stat().st_ino
    path.write_text(path.read_text().replace("127.0.0.55", "127.0.0.56"))
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))
    assert path.stat().st_ino == inode
    assert hosts_of(conn) == ("127.0.0.54,127.0.0.56", "5432,5433")


def test_a_file_broken_while_running_keeps_the_last_good_list_and_is_logged_once(tmp_path, caplog):
    conn = started(tmp_path, OWN, OTHER)
    path = database.database_file_path(tmp_path)
    caplog.set_level(logging.INFO, logger=LOGGER)
    path.write_text("{truncated")
    for _ in range(10):
        assert hosts_of(conn) == ("127.0.0.54,127.0.0.55", "5432,5433")
    complaints = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(complaints) == 1, [r.getMessage() for r in complaints]
    assert str(path) in complaints[0].getMessage() and "not JSON" in complaints[0].getMessage()
    assert "last good member list 127.0.0.54,127.0.0.55" in complaints[0].getMessage()

    # another broken version is news: said once more
    path.write_text(json.dumps({"format": "pamportal-database", "version": 1, "member": "m", "hosts": []}))
    for _ in range(5):
        assert hosts_of(conn) == ("127.0.0.54,127.0.0.55", "5432,5433")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][1:] == [
        f"{path}: 'hosts' must be a non-empty list of {{\"host\", \"port\"}}; new connections keep using the last "
        "good member list 127.0.0.54,127.0.0.55 (ports 5432,5433) until the file is corrected (a process "
        "started now would refuse it)"]

    # removed: the same
    path.unlink()
    for _ in range(5):
        assert hosts_of(conn) == ("127.0.0.54,127.0.0.55", "5432,5433")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(messages) == 3 and "it is missing" in messages[2]

    # corrected: followed again, and said
    node_file(tmp_path, OTHER, OWN)
    assert hosts_of(conn) == ("127.0.0.55,127.0.0.54", "5433,5432")
    assert any("is readable again" in r.getMessage() for r in caplog.records)


def test_the_process_still_refuses_to_start_on_a_broken_file(tmp_path):
    node_file(tmp_path)
    database.database_file_path(tmp_path).write_text("{truncated")
    with pytest.raises(database.DatabaseFileError, match="not JSON"):
        database.databases(data_dir=tmp_path, database_url=None, **tls(tmp_path))


def test_an_unexpected_failure_never_fails_the_connection(tmp_path, monkeypatch, caplog):
    conn = started(tmp_path)

    def boom(raw, path=database.FILE_NAME):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(database, "parse_database_file", boom)
    node_file(tmp_path, OTHER, OWN)  # a new version, which fails to parse
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert hosts_of(conn) == ("127.0.0.54", "5432")
    assert "disk on fire" in caplog.text


def test_before_any_good_read_the_list_from_settings(tmp_path, caplog):
    # built without settings' priming read (another process wrote the entry): the file is
    # missing, so the HOST/PORT in the entry are the last good list
    missing = tmp_path / "elsewhere" / "database.json"
    entry = database.postgresql_settings(DatabaseFile(hosts=(OWN, OTHER), member="m"), hosts_file=missing,
                                         **tls(tmp_path))
    assert entry["ENGINE"] == "pamportal.replication.backend"
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert hosts_of(wrapper(entry)) == ("127.0.0.54,127.0.0.55", "5432,5433")
    assert "it is missing" in caplog.text


def test_without_a_file_to_follow_the_engine_is_djangos(tmp_path):
    # the move's own connection to the one new member, and DATABASE_URL setups
    entry = database.postgresql_settings(DatabaseFile(hosts=(OWN,), member="m"), **tls(tmp_path))
    assert entry["ENGINE"] == "django.db.backends.postgresql" and database.HOSTS_FILE not in entry


# --- database_hosts_update -------------------------------------------------------------------
def test_update_keeps_every_other_field_and_writes_privately(tmp_path):
    node_file(tmp_path)
    before = database.read_database_file(tmp_path)
    updated = database.database_hosts_update(tmp_path, [("127.0.0.54", 5432), ("node2.example.com", 5433)],
                                             own=OWN)
    path = database.database_file_path(tmp_path)
    assert database.read_database_file(tmp_path) == updated
    assert updated.hosts == (OWN, DatabaseHost(host="node2.example.com", port=5433))
    assert (updated.member, updated.moved_at, updated.sqlite_kept) == (before.member, before.moved_at,
                                                                         before.sqlite_kept)
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [".database.json.lock", "database.json"]


def test_update_takes_this_nodes_member_from_its_etcd_member(tmp_path, settings, monkeypatch):
    from types import SimpleNamespace

    from pamportal.cluster import local_etcd

    node_file(tmp_path)
    settings.PAM_POSTGRES_PORT = 5432
    monkeypatch.setattr(local_etcd, "local_member_config", lambda: None)
    with pytest.raises(HostsUpdateRefused, match="this node has no etcd member"):
        database.database_hosts_update(tmp_path, [OWN])
    monkeypatch.setattr(local_etcd, "local_member_config", lambda: SimpleNamespace(address="127.0.0.54"))
    with pytest.raises(HostsUpdateRefused, match="lacks this node's own member 127.0.0.54:5432"):
        database.database_hosts_update(tmp_path, [OTHER])
    assert database.database_hosts_update(tmp_path, [OTHER, OWN]).hosts == (OTHER, OWN)


REFUSED = [
    ([], "an empty member list"),
    ([OTHER], "lacks this node's own member 127.0.0.54:5432"),
    ([DatabaseHost(host="127.0.0.54", port=5433)], "lacks this node's own member"),
    ([OWN, OTHER, OWN], "members listed twice: 127.0.0.54:5432"),
    ([OWN, ("a,b", 5432)], "host 'a,b' is not a host name or IP address"),
    ([OWN, ("127.0.0.55", 0)], "port 0 is not a TCP port"),
    ([OWN, ("127.0.0.55", "5432")], "port '5432' is not a TCP port"),
    ([OWN, "127.0.0.55:5432"], "is not a DatabaseHost or (host, port)"),
    ([OWN] + [("127.0.1.%d" % i, 5432) for i in range(16)], "more than 16 hosts"),
]


@pytest.mark.parametrize("hosts,problem", REFUSED, ids=[p for _h, p in REFUSED])
def test_update_refuses_and_changes_nothing(tmp_path, hosts, problem):
    path = node_file(tmp_path, OWN, OTHER)
    before, inode = path.read_bytes(), path.stat().st_ino
    with pytest.raises(HostsUpdateRefused) as refused:
        database.database_hosts_update(tmp_path, hosts, own=OWN)
    assert problem in str(refused.value) and str(path) in str(refused.value)
    assert "member list not changed" in str(refused.value)
    assert path.read_bytes() == before and path.stat().st_ino == inode


def test_update_refuses_a_node_without_a_file_or_with_a_broken_one(tmp_path):
    with pytest.raises(HostsUpdateRefused, match="there is no such file"):
        database.database_hosts_update(tmp_path, [OWN], own=OWN)
    assert not database.database_file_path(tmp_path).exists()
    database.database_file_path(tmp_path).write_text("{truncated")
    with pytest.raises(HostsUpdateRefused, match="not JSON"):
        database.database_hosts_update(tmp_path, [OWN], own=OWN)
    assert database.database_file_path(tmp_path).read_text() == "{truncated"


def test_an_update_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch):
    path = node_file(tmp_path)
    before = path.read_bytes()

    def rename_fails(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", rename_fails)
    with pytest.raises(OSError, match="No space left"):
        database.database_hosts_update(tmp_path, [OWN, OTHER], own=OWN)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left


def test_readers_see_one_whole_list_or_the_other_during_updates(tmp_path):
    path = node_file(tmp_path)
    lists = ([OWN], [OWN, OTHER, DatabaseHost(host="node3.example.com", port=5432)])
    done = threading.Event()
    seen: set[tuple] = set()
    torn: list[str] = []

    def read():
        while not done.is_set():
            raw = path.read_bytes()
            try:
                seen.add(database.parse_database_file(raw, path).hosts)
            except database.DatabaseFileError as exc:
                torn.append(exc.problem)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(100):
            database.database_hosts_update(tmp_path, lists[i % 2], own=OWN)
    finally:
        done.set()
        reader.join(timeout=10)
    assert not torn, torn[:3]
    assert seen <= {tuple(lists[0]), tuple(lists[1])} and len(seen) >= 1


# --- for real: a running Django process follows a member that joined after it started ---------
ADDRESSES = {"a": "127.0.0.96", "b": "127.0.0.97", "c": "127.0.0.98"}

# A console process reduced to its database use: settings as a node's, then one
# "request" per line on stdin, with Django's own per-request connection handling
# (close_old_connections at request start and end: CONN_MAX_AGE, health checks).
CONSOLE = """
import json, sys
import django
django.setup()
from django.db import close_old_connections, connection
print(json.dumps({"engine": connection.settings_dict["ENGINE"]}), flush=True)
for line in sys.stdin:
    asked = json.loads(line)
    if asked.get("reconnect"):
        connection.close()
    close_old_connections()
    try:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO notes (note) VALUES (%s) RETURNING host(inet_server_addr())", [asked["note"]])
            answer = {"wrote_on": cursor.fetchone()[0]}
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        close_old_connections()
    print(json.dumps(answer), flush=True)
"""


class Console:
    """The process above, with a bounded wait for each answer."""

    def __init__(self, data_dir: Path, log: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAM_", "DJANGO_", "DATABASE_URL"))}
        env.update(PAM_DATA_DIR=str(data_dir), DJANGO_SETTINGS_MODULE="pamportal.settings")
        self.log = log
        self._stderr = open(log, "wb")  # noqa: SIM115 — closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-c", CONSOLE], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)

    def answer(self, timeout: float = 60) -> dict:
        try:
            return json.loads(self._lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"the console process did not answer in {timeout}s:\n{self.stderr()}") from None

    def request(self, note: str, *, reconnect: bool = False) -> dict:
        self.proc.stdin.write(json.dumps({"note": note, "reconnect": reconnect}) + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.close()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            self._stderr.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if missing_tools() is not None:
        pytest.skip(missing_tools())
    lab = Lab(tmp_path_factory.mktemp("backend"), addresses=ADDRESSES)
    try:
        lab.etcd_start()
        lab.member_start("a")
        lab.wait_leader("a", "a", timeout=90)
        wait_until(lambda: lab.connect("a").execute("SELECT 1").fetchone(), 30, what="the application role on a",
                   log=lambda: lab.log("a"))
        yield lab
    finally:
        lab.close()


def node_dir(lab, root: Path) -> Path:
    """Node a's data dir as the move leaves it: its TLS files and a database.json
    listing only its own member."""
    data_dir = root / "node-a"
    (data_dir / "tls").mkdir(parents=True, mode=0o700)
    data_dir.chmod(0o700)
    cert = lab.pki.nodes["a"]
    for source, name in ((lab.pki.ca_file, "cluster-ca.crt"), (cert.cert_file, "node.crt"),
                         (cert.key_file, "node.key")):
        shutil.copyfile(source, data_dir / "tls" / name)
    (data_dir / "tls" / "node.key").chmod(0o600)
    database.write_database_file(data_dir, DatabaseFile(hosts=(member_host(lab, "a"),), member="a"))
    return data_dir


def member_host(lab, name: str) -> DatabaseHost:
    return DatabaseHost(host=ADDRESSES[name], port=lab.pg_ports[name][0])


@pytest.mark.processes
@pytest.mark.cluster
def test_a_running_process_follows_a_member_that_joined_after_it_started(lab, tmp_path):
    with lab.connect("a") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, note text NOT NULL)")
    data_dir = node_dir(lab, tmp_path)
    console = Console(data_dir, tmp_path / "console.log")
    try:
        assert console.answer() == {"engine": "pamportal.replication.backend"}
        assert console.request("before") == {"wrote_on": ADDRESSES["a"]}

        # b joins (a replica of a, synchronous), then takes over
        lab.member_start("b")
        lab.wait_sync_standby("a", "b", timeout=90)
        answer = lab.api("a").switchover(leader="a", candidate="b")
        assert 'switched over to "b"' in answer, answer
        lab.wait_leader("b", "b", timeout=60)

        def a_is_a_replica():
            member = lab.api("b").cluster().member("a")
            return member is not None and member.state == "streaming"

        wait_until(a_is_a_replica, 90, what="a streaming from b", log=lambda: lab.log("a"))

        # without the update: the process knows only a, now a replica; no primary to be found
        stranded = [console.request("stranded") for _ in range(3)]
        for refused in stranded:
            assert "OperationalError" in refused.get("error", ""), refused
        assert any(w in stranded[-1]["error"].lower() for w in ("read-only", "standby", "read-write")), stranded

        # the join's update, while the process runs: its next connection lands on b
        database.database_hosts_update(data_dir, [member_host(lab, "a"), member_host(lab, "b")],
                                       own=member_host(lab, "a"))
        assert console.request("after") == {"wrote_on": ADDRESSES["b"]}
        assert console.request("kept") == {"wrote_on": ADDRESSES["b"]}  # the connection is kept (CONN_MAX_AGE)

        # a file broken while the process runs: new connections keep the last good list
        database.database_file_path(data_dir).write_text("{truncated")
        assert console.request("broken 1", reconnect=True) == {"wrote_on": ADDRESSES["b"]}
        assert console.request("broken 2", reconnect=True) == {"wrote_on": ADDRESSES["b"]}
        assert console.stderr().count("keep using the last good member list") == 1, console.stderr()

        with lab.connect("b") as conn:
            notes = [r[0] for r in conn.execute("SELECT note FROM notes ORDER BY id").fetchall()]
        assert notes == ["before", "after", "kept", "broken 1", "broken 2"]  # nothing stranded was written
        assert "changed from" in console.stderr() and console.proc.poll() is None
    finally:
        console.stop()
