"""A follower can always start again: the MEK a node took only for a join is forgotten
when that join is discarded or ends without joining (its key file destroyed, what was
sealed under it moved off or destroyed, audited), so a bundle of another cluster opens
with that cluster's MEK; a key the node holds for itself (its finalised setup, a join
that completed) is never forgotten. After a removal and the wipe the node can rejoin
the same cluster, join another one, or be set up again as a standalone server, and in
every case the audit signing key survives the change of MEK (the trail stays
verifiable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from pamportal.audit import conf as audit_conf
from pamportal.audit import signing
from pamportal.audit.actions import AuditAction
from pamportal.audit.checkpoints import audit_chain_check, audit_checkpoint_periodic, checkpoint_verifies
from pamportal.audit.models import AuditCheckpoint, AuditSigningKey
from pamportal.cluster import follower, removed
from pamportal.cluster.follower_models import FollowerJoin, JoinState, NodeRemoval, RemovalSource
from pamportal.crypto import bundle as bundle_format
from pamportal.crypto import ca
from pamportal.crypto import mek as mek_format
from pamportal.jobs.engine import StepContext
from pamportal.nodes import keys, keystore
from pamportal.nodes.models import Certificate, Node, NodeRole
from pamportal.nodes.progress import StepRefused
from pamportal.setup import wizard
from tests.setup.helpers import through_licence

from .conftest import events

FOLLOWER = "127.0.0.72"
PORTS = {"setup_api": 2390, "etcd_client": 2379, "etcd_peer": 2380, "https": 443, "delegation": 2391}


@dataclass
class Cluster:
    """A cluster as a follower meets it: its leader, CA and MEK, and bundles of it."""

    leader: str
    mek: bytes = field(default_factory=mek_format.generate)

    def __post_init__(self):
        self.ca = ca.create_ca(name=f"test cluster CA {self.leader}")
        self.cluster_id = ca.cluster_id_of(ca.certificate_info(self.ca.cert_pem).sha256)
        self.count = 0

    def bundle(self, address: str = FOLLOWER) -> bytes:
        self.count += 1
        now = timezone.now()
        return bundle_format.bundle_create(
            mek=self.mek, cluster_id=self.cluster_id, bundle_id=f"{self.leader}-b{self.count}",
            leader_address=self.leader, leader_ports=PORTS, ca_cert_pem=self.ca.cert_pem.decode(),
            follower_address=address, leader_version="1.0.0", join_token=bundle_format.new_join_token(),
            created=now, expires=now + timedelta(hours=24))

    def handover(self, join: FollowerJoin) -> dict:
        cert = ca.sign_csr(ca_cert_pem=self.ca.cert_pem, ca_key_pem=self.ca.key_pem, csr_pem=join.csr_pem.encode(),
                           names=[join.own_address])
        return {"cert_pem": cert.decode(), "ca_pem": self.ca.cert_pem.decode(), "etcd_member_name": "node-follower",
                "etcd_initial_cluster": f"node-leader=https://{self.leader}:2380,"
                                        f"node-follower=https://{FOLLOWER}:2380",
                "etcd_initial_cluster_token": f"token-{self.cluster_id}"}


@pytest.fixture
def admin(make_user):
    from pamportal.accounts.roles import Role

    return make_user("follower-admin", Role.ADMINISTRATOR)


@pytest.fixture
def clusters():
    return Cluster("127.0.0.71"), Cluster("127.0.0.73")


# What the services under test defer to their commit, which a test's transaction never
# reaches: run at once (not the job queue's callbacks).
_DEFERRED = ("mek_change_files", "cluster_files_wipe", "local_member_configure")


@pytest.fixture
def commits(monkeypatch):
    real = transaction.on_commit

    def on_commit(func, using=None, robust=False):
        if any(name in getattr(func, "__qualname__", "") for name in _DEFERRED):
            return func()
        return real(func, using=using, robust=robust)

    monkeypatch.setattr(transaction, "on_commit", on_commit)


@pytest.fixture(autouse=True)
def _no_signing_cache():
    signing.clear_cache()
    yield
    signing.clear_cache()


def open_bundle(admin, cluster: Cluster) -> FollowerJoin:
    return follower.join_bundle_open(user=admin, data=cluster.bundle(), mek_text=mek_format.encode(cluster.mek),
                                     own_address=FOLLOWER)


def signed_checkpoint() -> AuditCheckpoint:
    """A checkpoint signed now, with the signing key unsealed afresh (no cache): proof the
    key is readable under the node's current MEK (or from its file)."""
    signing.clear_cache()
    outcome = audit_checkpoint_periodic()
    assert outcome["ok"], outcome
    return AuditCheckpoint.objects.get(pk=outcome["checkpoint"])


