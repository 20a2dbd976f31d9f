"""Reading the cluster: members with their health, bundles, requests and votes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import BooleanField, Case, Exists, OuterRef, Prefetch, QuerySet, Value, When
from django.http import Http404
from django.utils import timezone

from pamportal.accounts.roles import has_capability
from pamportal.nodes.selectors import node_address, node_current

from . import connections
from .etcd import EtcdException
from .models import (
    LIVE_MEMBER_STATES,
    OPEN_REQUEST_STATES,
    Approval,
    ApprovalPolicy,
    ClusterMember,
    Decision,
    JoiningBundle,
    JoinRequest,
    MemberRole,
    MemberState,
    RemovalRequest,
    RequestState,
)
from .quorum import failure_tolerance


def policy_current() -> ApprovalPolicy:
    """The approval policy in force (its defaults while none was saved); never writes."""
    return ApprovalPolicy.objects.filter(pk=ApprovalPolicy.SINGLETON_PK).first() or ApprovalPolicy(
        pk=ApprovalPolicy.SINGLETON_PK)


def may_vote(user) -> bool:
    """Approvers vote; so does the role the policy names, if an administrator chose another."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    return has_capability(user, "joins.vote") or user.role == policy_current().approver_role


def _awaiting(model, user) -> QuerySet:
    voted = Approval.objects.filter(approver=user, **{model.KIND + "_request": OuterRef("pk")})
    rows = model.objects.filter(state=RequestState.PENDING, expires_at__gt=timezone.now(), approver_role=user.role)
    rows = rows.exclude(bundle__created_by=user) if model is JoinRequest else rows.exclude(requested_by=user)
    return rows.exclude(Exists(voted))


def requests_awaiting_vote_count(user) -> int:
    return _awaiting(JoinRequest, user).count() + _awaiting(RemovalRequest, user).count()


def bundle_list() -> QuerySet[JoiningBundle]:
    """Bundles newest first, the file itself left out (only whether it is there)."""
    return (
        JoiningBundle.objects.select_related("created_by", "job")
        .defer("file")
        .annotate(has_file=Case(When(file__isnull=False, then=Value(True)), default=Value(False),
                                output_field=BooleanField()))
    )


def access_bundle_by_id(user, bundle_id) -> JoiningBundle:
    """The bundle, if the user may manage bundles; the same 404 for missing and forbidden."""
    if not has_capability(user, "bundles.manage"):
        raise Http404("no such bundle")
    bundle = bundle_list().filter(bundle_id=bundle_id).first()
    if bundle is None:
        raise Http404("no such bundle")
    return bundle


@dataclass
class RequestView:
    """A join or removal request as the approvals page shows it."""

    kind: str
    request: JoinRequest | RemovalRequest
    title: str
    requester: str
    votes: list
    approvals: int
    expired: bool
    can_vote: bool
    why_not: str = ""

    @property
    def pk(self) -> int:
        return self.request.pk

    @property
    def open(self) -> bool:
        return self.request.state == RequestState.PENDING and not self.expired


def _request_view(kind: str, request, user, now) -> RequestView:
    votes = list(request.votes.all())
    approvals = sum(1 for v in votes if v.decision == Decision.APPROVE)
    requester = request.requester
    expired = request.state == RequestState.PENDING and request.expires_at <= now
    why = ""
    if request.state != RequestState.PENDING or expired:
        why = "votes are closed"
    elif user.role != request.approver_role:
        why = f"only the {request.approver_role} role votes"
    elif requester is not None and requester.pk == user.pk:
        why = "you made this request"
    elif any(v.approver_id == user.pk for v in votes):
        why = "you have voted"
    title = (f"Join of {request.follower_address}" if kind == "join" else f"Removal of {request.address}")
    return RequestView(kind=kind, request=request, title=title,
                       requester=requester.get_username() if requester is not None else "(unknown)",
                       votes=votes, approvals=approvals, expired=expired, can_vote=not why, why_not=why)


def request_views(user, *, limit: int = 50) -> list[RequestView]:
    """Open requests first, then recent ones; votes and users fetched in a fixed number of queries."""
    now = timezone.now()
    votes = Prefetch("votes", queryset=Approval.objects.select_related("approver").order_by("voted_at", "id"))
    joins = JoinRequest.objects.select_related("bundle__created_by", "job").prefetch_related(votes)[:limit]
    removals = RemovalRequest.objects.select_related("requested_by", "job", "member").prefetch_related(votes)[:limit]
    views = [_request_view("join", r, user, now) for r in joins] + [
        _request_view("removal", r, user, now) for r in removals]
    views.sort(key=lambda v: (not v.open, -v.request.requested_at.timestamp()))
    return views


