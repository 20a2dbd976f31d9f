"""The cluster pages through real URLs with users of each role."""
from __future__ import annotations

import copy

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.cluster.models import (
    ApprovalPolicy,
    BundleState,
    ClusterMember,
    JoiningBundle,
    JoinRequest,
    RemovalRequest,
)
from pamportal.core.memo import forget_all
from tests.cluster.conftest import FOLLOWER, code_for, events, generate_bundle, join_request_made, run_job
from tests.cluster.test_join_steps import approved

ROLES = [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMINISTRATOR, Role.AUDITOR]


@pytest.fixture
def as_role(make_user, login_client, client):
    def login(role):
        user = make_user(f"user-{role}", role)
        login_client(user)
        return user

    return login


@pytest.mark.parametrize("role", ROLES)
def test_read_pages_are_open_to_every_role(leader, as_role, client, role):
    as_role(role)
    for name in ("cluster:overview", "cluster:bundles", "cluster:requests"):
        assert client.get(reverse(name)).status_code == 200, name
    assert client.get(reverse("cluster:policy")).status_code == (200 if role == Role.ADMINISTRATOR else 403)


def test_anonymous_goes_to_login(leader, client):
    for name in ("cluster:overview", "cluster:bundles", "cluster:requests", "cluster:policy"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and "login" in response["Location"]


@pytest.mark.parametrize("role, allowed", [(Role.VIEWER, False), (Role.OPERATOR, True), (Role.APPROVER, False),
                                           (Role.ADMINISTRATOR, True), (Role.AUDITOR, False)])
def test_generate_bundle_needs_bundles_manage(leader, as_role, client, role, allowed):
    as_role(role)
    response = client.post(reverse("cluster:bundle_generate"), {"follower_address": FOLLOWER})
    assert response.status_code == (302 if allowed else 403)
    assert JoiningBundle.objects.exists() == allowed


def test_operator_generates_downloads_and_revokes(leader, as_role, client):
    user = as_role(Role.OPERATOR)
    bundle = generate_bundle(user)
    page = client.get(reverse("cluster:bundles")).content.decode()
    assert FOLLOWER in page and reverse("cluster:bundle_download", args=[bundle.bundle_id]) in page
    response = client.post(reverse("cluster:bundle_download", args=[bundle.bundle_id]))
    assert response.status_code == 200 and response.content == bytes(bundle.file)
    assert "attachment" in response["Content-Disposition"]
    assert client.get(reverse("cluster:bundle_download", args=[bundle.bundle_id])).status_code == 405
    client.post(reverse("cluster:bundle_revoke", args=[bundle.bundle_id]))
    bundle.refresh_from_db()
    assert bundle.state == BundleState.REVOKED


def test_generate_refusal_is_shown(leader, as_role, client):
    as_role(Role.OPERATOR)
    response = client.post(reverse("cluster:bundle_generate"), {"follower_address": "node1.example.com"},
                           follow=True)
    assert "is this node, the leader" in response.content.decode()


def test_bundles_page_query_count_is_flat(leader, as_role, client):
    user = as_role(Role.OPERATOR)
    generate_bundle(user, "127.0.0.12")
    forget_all()  # both views read cold, whatever the time between them (core.memo)
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("cluster:bundles"))
    generate_bundle(user, "127.0.0.13")
    generate_bundle(user, "127.0.0.14")
    forget_all()
    with CaptureQueriesContext(connection) as three:
        client.get(reverse("cluster:bundles"))
    assert len(three) == len(one)


@pytest.fixture
def badge(settings):
    """The navigation badge's context processor, registered as the console does."""
    name = "pamportal.cluster.context_processors.pending_approvals"
    templates = copy.deepcopy(settings.TEMPLATES)
    processors = templates[0]["OPTIONS"]["context_processors"]
    if name not in processors:
        processors.append(name)
    settings.TEMPLATES = templates


