"""Asking to remove a follower from the cluster: refused while it would lose etcd's
quorum; once approved (``requests``), the "cluster.remove" job carries it out."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from pamportal.audit.actions import AuditAction
from pamportal.audit.refusals import audited_refusals
from pamportal.audit.services import audit_record

from . import connections, protocol
from .etcd import EtcdException
from .members import node_locked
from .models import OPEN_REQUEST_STATES, ClusterMember, MemberRole, MemberState, RemovalRequest
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
