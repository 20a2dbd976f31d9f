"""Reading the cluster: members with their health, bundles, requests and votes."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import BooleanField, Case, Exists, OuterRef, Prefetch, QuerySet, Value, When
from django.http import Http404
from django.utils import timezone

from pamportal.accounts.roles import has_capability
from pamportal.nodes.identity import shared_database_address
from pamportal.nodes.selectors import node_address, node_current

from . import connections
from .database_view import DatabaseMember, DatabaseStatus, patroni_status
from .etcd import EtcdException
from .local_etcd import member_name
from .models import (
    LIVE_MEMBER_STATES,
    OPEN_REQUEST_STATES,
    Approval,
    ApprovalPolicy,
    ClusterMember,
    Decision,
    JoiningBundle,
    JoinRequest,
    LeadershipRequest,
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
    """Join, removal and leadership requests waiting for this user's vote (the badge)."""
    return sum(_awaiting(model, user).count() for model in (JoinRequest, RemovalRequest, LeadershipRequest))


def leadership_requests_open_count() -> int:
    """Changes of leader still open (voted on their own page, ``cluster:leadership``)."""
    return LeadershipRequest.objects.filter(state__in=OPEN_REQUEST_STATES).count()


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
    title = {"join": lambda: f"Join of {request.follower_address}",
             "removal": lambda: f"Removal of {request.address}",
             "leadership": lambda: f"Make {request.address} the cluster leader"}[kind]()
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
    etcd_name: str = ""
    database: DatabaseMember | None = None  # Patroni's view of the member, matched by name
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
    database: DatabaseStatus | None = None
    # PostgreSQL members Patroni lists that match no member above (by name)
    database_unmatched: list[DatabaseMember] = field(default_factory=list)


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


# etcd as the cluster page shows it, kept this long in each process: a page view (and 20
# operators refreshing it) costs no etcd round trips, only the first one in the window.
ETCD_STATUS_SECONDS = 3.0
_etcd_status_lock = threading.Lock()
_etcd_status: dict = {}


@dataclass(frozen=True)
class EtcdStatus:
    ok: bool
    detail: str
    members: tuple = ()
    health: dict = field(default_factory=dict)  # client URL -> (healthy, detail)


def _etcd_status_read(timeout: float) -> EtcdStatus:
    try:
        client = connections.etcd_client(timeout=timeout)
        members = client.member_list()
        health = {m.client_urls[0]: client.health(m.client_urls[0]) for m in members if m.client_urls}
    except (EtcdException, OSError, ValueError) as exc:
        return EtcdStatus(ok=False, detail=f"etcd cannot be reached: {exc}")
    return EtcdStatus(ok=True, detail=f"{len(members)} etcd member{'s' if len(members) != 1 else ''}",
                      members=tuple(members), health=health)


def etcd_status(*, timeout: float = 2.0, max_age: float = ETCD_STATUS_SECONDS) -> EtcdStatus:
    """etcd's member list and each member's health, read at most once per ``max_age``
    seconds in this process (concurrent callers wait for the one read). The client
    factory is the key, so a substituted client never sees another's answer."""
    key = connections.etcd_client
    with _etcd_status_lock:
        cached = _etcd_status.get(key)
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        status = _etcd_status_read(timeout)
        _etcd_status.clear()
        _etcd_status[key] = (time.monotonic(), status)
        return status


def etcd_status_forget() -> None:
    with _etcd_status_lock:
        _etcd_status.clear()


def cluster_overview(*, timeout: float = 2.0) -> ClusterOverview:
    """Every live member with its etcd state and health and the last heartbeat; the
    failure tolerance from etcd's voting members (or the members we know of). etcd's
    part is at most ``ETCD_STATUS_SECONDS`` old (see ``etcd_status``)."""
    members = list(ClusterMember.objects.filter(state__in=[*LIVE_MEMBER_STATES, MemberState.FAILED])
                   .order_by("-role", "address"))
    if not any(m.role == MemberRole.LEADER for m in members):
        node = node_current()
        members.insert(0, ClusterMember(address=node_address(node), role=MemberRole.LEADER,
                                        state=MemberState.ACTIVE, version=settings.PAM_VERSION))
    views = [MemberView(member=m) for m in members]
    status = etcd_status(timeout=timeout)
    voting = None
    if status.ok:
        etcd_members = list(status.members)
        voting = sum(1 for m in etcd_members if m.is_voter)
        for view in views:
            found = connections.find_member(etcd_members, member_id=view.member.etcd_member_id or None,
                                           address=view.member.address)
            if found is None:
                view.etcd_state = "absent"
                continue
            view.etcd_id = found.hex_id
            view.etcd_name = found.name
            view.etcd_state = "learner" if found.is_learner else ("voting" if found.started else "not started")
            if found.client_urls:
                view.etcd_health, view.etcd_detail = status.health[found.client_urls[0]]
    if voting is None:
        voting = sum(1 for v in views if v.member.state == MemberState.ACTIVE)
    database = patroni_status(timeout=timeout)
    unmatched = []
    if database.ok:
        # Patroni's member is named as the node's etcd member (replication.local).
        for view in views:
            view.database = database.member_named(
                view.etcd_name or view.member.etcd_name or member_name(view.member.address))
        matched = {v.database.name for v in views if v.database is not None}
        unmatched = [m for m in database.members if m.name not in matched]
    size = 360
    links = _layout(views, size)
    return ClusterOverview(members=views, etcd_ok=status.ok, etcd_detail=status.detail, voting=voting,
                           tolerance=failure_tolerance(voting),
                           tolerance_after_removal=failure_tolerance(max(0, voting - 1)),
                           diagram_size=size, links=links, database=database, database_unmatched=unmatched)