# --- the cluster page -----------------------------------------------------------------------
@dataclass
class MemberView:
    member: ClusterMember
    etcd_id: str = ""
    etcd_state: str = "unknown"  # voting, learner, not started, absent, unknown
    etcd_health: bool | None = None
    etcd_detail: str = ""
    x: int = 0
    y: int = 0

    @property
    def healthy(self) -> bool | None:
        if self.etcd_health is False or self.member.last_heartbeat_ok is False:
            return False
        if self.etcd_health is None and self.member.last_heartbeat_ok is None:
            return None
        return True

    @property
    def health_class(self) -> str:
        return {True: "ok", False: "bad", None: "unknown"}[self.healthy]


@dataclass
class ClusterOverview:
    members: list[MemberView]
    etcd_ok: bool
    etcd_detail: str
    voting: int
    tolerance: int
    tolerance_after_removal: int
    recommended_minimum: int = 3
    diagram_size: int = 360
    links: list[tuple[int, int, int, int]] = field(default_factory=list)


def _layout(views: list[MemberView], size: int) -> list[tuple[int, int, int, int]]:
    centre, radius = size // 2, size // 2 - 60
    count = len(views)
    for i, view in enumerate(views):
        if count == 1:
            view.x, view.y = centre, centre
            continue
        angle = -math.pi / 2 + 2 * math.pi * i / count
        view.x, view.y = int(centre + radius * math.cos(angle)), int(centre + radius * math.sin(angle))
    leader = next((v for v in views if v.member.role == MemberRole.LEADER), None)
    if leader is None:
        return []
    return [(leader.x, leader.y, v.x, v.y) for v in views if v is not leader]


def cluster_overview(*, timeout: float = 2.0) -> ClusterOverview:
    """Every live member with its etcd state and health and the last heartbeat; the
    failure tolerance from etcd's voting members (or the members we know of)."""
    members = list(ClusterMember.objects.filter(state__in=[*LIVE_MEMBER_STATES, MemberState.FAILED])
                   .order_by("-role", "address"))
    if not any(m.role == MemberRole.LEADER for m in members):
        node = node_current()
        members.insert(0, ClusterMember(address=node_address(node), role=MemberRole.LEADER,
                                        state=MemberState.ACTIVE, version=settings.PAM_VERSION))
    views = [MemberView(member=m) for m in members]
    etcd_ok, detail, voting = False, "", None
    try:
        client = connections.etcd_client(timeout=timeout)
        etcd_members = client.member_list()
        etcd_ok, detail = True, f"{len(etcd_members)} etcd member{'s' if len(etcd_members) != 1 else ''}"
        voting = sum(1 for m in etcd_members if m.is_voter)
        for view in views:
            found = connections.find_member(etcd_members, member_id=view.member.etcd_member_id or None,
                                           address=view.member.address)
            if found is None:
                view.etcd_state = "absent"
                continue
            view.etcd_id = found.hex_id
            view.etcd_state = "learner" if found.is_learner else ("voting" if found.started else "not started")
            if found.client_urls:
                view.etcd_health, view.etcd_detail = client.health(found.client_urls[0])
    except (EtcdException, OSError, ValueError) as exc:
        detail = f"etcd cannot be reached: {exc}"
    if voting is None:
        voting = sum(1 for v in views if v.member.state == MemberState.ACTIVE)
    size = 360
    links = _layout(views, size)
    return ClusterOverview(members=views, etcd_ok=etcd_ok, etcd_detail=detail, voting=voting,
                           tolerance=failure_tolerance(voting),
                           tolerance_after_removal=failure_tolerance(max(0, voting - 1)),
                           diagram_size=size, links=links)


def removable_members() -> QuerySet[ClusterMember]:
    return ClusterMember.objects.filter(role=MemberRole.FOLLOWER,
                                        state__in=[MemberState.ACTIVE, MemberState.FAILED, MemberState.JOINING])


def open_removal_member_ids() -> set[int]:
    return set(RemovalRequest.objects.filter(state__in=OPEN_REQUEST_STATES).values_list("member_id", flat=True))