def assert_trail_verifiable(key_id: str) -> None:
    """The same signing key as before, every checkpoint checks with its public key, the
    chain is whole."""
    active = signing.active_public_key()
    assert active.key_id == key_id
    for checkpoint in AuditCheckpoint.objects.all():
        public = AuditSigningKey.objects.get(key_id=checkpoint.key_id).public_key
        assert checkpoint_verifies(checkpoint, public)
    assert audit_chain_check(full=True).ok


def no_key_files_left(data_dir) -> list:
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".mek.key"))


def send(join_admin, monkeypatch) -> FollowerJoin:
    """Checks passed, request sent; the leader (faked) accepted it."""
    FollowerJoin.objects.filter(pk=follower.join_current().pk).update(state=JoinState.CHECKED)
    monkeypatch.setattr(follower, "leader_call", lambda *a, **k: (
        201, {"ok": True, "request_id": "r-1", "poll_secret": "s" * 32, "state": "pending", "required_approvals": 1}))
    return follower.join_request_send(user=join_admin)


def leader_says(monkeypatch, answer: dict) -> None:
    monkeypatch.setattr(follower, "leader_call", lambda *a, **k: (200, {"ok": True, **answer}))


def follow(join: FollowerJoin) -> None:
    join.refresh_from_db()
    try:
        follower.join_follow(StepContext(job=join.job, step=join.job.steps.get(), worker_id="test"))
    except RuntimeError:
        pass  # a failed join fails its step


def joined(admin, cluster: Cluster, monkeypatch) -> FollowerJoin:
    """Through the follower's services: a bundle of ``cluster`` opened, the request sent,
    the handover applied, the join complete."""
    open_bundle(admin, cluster)
    join = send(admin, monkeypatch)
    leader_says(monkeypatch, {"state": "approved", "handover": cluster.handover(join)})
    monkeypatch.setattr(follower, "POLL_INTERVAL", 0.0)
    calls = iter([{"state": "approved", "handover": cluster.handover(join)}, {"state": "joined"}])
    monkeypatch.setattr(follower, "leader_call", lambda *a, **k: (200, {"ok": True, **next(calls)}))
    follow(join)
    join.refresh_from_db()
    assert join.state == JoinState.JOINED
    return join


def removed_and_wiped(admin, join: FollowerJoin) -> None:
    removal = NodeRemoval.objects.create(
        learned_at=timezone.now(), source=RemovalSource.LEADER, cluster_id=join.cluster_id, address=join.own_address,
        leader_address=join.leader_address, request_number=7, request_id="rm-7", removed_at=timezone.now())
    removed.cluster_state_wipe(user=admin, confirmation=removal.address)


# --- a discarded join forgets the MEK it brought -----------------------------------------------
@pytest.mark.parametrize("state", [JoinState.OPENED, JoinState.CHECKED])
def test_discard_then_another_clusters_bundle_and_mek_open(admin, clusters, state, data_dir, commits):
    first, second = clusters
    join = open_bundle(admin, first)
    FollowerJoin.objects.filter(pk=join.pk).update(state=state)
    key_id = signed_checkpoint().key_id  # the audit signing key is now sealed under the first MEK
    assert AuditSigningKey.objects.get(key_id=key_id).sealed_private

    follower.join_discard(user=admin)
    assert not keystore.mek_exists() and no_key_files_left(data_dir) == []
    join.refresh_from_db()
    assert join.state == JoinState.FAILED and join.sealed_join_token == "" and join.sealed_node_key == ""
    # Off the forgotten key: back in its 0600 file, as on a node with no MEK yet.
    row = AuditSigningKey.objects.get(key_id=key_id)
    assert row.sealed_private == "" and audit_conf.signing_key_path().stat().st_mode & 0o777 == 0o600
    [forgot] = events(AuditAction.MEK_DISCARDED)
    assert forgot.data["fingerprint"] == keys.mek_short(mek_format.fingerprint(first.mek))
    assert "discarded by follower-admin" in forgot.data["reason"] and forgot.data["audit_keys"]["to_file"] == 1

    second_join = open_bundle(admin, second)
    assert second_join.cluster_id == second.cluster_id and second_join.state == JoinState.OPENED
    assert keystore.mek_matches(second.mek)
    checkpoint = signed_checkpoint()  # seals the same key under the second MEK
    assert checkpoint.key_id == key_id and AuditSigningKey.objects.get(key_id=key_id).sealed_private
    assert mek_format.unseal(second.mek, signing.PURPOSE, AuditSigningKey.objects.get(key_id=key_id).sealed_private)
    assert_trail_verifiable(key_id)


