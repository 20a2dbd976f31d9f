"""An operator's path with no dead ends, page by page through the Django client: a
follower can always start again with another bundle until its request is sent; the
approver's card shows what to compare out of band; a reused or wrong TOTP code says
what is true; the 403 page asks for what exists and logs one line; the bundle list
follows its job; the export page offers its verifier; a follower is called one."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.exports import audit_export_create, audit_export_run
from pamportal.cluster import bundles, follower
from pamportal.cluster.follower_models import FollowerJoin, JoinState
from pamportal.cluster.models import JoiningBundle
from pamportal.cluster.selectors import preflight_summary_lines
from pamportal.core.log_filters import RefusalsOnOneLine
from pamportal.crypto import mek as mek_format
from pamportal.crypto.ca import csr_key_fingerprint
from pamportal.nodes.models import Node, NodeRole
from tests.crypto.bundle_corpus import FOLLOWER as BUNDLE_FOLLOWER
from tests.crypto.bundle_corpus import GOOD, MEK, NOW

from .conftest import FOLLOWER, code_for, events, follower_request, join_request_made, post_join, run_job

ROOT = Path(__file__).resolve().parents[2]


# --- the follower: start again with another bundle -----------------------------------------
@pytest.fixture
def follower_admin(make_user, login_client, monkeypatch):
    # The corpus is made for a fixed moment; the follower's clock reads it.
    monkeypatch.setattr("pamportal.cluster.follower.timezone.now", lambda: NOW)
    return login_client(make_user("follower-admin", Role.ADMINISTRATOR))


def open_bundle(client):
    response = client.post(reverse("setup:join"), {
        "bundle": SimpleUploadedFile("join.bundle", GOOD), "mek": mek_format.encode(MEK),
        "own_address": BUNDLE_FOLLOWER}, secure=True)
    assert response.status_code == 302, response.content.decode()[:500]
    return FollowerJoin.objects.get()


def status_page(client) -> str:
    response = client.get(reverse("setup:join_status"), secure=True)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.parametrize("state", [JoinState.OPENED, JoinState.CHECKED])
def test_an_unsent_join_can_start_again_with_another_bundle(follower_admin, state):
    join = open_bundle(follower_admin)
    FollowerJoin.objects.filter(pk=join.pk).update(state=state)
    assert 'id="join-discard"' in status_page(follower_admin)

    response = follower_admin.post(reverse("setup:join_discard"), secure=True)
    assert response.status_code == 302 and response.url == reverse("setup:join")
    join.refresh_from_db()
    assert join.state == JoinState.FAILED and "start again" in join.failure_reason
    assert join.sealed_join_token == ""
    [event] = events(AuditAction.JOIN_DISCARDED)
    assert event.data == {"leader": join.leader_address, "sent": False}
    # The join page now takes another bundle, and that bundle opens.
    page = follower_admin.get(reverse("setup:join"), secure=True)
    assert page.status_code == 200 and 'name="bundle"' in page.content.decode()
    assert open_bundle_again(follower_admin).state == JoinState.OPENED


def open_bundle_again(client):
    client.post(reverse("setup:join"), {
        "bundle": SimpleUploadedFile("join.bundle", GOOD), "mek": mek_format.encode(MEK),
        "own_address": BUNDLE_FOLLOWER}, secure=True)
    return FollowerJoin.objects.order_by("-pk").first()


def test_after_the_leader_refuses_the_page_offers_another_bundle(follower_admin, monkeypatch):
    join = open_bundle(follower_admin)
    FollowerJoin.objects.filter(pk=join.pk).update(state=JoinState.CHECKED)
    monkeypatch.setattr(follower, "leader_call", lambda *a, **k: (
        409, {"ok": False, "error": {"code": "used", "message": "This joining bundle was already used."}}))
    response = follower_admin.post(reverse("setup:join_send"), secure=True, follow=True)
    page = response.content.decode()
    assert "already used" in page and "start again with another bundle" in page
    assert 'id="join-discard"' in page  # the way on, not only "send again"
    assert follower_admin.post(reverse("setup:join_discard"), secure=True).status_code == 302
    assert FollowerJoin.objects.get().state == JoinState.FAILED


def test_a_sent_request_cannot_be_discarded_and_shows_the_key_fingerprint(follower_admin, monkeypatch):
    join = open_bundle(follower_admin)
    FollowerJoin.objects.filter(pk=join.pk).update(state=JoinState.CHECKED)
    monkeypatch.setattr(follower, "leader_call", lambda *a, **k: (
        201, {"ok": True, "request_id": "r-1", "poll_secret": "s" * 32, "state": "pending", "required_approvals": 2}))
    follower_admin.post(reverse("setup:join_send"), secure=True)
    join.refresh_from_db()
    assert join.state == JoinState.REQUESTED and join.csr_pem

    page = status_page(follower_admin)
    assert 'id="join-discard"' not in page
    assert csr_key_fingerprint(join.csr_pem) in page

    response = follower_admin.post(reverse("setup:join_discard"), secure=True, follow=True)
    assert "join request; it cannot be discarded here" in response.content.decode()
    join.refresh_from_db()
    assert join.state == JoinState.REQUESTED
    [refusal] = events(AuditAction.JOIN_REFUSED_LOCALLY)
    assert refusal.data["code"] == "join_pending"


# --- the approver's card ------------------------------------------------------------------
def test_the_request_card_shows_what_to_compare_out_of_band(leader, operator, approvers, client, login_client):
    bundle = bundles.bundle_generate(user=operator, follower_address=FOLLOWER)
    run_job(bundle.job_id)
    bundle.refresh_from_db()
    payload_summary = {"passed": ["clock.leader-offset", "version.compatible"], "failed": []}
    payload = follower_request(bytes(bundle.file), leader["mek"], preflight_summary=payload_summary)
    status, _body = post_join(client, payload)
    assert status == 201

    page = login_client(approvers[0]).get(reverse("cluster:requests")).content.decode()
    assert FOLLOWER in page
    assert "127.0.0.1" in page  # where the request came from (the test client's address)
    assert str(bundle.bundle_id) in page
    assert csr_key_fingerprint(payload["csr_pem"]) in page
    assert "<li>Passed (2): clock.leader-offset, version.compatible</li>" in page
    assert "<li>Failed: none</li>" in page
    assert "Asked by</dt><dd>operator1" in page
    assert "[&#x27;" not in page and "{&#x27;" not in page  # no Python reprs


def test_preflight_summary_lines_are_readable():
    assert preflight_summary_lines({"errors": 0, "warnings": 1, "passed": 17}) == [
        "Errors: 0", "Warnings: 1", "Passed: 17"]
    assert preflight_summary_lines({"failed": ["a", "b"]}) == ["Failed (2): a, b"]
    assert preflight_summary_lines(["not", "a", "dict"]) == []


# --- TOTP at voting ---------------------------------------------------------------------------
def vote_page(client, request_pk, code) -> str:
    response = client.post(reverse("cluster:vote", args=["join", request_pk]),
                           {"decision": "approve", "totp_code": code}, follow=True)
    return response.content.decode()


def test_a_code_already_used_says_so(leader, operator, approvers, client, login_client):
    first, _ = join_request_made(client, operator, leader["mek"])
    second, _ = join_request_made(client, operator, leader["mek"], address="127.0.0.13")
    approver = login_client(approvers[0])
    code = code_for(approvers[0])
    assert "Your vote is recorded" in vote_page(approver, first.pk, code)
    page = vote_page(approver, second.pk, code)
    assert "That code was already used; wait for the next code" in page
    assert "Too many" not in page
    assert events(AuditAction.CLUSTER_VOTE_REFUSED)[-1].data["reason"] == "code already used"


def test_one_wrong_code_is_not_too_many_in_a_row(leader, operator, approvers, client, login_client):
    request, _ = join_request_made(client, operator, leader["mek"])
    approver = login_client(approvers[0])
    good = code_for(approvers[0])
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    assert "does not match your authenticator" in vote_page(approver, request.pk, wrong)
    page = vote_page(approver, request.pk, good)  # at once: the throttle's second is not over
    assert "Too many" not in page and "wait 1 second" in page


# --- the 403 page and its log line -------------------------------------------------------------
def test_403_asks_for_a_role_that_has_the_capability_and_logs_one_line(leader, make_user, login_client):
    viewer = login_client(make_user("viewer1", Role.VIEWER))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RefusalsOnOneLine())
    request_logger = logging.getLogger("django.request")
    request_logger.addHandler(handler)
    try:
        response = viewer.get(reverse("cluster:policy"))
    finally:
        request_logger.removeHandler(handler)
    page = response.content.decode()
    assert response.status_code == 403
    assert "give you a role that has <code>cluster.policy</code>" in page
    assert "<strong>administrator</strong>" in page
    assert "change your role" not in page
    logged = stream.getvalue()
    assert "Forbidden" in logged and "cluster.policy" in logged
    assert "Traceback" not in logged and len(logged.strip().splitlines()) == 1


def test_the_refusal_filter_is_on_every_configured_handler():
    handlers = django_settings.LOGGING["handlers"]
    assert all("refusals_on_one_line" in h.get("filters", []) for h in handlers.values())


# --- the bundle list follows its job ----------------------------------------------------------
def test_the_bundle_list_polls_until_the_bundle_is_ready(leader, operator, login_client):
    bundle = bundles.bundle_generate(user=operator, follower_address=FOLLOWER)
    c = login_client(operator)
    page = c.get(reverse("cluster:bundles")).content.decode()
    assert 'data-polling="true"' in page and 'hx-trigger="every 2s"' in page

    partial = c.get(reverse("cluster:bundles"), HTTP_HX_REQUEST="true")
    assert partial.status_code == 200 and "<html" not in partial.content.decode()
    run_job(bundle.job_id)
    assert JoiningBundle.objects.get(pk=bundle.pk).file
    done = c.get(reverse("cluster:bundles"), HTTP_HX_REQUEST="true")
    assert done.status_code == 286  # htmx stops polling
    assert "Download" in done.content.decode() and "hx-get" not in done.content.decode()
    assert 'data-polling="false"' in c.get(reverse("cluster:bundles")).content.decode()


# --- the export page offers its verifier --------------------------------------------------------
def test_the_export_page_offers_the_verifier_with_its_digest(make_user, login_client):
    admin = make_user("audit-admin", Role.ADMINISTRATOR)
    export = audit_export_run(export_id=audit_export_create(user=admin, format="csv", filters={}).pk)
    tool = (ROOT / "tools" / "verify_audit_export.py").read_bytes()
    for role in (Role.AUDITOR, Role.ADMINISTRATOR):
        c = login_client(make_user(f"who-{role}", role))
        page = c.get(reverse("audit:export_detail", args=[export.pk])).content.decode()
        assert reverse("audit:export_verifier") in page
        assert hashlib.sha256(tool).hexdigest() in page
        download = c.get(reverse("audit:export_verifier"))
        assert download.status_code == 200 and download.content == tool
        assert 'filename="verify_audit_export.py"' in download["Content-Disposition"]
    viewer = login_client(make_user("viewer2", Role.VIEWER))
    assert viewer.get(reverse("audit:export_verifier")).status_code == 403


# --- a follower is called a follower ------------------------------------------------------------
def test_a_follower_says_whose_follower_it_is_and_hides_the_leaders_actions(leader, login_client):
    # A follower's own database after its join: its role, and the join that got it there.
    Node.objects.filter(pk=Node.SINGLETON_PK).update(role=NodeRole.FOLLOWER)
    FollowerJoin.objects.create(
        created_by="leader-admin", state=JoinState.JOINED, own_address=FOLLOWER, leader_address="10.9.8.7",
        leader_ports={}, leader_version="3.1", cluster_id="c", bundle_id="b", bundle_expires=NOW,
        ca_cert_pem="", mek_fingerprint="", sealed_join_token="")
    c = login_client(leader["admin"])

    dashboard = c.get(reverse("nodes:dashboard")).content.decode()
    assert "follower of 10.9.8.7</strong>; manage the cluster there" in dashboard
    assert "standalone" not in dashboard.lower() and "Cluster leader" not in dashboard

    overview = c.get(reverse("cluster:overview")).content.decode()
    assert "follower of 10.9.8.7</strong>; manage the cluster there" in overview
    assert "standalone" not in overview.lower() and "<svg" not in overview
    assert reverse("cluster:bundles") not in overview and reverse("cluster:requests") not in overview

    for name in ("cluster:bundles", "cluster:requests"):
        response = c.get(reverse(name), follow=True)
        assert response.redirect_chain[-1][0] == reverse("cluster:overview")
        assert "manage the cluster there" in response.content.decode()
    response = c.post(reverse("cluster:bundle_generate"), {"follower_address": "10.0.0.9"})
    assert response.status_code == 302 and not JoiningBundle.objects.exists()


def test_a_standalone_node_keeps_its_next_steps(leader, login_client):
    dashboard = login_client(leader["admin"]).get(reverse("nodes:dashboard")).content.decode()
    assert 'id="next-steps"' in dashboard and "standalone server" in dashboard
    assert 'id="cluster-standing"' not in dashboard


def test_a_follower_on_the_replicated_database_manages_the_cluster_whose_jobs_run_on_the_leader(
        leader, login_client, data_dir, django_capture_on_commit_callbacks, monkeypatch):
    """On the cluster's shared database a follower's console shows the cluster's bundles
    and requests and takes the operator's actions; what they start runs on the leader."""
    from pamportal.cluster.models import ClusterMember, MemberRole, MemberState
    from pamportal.jobs import tasks
    from pamportal.replication.database import DatabaseFile, DatabaseHost, write_database_file

    here, leading = "127.0.0.156", "127.0.0.157"
    Node.objects.filter(pk=Node.SINGLETON_PK).update(address=leading, role=NodeRole.LEADER)
    Node.objects.create(pk=2, address=here, role=NodeRole.FOLLOWER, ntp_servers=["ntp"], finalised_at=NOW)
    ClusterMember.objects.update_or_create(address=leading, defaults={"role": MemberRole.LEADER,
                                                                      "state": MemberState.ACTIVE})
    ClusterMember.objects.create(address=here, role=MemberRole.FOLLOWER, state=MemberState.ACTIVE)
    write_database_file(data_dir, DatabaseFile(hosts=(DatabaseHost(host=leading, port=5432),), member="m",
                                               node_address=here))
    sent: list[int] = []
    monkeypatch.setattr(tasks.run_job, "delay", sent.append)
    c = login_client(leader["admin"])

    overview = c.get(reverse("cluster:overview")).content.decode()
    assert f"follower of {leading}</strong> and holds the cluster's replicated data" in overview
    assert "manage the cluster there" not in overview
    assert reverse("cluster:bundles") in overview and reverse("cluster:requests") in overview
    assert "<td>the leader</td>" in overview and "<td>this node</td>" not in overview  # the leader's row
    for name in ("cluster:bundles", "cluster:requests"):
        assert c.get(reverse(name)).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        response = c.post(reverse("cluster:bundle_generate"), {"follower_address": "127.0.0.158"})
    assert response.status_code == 302
    bundle = JoiningBundle.objects.get(follower_address="127.0.0.158")
    assert sent == [] and bundle.job.awaiting_leader  # made by the leader's worker, with the leader's address
    assert f"waits for the leader ({leading}) to take it" in " ".join(bundle.job.output.values_list("text", flat=True))
