""""Set cluster leader" against real Patroni members: two PostgreSQL 15 members under
Patroni on etcd with TLS (127.0.0.111-112), a leadership request made, approved by two
approvers with fresh TOTP codes, and carried out by its job as a worker would: Patroni
switches over, the new primary takes the console's writes (through libpq multi-host
with ``target_session_attrs=read-write``, as a node's console connects) within 10 s, and
the old primary follows it as the synchronous standby. And with automatic failover
switched off (Patroni paused), a SIGKILLed leader is replaced only by an approved
failover. The seconds are printed. Each test starts its own etcd and Patroni members
and stops them all (``Lab.close``), even when it fails.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from pamportal.audit.actions import AuditAction
from pamportal.cluster import database_view, leadership
from pamportal.cluster.models import ClusterMember, MemberRole, MemberState, RequestState
from pamportal.cluster.requests import leadership_request_vote
from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file
from pamportal.replication.rest import PatroniClient
from tests.cluster.conftest import code_for, run_job
from tests.replication.support import Lab, missing_tools, wait_until
from tests.support.audit import events

pytestmark = [
    pytest.mark.processes,
    pytest.mark.cluster,
    pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or ""),
]

# Ours alone: other tests use other loopback addresses at the same time.
ADDRESSES = {"n1": "127.0.0.111", "n2": "127.0.0.112"}


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "lab", addresses=ADDRESSES)
    try:
        lab.etcd_start()
        lab.member_start("n1")
        lab.wait_leader("n1", "n1", timeout=90)
        wait_until(lambda: lab.connect("n1").execute("SELECT 1").fetchone(), 30, what="the application role on n1",
                   log=lambda: lab.log("n1"))
        lab.member_start("n2")
        lab.wait_sync_standby("n1", "n2", timeout=90)
        yield lab
    finally:
        lab.close()


def console_conninfo(lab: Lab) -> dict:
    """How a node's console reaches the primary: every member, read-write wanted."""
    info = lab.conninfo("n1")
    info["host"] = ",".join(ADDRESSES[n] for n in ADDRESSES)
    info["port"] = ",".join(str(lab.pg_ports[n][0]) for n in ADDRESSES)
    info["target_session_attrs"] = "read-write"
    info["connect_timeout"] = 3
    return info


