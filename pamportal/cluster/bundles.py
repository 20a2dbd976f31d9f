"""Joining bundles: made for one follower address (within the licence's node cap),
downloaded, revoked, expired. The file itself is written by the "cluster.bundle" job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pamportal.audit.actions import AuditAction
from pamportal.audit.refusals import audited_refusals
from pamportal.audit.services import audit_record
from pamportal.crypto.bundle import address_problem, bundle_create, new_join_token, normalize_address
from pamportal.crypto.ca import cluster_id_of
from pamportal.crypto.secrets import secret_digest
from pamportal.jobs.services import job_create
from pamportal.licensing.selectors import licence_status
from pamportal.nodes import keystore
from pamportal.nodes.selectors import node_address

from . import conf
from .members import ca_row, leader_member_ensure, node_locked, nodes_counted
from .models import LIVE_MEMBER_STATES, OPEN_REQUEST_STATES, BundleState, ClusterMember, JoiningBundle, JoinRequest
from .refusals import ClusterRefused

BUNDLE_KIND = "cluster.bundle"


def _refused(message: str, reason: str, target: str, **details) -> ClusterRefused:
    return ClusterRefused(message, action=AuditAction.CLUSTER_BUNDLE_REFUSED, target=target, reason=reason,
                          details=details)


def _address_clean(address: str) -> str:
    address = normalize_address(address or "")
    problem = address_problem(address)
    if problem:
        raise _refused(f"“{address[:80]}” {problem}: a follower's address is an FQDN or an IP address.",
                       "bad address", f"address:{address[:200]}")
    return address


@audited_refusals
def bundle_generate(*, user, follower_address: str) -> JoiningBundle:
    """Start a "cluster.bundle" job making a joining bundle for one follower address."""
    address = _address_clean(follower_address)
    target = f"address:{address}"
    node = node_locked()
    if node is None or node.finalised_at is None:
        raise _refused("This node's setup is not finalised; finish it before forming a cluster.",
                       "node not finalised", target)
    if ca_row() is None:
        raise _refused("This node has no cluster CA yet.", "no cluster CA", target)
    if address == node_address(node):
        raise _refused(f"{address} is this node, the leader.", "address is the leader", target)
    if ClusterMember.objects.filter(address=address, state__in=LIVE_MEMBER_STATES).exists():
        raise _refused(f"{address} is already in the cluster.", "address already in the cluster", target)
    now = timezone.now()
    if JoiningBundle.objects.filter(follower_address=address, state=BundleState.OUTSTANDING,
                                    expires_at__gt=now).exists():
        raise _refused(f"{address} already has an outstanding bundle; revoke it first to make another.",
                       "outstanding bundle for the address", target)
    if JoinRequest.objects.filter(follower_address=address, state__in=OPEN_REQUEST_STATES).exists():
        raise _refused(f"A join request from {address} is already under way.", "join under way", target)
    status = licence_status(now)
    if not status.ok:
        raise _refused(f"No bundle without a valid licence: {status.message}", "no valid licence", target)
    leader_member_ensure(node)
    counted = nodes_counted(now=now)
    if counted >= status.max_nodes:
        raise _refused(
            f"The licence allows {status.max_nodes} node{'s' if status.max_nodes != 1 else ''} and the cluster "
            f"already counts {counted} (members, outstanding bundles and joins under way). Revoke a bundle, remove "
            f"a node or install a licence for more nodes.",
            "licence node cap reached", target, max_nodes=status.max_nodes, counted=counted,
        )
    bundle = JoiningBundle.objects.create(
        follower_address=address, created_by=user, created_at=now, expires_at=now + conf.bundle_lifetime(),
        state_changed_at=now,
    )
    job = job_create(kind=BUNDLE_KIND, params={"bundle_id": bundle.pk}, created_by=user,
                     title=f"Joining bundle for {address}")
    bundle.job = job
    bundle.save(update_fields=["job"])
    audit_record(
        action=AuditAction.CLUSTER_BUNDLE_CREATED, target=f"bundle:{bundle.bundle_id}",
        details={"follower_address": address, "expires_at": bundle.expires_at.isoformat(), "job": job.pk,
                 "nodes_counted": counted + 1, "max_nodes": status.max_nodes},
    )
    return bundle


@transaction.atomic
def bundle_build(*, bundle_pk: int) -> dict:
    """The "cluster.bundle" step: write the file (once). A new single-use token goes
    into the encrypted file; only its hash stays here."""
    bundle = JoiningBundle.objects.select_for_update().get(pk=bundle_pk)
    if bundle.file is not None or bundle.token_hash:
        return {"bundle_id": str(bundle.bundle_id), "already_built": True}
    if bundle.state != BundleState.OUTSTANDING:
        return {"bundle_id": str(bundle.bundle_id), "skipped": f"the bundle is {bundle.state}"}
    ca = ca_row()
    token = new_join_token()
    data = bundle_create(
        mek=keystore.mek_load(), cluster_id=cluster_id_of(ca.sha256), bundle_id=str(bundle.bundle_id),
        leader_address=node_address(), leader_ports=conf.leader_ports(), ca_cert_pem=ca.cert_pem,
        follower_address=bundle.follower_address, leader_version=settings.PAM_VERSION, join_token=token,
        created=bundle.created_at, expires=bundle.expires_at,
    )
    bundle.token_hash = secret_digest(token)
    bundle.file = data
    bundle.save(update_fields=["token_hash", "file"])
    return {"bundle_id": str(bundle.bundle_id), "bytes": len(data), "expires_at": bundle.expires_at.isoformat()}


def _bundle_locked(bundle_id, action_target: str) -> JoiningBundle:
    bundle = JoiningBundle.objects.select_for_update().filter(bundle_id=bundle_id).first()
    if bundle is None:
        raise _refused("There is no such joining bundle.", "no such bundle", action_target)
    return bundle


@dataclass(frozen=True)
class BundleFile:
    filename: str
    data: bytes


@audited_refusals
def bundle_download(*, user, bundle_id) -> BundleFile:
    """The bundle file (encrypted under the MEK), audited at each download."""
    target = f"bundle:{bundle_id}"
    bundle = _bundle_locked(bundle_id, target)
    now = timezone.now()
    if bundle.state != BundleState.OUTSTANDING:
        raise _refused(f"This bundle is {bundle.get_state_display().lower()}; it cannot be downloaded.",
                       f"bundle {bundle.state}", target)
    if bundle.expires_at <= now:
        raise _refused("This bundle has expired.", "bundle expired", target)
    if bundle.file is None:
        raise _refused("This bundle is still being made; try again in a moment.", "bundle not built yet", target)
    bundle.download_count += 1
    bundle.downloaded_at = now
    bundle.save(update_fields=["download_count", "downloaded_at"])
    audit_record(action=AuditAction.CLUSTER_BUNDLE_DOWNLOADED, target=target,
                 details={"follower_address": bundle.follower_address, "download": bundle.download_count})
    safe = bundle.follower_address.replace(":", "-")
    return BundleFile(filename=f"pamportal-join-{safe}.bundle", data=bytes(bundle.file))


@audited_refusals
def bundle_revoke(*, user, bundle_id) -> JoiningBundle:
    target = f"bundle:{bundle_id}"
    bundle = _bundle_locked(bundle_id, target)
    if bundle.state != BundleState.OUTSTANDING:
        raise _refused(f"This bundle is already {bundle.get_state_display().lower()}.", f"bundle {bundle.state}",
                       target)
    bundle.state = BundleState.REVOKED
    bundle.state_changed_at = timezone.now()
    bundle.file = None
    bundle.save(update_fields=["state", "state_changed_at", "file"])
    audit_record(action=AuditAction.CLUSTER_BUNDLE_REVOKED, target=target,
                 details={"follower_address": bundle.follower_address})
    return bundle


@transaction.atomic
def bundles_expire(*, now: datetime | None = None) -> int:
    """Outstanding bundles past their expiry become expired (and lose their file)."""
    now = now or timezone.now()
    count = 0
    for bundle in JoiningBundle.objects.select_for_update().filter(state=BundleState.OUTSTANDING, expires_at__lte=now):
        bundle.state = BundleState.EXPIRED
        bundle.state_changed_at = now
        bundle.file = None
        bundle.save(update_fields=["state", "state_changed_at", "file"])
        audit_record(action=AuditAction.CLUSTER_BUNDLE_EXPIRED, target=f"bundle:{bundle.bundle_id}",
                     details={"follower_address": bundle.follower_address,
                              "expired_at": bundle.expires_at.isoformat()})
        count += 1
    return count
