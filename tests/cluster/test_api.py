"""The cluster setup API: a follower's join request and its refusals (each with its
code, message and audit event, and no change), polling, the leader's time, the
delegation heartbeat."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.cluster import protocol
from pamportal.cluster.bundles import bundle_revoke
from pamportal.cluster.members import members_heartbeat
from pamportal.cluster.models import BundleState, ClusterMember, JoiningBundle, JoinRequest, MemberState, RequestState
from pamportal.cluster.requests import join_request_vote
from pamportal.crypto.bundle import join_proof
from pamportal.crypto.secrets import secret_digest
from tests.cluster.conftest import FOLLOWER, code_for, events, follower_request, generate_bundle, post_join


def _refused(client, payload, code, *, status=None):
    bundles = {b.pk: (b.state, b.token_hash) for b in JoiningBundle.objects.all()}
    requests = JoinRequest.objects.count()
    got_status, body = post_join(client, payload)
    assert body["ok"] is False and body["error"]["code"] == code, body
    assert got_status == (status or protocol.REFUSALS[code][0])
    assert {b.pk: (b.state, b.token_hash) for b in JoiningBundle.objects.all()} == bundles  # nothing changed
    assert JoinRequest.objects.count() == requests
    event = events(AuditAction.CLUSTER_JOIN_REFUSED)[-1]
    assert event.outcome == Outcome.DENIED and event.data["code"] == code
    return body["error"]["message"]


def test_join_creates_a_pending_request_with_the_policy_copied(leader, operator, client):
    bundle = generate_bundle(operator)
    status, body = post_join(client, follower_request(bytes(bundle.file), leader["mek"]))
    assert status == 201 and body["ok"] and body["state"] == "pending"
    request = JoinRequest.objects.get(public_id=body["request_id"])
    assert request.required_approvals == 2 and request.approver_role == "approver"
    assert request.poll_secret_hash == secret_digest(body["poll_secret"])
    assert body["poll_secret"] not in request.poll_secret_hash
    bundle.refresh_from_db()
    assert bundle.state == BundleState.USED and bundle.file is None
    assert events(AuditAction.CLUSTER_BUNDLE_USED) and events(AuditAction.CLUSTER_JOIN_REQUESTED)


def test_replayed_bundle_is_refused(leader, operator, client):
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"])
    assert post_join(client, payload)[0] == 201
    message = _refused(client, follower_request(bytes(bundle.file), leader["mek"]), "used")
    assert "already used" in message


def test_expired_bundle_is_refused(leader, operator, client):
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"])
    JoiningBundle.objects.filter(pk=bundle.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert "expired" in _refused(client, payload, "expired")


def test_revoked_bundle_is_refused(leader, operator, client):
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"])
    bundle_revoke(user=operator, bundle_id=bundle.bundle_id)
    assert "revoked" in _refused(client, payload, "revoked")


def test_bundle_for_another_address_is_refused(leader, operator, client):
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"], address="127.0.0.99")
    message = _refused(client, payload, "wrong_address")
    assert FOLLOWER in message


def test_wrong_mek_proof_is_refused(leader, operator, client):
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"])
    payload["proof"] = join_proof(b"\x07" * 32, protocol.proof_message(payload))
    assert "Master Encryption Key" in _refused(client, payload, "bad_proof")
    # A request changed after the proof was made fails the same way.
    payload = follower_request(bytes(bundle.file), leader["mek"])
    payload["preflight_summary"] = {"errors": 0}
    _refused(client, payload, "bad_proof")


def test_unknown_bundle_and_bad_token_are_refused(leader, operator, client):
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"], bundle_id="6f1c1d9e-0000-4000-8000-000000000000")
    _refused(client, payload, "unknown_bundle")
    payload = follower_request(bytes(bundle.file), leader["mek"], token="A" * 43)
    _refused(client, payload, "bad_token")


def test_incompatible_version_is_refused(leader, operator, client):
    major, feature, _ = protocol.parse_version(settings.PAM_VERSION)
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"], version=f"{major}.{feature + 1}.0")
    assert settings.PAM_VERSION in _refused(client, payload, "incompatible_version")
    # A patch difference is fine.
    ok = follower_request(bytes(bundle.file), leader["mek"], version=f"{major}.{feature}.99")
    assert post_join(client, ok)[0] == 201


def test_bad_csr_is_refused(leader, operator, client):
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"], csr_pem="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    _refused(client, payload, "bad_csr")


@pytest.mark.parametrize("body, code", [
    (b"not json", "bad_request"),
    (b"[]", "bad_request"),
    (b'{"bundle_id": "a", "bundle_id": "b"}', "bad_request"),
    (b'{"bundle_id": NaN}', "bad_request"),
    (b"\xff\xfe", "bad_request"),
    (b"{" + b" " * (70 * 1024) + b"}", "too_large"),
])
def test_malformed_requests_are_refused(leader, client, body, code):
    response = client.post("/api/setup/v1/join", data=body, content_type="application/json")
    assert response.status_code == protocol.REFUSALS[code][0]
    assert response.json()["error"]["code"] == code
    assert events(AuditAction.CLUSTER_JOIN_REFUSED)[-1].data["code"] == code


def test_unknown_and_missing_fields_are_refused(leader, operator, client):
    bundle = generate_bundle(operator)
    payload = follower_request(bytes(bundle.file), leader["mek"])
    extra = {**payload, "admin": True}
    assert "unknown field admin" in _refused(client, extra, "bad_request")
    missing = {k: v for k, v in payload.items() if k != "csr_pem"}
    assert "missing field csr_pem" in _refused(client, missing, "bad_request")


def test_poll_needs_the_secret_and_shows_progress(leader, operator, client):
    bundle = generate_bundle(operator)
    _, body = post_join(client, follower_request(bytes(bundle.file), leader["mek"]))
    url = f"/api/setup/v1/join/{body['request_id']}"
    assert client.get(url).status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert events(AuditAction.CLUSTER_JOIN_POLL_REFUSED)[-1].data["code"] == "unauthorised"
    polled = client.get(url, HTTP_AUTHORIZATION=f"Bearer {body['poll_secret']}").json()
    assert polled["state"] == "pending" and polled["approvals"] == 0 and polled["handover"] is None
    assert client.get("/api/setup/v1/join/6f1c1d9e-0000-4000-8000-000000000000",
                      HTTP_AUTHORIZATION="Bearer x").status_code == 404


def test_time_and_heartbeat(leader, client):
    now = timezone.now().timestamp()
    data = client.get("/api/setup/v1/time").json()
    assert abs(data["epoch"] - now) < 5
    beat = client.get("/api/delegation/v1/heartbeat").json()
    assert beat["status"] == "ok" and beat["finalised"] is True and beat["role"] == "standalone"


def test_get_on_join_is_refused(leader, client):
    assert client.get("/api/setup/v1/join").status_code == 405
    assert client.post("/api/setup/v1/time").status_code == 405


def test_request_state_after_approval_is_visible_to_the_follower(leader, operator, client, approvers):
    bundle = generate_bundle(operator)
    _, body = post_join(client, follower_request(bytes(bundle.file), leader["mek"]))
    request = JoinRequest.objects.get(public_id=body["request_id"])
    join_request_vote(request_id=request.pk, user=approvers[0], decision="approve",
                               totp_code=code_for(approvers[0]))
    polled = client.get(f"/api/setup/v1/join/{body['request_id']}",
                        HTTP_AUTHORIZATION=f"Bearer {body['poll_secret']}").json()
    assert polled["approvals"] == 1 and polled["state"] == RequestState.PENDING


def test_heartbeat_of_an_unreachable_member_is_recorded_as_failed(leader, settings):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        settings.PAM_DELEGATION_API_PORT = s.getsockname()[1]
    ClusterMember.objects.create(address="127.0.0.1", state=MemberState.ACTIVE)
    assert members_heartbeat() == 1
    member = ClusterMember.objects.get(address="127.0.0.1")
    assert member.last_heartbeat_ok is False and "refused" in member.last_heartbeat_detail.lower()