def test_approved_request_switches_over_and_the_new_primary_takes_writes(lab, make_user, data_dir, monkeypatch,
                                                                        capsys):
    from pamportal.accounts.roles import Role

    operator = make_user("operator1", Role.OPERATOR)
    approvers = [make_user(f"approver{i}", Role.APPROVER) for i in (1, 2)]
    # The cluster as the console knows it: n1 leads, n2 follows; the node's database is
    # its Patroni member, whose REST API (and the others') it calls with a cluster certificate.
    ClusterMember.objects.create(address=ADDRESSES["n1"], role=MemberRole.LEADER, state=MemberState.ACTIVE,
                                 etcd_name="n1")
    candidate = ClusterMember.objects.create(address=ADDRESSES["n2"], role=MemberRole.FOLLOWER,
                                             state=MemberState.ACTIVE, etcd_name="n2")
    write_database_file(data_dir, DatabaseFile(hosts=tuple(DatabaseHost(host=a, port=lab.pg_ports[n][0])
                                                           for n, a in ADDRESSES.items()), member="n1"))
    cert = lab.pki.nodes[lab.client_node]

    def client(api_url=None, *, timeout=5.0):
        if api_url is None:
            return lab.api("n1", timeout=timeout)
        return PatroniClient(leadership.api_base(api_url), ca_file=lab.pki.ca_file, cert_file=cert.cert_file,
                             key_file=cert.key_file, timeout=timeout)

    monkeypatch.setattr(leadership, "patroni_client", client)
    monkeypatch.setattr(database_view, "patroni_client", lambda *, timeout: lab.api("n1", timeout=timeout))
    database_view.patroni_status_forget()

    with psycopg.connect(autocommit=True, **console_conninfo(lab)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS console_writes (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO console_writes (note) VALUES ('before, on n1')")
    writes: list[str] = []

    def console_writable() -> bool:
        # The console's database is the lab's cluster here: a fresh multi-host connection
        # lands on whichever member is primary, and must commit a row there.
        with psycopg.connect(autocommit=True, **console_conninfo(lab)) as conn:
            if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return False
            conn.execute("INSERT INTO console_writes (note) VALUES ('after the switchover')")
            writes.append(conn.info.host)
            return True

    monkeypatch.setattr(leadership, "console_writable", console_writable)

    request = leadership.leadership_request_create(user=operator, member_id=candidate.pk,
                                                   reason="move the lead before the host's maintenance")
    assert request.candidate == "n2" and request.leader_seen == "n1" and request.lag_seen is not None
    for approver in approvers:
        leadership_request_vote(request_id=request.pk, user=approver, decision="approve",
                                totp_code=code_for(approver))
    request.refresh_from_db()
    assert request.state == RequestState.APPROVED

    started = time.monotonic()
    outcome = run_job(request.job_id)
    job_seconds = time.monotonic() - started
    request.refresh_from_db()
    assert outcome == "succeeded", (request.failure_reason, lab.log("n1"), lab.log("n2"))
    assert request.state == RequestState.DONE and request.method == "switchover"
    assert request.previous_leader == "n1"
    assert writes == [ADDRESSES["n2"]]  # the console's write landed on the new primary
    assert request.seconds is not None and request.seconds <= 10, request.seconds

    # Patroni agrees; the old leader follows the new one as its synchronous standby.
    view = lab.api("n2").cluster()
    assert view.leader.name == "n2" and view.leader.state == "running"
    lab.wait_sync_standby("n2", "n1", timeout=60)
    with lab.connect("n1") as replica:
        assert replica.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        notes = wait_until(lambda: [r[0] for r in replica.execute("SELECT note FROM console_writes ORDER BY id")]
                           if replica.execute("SELECT count(*) FROM console_writes").fetchone()[0] == 2 else None,
                           10, what="both rows on n1")
    assert notes == ["before, on n1", "after the switchover"]

    [moved] = events(AuditAction.CLUSTER_LEADERSHIP_MOVED)
    assert moved.data["method"] == "switchover" and moved.data["previous_leader"] == "n1"
    assert ClusterMember.objects.get(address=ADDRESSES["n2"]).role == MemberRole.LEADER
    with capsys.disabled():
        print(f"\nleadership switchover n1 -> n2: {request.seconds:.1f} s from the request to Patroni to a "
              f"write committed on the new primary through the console's connection "
              f"(job {job_seconds:.1f} s, including its look at the old leader following)")


def test_manual_only_cluster_waits_for_an_approved_failover(lab, make_user, data_dir, monkeypatch, capsys):
    """Automatic failover off (Patroni paused): the leader SIGKILLed, nobody takes over
    even after the TTL; an approved request fails over to the sync standby, which then
    takes the console's writes."""
    from pamportal.accounts.roles import Role

    operator = make_user("operator1", Role.OPERATOR)
    admin = make_user("admin1", Role.ADMINISTRATOR)
    approvers = [make_user(f"approver{i}", Role.APPROVER) for i in (1, 2)]
    ClusterMember.objects.create(address=ADDRESSES["n1"], role=MemberRole.LEADER, state=MemberState.ACTIVE,
                                 etcd_name="n1")
    candidate = ClusterMember.objects.create(address=ADDRESSES["n2"], role=MemberRole.FOLLOWER,
                                             state=MemberState.ACTIVE, etcd_name="n2")
    write_database_file(data_dir, DatabaseFile(hosts=tuple(DatabaseHost(host=a, port=lab.pg_ports[n][0])
                                                           for n, a in ADDRESSES.items()), member="n2"))
    cert = lab.pki.nodes[lab.client_node]

    def client(api_url=None, *, timeout=5.0):  # the operators work on n2, the survivor
        if api_url is None:
            return lab.api("n2", timeout=timeout)
        return PatroniClient(leadership.api_base(api_url), ca_file=lab.pki.ca_file, cert_file=cert.cert_file,
                             key_file=cert.key_file, timeout=timeout)

    monkeypatch.setattr(leadership, "patroni_client", client)
    monkeypatch.setattr(database_view, "patroni_client", lambda *, timeout: lab.api("n2", timeout=timeout))
    database_view.patroni_status_forget()
    with psycopg.connect(autocommit=True, **console_conninfo(lab)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS console_writes (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO console_writes (note) VALUES ('acknowledged on n1')")

    def console_writable() -> bool:
        with psycopg.connect(autocommit=True, **console_conninfo(lab)) as conn:
            if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return False
            conn.execute("INSERT INTO console_writes (note) VALUES ('after the failover')")
            return True

    monkeypatch.setattr(leadership, "console_writable", console_writable)

    assert leadership.failover_mode_set(user=admin, automatic=False) is False
    wait_until(lambda: lab.api("n2").cluster().paused, 15, what="Patroni paused")
    [changed] = events(AuditAction.CLUSTER_FAILOVER_MODE_CHANGED)
    assert changed.data["automatic"] is False

    lab.member_kill("n1")
    # Longer than the TTL: with automatic failover on, n2 would lead by now.
    time.sleep(leadership.automatic_failover_ttl() + 5)
    view = lab.api("n2").cluster()
    assert view.leader is None or view.leader.name != "n2", view
    assert lab.api("n2").patroni().role == "replica"

    request = leadership.leadership_request_create(user=operator, member_id=candidate.pk,
                                                   reason="the leader's host died; fail over to n2")
    for approver in approvers:
        leadership_request_vote(request_id=request.pk, user=approver, decision="approve",
                                totp_code=code_for(approver))
    request.refresh_from_db()
    outcome = run_job(request.job_id)
    request.refresh_from_db()
    assert outcome == "succeeded", (request.failure_reason, lab.log("n2"))
    assert request.method == "failover" and request.state == RequestState.DONE
    assert request.seconds is not None and request.seconds <= 15, request.seconds
    with lab.connect("n2") as primary:
        notes = [r[0] for r in primary.execute("SELECT note FROM console_writes ORDER BY id")]
    assert notes == ["acknowledged on n1", "after the failover"]  # nothing acknowledged lost
    assert lab.api("n2").cluster().paused  # still manual only
    with capsys.disabled():
        print(f"\nleadership failover to n2 (manual only, leader killed): {request.seconds:.1f} s from the "
              f"request to Patroni to a write committed on the new primary")
