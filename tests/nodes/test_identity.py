"""Which rows are this node's own once its database is the cluster's (``nodes.identity``).

On a database of the node's own everything is as before (the Node row pk 1). With a
``database.json`` naming this node's address, the Node row, its join, its removal and
its certificate are the ones with that address, and another member's are never taken
for its own: the defect this guards against is a follower that, after switching to
the cluster's database, called itself the leader and showed the leader's certificate.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.management.color import no_style
from django.db import connection
from django.utils import timezone

from pamportal.cluster.follower_models import FollowerJoin, JoinState, NodeRemoval
from pamportal.cluster.follower_selectors import join_current
from pamportal.cluster.members import follower_node_forget, follower_node_record
from pamportal.cluster.removed import removal_current
from pamportal.nodes import identity
from pamportal.nodes.models import Certificate, CertificateKind, Node, NodeRole
from pamportal.nodes.selectors import certificate_is_own, node_current, node_is_finalised
from pamportal.replication import database
from pamportal.replication.database import DatabaseFile, DatabaseFileError, DatabaseHost

LEADER, FOLLOWER = "127.0.0.121", "127.0.0.122"
pytestmark = pytest.mark.django_db


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.PAM_DATA_DIR = tmp_path
    return tmp_path


def shared(data_dir, address: str) -> None:
    database.write_database_file(data_dir, DatabaseFile(
        hosts=(DatabaseHost(host=LEADER, port=5432), DatabaseHost(host=FOLLOWER, port=5432)),
        member="m-" + address.replace(".", "-"), node_address=address))


def rows() -> None:
    """The leader's row, pk 1 as the wizard makes it; the id sequence then moved past it,
    as the move to PostgreSQL leaves it (``replication.move`` resets the sequences)."""
    now = timezone.now()
    Node.objects.create(pk=1, address=LEADER, role=NodeRole.LEADER, ntp_servers=["ntp.example"], finalised_at=now,
                        licence_done_at=now, mek_fingerprint="f" * 64)
    with connection.cursor() as cursor:
        for statement in connection.ops.sequence_reset_sql(no_style(), [Node]):
            cursor.execute(statement)


def certificate(names: list[str]) -> Certificate:
    now = timezone.now()
    return Certificate(kind=CertificateKind.NODE_TLS, subject="CN=x", names=names, serial="1", sha256="a" * 64,
                       not_before=now, not_after=now + timedelta(days=1), cert_pem="", sealed_key="", created_at=now)


def join_row(address: str, state=JoinState.JOINED) -> FollowerJoin:
    return FollowerJoin.objects.create(
        created_by="admin", state=state, own_address=address, leader_address=LEADER, leader_version="1",
        cluster_id="c1", bundle_id="b", bundle_expires=timezone.now(), ca_cert_pem="", mek_fingerprint="f",
        sealed_join_token="t")


def test_on_a_database_of_its_own_the_node_is_row_one(data_dir):
    rows()
    assert identity.shared_database_address() == ""
    assert identity.node_filter() == {"pk": 1}
    assert node_current().address == LEADER and node_is_finalised()
    assert certificate_is_own(certificate(["someone-else"]))  # nothing else could be there


def test_the_leader_keeps_its_row_once_the_database_is_shared(data_dir):
    rows()
    shared(data_dir, LEADER)
    assert node_current().pk == 1 and node_current().role == NodeRole.LEADER


def test_a_follower_reads_the_row_made_for_it_and_never_the_leaders(data_dir):
    rows()
    shared(data_dir, FOLLOWER)
    before = node_current()
    assert before.pk is None and before.address == FOLLOWER and not node_is_finalised()  # not the leader's row

    shared(data_dir, LEADER)  # the leader records it, when the follower reports its replica ready
    follower_node_record(address=FOLLOWER, finalised_by="join request 7")
    shared(data_dir, FOLLOWER)
    mine = node_current()
    assert (mine.address, mine.role, mine.ntp_servers) == (FOLLOWER, NodeRole.FOLLOWER, ["ntp.example"])
    assert mine.finalised and node_is_finalised() and mine.mek_fingerprint == "f" * 64 and mine.licence_done_at
    assert Node.objects.get(pk=1).role == NodeRole.LEADER  # untouched

    assert not certificate_is_own(certificate([LEADER])) and certificate_is_own(certificate([FOLLOWER]))
    assert not certificate_is_own(None)


def test_recording_the_follower_twice_keeps_one_row_and_forgetting_spares_the_leader(data_dir):
    rows()
    shared(data_dir, LEADER)
    follower_node_record(address=FOLLOWER, finalised_by="join request 7")
    follower_node_record(address=FOLLOWER, finalised_by="join request 8")
    assert Node.objects.filter(address=FOLLOWER).count() == 1
    assert follower_node_forget(LEADER) == 0 and Node.objects.filter(pk=1).exists()
    assert follower_node_forget(FOLLOWER) == 1 and not Node.objects.filter(address=FOLLOWER).exists()


def test_joins_and_removals_are_the_nodes_own(data_dir):
    rows()
    shared(data_dir, FOLLOWER)
    other = join_row("127.0.0.123")
    NodeRemoval.objects.create(learned_at=timezone.now(), source="leader", cluster_id="c1", address="127.0.0.123")
    assert join_current() is None and removal_current() is None  # another member's rows
    mine = join_row(FOLLOWER)
    assert join_current().pk == mine.pk
    removal = NodeRemoval.objects.create(learned_at=timezone.now(), source="leader", cluster_id="c1", address=FOLLOWER)
    assert removal_current().pk == removal.pk
    assert other.pk != mine.pk


def test_the_address_follows_the_file_and_a_broken_file_keeps_the_last_answer(data_dir):
    shared(data_dir, FOLLOWER)
    assert identity.shared_database_address() == FOLLOWER
    path = database.database_file_path(data_dir)
    path.write_text("{not json")
    assert identity.shared_database_address() == FOLLOWER
    path.unlink()
    assert identity.shared_database_address() == ""


def test_a_broken_file_never_read_before_names_no_one(data_dir):
    database.database_file_path(data_dir).write_text("[]")
    assert identity.shared_database_address() == ""


@pytest.mark.parametrize("value", ["", LEADER, "node-2.example"])
def test_node_address_is_read_and_kept_by_a_hosts_update(data_dir, value):
    path = database.write_database_file(data_dir, DatabaseFile(hosts=(DatabaseHost(host=LEADER, port=5432),),
                                                               member="m1", node_address=value))
    assert database.read_database_file(data_dir).node_address == value
    database.database_hosts_update(data_dir, [(LEADER, 5432), (FOLLOWER, 5432)], own=DatabaseHost(host=LEADER, port=5432))
    assert json.loads(path.read_text())["node_address"] == value


def test_a_file_without_node_address_is_still_read(data_dir):
    path = database.database_file_path(data_dir)
    path.write_text(json.dumps({"format": database.FORMAT, "version": database.VERSION,
                                "hosts": [{"host": LEADER, "port": 5432}], "member": "m1"}))
    assert database.read_database_file(data_dir).node_address == ""
    assert identity.node_filter() == {"pk": 1}


@pytest.mark.parametrize("value", [5, None, "not a host!", "a" * 300, ["127.0.0.1"]])
def test_a_bad_node_address_is_refused_with_the_reason(data_dir, value):
    raw = json.dumps({"format": database.FORMAT, "version": database.VERSION,
                      "hosts": [{"host": LEADER, "port": 5432}], "member": "m1", "node_address": value}).encode()
    with pytest.raises(DatabaseFileError, match="not a host name or IP address"):
        database.parse_database_file(raw)


def test_facts_jobs_are_the_nodes_own_on_a_shared_database(data_dir):
    from pamportal.jobs.choices import Status
    from pamportal.jobs.models import Job
    from pamportal.nodes.facts import KIND
    from pamportal.nodes.selectors import node_facts_running
    from pamportal.nodes.services import node_facts_collect

    rows()
    Job.objects.create(kind=KIND, title="facts", status=Status.RUNNING, params={"node_address": LEADER})
    shared(data_dir, FOLLOWER)
    assert node_facts_running() is None  # the leader's, not this node's
    job, created = node_facts_collect(user=None, enqueue=False)
    assert created and job.params == {"node_address": FOLLOWER}
    assert node_facts_running().pk == job.pk
    assert node_facts_collect(user=None, enqueue=False) == (job, False)
    shared(data_dir, LEADER)
    assert node_facts_running().params == {"node_address": LEADER}
