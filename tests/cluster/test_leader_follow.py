"""The console's record of who leads follows Patroni's leader (``cluster.leader_follow``),
and only the recorded leader does the leader's periodic work."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from pamportal.audit.models import AuditEvent
from pamportal.cluster.database_view import DatabaseMember, DatabaseStatus
from pamportal.cluster.leader_follow import leader_follow, this_node_leads
from pamportal.cluster.models import ClusterMember, MemberRole, MemberState
from pamportal.cluster.tasks import heartbeats, housekeeping
from pamportal.nodes.models import Node, NodeRole

A, B, C = "127.0.0.131", "127.0.0.132", "127.0.0.133"
pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster():
    now = timezone.now()
    Node.objects.create(pk=1, address=A, role=NodeRole.LEADER, ntp_servers=["ntp"], finalised_at=now)
    Node.objects.create(pk=2, address=B, role=NodeRole.FOLLOWER, ntp_servers=["ntp"], finalised_at=now)
    ClusterMember.objects.create(address=A, role=MemberRole.LEADER, state=MemberState.ACTIVE)
    ClusterMember.objects.create(address=B, role=MemberRole.FOLLOWER, state=MemberState.ACTIVE)
    ClusterMember.objects.create(address=C, role=MemberRole.FOLLOWER, state=MemberState.REMOVED)


def status(leader_host: str, *, state: str = "running", ok: bool = True, replicated: bool = True) -> DatabaseStatus:
    members = (DatabaseMember(name="m-" + leader_host[-3:], role="leader", state=state, host=leader_host, timeline=3),
               DatabaseMember(name="m-other", role="sync_standby", state="streaming", host=A, timeline=3, lag=0))
    return DatabaseStatus(replicated=replicated, ok=ok, detail="", member="m-x", members=members if ok else ())


def roles() -> dict[str, tuple[str, str]]:
    nodes = dict(Node.objects.values_list("address", "role"))
    return {m.address: (m.role, nodes.get(m.address, "")) for m in ClusterMember.objects.all()}


def test_a_new_patroni_leader_is_recorded_once_with_an_audit_event(cluster):
    assert leader_follow(status=status(B), how="failover") == B
    assert roles() == {A: ("follower", "follower"), B: ("leader", "leader"), C: ("follower", "")}
    event = AuditEvent.objects.get(action="cluster.leader_changed")
    assert event.target == f"node:{B}"
    details = event.details if isinstance(event.details, dict) else json.loads(event.details)
    assert details == {"leader": B, "previous": [A], "how": "failover", "patroni_member": "m-132", "timeline": 3}
    assert leader_follow(status=status(B)) is None  # recorded already: nothing again
    assert AuditEvent.objects.filter(action="cluster.leader_changed").count() == 1


def test_the_recorded_leader_stays_when_patroni_agrees(cluster):
    assert leader_follow(status=status(A)) is None
    assert roles()[A] == ("leader", "leader") and not AuditEvent.objects.filter(action="cluster.leader_changed").exists()


@pytest.mark.parametrize("seen", [
    status(B, state="starting"),          # mid-promotion
    status(B, ok=False),                  # Patroni not answering
    status(B, replicated=False),          # not a replicated node
    status(C),                            # a removed member
    status("127.0.0.199"),                # a member the console does not know
    status(""),                           # no host
])
def test_nothing_is_recorded_without_a_running_leader_that_is_a_live_member(cluster, seen):
    assert leader_follow(status=seen) is None
    assert roles()[A] == ("leader", "leader") and roles()[B] == ("follower", "follower")
    assert not AuditEvent.objects.filter(action="cluster.leader_changed").exists()


def test_no_leader_in_patroni_changes_nothing(cluster):
    members = (DatabaseMember(name="m1", role="replica", state="streaming", host=B),)
    assert leader_follow(status=DatabaseStatus(replicated=True, ok=True, detail="", members=members)) is None
    assert roles()[A] == ("leader", "leader")


def test_only_the_leader_does_the_leaders_periodic_work(cluster, settings, tmp_path, monkeypatch):
    from pamportal.cluster import tasks
    from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file

    calls = []
    monkeypatch.setattr(tasks, "members_heartbeat", lambda: calls.append("heartbeat") or 1)
    monkeypatch.setattr(tasks, "removal_notices_retry", lambda: calls.append("notices"))
    monkeypatch.setattr(tasks, "removal_enforce", lambda: calls.append("enforce"))
    monkeypatch.setattr(tasks, "removal_check", lambda: calls.append("check"))
    settings.PAM_DATA_DIR = tmp_path
    write_database_file(tmp_path, DatabaseFile(hosts=(DatabaseHost(host=A, port=5432),), member="m", node_address=B))
    assert not this_node_leads()
    assert heartbeats() == 0 and calls == ["enforce", "check"]
    assert housekeeping() == {}

    calls.clear()
    leader_follow(status=status(B))  # B leads now: its worker does the leader's work
    assert this_node_leads()
    assert heartbeats() == 1 and calls == ["heartbeat", "notices", "enforce", "check"]
    assert set(housekeeping()) == {"bundles_expired", "requests_expired", "joins_undone", "leadership_requests_failed"}


# --- each node's database hosts follow Patroni's members -----------------------------------------
def patroni(*members: tuple[str, str, str, int | None]) -> DatabaseStatus:
    return DatabaseStatus(replicated=True, ok=True, detail="", member="m-b", members=tuple(
        DatabaseMember(name=name, role=role, state="running", host=host, port=port) for name, role, host, port in members))


@pytest.fixture
def hosts_file(settings, tmp_path, monkeypatch):
    from pamportal.replication import database

    settings.PAM_DATA_DIR = tmp_path
    own = database.DatabaseHost(host=B, port=5432)
    monkeypatch.setattr(database, "own_database_host", lambda: own)
    database.write_database_file(tmp_path, database.DatabaseFile(
        hosts=(database.DatabaseHost(host=A, port=5432), own), member="m-b", node_address=B))

    def hosts() -> list[str]:
        return [f"{h.host}:{h.port}" for h in database.read_database_file(tmp_path).hosts]
    return hosts


def test_a_member_that_joined_later_is_added_and_the_leader_listed_first(hosts_file):
    from pamportal.cluster.leader_follow import hosts_follow

    seen = patroni(("m-c", "leader", C, 5432), ("m-a", "sync_standby", A, 5432), ("m-b", "replica", B, 5432))
    assert hosts_follow(status=seen) == [f"{C}:5432", f"{A}:5432", f"{B}:5432"]
    assert hosts_file() == [f"{C}:5432", f"{A}:5432", f"{B}:5432"]
    assert hosts_follow(status=seen) is None  # the same again: the file is not rewritten


def test_a_member_gone_from_patroni_leaves_the_list_but_this_node_stays(hosts_file):
    from pamportal.cluster.leader_follow import hosts_follow

    assert hosts_follow(status=patroni(("m-a", "leader", A, 5432))) is None  # this node's own member is kept
    assert hosts_follow(status=patroni(("m-c", "leader", C, 5433))) == [f"{C}:5433", f"{B}:5432"]
    assert hosts_file() == [f"{C}:5433", f"{B}:5432"]


@pytest.mark.parametrize("seen", [
    patroni(("m-a", "replica", A, 5432), ("m-b", "replica", B, 5432)),   # no leader
    patroni(("m-a", "leader", A, None), ("m-b", "replica", B, 5432)),    # a member without a port
    patroni(("m-a", "leader", "", 5432)),                                # nor a host
    DatabaseStatus(replicated=True, ok=False, detail="Patroni cannot be reached"),
])
def test_an_incomplete_view_changes_nothing(hosts_file, seen):
    from pamportal.cluster.leader_follow import hosts_follow

    assert hosts_follow(status=seen) is None
    assert hosts_file() == [f"{A}:5432", f"{B}:5432"]


def test_without_a_database_file_there_is_nothing_to_follow(settings, tmp_path):
    from pamportal.cluster.leader_follow import hosts_follow

    settings.PAM_DATA_DIR = tmp_path
    assert hosts_follow(status=patroni(("m-a", "leader", A, 5432))) is None
    assert not (tmp_path / "database.json").exists()
