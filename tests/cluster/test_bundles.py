"""Joining bundles on the leader: generation as a job, download, revoke, expiry, and
the refusals (licence cap, address in use, not finalised), each audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.cluster import bundles
from pamportal.cluster.members import ca_row
from pamportal.cluster.models import BundleState, ClusterMember, JoiningBundle, MemberRole, MemberState
from pamportal.cluster.refusals import ClusterRefused
from pamportal.crypto.bundle import BundleError, bundle_open, token_hash
from pamportal.licensing.services import licence_install
from tests.cluster.conftest import FOLLOWER, LEADER, events, generate_bundle
from tests.licensing.helpers import minted


def test_bundle_is_made_by_a_job_and_opens_with_the_mek(leader, operator):
    bundle = generate_bundle(operator)
    assert bundle.state == BundleState.OUTSTANDING and bundle.file
    opened = bundle_open(bytes(bundle.file), mek=leader["mek"], now=timezone.now(), own_address=FOLLOWER)
    assert opened.bundle_id == str(bundle.bundle_id)
    assert opened.leader_address == LEADER
    assert token_hash(opened.join_token) == bundle.token_hash
    assert opened.join_token not in bundle.token_hash  # only the hash is kept
    assert opened.ca_cert_pem == ca_row().cert_pem
    created = events(AuditAction.CLUSTER_BUNDLE_CREATED)
    assert created[-1].data["follower_address"] == FOLLOWER
    # The leader became a member row of its own cluster.
    assert ClusterMember.objects.get(role=MemberRole.LEADER).address == LEADER


def test_bundle_build_step_is_idempotent(leader, operator):
    bundle = generate_bundle(operator)
    again = bundles.bundle_build(bundle_pk=bundle.pk)
    assert again["already_built"] is True
    bundle2 = JoiningBundle.objects.get(pk=bundle.pk)
    assert bytes(bundle2.file) == bytes(bundle.file) and bundle2.token_hash == bundle.token_hash


def test_wrong_mek_and_tampered_bundle_refused_on_the_follower_side(leader, operator):
    bundle = generate_bundle(operator)
    with pytest.raises(BundleError) as wrong:
        bundle_open(bytes(bundle.file), mek=b"\x01" * 32, now=timezone.now())
    assert wrong.value.code == "wrong_mek"
    data = bytearray(bundle.file)
    i = data.index(b'"ciphertext": "') + len(b'"ciphertext": "') + 5
    data[i:i + 1] = b"A" if data[i:i + 1] != b"A" else b"B"
    with pytest.raises(BundleError) as tampered:
        bundle_open(bytes(data), mek=leader["mek"], now=timezone.now())
    assert tampered.value.code == "tampered"


def test_download_is_audited_each_time(leader, operator):
    bundle = generate_bundle(operator)
    for _ in range(2):
        file = bundles.bundle_download(user=operator, bundle_id=bundle.bundle_id)
        assert file.data == bytes(bundle.file)
    bundle.refresh_from_db()
    assert bundle.download_count == 2
    assert [e.data["download"] for e in events(AuditAction.CLUSTER_BUNDLE_DOWNLOADED)] == [1, 2]


def test_revoke_drops_the_file_and_refuses_download(leader, operator):
    bundle = generate_bundle(operator)
    bundles.bundle_revoke(user=operator, bundle_id=bundle.bundle_id)
    bundle.refresh_from_db()
    assert bundle.state == BundleState.REVOKED and bundle.file is None
    assert events(AuditAction.CLUSTER_BUNDLE_REVOKED)
    with pytest.raises(ClusterRefused, match="revoked"):
        bundles.bundle_download(user=operator, bundle_id=bundle.bundle_id)
    refused = events(AuditAction.CLUSTER_BUNDLE_REFUSED)[-1]
    assert refused.outcome == Outcome.DENIED and refused.data["reason"] == "bundle revoked"


def test_bundles_expire(leader, operator):
    bundle = generate_bundle(operator)
    assert bundles.bundles_expire(now=timezone.now()) == 0
    assert bundles.bundles_expire(now=bundle.expires_at + timedelta(seconds=1)) == 1
    bundle.refresh_from_db()
    assert bundle.state == BundleState.EXPIRED and bundle.file is None
    assert events(AuditAction.CLUSTER_BUNDLE_EXPIRED)[-1].data["follower_address"] == FOLLOWER


def _refused(operator, address, match):
    before = JoiningBundle.objects.count()
    with pytest.raises(ClusterRefused, match=match) as refused:
        bundles.bundle_generate(user=operator, follower_address=address)
    assert JoiningBundle.objects.count() == before
    event = events(AuditAction.CLUSTER_BUNDLE_REFUSED)[-1]
    assert event.outcome == Outcome.DENIED
    return refused.value, event


def test_refused_at_the_licence_node_cap(leader, operator):
    licence_install(data=minted(max_nodes=3), user=leader["admin"])
    generate_bundle(operator, "127.0.0.12")
    generate_bundle(operator, "127.0.0.13")  # leader + 2 outstanding = 3
    refusal, event = _refused(operator, "127.0.0.14", "licence allows 3 nodes")
    assert event.data["reason"] == "licence node cap reached" and event.data["counted"] == 3
    # Revoking one frees its place.
    bundles.bundle_revoke(user=operator, bundle_id=JoiningBundle.objects.get(follower_address="127.0.0.13").bundle_id)
    generate_bundle(operator, "127.0.0.14")


def test_refused_for_an_address_already_in_the_cluster_or_with_a_bundle(leader, operator):
    generate_bundle(operator)
    _refused(operator, FOLLOWER, "already has an outstanding bundle")
    _refused(operator, LEADER, "is this node, the leader")
    ClusterMember.objects.create(address="127.0.0.20", state=MemberState.ACTIVE)
    _refused(operator, "127.0.0.20", "already in the cluster")
    _refused(operator, "not an address!", "FQDN or an IP")


def test_refused_before_setup_is_finalised(db, operator, make_user):
    make_user("first-admin", "administrator")
    _, event = _refused(operator, FOLLOWER, "not finalised")
    assert event.data["reason"] == "node not finalised"
