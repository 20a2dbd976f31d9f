"""The join steps against an in-memory etcd: the happy path, exactly once under
duplicated or resumed execution, undo on failure, removal of a node."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from pamportal.audit.actions import AuditAction
from pamportal.cluster import jobs
from pamportal.cluster.local_etcd import member_name
from pamportal.cluster.members import ca_row
from pamportal.cluster.models import (
    ClusterMember,
    JoinRequest,
    MemberState,
    RemovalRequest,
    RequestState,
    RevokedCertificate,
)
from pamportal.cluster.refusals import ClusterRefused
from pamportal.cluster.removal import removal_request_create
from pamportal.cluster.requests import join_request_vote, removal_request_vote
from pamportal.crypto.ca import certificate_info, verify_issued_by
from pamportal.jobs.choices import Status
from pamportal.jobs.models import Job
from pamportal.nodes.models import Node, NodeRole
from tests.cluster.conftest import FOLLOWER, code_for, events, join_request_made, run_job


def approved(client, operator, approvers, mek, address=FOLLOWER) -> JoinRequest:
    request, body = join_request_made(client, operator, mek, address)
    for approver in approvers[:2]:
        join_request_vote(request_id=request.pk, user=approver, decision="approve",
                                   totp_code=code_for(approver))
    request.refresh_from_db()
    assert request.state == RequestState.APPROVED
    request.poll_secret = body["poll_secret"]
    return request


def ctx_for(request) -> SimpleNamespace:
    lines = []
    return SimpleNamespace(params={"request_id": request.pk}, lease_lost=threading.Event(),
                           log=lambda text, level="info": lines.append(text), lines=lines)


def test_join_happy_path(leader, operator, approvers, client, fake_etcd):
    request = approved(client, operator, approvers, leader["mek"])
    assert run_job(request.job_id) == "succeeded"
    request.refresh_from_db()
    assert request.state == RequestState.DONE
    member = ClusterMember.objects.get(address=FOLLOWER)
    assert member.state == MemberState.ACTIVE and member.etcd_member_id == request.etcd_member_id
    etcd_member = fake_etcd.by_peer(FOLLOWER)
    assert etcd_member is not None and etcd_member.is_voter and str(etcd_member.id) == request.etcd_member_id
    assert fake_etcd.count("member_add") == 1
    # The certificate is the cluster CA's, for the follower's address.
    ca_pem = ca_row().cert_pem.encode()
    verify_issued_by(request.cert_pem.encode(), ca_pem)
    assert FOLLOWER in certificate_info(request.cert_pem.encode()).names
    assert Node.objects.get().role == NodeRole.LEADER
    for action in (AuditAction.CLUSTER_JOIN_CERT_ISSUED, AuditAction.CLUSTER_JOIN_LEARNER_ADDED,
                   AuditAction.CLUSTER_JOIN_HANDED_OVER, AuditAction.CLUSTER_JOIN_PROMOTED, AuditAction.CLUSTER_JOINED):
        assert len(events(action)) == 1, action
    # The follower's poll returns what it needs to start its member.
    polled = client.get(f"/api/setup/v1/join/{request.public_id}",
                        HTTP_AUTHORIZATION=f"Bearer {request.poll_secret}").json()
    assert polled["state"] == "joined"
    handover = polled["handover"]
    assert handover["cert_pem"] == request.cert_pem and handover["ca_pem"] == ca_pem.decode()
    assert handover["etcd_member_name"] == member_name(FOLLOWER)
    assert f"{member_name(FOLLOWER)}=https://{FOLLOWER}:2380" in handover["etcd_initial_cluster"]
    assert "node1.example.com=https://node1.example.com:2380" in handover["etcd_initial_cluster"]


def test_promote_waits_for_the_learner_to_catch_up(leader, operator, approvers, client, fake_etcd):
    fake_etcd.not_ready_times = 3
    request = approved(client, operator, approvers, leader["mek"])
    assert run_job(request.job_id) == "succeeded"
    assert fake_etcd.count("member_promote") == 4


def test_duplicated_execution_adds_one_learner_and_signs_once(leader, operator, approvers, client, fake_etcd):
    request = approved(client, operator, approvers, leader["mek"])
    assert run_job(request.job_id) == "succeeded"
    assert run_job(request.job_id) == "succeeded"  # a second delivery of the task
    request.refresh_from_db()
    serial = request.cert_serial
    # Each step run again, as a re-queued step would be: nothing new happens.
    ctx = ctx_for(request)
    for step in jobs.JOIN.steps:
        try:
            step.run(ctx)
        except RuntimeError as exc:  # the request is done: the steps say there is nothing to do
            assert "joined" in str(exc).lower() or "done" in str(exc).lower()
    request.refresh_from_db()
    assert request.cert_serial == serial and request.state == RequestState.DONE
    assert fake_etcd.count("member_add") == 1
    assert len(events(AuditAction.CLUSTER_JOIN_CERT_ISSUED)) == 1
    assert not RevokedCertificate.objects.exists()


def test_worker_died_after_member_add_adopts_the_learner(leader, operator, approvers, client, fake_etcd):
    request = approved(client, operator, approvers, leader["mek"])
    ctx = ctx_for(request)
    jobs.JOIN.steps[0].run(ctx)  # signed
    # A worker added the learner, then died before writing its id.
    fake_etcd.member_add(["https://127.0.0.12:2380"], learner=True)
    assert run_job(request.job_id) == "succeeded"
    learners_and_voters = [m for m in fake_etcd.members.values() if "127.0.0.12" in m.peer_urls[0]]
    assert len(learners_and_voters) == 1 and learners_and_voters[0].is_voter
    assert fake_etcd.count("member_add") == 1
    assert events(AuditAction.CLUSTER_JOIN_LEARNER_ADDED)[-1].data["adopted"] is True


def test_follower_that_never_starts_is_undone(leader, operator, approvers, client, fake_etcd):
    fake_etcd.follower_starts = False
    request = approved(client, operator, approvers, leader["mek"])
    assert run_job(request.job_id) == "failed"
    request.refresh_from_db()
    assert request.state == RequestState.FAILED
    assert "did not start within" in request.failure_reason
    assert fake_etcd.by_peer(FOLLOWER) is None  # the learner was removed
    assert fake_etcd.count("member_remove") == 1
    assert RevokedCertificate.objects.filter(serial=request.cert_serial).exists()
    assert ClusterMember.objects.get(address=FOLLOWER).state == MemberState.FAILED
    failed = events(AuditAction.CLUSTER_JOIN_FAILED)
    assert len(failed) == 1 and failed[0].data["learner_removed"] and failed[0].data["certificate_revoked"]
    assert events(AuditAction.CLUSTER_CERT_REVOKED)
    assert Node.objects.get().role == NodeRole.STANDALONE
    polled = client.get(f"/api/setup/v1/join/{request.public_id}",
                        HTTP_AUTHORIZATION=f"Bearer {request.poll_secret}").json()
    assert polled["state"] == "failed" and "did not start" in polled["failure_reason"]
    assert polled["handover"] is None


def test_etcd_unreachable_at_member_add_fails_cleanly(leader, operator, approvers, client, fake_etcd):
    fake_etcd.fail_on = {"member_add"}
    request = approved(client, operator, approvers, leader["mek"])
    assert run_job(request.job_id) == "failed"
    request.refresh_from_db()
    assert request.state == RequestState.FAILED and "etcd unavailable" in request.failure_reason
    assert RevokedCertificate.objects.filter(serial=request.cert_serial).exists()
    assert fake_etcd.by_peer(FOLLOWER) is None


def test_reconcile_undoes_a_join_whose_job_died(leader, operator, approvers, client, fake_etcd):
    request = approved(client, operator, approvers, leader["mek"])
    ctx = ctx_for(request)
    jobs.JOIN.steps[0].run(ctx)
    jobs.JOIN.steps[1].run(ctx)
    assert fake_etcd.by_peer(FOLLOWER) is not None
    # The reaper failed the job after its worker died on the last attempt.
    Job.objects.filter(pk=request.job_id).update(status=Status.FAILED)
    assert jobs.joins_reconcile() == 1
    request.refresh_from_db()
    assert request.state == RequestState.FAILED and "the join job failed" in request.failure_reason
    assert fake_etcd.by_peer(FOLLOWER) is None
    assert jobs.joins_reconcile() == 0


def test_removal_needs_approvals_and_keeps_quorum(leader, operator, approvers, client, fake_etcd):
    first = approved(client, operator, approvers, leader["mek"], "127.0.0.12")
    assert run_job(first.job_id) == "succeeded"
    member = ClusterMember.objects.get(address="127.0.0.12")
    # Two voting members: removing one loses quorum.
    with pytest.raises(ClusterRefused, match="lose quorum"):
        removal_request_create(user=operator, member_id=member.pk, reason="decommissioning the box")
    assert events(AuditAction.CLUSTER_REMOVAL_REFUSED)[-1].data["reason"] == "would lose quorum"
    second = approved(client, operator, approvers, leader["mek"], "127.0.0.13")
    assert run_job(second.job_id) == "succeeded"
    removal = removal_request_create(user=operator, member_id=member.pk, reason="decommissioning the box")
    for approver in approvers[:2]:
        removal_request_vote(request_id=removal.pk, user=approver, decision="approve",
                                      totp_code=code_for(approver))
    removal.refresh_from_db()
    assert removal.state == RequestState.APPROVED
    assert run_job(removal.job_id) == "succeeded"
    member.refresh_from_db()
    assert member.state == MemberState.REMOVED
    assert fake_etcd.by_peer("127.0.0.12") is None and fake_etcd.by_peer("127.0.0.13") is not None
    assert RevokedCertificate.objects.filter(serial=member.cert_serial).exists()
    assert events(AuditAction.CLUSTER_NODE_REMOVED)
    assert RemovalRequest.objects.get(pk=removal.pk).state == RequestState.DONE


@pytest.mark.parametrize("state", [MemberState.FAILED, MemberState.JOINING, MemberState.ACTIVE])
def test_a_failed_removal_puts_the_member_back_in_its_own_state(leader, operator, approvers, client, fake_etcd,
                                                                 state):
    for address in ("127.0.0.12", "127.0.0.13"):
        assert run_job(approved(client, operator, approvers, leader["mek"], address).job_id) == "succeeded"
    member = ClusterMember.objects.get(address="127.0.0.12")
    ClusterMember.objects.filter(pk=member.pk).update(state=state)
    removal = removal_request_create(user=operator, member_id=member.pk, reason="decommissioning the box")
    for approver in approvers[:2]:
        removal_request_vote(request_id=removal.pk, user=approver, decision="approve", totp_code=code_for(approver))
    removal.refresh_from_db()
    fake_etcd.fail_on = {"member_remove"}
    assert run_job(removal.job_id) == "failed"
    member.refresh_from_db()
    assert member.state == state
    assert RemovalRequest.objects.get(pk=removal.pk).state == RequestState.FAILED
    assert events(AuditAction.CLUSTER_REMOVAL_FAILED)