def removable_members() -> QuerySet[ClusterMember]:
    return ClusterMember.objects.filter(role=MemberRole.FOLLOWER,
                                        state__in=[MemberState.ACTIVE, MemberState.FAILED, MemberState.JOINING])


def open_removal_member_ids() -> set[int]:
    return set(RemovalRequest.objects.filter(state__in=OPEN_REQUEST_STATES).values_list("member_id", flat=True))




# --- what an approver compares out of band ----------------------------------------------------
@dataclass(frozen=True)
class JoinRequestFacts:
    """A join request's facts as the approver's card lists them."""

    follower_address: str
    source_address: str
    bundle_id: str
    key_fingerprint: str
    preflight: list[str]
    asked_by: str


_PREFLIGHT_ORDER = ("failed", "errors", "warnings", "passed")


def preflight_summary_lines(summary) -> list[str]:
    """The follower's preflight summary (JSON it sent) as readable lines, failures first:
    "Failed (1): clock.leader-offset", "Passed: 17". Never a Python repr."""
    if not isinstance(summary, dict):
        return []

    def text(value) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(text(v) for v in value) or "none"
        if isinstance(value, dict):
            return "; ".join(f"{k} {text(v)}" for k, v in value.items()) or "none"
        return str(value)

    keys = sorted(summary, key=lambda k: (_PREFLIGHT_ORDER.index(k) if k in _PREFLIGHT_ORDER else 99, str(k)))
    lines = []
    for key in keys:
        value = summary[key]
        label = str(key).replace("_", " ").replace("-", " ").capitalize()
        count = f" ({len(value)})" if isinstance(value, (list, tuple)) and value else ""
        lines.append(f"{label}{count}: {text(value)}")
    return lines


def join_request_facts(request: JoinRequest) -> JoinRequestFacts:
    """Needs ``bundle__created_by`` loaded (``request_views`` does): no query."""
    # Local import: this part was appended below the module's import block.
    from pamportal.crypto.ca import csr_key_fingerprint

    requester = request.requester
    return JoinRequestFacts(
        follower_address=request.follower_address,
        source_address=request.source_address or "not recorded",
        bundle_id=str(request.bundle.bundle_id),
        key_fingerprint=csr_key_fingerprint(request.csr_pem) or "the CSR does not parse",
        preflight=preflight_summary_lines(request.preflight_summary),
        asked_by=requester.get_username() if requester is not None else "(unknown)",
    )


# --- what kind of node this is ------------------------------------------------------------------
@dataclass(frozen=True)
class NodeStanding:
    """This node's place in a cluster, in the operator's words. Until the cluster is
    replicated, a follower's own database knows nothing of the cluster: it is managed
    on the leader. Once it is, any member's console manages it."""

    role: str  # a NodeRole value
    leader_address: str = ""
    # A follower on the cluster's replicated database: it holds the cluster's data, and
    # its console manages the cluster as the leader's does (the cluster's jobs still run
    # on the leader: ``jobs.placement``).
    shared: bool = False

    @property
    def is_follower(self) -> bool:
        return self.role == "follower"  # NodeRole.FOLLOWER

    @property
    def manages_cluster(self) -> bool:
        """Whether bundles, requests, votes, removals and the policy are on this console."""
        return not self.is_follower or self.shared

    @property
    def database(self) -> DatabaseStatus:
        """Who leads the cluster's database, as Patroni says (cached: ``patroni_status``);
        read only where a page asks."""
        return patroni_status()


def node_standing(*, role: str | None = None) -> NodeStanding:
    """A follower once its join reached the handover (``JoinState.JOINING``/``JOINED``,
    or the node's role says so); else the node's own role. ``role``: the node's role
    when the caller has read it already (one query less)."""
    # Local imports: this part was appended below the module's import block.
    from pamportal.nodes.models import NodeRole

    from .follower_models import FollowerJoin, JoinState

    role = role if role is not None else node_current().role
    # On the cluster's shared database this node's join (if it ever joined) is in its
    # database from before: its row's role and the recorded leader say it all.
    shared = bool(shared_database_address())
    join = None if shared else (
        FollowerJoin.objects.filter(state__in=(JoinState.JOINING, JoinState.JOINED))
        .order_by("-pk").only("leader_address").first())
    if join is not None:
        return NodeStanding(role=NodeRole.FOLLOWER, leader_address=join.leader_address)
    if role == NodeRole.FOLLOWER:
        # A member of a replicated cluster: its join is in its database from before
        # the join; the cluster's database says who leads.
        leader = (ClusterMember.objects.filter(role=MemberRole.LEADER, state__in=LIVE_MEMBER_STATES)
                  .values_list("address", flat=True).first())
        return NodeStanding(role=NodeRole.FOLLOWER, leader_address=leader or "", shared=shared)
    return NodeStanding(role=role)


def bundles_being_made(bundles) -> bool:
    """Whether a bundle in ``bundles`` (from ``bundle_list``) still waits for its job:
    the list is worth asking for again."""
    return any(b.state == "outstanding" and not b.has_file and (b.job is None or not b.job.is_terminal)
               for b in bundles)
