"""A node removed from its cluster, at unit level: the leader's notice on the delegation
API (accepted only from the leader's certificate, for this cluster and this node; every
other caller refused, audited, nothing changed), what the node then does (etcd no
longer wanted, one event in its trail, every page says so), the typed confirmation of
the wipe, the leader telling the node (and retrying), and the cluster page offering
"Remove…" only where the quorum guard allows it, each row with its own ids."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.urls import reverse
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.cluster import connections, local_etcd, removal, removed
from pamportal.cluster.etcd import Member
from pamportal.cluster.follower_models import FollowerJoin, JoinState, NodeRemoval
from pamportal.cluster.models import ClusterMember, MemberRole, MemberState, RequestState
from pamportal.cluster.removal import removal_request_create
from pamportal.cluster.requests import removal_request_vote
from pamportal.crypto import ca
from pamportal.crypto.ca import cluster_id_of
from pamportal.nodes import keystore
from pamportal.nodes.models import SEAL_PURPOSE, Certificate, CertificateKind, Node, NodeRole

from .conftest import LEADER, code_for, events, run_job

CLUSTER_LEADER = "127.0.0.61"
OTHER_FOLLOWER = "127.0.0.63"


class PeerSocket:
    """What gunicorn puts in the environ as ``gunicorn.socket``: the TLS socket."""

    def __init__(self, der: bytes | None):
        self.der = der

    def getpeercert(self, binary_form=False):
        return self.der


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


# --- a node that joined a cluster (its CA, its certificate, its member) ------------------------
@pytest.fixture
def member_node(leader):
    """This test database as a follower of CLUSTER_LEADER: the finalised node's CA is
    the cluster's (so certificates can be minted for the leader and another follower),
    its certificate the node's own, a joined FollowerJoin, an etcd member configured."""
    ca_row = Certificate.objects.get(kind=CertificateKind.CLUSTER_CA, replaced_at__isnull=True)
    ca_key = keystore.unseal(purpose=SEAL_PURPOSE[CertificateKind.CLUSTER_CA], sealed=ca_row.sealed_key)
    own = Certificate.objects.get(kind=CertificateKind.NODE_TLS, replaced_at__isnull=True)
    Node.objects.filter(pk=Node.SINGLETON_PK).update(role=NodeRole.FOLLOWER)
    join = FollowerJoin.objects.create(
        created_by="leader-admin", state=JoinState.JOINED, own_address=LEADER, leader_address=CLUSTER_LEADER,
        leader_ports={}, leader_version="1.0.0", cluster_id=cluster_id_of(ca_row.sha256), bundle_id="b",
        bundle_expires=timezone.now(), ca_cert_pem=ca_row.cert_pem, mek_fingerprint="", sealed_join_token="",
    )
    local_etcd.local_member_configure(address=LEADER, name="node-self",
                                      initial_cluster=f"node-leader=https://{CLUSTER_LEADER}:2380,"
                                                      f"node-self=https://{LEADER}:2380", initial_state="existing")

    def issue(address: str) -> bytes:
        return ca.issue_node_certificate(ca_cert_pem=ca_row.cert_pem.encode(), ca_key_pem=ca_key,
                                         names=[address, "127.0.0.1"]).cert_pem

    return {"join": join, "own": own, "leader_cert": issue(CLUSTER_LEADER), "other_cert": issue(OTHER_FOLLOWER),
            "admin": leader["admin"]}


def notice(member_node, **changes) -> dict:
    data = {
        "notice": "removed", "version": 1, "cluster_id": member_node["join"].cluster_id, "address": LEADER,
        "certificate_serial": member_node["own"].serial, "etcd_member_id": "1234", "request_number": 7,
        "request_id": "5f0c7d2e-0000-4000-8000-000000000007", "removed_at": "2026-12-07T10:00:00+00:00",
        "reason": "decommissioned for the test", "leader_address": CLUSTER_LEADER,
    }
    data.update(changes)
    return data