def test_approver_votes_through_the_page(leader, operator, approvers, login_client, client, badge):
    request, _ = join_request_made(client, operator, leader["mek"])
    login_client(approvers[0])
    page = client.get(reverse("cluster:requests")).content.decode()
    assert "Join of 127.0.0.12" in page and reverse("cluster:vote", args=["join", request.pk]) in page
    assert "<mark>1</mark>" in page  # the badge
    response = client.post(reverse("cluster:vote", args=["join", request.pk]),
                           {"decision": "approve", "totp_code": code_for(approvers[0])}, follow=True)
    assert "Your vote is recorded" in response.content.decode()
    assert request.votes.count() == 1
    page = client.get(reverse("cluster:requests")).content.decode()
    assert "approver1 approved" in page and "you have voted" in page


def test_wrong_code_through_the_page(leader, operator, approvers, login_client, client):
    request, _ = join_request_made(client, operator, leader["mek"])
    login_client(approvers[0])
    response = client.post(reverse("cluster:vote", args=["join", request.pk]),
                           {"decision": "approve", "totp_code": "12345"}, follow=True)
    assert "does not match" in response.content.decode()
    assert request.votes.count() == 0


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.ADMINISTRATOR, Role.AUDITOR])
def test_non_approvers_cannot_vote(leader, operator, as_role, client, role):
    request, _ = join_request_made(client, operator, leader["mek"])
    as_role(role)
    response = client.post(reverse("cluster:vote", args=["join", request.pk]), {"decision": "approve",
                                                                               "totp_code": "000000"})
    assert response.status_code == 403
    assert JoinRequest.objects.get(pk=request.pk).votes.count() == 0


def test_the_policy_page_reads_without_writing(leader, as_role, client):
    as_role(Role.ADMINISTRATOR)
    ApprovalPolicy.objects.all().delete()
    response = client.get(reverse("cluster:policy"))
    assert response.status_code == 200
    assert not ApprovalPolicy.objects.exists()  # the defaults are shown; nothing is saved


def test_administrator_changes_the_policy(leader, as_role, client):
    as_role(Role.ADMINISTRATOR)
    response = client.post(reverse("cluster:policy"), {"required_approvals": 3, "approver_role": "approver",
                                                       "request_lifetime_hours": 12})
    assert response.status_code == 302
    policy = ApprovalPolicy.objects.get()
    assert (policy.required_approvals, policy.request_lifetime_hours) == (3, 12)
    assert events(AuditAction.CLUSTER_POLICY_CHANGED)[-1].data["after"]["required_approvals"] == 3


def test_overview_shows_members_tolerance_and_diagram(leader, operator, approvers, client, login_client):
    for address in ("127.0.0.12", "127.0.0.13"):
        request = approved(client, operator, approvers, leader["mek"], address)
        assert run_job(request.job_id) == "succeeded"
    login_client(operator)
    page = client.get(reverse("cluster:overview")).content.decode()
    assert '<strong id="failure-tolerance">1</strong>' in page
    assert "<svg" in page and page.count("<circle") == 3
    assert "127.0.0.12" in page and "127.0.0.13" in page and "node1.example.com" in page
    assert "style=" not in page and "<script>" not in page


def test_remove_request_from_the_overview(leader, operator, approvers, client, login_client):
    for address in ("127.0.0.12", "127.0.0.13"):
        run_job(approved(client, operator, approvers, leader["mek"], address).job_id)
    login_client(operator)
    member = ClusterMember.objects.get(address="127.0.0.12")
    response = client.post(reverse("cluster:member_remove", args=[member.pk]), {"reason": "hardware is retired"})
    assert response.status_code == 302
    assert RemovalRequest.objects.get().address == "127.0.0.12"
    # A viewer may not ask for a removal.
    login_client(approvers[0])
    assert client.post(reverse("cluster:member_remove", args=[member.pk]),
                       {"reason": "hardware is retired"}).status_code == 403
