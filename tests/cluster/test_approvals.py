"""M-of-N approval of joins: the policy copied onto each request, no self-approval,
one vote per approver, TOTP at the vote, votes bound to the request's hash, denial
final, expiry, and the join job created exactly once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.cluster.context_processors import pending_approvals
from pamportal.cluster.models import Approval, JoinRequest, RequestState
from pamportal.cluster.policy import policy_update
from pamportal.cluster.refusals import ClusterRefused
from pamportal.cluster.requests import join_request_vote, requests_expire
from pamportal.crypto.ca import make_csr
from pamportal.jobs.models import Job
from tests.cluster.conftest import code_for, events, join_request_made, run_job


def vote(request, user, decision="approve", code=None):
    return join_request_vote(request_id=request.pk, user=user, decision=decision,
                                      totp_code=code if code is not None else code_for(user))


def refused_vote(request, user, match, *, decision="approve", code=None, reason=None):
    votes = Approval.objects.count()
    state = JoinRequest.objects.get(pk=request.pk).state
    with pytest.raises(ClusterRefused, match=match):
        vote(request, user, decision, code)
    assert Approval.objects.count() == votes
    event = events(AuditAction.CLUSTER_VOTE_REFUSED)[-1]
    assert event.outcome == Outcome.DENIED
    if reason:
        assert event.data["reason"] == reason
    return state


def test_two_of_three_approve_and_one_job_is_created(leader, operator, approvers, client):
    request, _ = join_request_made(client, operator, leader["mek"])
    vote(request, approvers[0])
    request.refresh_from_db()
    assert request.state == RequestState.PENDING and request.job is None
    vote(request, approvers[1])
    request.refresh_from_db()
    assert request.state == RequestState.APPROVED and request.job.kind == "cluster.join"
    assert Job.objects.filter(kind="cluster.join").count() == 1
    approved = events(AuditAction.CLUSTER_REQUEST_APPROVED)
    assert len(approved) == 1 and sorted(approved[0].data["approvers"]) == ["approver1", "approver2"]
    assert len(events(AuditAction.CLUSTER_VOTE)) == 2
    # A third approver arrives too late: votes are closed, no second job.
    refused_vote(request, approvers[2], "votes are closed")
    assert Job.objects.filter(kind="cluster.join").count() == 1


def test_policy_is_copied_when_the_request_is_made(leader, operator, approvers, client):
    policy_update(user=leader["admin"], required_approvals=3, approver_role="approver",
                           request_lifetime_hours=2)
    request, _ = join_request_made(client, operator, leader["mek"])
    policy_update(user=leader["admin"], required_approvals=1, approver_role="approver",
                           request_lifetime_hours=24)
    assert request.required_approvals == 3
    vote(request, approvers[0])
    vote(request, approvers[1])
    request.refresh_from_db()
    assert request.state == RequestState.PENDING  # still needs its own 3
    vote(request, approvers[2])
    request.refresh_from_db()
    assert request.state == RequestState.APPROVED


def test_the_requester_cannot_approve(leader, approvers, client):
    # With administrators as the approving role, the administrator who made the bundle
    # is the requester and may not vote on it.
    policy_update(user=leader["admin"], required_approvals=1, approver_role="administrator",
                           request_lifetime_hours=24)
    request, _ = join_request_made(client, leader["admin"], leader["mek"])
    refused_vote(request, leader["admin"], "You made this request", reason="self-approval")
    assert JoinRequest.objects.get(pk=request.pk).state == RequestState.PENDING


def test_second_vote_by_the_same_approver_is_refused(leader, operator, approvers, client):
    request, _ = join_request_made(client, operator, leader["mek"])
    vote(request, approvers[0])
    refused_vote(request, approvers[0], "already voted", reason="second vote")
    assert JoinRequest.objects.get(pk=request.pk).votes.count() == 1


def test_wrong_totp_code_is_refused(leader, operator, approvers, client):
    request, _ = join_request_made(client, operator, leader["mek"])
    good = code_for(approvers[0])
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    refused_vote(request, approvers[0], "does not match", code=wrong, reason="wrong TOTP code")
    # The wrong code counted against the device's throttle although the vote was
    # refused and rolled back: the next try is held off, but one wrong code is not
    # "too many in a row".
    state = refused_vote(request, approvers[0], "wait 1 second", code=good, reason="too soon after a wrong code")
    assert state == RequestState.PENDING
    refused_vote(request, approvers[1], "Enter the 6-digit code", code="", reason="no code given")


def test_only_the_policy_role_votes(leader, operator, client, make_user):
    request, _ = join_request_made(client, operator, leader["mek"])
    refused_vote(request, operator, "approver role", code="000000", reason="not an approver")
    admin = make_user("admin2", "administrator")
    refused_vote(request, admin, "approver role", reason="not an approver")


def test_vote_after_expiry_is_refused_and_requests_expire(leader, operator, approvers, client):
    request, _ = join_request_made(client, operator, leader["mek"])
    JoinRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    refused_vote(request, approvers[0], "expired", reason="request expired")
    assert requests_expire() == 1
    request.refresh_from_db()
    assert request.state == RequestState.EXPIRED
    assert events(AuditAction.CLUSTER_REQUEST_EXPIRED)[-1].target.endswith(str(request.public_id))
    refused_vote(request, approvers[1], "votes are closed")


def test_one_denial_is_final(leader, operator, approvers, client):
    request, _ = join_request_made(client, operator, leader["mek"])
    vote(request, approvers[0])
    vote(request, approvers[1], "deny")
    request.refresh_from_db()
    assert request.state == RequestState.DENIED and request.job is None
    assert events(AuditAction.CLUSTER_REQUEST_DENIED)
    refused_vote(request, approvers[2], "denied")
    assert not Job.objects.filter(kind="cluster.join").exists()


def test_a_changed_request_voids_the_votes(leader, operator, approvers, client):
    request, _ = join_request_made(client, operator, leader["mek"])
    vote(request, approvers[0])
    # Someone with database access swaps the CSR after the first vote.
    other_csr, _ = make_csr(names=["127.0.0.12"])
    JoinRequest.objects.filter(pk=request.pk).update(csr_pem=other_csr.decode())
    refused_vote(request, approvers[1], "changed", reason="changed after votes")
    request.refresh_from_db()
    assert request.state == RequestState.FAILED and "changed after votes" in request.failure_reason
    assert request.job is None
    assert events(AuditAction.CLUSTER_REQUEST_VOIDED)


def test_a_change_after_approval_fails_the_join_at_execution(leader, operator, approvers, client, fake_etcd):
    request, _ = join_request_made(client, operator, leader["mek"])
    vote(request, approvers[0])
    vote(request, approvers[1])
    request.refresh_from_db()
    JoinRequest.objects.filter(pk=request.pk).update(follower_version="1.0.7")
    assert run_job(request.job_id) == "failed"
    request.refresh_from_db()
    assert request.state == RequestState.FAILED and "changed after the votes" in request.failure_reason
    assert not request.cert_pem and fake_etcd.count("member_add") == 0


def test_pending_badge_counts_for_approvers(leader, operator, approvers, client, rf):
    request, _ = join_request_made(client, operator, leader["mek"])
    http = rf.get("/")
    http.user = approvers[0]
    assert pending_approvals(http) == {"cluster_pending_approvals": 1}
    vote(request, approvers[0])
    assert pending_approvals(http) == {"cluster_pending_approvals": 0}
    http.user = operator
    assert pending_approvals(http) == {}
