"""The approval policy: how many approvals a join or a removal needs, from which role,
and how long a request waits for them. Read it with ``selectors.policy_current``."""

from __future__ import annotations

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction
from pamportal.audit.refusals import audited_refusals
from pamportal.audit.services import audit_record

from .models import ApprovalPolicy
from .refusals import ClusterRefused


def policy_ensure() -> ApprovalPolicy:
    """The policy row, made with the defaults the first time a request copies it."""
    policy, _ = ApprovalPolicy.objects.get_or_create(pk=ApprovalPolicy.SINGLETON_PK)
    return policy


def _fields(policy: ApprovalPolicy) -> dict:
    return {"required_approvals": policy.required_approvals, "approver_role": policy.approver_role,
            "request_lifetime_hours": policy.request_lifetime_hours}


@audited_refusals
def policy_update(*, user, required_approvals: int, approver_role: str, request_lifetime_hours: int) -> ApprovalPolicy:
    """Change the approval policy; requests already made keep the one copied onto them."""
    target = "cluster-policy"

    def refused(message: str, reason: str) -> ClusterRefused:
        return ClusterRefused(message, action=AuditAction.CLUSTER_POLICY_CHANGED, target=target, reason=reason)

    if not 1 <= int(required_approvals) <= 10:
        raise refused("Between 1 and 10 approvals.", "approvals out of range")
    if approver_role not in (Role.APPROVER, Role.ADMINISTRATOR):
        raise refused("Approvers are users with the approver or the administrator role.", "role not allowed")
    if not 1 <= int(request_lifetime_hours) <= 24 * 14:
        raise refused("A request lives between 1 hour and 14 days.", "lifetime out of range")
    policy = ApprovalPolicy.objects.select_for_update().get(pk=policy_ensure().pk)
    before = _fields(policy)
    policy.required_approvals = int(required_approvals)
    policy.approver_role = approver_role
    policy.request_lifetime_hours = int(request_lifetime_hours)
    policy.updated_by = user
    policy.save()
    audit_record(action=AuditAction.CLUSTER_POLICY_CHANGED, target=target,
                 details={"before": before, "after": _fields(policy)})
    return policy
