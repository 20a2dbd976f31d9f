"""A removed member of a replicated cluster, at unit level: on the cluster's shared
database its membership is the cluster's member row (its join is in its database from
before, and the first leader never joined), its certificate is the file it serves (the
database holds the first leader's alone), and the first leader's certificate serial is
found for its removal notice and revocation. The whole path on real processes is in
tests/replication/test_replica_join.py."""

from __future__ import annotations

import pytest
from django.conf import settings

from pamportal.cluster import removed
from pamportal.cluster.follower_models import JoinState
from pamportal.cluster.members import member_certificate_serial
from pamportal.cluster.models import ClusterMember, MemberRole, MemberState
from pamportal.crypto import ca
from pamportal.nodes.models import Certificate, CertificateKind
from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file

from .conftest import LEADER

OTHER = "127.0.0.142"
pytestmark = pytest.mark.django_db


def shared_as(address: str) -> None:
    write_database_file(settings.PAM_DATA_DIR, DatabaseFile(hosts=(DatabaseHost(host="127.0.0.141", port=5432),),
                                                            member="m", node_address=address))


def test_the_first_leaders_serial_is_its_node_certificate(leader):
    own = Certificate.objects.get(kind=CertificateKind.NODE_TLS, replaced_at__isnull=True)
    assert member_certificate_serial(LEADER) == own.serial
    assert member_certificate_serial(LEADER, "abc123") == "abc123"  # the one recorded at a join wins
    assert member_certificate_serial(OTHER) == ""


def test_on_a_database_of_its_own_a_node_without_a_join_is_no_member(leader):
    assert removed._member_join() is None


def test_on_the_shared_database_the_member_row_is_the_membership(leader):
    ca_row = Certificate.objects.get(kind=CertificateKind.CLUSTER_CA, replaced_at__isnull=True)
    ClusterMember.objects.create(address=LEADER, role=MemberRole.FOLLOWER, state=MemberState.ACTIVE)
    shared_as(OTHER)
    assert removed._member_join() is None  # no member row for this address
    ClusterMember.objects.create(address=OTHER, role=MemberRole.LEADER, state=MemberState.ACTIVE)
    shared_as(LEADER)
    join = removed._member_join()
    assert (join.pk, join.state, join.own_address, join.leader_address) == (None, JoinState.JOINED, LEADER, OTHER)
    assert join.cluster_id == ca.cluster_id_of(ca_row.sha256)
    ClusterMember.objects.filter(address=LEADER).update(state=MemberState.REMOVED)  # the leader marked it first
    assert removed._member_join().own_address == LEADER
    ClusterMember.objects.filter(address=LEADER).update(state=MemberState.FAILED)
    assert removed._member_join() is None


def test_on_the_shared_database_the_own_certificate_is_the_file_served(leader, tmp_path):
    in_database = Certificate.objects.get(kind=CertificateKind.NODE_TLS, replaced_at__isnull=True)
    shared_as(OTHER)
    served = removed._own_certificate()
    info = ca.certificate_info(settings.PAM_TLS_CERT.read_bytes())
    assert served.pk is None and served.serial == f"{info.serial:x}" and served.sha256 == info.sha256
    settings.PAM_TLS_CERT.rename(tmp_path / "moved.crt")
    try:
        assert removed._own_certificate() is None  # unreadable: no certificate, never another's row
    finally:
        (tmp_path / "moved.crt").rename(settings.PAM_TLS_CERT)
    assert in_database.pk is not None
