"""Real PostgreSQL 15 members under Patroni, on etcd with TLS, on 127.0.0.51-53.

A first member bootstraps and leads; a second streams from it as the synchronous
standby; a switchover through the REST API moves the lead and the old leader follows;
a SIGKILLed leader is replaced by its sync standby and comes back as a replica. And
what must be refused is: a replication or application connection without a cluster
certificate, a connection without TLS, a REST client without a certificate.

The tests run in order on one lab (module fixture): each leaves the cluster healthy
for the next, and the fixture stops every process and removes every file even when a
test fails.
"""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from pamportal.replication import config, process
from pamportal.replication.rest import PatroniClient, PatroniRefused, PatroniTLSError
from tests.replication.support import ADDRESSES, Lab, missing_tools, wait_until

pytestmark = [
    pytest.mark.processes,
    pytest.mark.cluster,
    pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or ""),
]
PG_BIN = config.POSTGRES_BIN_DIR

FIGURES: dict[str, float] = {}  # seconds, printed at the end of the module


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("replication"))
    try:
        lab.etcd_start()
        yield lab
    finally:
        lab.close()
        if FIGURES:
            print("\nreplication figures: " + ", ".join(f"{k} {v:.1f}s" for k, v in FIGURES.items()))


@pytest.fixture(scope="module")
def pair(lab):
    """n1 bootstraps and leads, n2 joins and streams as the sync standby."""
    started = time.monotonic()
    lab.member_start("n1")
    lab.wait_leader("n1", "n1", timeout=90)
    FIGURES["bootstrap to leader"] = time.monotonic() - started
    # the application role exists (post_bootstrap) and takes writes
    wait_until(lambda: lab.connect("n1").execute("SELECT 1").fetchone(), 30, what="the application role on n1",
               log=lambda: lab.log("n1"))

    started = time.monotonic()
    lab.member_start("n2")
    lab.wait_sync_standby("n1", "n2", timeout=90)
    FIGURES["join to sync standby"] = time.monotonic() - started
    return lab