def post_notice(client, body, cert_pem: bytes | None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = {"gunicorn.socket": PeerSocket(_der(cert_pem) if cert_pem else None)}
    response = client.post("/api/delegation/v1/removed", data=raw, content_type="application/json", **extra)
    return response.status_code, response.json()


def assert_refused(client, member_node, body, cert_pem, code: str) -> None:
    before = len(events(AuditAction.NODE_REMOVAL_NOTICE_REFUSED))
    status, answer = post_notice(client, body, cert_pem)
    assert answer["ok"] is False and answer["error"]["code"] == code, answer
    assert status == removed.NOTICE_REFUSALS[code]
    refused = events(AuditAction.NODE_REMOVAL_NOTICE_REFUSED)
    assert len(refused) == before + 1 and refused[-1].outcome == Outcome.DENIED and refused[-1].data["code"] == code
    # Nothing changed: no removal, no event of one, the member still wanted.
    assert not NodeRemoval.objects.exists()
    assert not events(AuditAction.NODE_REMOVED)
    assert local_etcd.local_member_config() is not None


# --- the notice -----------------------------------------------------------------------------------
def test_the_leaders_notice_is_accepted_once_and_etcd_is_no_longer_wanted(member_node, client,
                                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        status, answer = post_notice(client, notice(member_node), member_node["leader_cert"])
    assert status == 200 and answer["ok"] and answer["new"] and answer["request_number"] == 7
    row = NodeRemoval.objects.get()
    assert (row.source, row.request_number, row.cluster_id) == ("leader", 7, member_node["join"].cluster_id)
    assert row.certificate_serial == member_node["own"].serial  # kept as evidence
    assert local_etcd.local_member_config() is None  # serve's start condition
    assert removed.removed_config_path().exists()
    [event] = events(AuditAction.NODE_REMOVED)
    assert event.data["request_number"] == 7 and event.data["source"] == "leader"
    # The leader tries again (it did not see the answer): the same answer, nothing new.
    status, answer = post_notice(client, notice(member_node), member_node["leader_cert"])
    assert status == 200 and answer["new"] is False
    assert NodeRemoval.objects.count() == 1 and len(events(AuditAction.NODE_REMOVED)) == 1
    # The node's own certificate row is untouched: it revokes nothing itself.
    assert Certificate.objects.filter(pk=member_node["own"].pk, replaced_at__isnull=True).exists()


def test_notice_without_a_client_certificate_is_refused(member_node, client):
    assert_refused(client, member_node, notice(member_node), None, "no_client_certificate")


def test_notice_from_another_followers_certificate_is_refused(member_node, client):
    assert_refused(client, member_node, notice(member_node), member_node["other_cert"], "not_leader")


def test_notice_from_another_clusters_certificate_is_refused(member_node, client):
    foreign = ca.create_ca(name="another cluster")
    cert = ca.issue_node_certificate(ca_cert_pem=foreign.cert_pem, ca_key_pem=foreign.key_pem,
                                     names=[CLUSTER_LEADER]).cert_pem
    assert_refused(client, member_node, notice(member_node), cert, "not_cluster_certificate")


@pytest.mark.parametrize("body", [
    b"not json", b"", b"[]", b'{"notice": "removed"}', b"\xff\xfe", b'{"a": 1, "a": 2}',
    b'{"notice":"removed","version":NaN}',
], ids=["junk", "empty", "array", "missing-fields", "not-utf8", "duplicate-key", "nan"])
def test_junk_json_is_refused(member_node, client, body):
    code = "bad_request"
    assert_refused(client, member_node, body, member_node["leader_cert"], code)


@pytest.mark.parametrize("changes", [
    {"version": 2}, {"notice": "joined"}, {"request_number": 0}, {"request_number": True},
    {"request_number": "7"}, {"removed_at": "yesterday"}, {"removed_at": "2026-12-07T10:00:00"},
    {"reason": "x" * 501}, {"extra": "field"},
], ids=["version", "kind", "zero-request", "bool-request", "text-request", "bad-date", "naive-date", "long-reason",
        "extra-field"])
def test_notice_with_wrong_fields_is_refused(member_node, client, changes):
    assert_refused(client, member_node, notice(member_node, **changes), member_node["leader_cert"], "bad_request")


def test_too_large_notice_is_refused(member_node, client):
    body = json.dumps(notice(member_node, reason="x" * 9000)).encode()
    assert_refused(client, member_node, body, member_node["leader_cert"], "too_large")


def test_notice_for_another_cluster_is_refused(member_node, client):
    assert_refused(client, member_node, notice(member_node, cluster_id="00000000-0000-0000-0000-000000000000"),
                   member_node["leader_cert"], "wrong_cluster")


@pytest.mark.parametrize("changes", [{"address": OTHER_FOLLOWER}, {"certificate_serial": "abc123"}],
                         ids=["address", "certificate"])
def test_notice_for_another_node_is_refused(member_node, client, changes):
    assert_refused(client, member_node, notice(member_node, **changes), member_node["leader_cert"], "wrong_node")


def test_notice_to_a_node_that_never_joined_is_refused(member_node, client):
    FollowerJoin.objects.update(state=JoinState.FAILED)
    assert_refused(client, member_node, notice(member_node), member_node["leader_cert"], "not_member")


def test_delegation_get_is_not_allowed(member_node, client):
    assert client.get("/api/delegation/v1/removed").status_code == 405


# --- finding out from etcd ------------------------------------------------------------------------
class PeersSay:
    def __init__(self, members):
        self.members = members

    def __call__(self, *args, **kwargs):
        return self

    def member_list(self):
        if isinstance(self.members, Exception):
            raise self.members
        return self.members


def test_etcd_member_list_without_this_node_is_a_removal(member_node, monkeypatch,
                                                         django_capture_on_commit_callbacks):
    leader_member = Member(id=1, name="node-leader", peer_urls=(f"https://{CLUSTER_LEADER}:2380",),
                           client_urls=(f"https://{CLUSTER_LEADER}:2379",))
    own = Member(id=2, name="node-self", peer_urls=(f"https://{LEADER}:2380",), client_urls=("https://x:2379",))
    monkeypatch.setattr(removed, "EtcdClient", PeersSay([leader_member, own]))
    assert removed.removal_check() is None  # still a member
    assert local_etcd.local_member_config() is not None
    monkeypatch.setattr(removed, "EtcdClient", PeersSay([leader_member]))
    with django_capture_on_commit_callbacks(execute=True):
        found = removed.removal_check()
    assert found is not None and found.source == "etcd" and found.request_number is None
    assert local_etcd.local_member_config() is None
    [event] = events(AuditAction.NODE_REMOVED)
    assert "absent from the member list" in event.data["evidence"]
    assert removed.removal_check() is None  # once


def test_unreachable_peers_are_no_removal_unless_etcd_said_so(member_node, monkeypatch):
    from pamportal.cluster.etcd import EtcdUnavailable

    monkeypatch.setattr(removed, "EtcdClient", PeersSay(EtcdUnavailable([("https://x:2379", "refused")])))
    assert removed.removal_check() is None
    assert removed.removal_check(etcd_said_removed=True) is not None


def test_the_leaders_notice_after_etcd_fills_in_the_request(member_node, monkeypatch, client):
    monkeypatch.setattr(removed, "EtcdClient", PeersSay([]))
    removed.removal_check()
    status, answer = post_notice(client, notice(member_node), member_node["leader_cert"])
    assert status == 200 and answer["new"]
    row = NodeRemoval.objects.get()
    assert (row.source, row.request_number, row.reason) == ("etcd", 7, "decommissioned for the test")
    assert events(AuditAction.NODE_REMOVAL_NOTICE)


def test_etcd_log_says_removed_only_for_the_last_run(tmp_path):
    log = tmp_path / "etcd.log"
    log.write_bytes(b'{"msg":"the member has been permanently removed from the cluster"}\n')
    assert removed.etcd_log_says_removed(log)
    offset = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b'{"msg":"started"}\n')
    assert not removed.etcd_log_says_removed(log, since=offset)


# --- pages and the wipe ----------------------------------------------------------------------------
@pytest.fixture
def removed_node(member_node, client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert post_notice(client, notice(member_node), member_node["leader_cert"])[0] == 200
    return member_node


@pytest.mark.parametrize("url", ["nodes:dashboard", "cluster:overview", "cluster:removed", "jobs:list",
                                 "setup:join_status"])
def test_every_page_says_the_node_was_removed(removed_node, login_client, url):
    page = login_client(removed_node["admin"]).get(reverse(url), secure=True)
    assert page.status_code == 200
    text = page.content.decode()
    assert (f"removed from cluster {removed_node['join'].cluster_id} on 2026-12-07 by request 7") in text
    assert 'id="removed-next-step"' in text
    assert "is a voting member" not in text


def test_a_viewer_sees_the_removal_but_not_the_wipe(removed_node, make_user, login_client):
    page = login_client(make_user("viewer1", Role.VIEWER)).get(reverse("cluster:removed"), secure=True)
    assert page.status_code == 200 and "by request 7" in page.content.decode()
    assert 'id="wipe-form"' not in page.content.decode()
    response = login_client(make_user("viewer2", Role.VIEWER)).post(
        reverse("cluster:removed"), {"confirmation": LEADER}, secure=True)
    assert response.status_code == 403
    assert NodeRemoval.objects.get().wiped_at is None


@pytest.mark.parametrize("typed", ["", "yes", "127.0.0.61", LEADER.upper() + "x"])
def test_wipe_with_the_wrong_confirmation_is_refused(removed_node, login_client, typed):
    client = login_client(removed_node["admin"])
    response = client.post(reverse("cluster:removed"), {"confirmation": typed}, secure=True)
    assert response.status_code == 400
    assert f"Type this node&#x27;s address, {LEADER}, to confirm" in response.content.decode()
    [event] = events(AuditAction.NODE_CLUSTER_WIPE_REFUSED)
    assert event.outcome == Outcome.DENIED and event.data["code"] == "wrong_confirmation"
    assert NodeRemoval.objects.get().wiped_at is None  # nothing changed
    assert Node.objects.get().finalised_at is not None
    assert removed.removed_config_path().exists()


def test_wipe_when_not_removed_is_refused(member_node, login_client):
    with pytest.raises(removed.RemovalRefused) as refused:
        removed.cluster_state_wipe(user=member_node["admin"], confirmation=LEADER)
    assert refused.value.code == "not_removed"
    assert events(AuditAction.NODE_CLUSTER_WIPE_REFUSED)


def test_wipe_leaves_a_node_that_can_join_again(removed_node, login_client, settings,
                                                django_capture_on_commit_callbacks):
    own_pem = removed_node["own"].cert_pem
    client = login_client(removed_node["admin"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("cluster:removed"), {"confirmation": f" {LEADER} "}, secure=True)
    assert response.status_code == 302 and response["Location"] == reverse("setup:start")
    [event] = events(AuditAction.NODE_CLUSTER_STATE_WIPED)
    assert event.data["request_number"] == 7
    node = Node.objects.get()
    assert node.finalised_at is None and node.role == NodeRole.STANDALONE
    # The revoked certificate stays, as history; none is current; the console has a new one.
    assert Certificate.objects.filter(cert_pem=own_pem, replaced_at__isnull=False).exists()
    assert not Certificate.objects.filter(replaced_at__isnull=True).exists()
    assert settings.PAM_TLS_CERT.read_text() != own_pem
    assert not local_etcd.etcd_dir().exists()
    assert keystore.mek_exists()
    assert FollowerJoin.objects.get().state == JoinState.FAILED
    assert removed.removal_current() is None
    page = client.get(reverse("setup:join"), secure=True)
    assert page.status_code == 200 and "removed from cluster" not in page.content.decode()


# --- the leader's side -------------------------------------------------------------------------------
def _approved_removal(leader, operator, approvers, fake_etcd, address="127.0.0.12"):
    member = ClusterMember.objects.create(address=address, role=MemberRole.FOLLOWER, state=MemberState.ACTIVE,
                                          cert_serial="abc1", etcd_member_id="4097")
    fake_etcd.members[4097] = Member(id=4097, name=address, peer_urls=(connections.member_peer_url(address),),
                                     client_urls=(connections.member_client_url(address),))
    fake_etcd.members[4098] = Member(id=4098, name="n3", peer_urls=("https://127.0.0.13:2380",),
                                     client_urls=("https://127.0.0.13:2379",))
    request = removal_request_create(user=operator, member_id=member.pk, reason="decommissioned for the test")
    for approver in approvers[:2]:
        request = removal_request_vote(request_id=request.pk, user=approver, decision="approve",
                                       totp_code=code_for(approver))
    return request


def test_the_leader_tells_the_removed_node_and_retries_until_it_answers(leader, operator, approvers, fake_etcd,
                                                                         monkeypatch):
    calls = []
    answers = [connections.DelegationAnswer(0, {}, "connection refused"),
               connections.DelegationAnswer(0, {}, "connection refused"),
               connections.DelegationAnswer(200, {"ok": True}, "HTTP 200")]

    def post(address, path, payload):
        calls.append((address, path, payload))
        return answers.pop(0)

    monkeypatch.setattr(connections, "delegation_post", post)
    request = _approved_removal(leader, operator, approvers, fake_etcd)
    assert run_job(request.job_id) == "succeeded"
    request.refresh_from_db()
    assert request.state == RequestState.DONE and request.node_notified_at is None
    address, path, payload = calls[0]
    assert (address, path) == ("127.0.0.12", "removed")
    assert payload["request_number"] == request.pk and payload["certificate_serial"] == "abc1"
    assert set(payload) == removed.NOTICE_FIELDS
    assert removal.removal_notices_retry() == 0  # still down
    assert removal.removal_notices_retry() == 1
    request.refresh_from_db()
    assert request.node_notified_at is not None and request.node_notice_attempts == 3
    assert removal.removal_notices_retry() == 0 and len(calls) == 3  # told once, never again
    assert len(events(AuditAction.CLUSTER_REMOVAL_NOTICE_FAILED)) == 1  # the first failure, not each retry
    assert len(events(AuditAction.CLUSTER_REMOVAL_NOTICE_SENT)) == 1


def test_a_refused_notice_is_not_sent_again(leader, operator, approvers, fake_etcd, monkeypatch):
    monkeypatch.setattr(connections, "delegation_post",
                        lambda *a: connections.DelegationAnswer(409, {"ok": False}, "HTTP 409 not_member"))
    request = _approved_removal(leader, operator, approvers, fake_etcd)
    run_job(request.job_id)
    request.refresh_from_db()
    assert request.node_notified_at is not None and "409" in request.node_notice_detail
    assert events(AuditAction.CLUSTER_REMOVAL_NOTICE_FAILED)[-1].data["final"] is True
    old = timezone.now() + timedelta(days=8)
    assert removal.removal_notices_retry(now=old) == 0


def test_cluster_page_offers_removal_only_where_quorum_allows(leader, fake_etcd, login_client, make_user):
    for i, address in enumerate(("127.0.0.12", "127.0.0.13"), start=1):
        ClusterMember.objects.create(address=address, role=MemberRole.FOLLOWER, state=MemberState.ACTIVE,
                                     etcd_member_id=str(4096 + i))
        fake_etcd.members[4096 + i] = Member(id=4096 + i, name=address,
                                             peer_urls=(connections.member_peer_url(address),),
                                             client_urls=(connections.member_client_url(address),))
    from pamportal.cluster.selectors import etcd_status_forget

    etcd_status_forget()
    client = login_client(make_user("op-page", Role.OPERATOR))
    text = client.get(reverse("cluster:overview"), secure=True).content.decode()
    assert text.count("Remove…") == 2
    assert text.count('id="id_member_') == 2 and len(set(
        part.split('"')[0] for part in text.split('id="id_member_')[1:])) == 2  # unique ids
    assert "After this removal 2 voting members remain and the cluster tolerates 0 failures" in text
    # One member of three is dead: removing it is allowed, removing a healthy one is not.
    fake_etcd.members[4097] = Member(id=4097, peer_urls=fake_etcd.members[4097].peer_urls)  # not started
    etcd_status_forget()
    text = client.get(reverse("cluster:overview"), secure=True).content.decode()
    assert text.count("Remove…") == 1
    assert "not removable: removing it would lose quorum" in text
    etcd_status_forget()
