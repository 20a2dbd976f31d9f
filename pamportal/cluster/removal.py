"""Asking to remove a follower from the cluster: refused while it would lose etcd's
quorum; once approved (``requests``), the "cluster.remove" job carries it out and the
removed node is told over its delegation API (``removal_notify``, retried until it
answers). What the cluster page offers (``removal_offers``) follows the same guard."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import audited_refusals
from pamportal.audit.services import audit_record
from pamportal.crypto.ca import cluster_id_of
from pamportal.nodes.selectors import node_address

from . import connections, protocol
from .etcd import EtcdException, Member
from .members import ca_row, member_certificate_serial, node_locked
from .models import OPEN_REQUEST_STATES, ClusterMember, MemberRole, MemberState, RemovalRequest, RequestState
from .policy import policy_ensure
from .quorum import failure_tolerance, quorum_ok_after_remove
from .refusals import ClusterRefused, request_target

REMOVE_KIND = "cluster.remove"
# A member is removable from these states; a failed removal puts it back in its own.
REMOVABLE_STATES = (MemberState.ACTIVE, MemberState.FAILED, MemberState.JOINING)


def _refused(message: str, reason: str, target: str, **details) -> ClusterRefused:
    return ClusterRefused(message, action=AuditAction.CLUSTER_REMOVAL_REFUSED, target=target, reason=reason,
                          details=details)


def _quorum_problem(member: ClusterMember) -> str | None:
    """Why removing ``member`` would lose quorum (or cannot be checked), or None."""
    try:
        members = connections.etcd_client().member_list()
    except EtcdException as exc:
        return f"etcd cannot be asked whether the cluster keeps its quorum ({exc})"
    target = connections.find_member(members, member_id=member.etcd_member_id, address=member.address)
    if target is None:
        return None
    if not quorum_ok_after_remove(members, target.id):
        voters = sum(1 for m in members if m.is_voter)
        return (f"removing it would lose quorum: the cluster has {voters} voting member"
                f"{'s' if voters != 1 else ''} and tolerates {failure_tolerance(voters)} failure"
                f"{'s' if failure_tolerance(voters) != 1 else ''}")
    return None


@audited_refusals
def removal_request_create(*, user, member_id: int, reason: str) -> RemovalRequest:
    """Ask to remove a follower; it needs the same approvals as a join."""
    reason = (reason or "").strip()
    member = ClusterMember.objects.select_for_update().filter(pk=member_id).first()
    target = f"member#{member_id}" if member is None else f"member:{member.address}"
    if member is None:
        raise _refused("There is no such member.", "no such member", target)
    node_locked()
    if member.role == MemberRole.LEADER:
        raise _refused("The leader cannot be removed from its own cluster.", "member is the leader", target)
    if member.state not in REMOVABLE_STATES:
        raise _refused(f"{member.address} is {member.get_state_display().lower()}.", f"member {member.state}",
                       target)
    if len(reason) < 10:
        raise _refused("Give a reason of at least 10 characters.", "no reason", target)
    if RemovalRequest.objects.filter(member=member, state__in=OPEN_REQUEST_STATES).exists():
        raise _refused(f"A removal of {member.address} is already under way.", "removal under way", target)
    problem = _quorum_problem(member)
    if problem:
        raise _refused(f"{member.address} cannot be removed: {problem}.", "would lose quorum", target)
    policy = policy_ensure()
    now = timezone.now()
    request = RemovalRequest.objects.create(
        member=member, address=member.address, etcd_member_id=member.etcd_member_id, reason=reason[:500],
        requested_by=user, requested_at=now, expires_at=now + timedelta(hours=policy.request_lifetime_hours),
        required_approvals=policy.required_approvals, approver_role=policy.approver_role,
        request_hash=protocol.removal_request_hash(address=member.address, etcd_member_id=member.etcd_member_id,
                                                   reason=reason[:500]),
    )
    audit_record(action=AuditAction.CLUSTER_REMOVAL_REQUESTED, target=request_target(request),
                 details={"address": member.address, "reason": request.reason,
                          "required_approvals": request.required_approvals, "request_hash": request.request_hash})
    return request


# --- what the cluster page offers ------------------------------------------------------------
@dataclass(frozen=True)
class RemovalOffer:
    """Whether the page offers "Remove…" for a member, and what would remain."""

    allowed: bool
    why_not: str = ""
    tolerance_after: int = 0
    voters_after: int = 0


def removal_offer(member: ClusterMember, etcd_members: list[Member] | None, *, removing: bool) -> RemovalOffer:
    """The guard of ``removal_request_create`` (leader, state, open request, quorum)
    applied to a row of the page; ``etcd_members`` None: etcd could not be asked."""
    if member.pk is None or member.role == MemberRole.LEADER:
        return RemovalOffer(False, "the leader is not removed from its own cluster")
    if removing:
        return RemovalOffer(False, "a removal is under way")
    if member.state not in REMOVABLE_STATES:
        return RemovalOffer(False, f"it is {member.get_state_display().lower()}")
    if etcd_members is None:
        return RemovalOffer(False, "etcd cannot be asked whether the cluster keeps its quorum")
    voters = sum(1 for m in etcd_members if m.is_voter)
    target = connections.find_member(etcd_members, member_id=member.etcd_member_id or None, address=member.address)
    after = voters - (1 if target is not None and target.is_voter else 0)
    if target is not None and not quorum_ok_after_remove(etcd_members, target.id):
        return RemovalOffer(False, f"removing it would lose quorum ({voters} voting member{'s' if voters != 1 else ''}"
                                   f", tolerating {failure_tolerance(voters)})", failure_tolerance(after), after)
    return RemovalOffer(True, "", failure_tolerance(after), after)


# --- telling the removed node ------------------------------------------------------------------
NOTICE_PATH = "removed"
NOTICE_VERSION = 1
# How long the leader keeps trying to tell a removed node that is down.
NOTICE_RETRY_DAYS = 7


def removal_notice(request: RemovalRequest) -> dict:
    """What the leader tells the removed node (``removed.parse_notice`` reads it)."""
    ca = ca_row()
    return {
        "notice": "removed", "version": NOTICE_VERSION,
        "cluster_id": cluster_id_of(ca.sha256) if ca is not None else "",
        "address": request.address,
        "certificate_serial": member_certificate_serial(request.address, request.member.cert_serial),
        "etcd_member_id": request.etcd_member_id or "",
        "request_number": request.pk, "request_id": str(request.public_id),
        "removed_at": (request.finished_at or timezone.now()).isoformat(),
        "reason": request.reason, "leader_address": node_address(),
    }


def removal_notify(*, request_id: int) -> bool:
    """Tell the removed node (POST to its delegation API). True once it answered:
    accepted, or refused for a reason that sending again cannot change (a 4xx); an
    unreachable node is tried again by ``removal_notices_retry``. Never raises."""
    request = RemovalRequest.objects.select_related("member").get(pk=request_id)
    if request.state != RequestState.DONE or request.node_notified_at is not None:
        return request.node_notified_at is not None
    answer = connections.delegation_post(request.address, NOTICE_PATH, removal_notice(request))
    settled = answer.ok or 400 <= answer.status < 500
    with transaction.atomic():
        request = RemovalRequest.objects.select_for_update().get(pk=request_id)
        if request.node_notified_at is not None:
            return True
        request.node_notice_attempts += 1
        request.node_notice_detail = ("accepted" if answer.ok else answer.detail)[:500]
        if settled:
            request.node_notified_at = timezone.now()
        request.save(update_fields=["node_notice_attempts", "node_notice_detail", "node_notified_at"])
        details = {"address": request.address, "attempts": request.node_notice_attempts, "answer": answer.detail}
        if answer.ok:
            audit_record(action=AuditAction.CLUSTER_REMOVAL_NOTICE_SENT, target=request_target(request),
                         details=details)
        elif settled or request.node_notice_attempts == 1:
            # The first failure and a final refusal; the retries in between are counted on the row.
            audit_record(action=AuditAction.CLUSTER_REMOVAL_NOTICE_FAILED, target=request_target(request),
                         outcome=Outcome.FAILED, details={**details, "final": settled})
    return settled


def removal_notices_retry(*, now=None) -> int:
    """Tell removed nodes that were not reached yet (down at the time). Periodic."""
    now = now or timezone.now()
    pending = RemovalRequest.objects.filter(state=RequestState.DONE, node_notified_at__isnull=True,
                                            finished_at__gte=now - timedelta(days=NOTICE_RETRY_DAYS))
    return sum(1 for pk in list(pending.values_list("pk", flat=True)[:20]) if removal_notify(request_id=pk))
