"""The cluster's members as the leader keeps them: its own row, the licence count,
revoked certificates and the heartbeats of the followers.

``node_locked`` is the lock every change to membership or bundles takes first.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.utils import timezone

from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
from pamportal.nodes.identity import node_filter
from pamportal.nodes.models import Certificate, CertificateKind, Node, NodeRole
from pamportal.nodes.selectors import node_address

from . import connections
from .models import (
    LIVE_MEMBER_STATES,
    OPEN_REQUEST_STATES,
    BundleState,
    ClusterMember,
    JoiningBundle,
    JoinRequest,
    MemberRole,
    MemberState,
    RevokedCertificate,
)


def node_locked():
    """This node's row, locked: every change to membership or bundles takes it first,
    so the licence cap and address checks cannot race."""
    return Node.objects.select_for_update().filter(**node_filter()).first()


def follower_node_record(*, address: str, finalised_by: str) -> Node:
    """Inside the caller's transaction, when a joining follower's database replica is
    ready: its row in the cluster's database, which it reads as its own once it
    switches to that database (``nodes.identity``: its ``database.json`` names its
    address). Its setup is the cluster's: finalised, the cluster's MEK and licence, and
    the cluster's time sources (the leader's NTP servers, which the follower's checks
    against the leader compared it with)."""
    leader = Node.objects.filter(**node_filter()).first()
    now = timezone.now()
    node, _ = Node.objects.select_for_update().update_or_create(address=address, defaults={
        "role": NodeRole.FOLLOWER,
        "ntp_servers": list(leader.ntp_servers) if leader is not None else [],
        "preflight_passed_at": now,
        "licence_done_at": leader.licence_done_at if leader is not None else None,
        "mek_fingerprint": leader.mek_fingerprint if leader is not None else "",
        "mek_confirmed_at": now,
        "finalised_at": now,
        "finalised_by": finalised_by[:150],
    })
    return node


def follower_node_forget(address: str) -> int:
    """Inside the caller's transaction, when a join is undone: the follower's row made
    for it in the cluster's database (if any) goes; the leader's own row never does."""
    return Node.objects.filter(address=address, role=NodeRole.FOLLOWER).exclude(**node_filter()).delete()[0]


def ca_row():
    """The cluster CA's certificate row in force, or None."""
    return Certificate.objects.filter(kind=CertificateKind.CLUSTER_CA, replaced_at__isnull=True).first()


def leader_member_ensure(node) -> ClusterMember:
    """The leader's own member row (made the first time the cluster is touched)."""
    address = node_address(node)
    member = ClusterMember.objects.filter(role=MemberRole.LEADER).first()
    if member is None:
        member = ClusterMember.objects.create(
            address=address, role=MemberRole.LEADER, state=MemberState.ACTIVE, version=settings.PAM_VERSION,
            joined_at=node.finalised_at or timezone.now(), etcd_name=address,
            cert_serial=member_certificate_serial(address),
        )
    return member


def member_certificate_serial(address: str, recorded: str = "") -> str:
    """A member's certificate serial: the one recorded at its join, or for the first
    leader (whose certificate was issued at finalise, before it was a member) its
    node certificate in force. With leadership movable, the first leader can be a
    follower that is removed: its certificate must be named and revoked like any."""
    if recorded:
        return recorded
    for row in Certificate.objects.filter(kind=CertificateKind.NODE_TLS, replaced_at__isnull=True):
        if address in (row.names or []):
            return row.serial
    return ""


def nodes_counted(*, now: datetime | None = None) -> int:
    """What the licence cap counts: live members (the leader included), outstanding
    bundles, and join requests not yet settled."""
    now = now or timezone.now()
    members = ClusterMember.objects.filter(state__in=LIVE_MEMBER_STATES)
    count = members.count()
    if not members.filter(role=MemberRole.LEADER).exists():
        count += 1
    count += JoiningBundle.objects.filter(state=BundleState.OUTSTANDING, expires_at__gt=now).count()
    member_addresses = members.values_list("address", flat=True)
    count += (
        JoinRequest.objects.filter(state__in=OPEN_REQUEST_STATES)
        .exclude(follower_address__in=member_addresses).count()
    )
    return count


def certificate_revoke(*, serial: str, address: str, reason: str) -> bool:
    """Inside the caller's transaction: record a revoked serial (once). True if new."""
    if not serial:
        return False
    _row, created = RevokedCertificate.objects.get_or_create(
        serial=serial, defaults={"address": address, "reason": reason[:500], "revoked_at": timezone.now()},
    )
    if created:
        audit_record(action=AuditAction.CLUSTER_CERT_REVOKED, target=f"certificate-serial:{serial}",
                     details={"address": address, "reason": reason[:500]})
    return created


def members_heartbeat() -> int:
    """Ask every live follower's delegation API for a heartbeat; store the answers."""
    count = 0
    for member in ClusterMember.objects.filter(state__in=LIVE_MEMBER_STATES).exclude(role=MemberRole.LEADER):
        result = connections.delegation_heartbeat(member)
        ClusterMember.objects.filter(pk=member.pk).update(
            last_heartbeat_at=timezone.now(), last_heartbeat_ok=result.ok, last_heartbeat_detail=result.detail[:500])
        count += 1
    return count