def test_the_same_cluster_after_a_discard_opens_too(admin, clusters, commits):
    first, _ = clusters
    open_bundle(admin, first)
    follower.join_discard(user=admin)
    assert open_bundle(admin, first).state == JoinState.OPENED and keystore.mek_matches(first.mek)


def test_a_bundle_of_another_cluster_replaces_an_unsent_join(admin, clusters, data_dir, commits):
    """Without discarding first: the unsent join is ended, its MEK replaced."""
    first, second = clusters
    old = open_bundle(admin, first)
    key_id = signed_checkpoint().key_id
    new = open_bundle(admin, second)
    old.refresh_from_db()
    assert old.state == JoinState.FAILED and "Replaced by bundle" in old.failure_reason and old.sealed_join_token == ""
    assert new.state == JoinState.OPENED and keystore.mek_matches(second.mek)
    assert no_key_files_left(data_dir) == []
    [replaced] = events(AuditAction.MEK_DISCARDED)
    assert replaced.data["replaced_by"] == keys.mek_short(mek_format.fingerprint(second.mek))
    assert replaced.data["audit_keys"]["resealed"] == 1
    assert_trail_verifiable(key_id)
    assert signed_checkpoint().key_id == key_id


# --- refusals, then another cluster --------------------------------------------------------------
def test_the_leader_refuses_the_request_then_another_cluster(admin, clusters, monkeypatch, commits):
    first, second = clusters
    open_bundle(admin, first)
    FollowerJoin.objects.update(state=JoinState.CHECKED)
    monkeypatch.setattr(follower, "leader_call", lambda *a, **k: (
        409, {"ok": False, "error": {"code": "used", "message": "This joining bundle was already used."}}))
    with pytest.raises(follower.JoinRefused, match="already used"):
        follower.join_request_send(user=admin)
    assert follower.join_current().state == JoinState.CHECKED  # the way on: discard
    follower.join_discard(user=admin)
    assert open_bundle(admin, second).cluster_id == second.cluster_id


@pytest.mark.parametrize("answer", ["denied", "expired", "failed"])
def test_a_request_the_leader_ends_forgets_the_mek(admin, clusters, monkeypatch, answer, data_dir, commits):
    first, second = clusters
    open_bundle(admin, first)
    key_id = signed_checkpoint().key_id
    join = send(admin, monkeypatch)
    with pytest.raises(follower.JoinRefused, match="already under way"):
        # While the leader holds the request, the key is bound: another cluster is refused
        # and the message says how to go on.
        open_bundle(admin, second)
    leader_says(monkeypatch, {"state": answer, "failure_reason": f"the join request was {answer}"})
    follow(join)
    join.refresh_from_db()
    assert join.state == JoinState.FAILED
    assert not keystore.mek_exists() and join.sealed_poll_secret == "" and join.sealed_node_key == ""
    [forgot] = events(AuditAction.MEK_DISCARDED)
    assert "failed" in forgot.data["reason"]
    assert open_bundle(admin, second).state == JoinState.OPENED
    assert signed_checkpoint().key_id == key_id
    assert_trail_verifiable(key_id)


