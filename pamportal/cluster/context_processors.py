"""The navigation badge: how many cluster requests wait for this approver's vote."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save

from pamportal.accounts.roles import has_capability
from pamportal.core.memo import Memo

from .models import ApprovalPolicy
from .selectors import policy_current, requests_awaiting_vote_count

# The role that votes, read at most once a second per process for the badge on every
# page (``selectors.may_vote`` decides who may vote: it reads the policy every time).
_approver_role = Memo(lambda: policy_current().approver_role, seconds=1.0)
post_save.connect(_approver_role.forget, sender=ApprovalPolicy, weak=False)
post_delete.connect(_approver_role.forget, sender=ApprovalPolicy, weak=False)


def pending_approvals(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_active:
        return {}
    if not (has_capability(user, "joins.vote") or user.role == _approver_role.get()):
        return {}
    return {"cluster_pending_approvals": requests_awaiting_vote_count(user)}