def replication_rows(lab: Lab, name: str) -> list[tuple[str, str, str]]:
    out = lab.superuser_sql(name, "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1")
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def test_first_member_leads_and_second_streams_as_sync_standby(pair):
    lab = pair
    view = lab.api("n2").cluster()
    roles = {m.name: (m.role, m.state) for m in view.members}
    assert roles == {"n1": ("leader", "running"), "n2": ("sync_standby", "streaming")}, roles
    assert view.leader.host == ADDRESSES["n1"] and view.leader.timeline == 1

    # PostgreSQL's own view on the primary: n2 is the synchronous standby
    assert replication_rows(lab, "n1") == [("n2", "streaming", "sync")]
    status = lab.api("n1").patroni()
    assert status.role == "primary" and status.state == "running" and status.server_version // 10000 == 15
    assert [(r.application_name, r.sync_state, r.usename) for r in status.replication] == [("n2", "sync", "replicator")]
    assert lab.api("n2").patroni().sync_standby is True
    # the members listen on their node address only, never on the system cluster's
    assert lab.superuser_sql("n1", "SHOW listen_addresses") == ADDRESSES["n1"]
    assert lab.superuser_sql("n1", "SHOW ssl") == "on"

    # a row committed on the primary (acknowledged only once n2 has it) is on the replica
    with lab.connect("n1") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS acknowledged (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO acknowledged (note) VALUES ('written on n1')")
        assert conn.execute("SHOW synchronous_standby_names").fetchone()[0].strip('"') == "n2"
    with lab.connect("n2") as replica:
        assert replica.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        notes = wait_until(lambda: replica.execute("SELECT note FROM acknowledged").fetchall(), 10,
                           what="the row on n2")
        assert notes == [("written on n1",)]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            replica.execute("INSERT INTO acknowledged (note) VALUES ('on a replica')")


def test_replication_without_a_cluster_certificate_is_refused(pair, tmp_path):
    lab = pair
    host, port = ADDRESSES["n1"], lab.pg_ports["n1"][0]
    # TLS but no client certificate: pg_hba wants one ("cert")
    for user, dbname in (("replicator", "replication"), ("pamportal", "pamportal"), ("postgres", "postgres")):
        extra = {"replication": "true"} if dbname == "replication" else {}
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(host=host, port=port, user=user, dbname="postgres" if extra else dbname,
                            sslmode="verify-full", sslrootcert=str(lab.pki.ca_file), connect_timeout=5, **extra)
        expected = "pg_hba.conf rejects connection" if user == "postgres" else "requires a valid client certificate"
        assert expected in str(refused.value), str(refused.value)
    # pg_receivewal, a replication client, without a certificate
    out = subprocess.run(
        [str(PG_BIN / "pg_receivewal"), "--no-loop", "-D", str(tmp_path),
         "-d", f"host={host} port={port} user=replicator sslmode=require connect_timeout=5"],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    assert out.returncode != 0
    assert "connection requires a valid client certificate" in out.stderr, out.stderr

    # a certificate from another CA: the TLS handshake fails
    with pytest.raises(psycopg.OperationalError) as refused:
        lab.connect("n1", sslcert=str(lab.pki.rogue.cert_file), sslkey=str(lab.pki.rogue.key_file))
    assert "certificate" in str(refused.value) or "alert" in str(refused.value), str(refused.value)
    # a cluster certificate, but the superuser over the network: no such line
    with pytest.raises(psycopg.OperationalError) as refused:
        lab.connect("n1", user="postgres", dbname="postgres")
    assert "pg_hba.conf rejects connection" in str(refused.value), str(refused.value)


def test_connections_without_tls_are_refused(pair):
    lab = pair
    for user in ("replicator", "pamportal", "postgres"):
        with pytest.raises(psycopg.OperationalError) as refused:
            lab.connect("n1", user=user, sslmode="disable", sslcert=None, sslkey=None, sslrootcert=None)
        assert "pg_hba.conf rejects connection" in str(refused.value), str(refused.value)
        assert "no encryption" in str(refused.value), str(refused.value)


def test_rest_api_requires_a_cluster_client_certificate(pair):
    lab = pair
    url = lab.specs["n1"].api_url + "/cluster"
    # with the cluster CA's client certificate it answers
    assert lab.api("n1").cluster().leader.name == "n1"
    # without one, the handshake is refused
    ctx = ssl.create_default_context(cafile=str(lab.pki.ca_file))
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        urllib.request.urlopen(url, context=ctx, timeout=5).read()
    with pytest.raises(PatroniTLSError):
        PatroniClient(lab.specs["n1"].api_url, ca_file=lab.pki.ca_file, cert_file=None, key_file=None).cluster()
    # a certificate from another CA is refused too
    with pytest.raises(PatroniTLSError):
        lab.api("n1", cert=lab.pki.rogue).cluster()
    # and we refuse a member whose certificate the cluster CA did not sign
    with pytest.raises(PatroniTLSError):
        lab.api("n1", ca_file=lab.pki.rogue_ca_file).cluster()


def test_switchover_moves_the_lead_and_the_old_leader_follows(pair):
    lab = pair
    with pytest.raises(PatroniRefused) as refused:  # the wrong leader named
        lab.api("n1").switchover(leader="n2", candidate="n1")
    assert refused.value.status == 412 and "leader name does not match" in str(refused.value)

    started = time.monotonic()
    answer = lab.api("n1").switchover(leader="n1", candidate="n2")
    assert 'switched over to "n2"' in answer, answer
    lab.wait_leader("n1", "n2", timeout=30)
    wait_until(lambda: lab.connect("n2").execute("INSERT INTO acknowledged (note) VALUES ('written on n2')"),
               30, what="n2 writable")
    FIGURES["switchover to writable"] = time.monotonic() - started

    lab.wait_sync_standby("n2", "n1", timeout=60)
    FIGURES["switchover to old leader following"] = time.monotonic() - started
    view = lab.api("n1").cluster()
    assert view.leader.name == "n2" and view.leader.timeline == 2
    assert replication_rows(lab, "n2") == [("n1", "streaming", "sync")]
    with lab.connect("n1") as replica:
        notes = wait_until(lambda: [r[0] for r in replica.execute("SELECT note FROM acknowledged ORDER BY id")]
                           if replica.execute("SELECT count(*) FROM acknowledged").fetchone()[0] == 2 else None,
                           10, what="both rows on n1")
    assert notes == ["written on n1", "written on n2"]


def test_killed_leader_is_replaced_by_its_sync_standby_and_rejoins(pair):
    """SIGKILL of the leader's Patroni and PostgreSQL (its etcd stays: 2 of 3 would
    keep quorum anyway): the sync standby takes over once the leader key expires (TTL)."""
    lab = pair
    leader = lab.api("n1").cluster().leader.name
    survivor = "n1" if leader == "n2" else "n2"
    with lab.connect(leader) as conn:
        conn.execute("INSERT INTO acknowledged (note) VALUES ('before the crash')")

    started = time.monotonic()
    lab.member_kill(leader)
    lab.wait_leader(survivor, survivor, timeout=60)
    wait_until(lambda: lab.connect(survivor).execute("INSERT INTO acknowledged (note) VALUES ('after the crash')"),
               30, what=f"{survivor} writable")
    FIGURES["leader SIGKILL to writable"] = time.monotonic() - started
    with lab.connect(survivor) as conn:
        notes = [r[0] for r in conn.execute("SELECT note FROM acknowledged ORDER BY id")]
    assert "before the crash" in notes  # acknowledged before the crash: not lost

    # the old leader comes back (pg_rewind if needed) as the sync standby of the survivor
    started = time.monotonic()
    lab.member_start(leader)
    lab.wait_sync_standby(survivor, leader, timeout=90)
    FIGURES["killed leader back as sync standby"] = time.monotonic() - started
    with lab.connect(leader) as replica:
        wait_until(lambda: replica.execute("SELECT 1 FROM acknowledged WHERE note = 'after the crash'").fetchone(),
                   10, what="the post-crash row on the old leader")


def test_killed_replica_catches_up_once_started_again(pair):
    """SIGKILL of the sync standby's Patroni and PostgreSQL: the leader goes on taking
    writes (Patroni drops the standby from synchronous_standby_names, synchronous_mode
    without strict), and the replica, started again, streams and has what it missed."""
    lab = pair
    leader = lab.api("n1").cluster().leader.name
    replica = "n1" if leader == "n2" else "n2"
    lab.wait_sync_standby(leader, replica, timeout=60)
    with lab.connect(leader) as conn:  # (made by the first test already, unless run alone)
        conn.execute("CREATE TABLE IF NOT EXISTS acknowledged (id serial PRIMARY KEY, note text NOT NULL)")

    started = time.monotonic()
    lab.member_kill(replica)
    # (a commit waiting for the dead standby is released when Patroni drops it; the
    # statement timeout bounds the wait should it not)
    wait_until(lambda: lab.connect(leader, connect_timeout=3, options="-c statement_timeout=20000").execute(
        "INSERT INTO acknowledged (note) VALUES ('while the replica was down')"), 60, what=f"{leader} writable alone")
    FIGURES["replica SIGKILL to leader writable alone"] = time.monotonic() - started

    started = time.monotonic()
    lab.member_start(replica)
    lab.wait_sync_standby(leader, replica, timeout=90)
    FIGURES["killed replica back as sync standby"] = time.monotonic() - started
    with lab.connect(replica) as conn:
        wait_until(lambda: conn.execute("SELECT 1 FROM acknowledged WHERE note = 'while the replica was down'")
                   .fetchone(), 10, what="the missed row on the replica")
    assert replication_rows(lab, leader) == [(replica, "streaming", "sync")]


def test_member_files_belong_to_the_member_and_stop_takes_postgres_down(pair):
    lab = pair
    run_as = lab.run_as
    paths = lab.paths("n2")
    for path, mode in ((paths.root, 0o700), (paths.data_dir, 0o700), (paths.socket_dir, 0o700),
                       (paths.tls.key_file, 0o600), (paths.config_file, 0o600)):
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (run_as.uid, mode), path
    assert b"PRIVATE KEY" not in paths.log_file.read_bytes()  # nothing logs a key

    postmaster = process.postmaster_pid(paths.data_dir)
    assert postmaster is not None
    patroni = lab.members["n2"]
    lab.member_stop("n2")
    assert not patroni.alive() and process.postmaster_pid(paths.data_dir) is None
    assert not Path(f"/proc/{postmaster}").exists() or "State:\tZ" in Path(f"/proc/{postmaster}/status").read_text()
    with pytest.raises(psycopg.OperationalError):
        lab.connect("n2")
    process.member_remove(paths)
    assert not paths.root.exists()