def test_a_join_that_fails_after_the_handover_is_undone_and_forgets_the_mek(admin, clusters, monkeypatch, data_dir,
                                                                             commits):
    first, second = clusters
    open_bundle(admin, first)
    join = send(admin, monkeypatch)
    calls = iter([{"state": "approved", "handover": first.handover(join)},
                  {"state": "failed", "failure_reason": "promotion failed; undone"}])
    monkeypatch.setattr(follower, "POLL_INTERVAL", 0.0)
    monkeypatch.setattr(follower, "leader_call", lambda *a, **k: (200, {"ok": True, **next(calls)}))
    follow(join)
    join.refresh_from_db()
    assert join.state == JoinState.FAILED
    node = Node.objects.get()
    assert node.role == NodeRole.STANDALONE and node.mek_fingerprint == "" and node.finalised_at is None
    assert not Certificate.objects.filter(replaced_at__isnull=True).exists()  # kept only as evidence
    assert not Certificate.objects.exclude(sealed_key="").exists()
    assert not keystore.mek_exists()
    [failed] = events(AuditAction.JOIN_FAILED)
    assert failed.data["certificates_kept_as_evidence"]
    assert open_bundle(admin, second).cluster_id == second.cluster_id


# --- keys a node holds for itself are never forgotten ----------------------------------------------
def test_a_completed_join_never_forgets_its_mek(admin, clusters, monkeypatch, commits):
    first, second = clusters
    joined(admin, first, monkeypatch)
    with pytest.raises(follower.JoinRefused):
        follower.join_discard(user=admin)
    with pytest.raises(follower.JoinRefused):
        open_bundle(admin, second)
    assert keystore.mek_matches(first.mek) and Node.objects.get().mek_fingerprint == mek_format.fingerprint(first.mek)
    assert not events(AuditAction.MEK_DISCARDED)
    with pytest.raises(StepRefused, match="finalised"):
        keys.mek_change_prepare(new_key=None, reason="test")


def test_a_standalone_node_never_forgets_its_mek_on_a_discard(admin, clusters, commits):
    """A finalised standalone node: a stale join row discarded changes nothing of its key."""
    from tests.setup.helpers import through_mek

    first, _ = clusters
    own = through_mek(admin)
    wizard.setup_finalise(user=admin)
    FollowerJoin.objects.create(
        created_by="x", state=JoinState.OPENED, own_address=FOLLOWER, leader_address=first.leader, leader_ports=PORTS,
        leader_version="1.0.0", cluster_id=first.cluster_id, bundle_id="b", bundle_expires=timezone.now(),
        ca_cert_pem="", mek_fingerprint=mek_format.fingerprint(own), sealed_join_token="")
    follower.join_discard(user=admin)
    assert keystore.mek_load() == own and not events(AuditAction.MEK_DISCARDED)
    assert Node.objects.get().mek_fingerprint == mek_format.fingerprint(own)


def test_a_node_in_the_wizard_keeps_its_confirmed_key_when_a_join_is_discarded(admin, clusters, commits):
    """The wizard's key (confirmed, not finalised) is the node's own: a join opened with it
    and discarded leaves it."""
    from tests.setup.helpers import through_mek

    own = through_mek(admin)
    cluster = Cluster("127.0.0.74", mek=own)
    open_bundle(admin, cluster)
    follower.join_discard(user=admin)
    assert keystore.mek_load() == own and Node.objects.get().mek_confirmed_at is not None


# --- after a removal and the wipe ---------------------------------------------------------------------
@pytest.fixture
def wiped(admin, clusters, monkeypatch, commits):
    first, _ = clusters
    join = joined(admin, first, monkeypatch)
    key_id = signed_checkpoint().key_id
    removed_and_wiped(admin, join)
    assert keystore.mek_matches(first.mek)  # kept: a rejoin needs it, the audit key is sealed under it
    assert AuditSigningKey.objects.get(key_id=key_id).sealed_private
    return key_id


def test_after_the_wipe_the_same_cluster_opens_and_a_discard_keeps_its_mek(admin, clusters, wiped):
    first, _ = clusters
    assert open_bundle(admin, first).state == JoinState.OPENED
    follower.join_discard(user=admin)
    assert keystore.mek_matches(first.mek) and not events(AuditAction.MEK_DISCARDED)
    assert_trail_verifiable(wiped)


