"""The navigation badge: how many cluster requests wait for this approver's vote."""

from __future__ import annotations

from .selectors import may_vote, requests_awaiting_vote_count


def pending_approvals(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    if not may_vote(user):
        return {}
    return {"cluster_pending_approvals": requests_awaiting_vote_count(user)}