def test_after_the_wipe_another_cluster_opens_and_the_audit_key_is_resealed(admin, clusters, wiped, data_dir):
    first, second = clusters
    join = open_bundle(admin, second)
    assert join.cluster_id == second.cluster_id and keystore.mek_matches(second.mek)
    assert no_key_files_left(data_dir) == []
    row = AuditSigningKey.objects.get(key_id=wiped)
    assert mek_format.unseal(second.mek, signing.PURPOSE, row.sealed_private)
    # The revoked certificates stay as evidence; their private keys, sealed under the
    # old key, are destroyed with it.
    assert Certificate.objects.exists() and not Certificate.objects.exclude(sealed_key="").exists()
    assert Node.objects.get().mek_fingerprint == ""  # the join holds the new key until it completes
    [replaced] = events(AuditAction.MEK_DISCARDED)
    assert replaced.data["audit_keys"]["resealed"] == 1 and replaced.data["certificate_keys_destroyed"] == 1
    assert signed_checkpoint().key_id == wiped
    assert_trail_verifiable(wiped)


def test_after_the_wipe_the_wizard_neither_shows_nor_offers_the_clusters_key(admin, wiped):
    assert keys.mek_reveal(user=admin) is None
    assert not keys.mek_download(user=admin).ok


def _to_the_mek_step(admin):
    through_licence(admin)
    node = Node.objects.get()
    assert node.mek_fingerprint and node.mek_generated_at is None


def test_after_the_wipe_a_standalone_setup_with_a_new_key(admin, clusters, wiped, data_dir):
    first, _ = clusters
    _to_the_mek_step(admin)
    with pytest.raises(StepRefused, match="discard it first"):
        keys.mek_generate(user=admin)
    assert keys.mek_discard(user=admin).ok
    assert not keystore.mek_exists() and no_key_files_left(data_dir) == []
    keys.mek_generate(user=admin)
    new = keystore.mek_load()
    assert new != first.mek and keys.mek_reveal(user=admin)
    assert keys.mek_confirm(user=admin, typed=mek_format.encode(new)).ok
    wizard.setup_finalise(user=admin)
    node = Node.objects.get()
    assert node.finalised_at is not None and node.role == NodeRole.STANDALONE
    assert signed_checkpoint().key_id == wiped
    assert mek_format.unseal(new, signing.PURPOSE, AuditSigningKey.objects.get(key_id=wiped).sealed_private)
    assert_trail_verifiable(wiped)


def test_after_the_wipe_a_standalone_setup_keeping_the_clusters_key(admin, clusters, wiped):
    first, _ = clusters
    _to_the_mek_step(admin)
    assert not keys.mek_confirm(user=admin, typed=mek_format.encode(mek_format.generate())).ok
    assert keys.mek_confirm(user=admin, typed=mek_format.encode(first.mek)).ok
    wizard.setup_finalise(user=admin)
    assert Node.objects.get().finalised_at is not None and keystore.mek_matches(first.mek)
    assert signed_checkpoint().key_id == wiped
    assert_trail_verifiable(wiped)


# --- what the pages say --------------------------------------------------------------------------------
def test_the_removed_page_says_what_each_next_step_does(admin, clusters, monkeypatch, commits, login_client):
    from django.urls import reverse

    first, _ = clusters
    join = joined(admin, first, monkeypatch)
    NodeRemoval.objects.create(learned_at=timezone.now(), source=RemovalSource.ETCD, cluster_id=join.cluster_id,
                               address=join.own_address, leader_address=join.leader_address)
    page = login_client(admin).get(reverse("cluster:removed"), secure=True).content.decode()
    assert 'id="removed-next"' in page
    for text in ("Rejoin this cluster", "Join another cluster", "re-sealed under the new key",
                 "Set it up as a standalone server"):
        assert text in page


def test_after_the_wipe_the_mek_step_offers_keep_or_new(admin, wiped, login_client):
    from django.urls import reverse

    _to_the_mek_step(admin)
    page = login_client(admin).get(reverse("setup:mek"), secure=True).content.decode()
    assert 'id="mek-kept"' in page and 'class="mek-group"' not in page and 'id="mek-download"' not in page
    assert "Discard the cluster" in page and "Keep this key" in page
