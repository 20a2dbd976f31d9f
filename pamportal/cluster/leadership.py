""""Set cluster leader": the PAM leader is the Patroni primary, and it moves only with
the approvals of the policy. An operator names a member whose PostgreSQL is a healthy
replica (``leadership_request_create``); approvers vote (``requests.leadership_request_vote``,
a fresh TOTP code each); the "cluster.leadership" job then asks Patroni for a
**switchover** from the current primary, or a **failover** when the primary's Patroni
cannot be reached (``leadership_move``), waits (bounded) until the candidate leads and
the console's database takes writes, and records how it ended and how long it took.

Automatic failover (Patroni's own election after ``FailoverTiming.ttl`` seconds without
a leader) is on by default; an administrator can make the cluster manual-only
(``failover_mode_set``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from pamportal.accounts.roles import has_capability
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import audited_refusals
from pamportal.audit.services import audit_record
from pamportal.core import config as env_config
from pamportal.replication.config import FailoverTiming
from pamportal.replication.rest import ClusterView, PatroniAPIError, PatroniClient, PatroniRefused, PatroniUnavailable

from .database_view import DatabaseStatus, patroni_status_forget
from .local_etcd import member_name
from .models import OPEN_REQUEST_STATES, ClusterMember, LeadershipRequest, MemberState, RequestState
from .policy import policy_ensure
from .refusals import ClusterRefused, request_target

# Who may ask for a new leader: those who may change the cluster's membership
# (operators and administrators). Who may switch automatic failover off: those who set
# the approval policy (administrators).
REQUEST_CAPABILITY = "cluster.remove"
FAILOVER_MODE_CAPABILITY = "cluster.policy"

# Patroni's roles of a member that can take the lead without losing anything acknowledged
# (with synchronous_mode Patroni itself accepts only the sync standby).
_REPLICA_ROLES = ("sync_standby", "quorum_standby", "replica")
_HEALTHY_STATES = ("streaming", "running")


def wait_seconds() -> float:
    """How long the job waits for the candidate to lead and the console to write."""
    return env_config.env("PAM_LEADERSHIP_WAIT_SECONDS", 60.0, float)


def automatic_failover_ttl() -> int:
    """Seconds without a leader before Patroni elects another (``replication.config``)."""
    return FailoverTiming().ttl


def leadership_request_hash(*, address: str, candidate: str, reason: str) -> str:
    """What the approvers vote on: the operation, bound to its member and reason."""
    canonical = json.dumps({"operation": "cluster.leadership", "version": 1, "address": address,
                            "candidate": candidate, "reason": reason}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- Patroni ------------------------------------------------------------------------------------
def patroni_client(api_url: str | None = None, *, timeout: float = 5.0) -> PatroniClient:
    """This node's member's REST API (``api_url`` None) or another member's, called with
    the node's cluster-CA client certificate. Tests substitute it."""
    from pamportal.replication import local

    if api_url is None:
        return local.node_member().api(timeout=timeout)
    tls = local.node_tls_files()
    return PatroniClient(api_base(api_url), ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file,
                         timeout=timeout)


def api_base(api_url: str) -> str:
    """A member's REST API as /cluster names it (``https://host:8008/patroni``) without
    the path: Patroni routes a request by its first path segment."""
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else api_url


def _cluster_view(timeout: float = 3.0) -> ClusterView:
    return patroni_client(timeout=timeout).cluster()


def patroni_name_of(member: ClusterMember, names) -> str | None:
    """The member's name in Patroni: named as its etcd member (``replication.local``)."""
    names = set(names)
    for name in (member_name(member.address), member.etcd_name, member.address):
        if name and name in names:
            return name
    return None


def _database_replicated() -> bool:
    from pamportal.replication.database import DatabaseFileError, read_database_file

    try:
        return read_database_file(settings.PAM_DATA_DIR) is not None
    except DatabaseFileError:
        return True  # a broken file is reported by Patroni's status, not taken for "not replicated"


# --- asking -------------------------------------------------------------------------------------
def _refused(message: str, reason: str, target: str, **details) -> ClusterRefused:
    return ClusterRefused(message, action=AuditAction.CLUSTER_LEADERSHIP_REFUSED, target=target, reason=reason,
                          details=details)


@audited_refusals
def leadership_request_create(*, user, member_id: int, reason: str) -> LeadershipRequest:
    """Ask to make ``member_id`` the cluster leader. Refused with the reason: not an
    operator or administrator, no such member, not active, no reason, a change of
    leader already under way, the cluster's database not replicated or Patroni not
    reached, not a PostgreSQL member, already the leader, not a healthy replica, or not
    the synchronous standby (the only member Patroni promotes without losing anything)."""
    reason = (reason or "").strip()
    member = ClusterMember.objects.select_for_update().filter(pk=member_id).first()
    target = f"member#{member_id}" if member is None else f"member:{member.address}"
    if not has_capability(user, REQUEST_CAPABILITY):
        raise _refused("Only operators and administrators ask for a new cluster leader.", "not allowed", target,
                       role=getattr(user, "role", ""))
    if member is None:
        raise _refused("There is no such member.", "no such member", target)
    if member.state != MemberState.ACTIVE:
        raise _refused(f"{member.address} is {member.get_state_display().lower()}; only an active member can lead.",
                       f"member {member.state}", target)
    if len(reason) < 10:
        raise _refused("Give a reason of at least 10 characters.", "no reason", target)
    if LeadershipRequest.objects.filter(state__in=OPEN_REQUEST_STATES).exists():
        raise _refused("A change of cluster leader is already under way; wait for it to end.",
                       "leadership change under way", target)
    if not _database_replicated():
        raise _refused("This node's database is not replicated under Patroni, so there is no leadership to move.",
                       "database not replicated", target)
    try:
        view = _cluster_view()
    except (PatroniAPIError, LookupError, OSError, ValueError) as exc:
        raise _refused(f"Patroni cannot be asked who leads ({exc}); try again once this node's member answers.",
                       "patroni not reached", target) from None
    candidate = view.member(patroni_name_of(member, (m.name for m in view.members)) or "")
    if candidate is None:
        raise _refused(f"{member.address} is not a PostgreSQL member of the cluster (Patroni does not list it).",
                       "not a database member", target)
    if candidate.is_leader:
        raise _refused(f"{member.address} already leads the cluster.", "already the leader", target)
    if candidate.role not in _REPLICA_ROLES or candidate.state not in _HEALTHY_STATES:
        state = candidate.state or "in no known state"
        raise _refused(f"{member.address}'s database is {candidate.role or 'of no role'}, {state}: only a streaming "
                       f"replica can take the lead.", "not a healthy replica", target, role=candidate.role,
                       state=candidate.state)
    sync = view.sync_standbys
    if sync and candidate not in sync:
        raise _refused(f"Only the synchronous standby ({', '.join(m.name for m in sync)}) can take the lead without "
                       f"losing acknowledged writes; {member.address} is not it.", "not the sync standby", target)
    policy = policy_ensure()
    now = timezone.now()
    leader = view.leader
    request = LeadershipRequest.objects.create(
        member=member, address=member.address, candidate=candidate.name, reason=reason[:500], requested_by=user,
        leader_seen=leader.name if leader is not None else "", lag_seen=candidate.lag,
        requested_at=now, expires_at=now + timedelta(hours=policy.request_lifetime_hours),
        required_approvals=policy.required_approvals, approver_role=policy.approver_role,
        request_hash=leadership_request_hash(address=member.address, candidate=candidate.name, reason=reason[:500]),
    )
    audit_record(action=AuditAction.CLUSTER_LEADERSHIP_REQUESTED, target=request_target(request),
                 details={"address": member.address, "candidate": candidate.name, "reason": request.reason,
                          "leader": request.leader_seen, "lag_bytes": candidate.lag,
                          "required_approvals": request.required_approvals, "request_hash": request.request_hash})
    return request


# --- what the pages show -----------------------------------------------------------------------
@dataclass(frozen=True)
class LeadershipOffer:
    """Whether a page offers "Set cluster leader…" for a member, and what a failover
    could lose (the lag Patroni last reported for it)."""

    allowed: bool
    why_not: str = ""
    candidate: str = ""
    lag: int | None = None

    @property
    def lag_label(self) -> str:
        if self.lag is None:
            return "unknown"
        return f"{self.lag} byte{'s' if self.lag != 1 else ''}"


def leadership_offer(member: ClusterMember, database: DatabaseStatus | None, *, under_way: bool) -> LeadershipOffer:
    """The guard of ``leadership_request_create`` applied to a row of a page."""
    if member.pk is None or member.state != MemberState.ACTIVE:
        return LeadershipOffer(False, "only an active member can lead")
    if database is None or not database.replicated:
        return LeadershipOffer(False, "the cluster's database is not replicated")
    if not database.ok:
        return LeadershipOffer(False, "Patroni cannot be reached")
    name = patroni_name_of(member, (m.name for m in database.members))
    db = database.member_named(name or "")
    if db is None:
        return LeadershipOffer(False, "not a PostgreSQL member")
    if db.is_leader:
        return LeadershipOffer(False, "it leads", db.name)
    if under_way:
        return LeadershipOffer(False, "a change of leader is under way", db.name, db.lag)
    if db.role not in _REPLICA_ROLES or db.state not in _HEALTHY_STATES:
        return LeadershipOffer(False, f"its database is {db.role_label}, {db.state or 'state unknown'}", db.name,
                               db.lag)
    sync = [m for m in database.members if m.role in ("sync_standby", "quorum_standby")]
    if sync and db not in sync:
        return LeadershipOffer(False, "not the synchronous standby", db.name, db.lag)
    return LeadershipOffer(True, "", db.name, db.lag)


def leadership_under_way() -> bool:
    return LeadershipRequest.objects.filter(state__in=OPEN_REQUEST_STATES).exists()


@dataclass(frozen=True)
class FailoverMode:
    automatic: bool | None  # None: not known (Patroni not reached, or not replicated)
    ttl: int
    detail: str = ""
    replicated: bool = True


def failover_mode(database: DatabaseStatus) -> FailoverMode:
    """Whether Patroni elects a new leader by itself (not paused), as the pages show it."""
    ttl = automatic_failover_ttl()
    if not database.replicated:
        return FailoverMode(None, ttl, "the cluster's database is not replicated", replicated=False)
    if not database.ok:
        return FailoverMode(None, ttl, "Patroni cannot be reached")
    return FailoverMode(not database.paused, ttl)


# --- automatic failover on or off ---------------------------------------------------------------
# Manual-only is Patroni's maintenance mode, ``PATCH /config {"pause": true}``, stored in
# the DCS and so shared by every member. Patroni 4.1.5 offers nothing narrower:
# ``failsafe_mode`` is about etcd being unreachable (the primary keeps running while it
# can see every member), not about who may promote; tagging every member ``nofailover``
# would also forbid the approved switchover, since Patroni refuses such a candidate. While
# paused Patroni elects nobody when the leader dies, and does not restart a PostgreSQL that
# stopped either (that is what "manual" means there); it still carries out a switchover or
# failover to a named candidate, which is all "Set cluster leader" asks of it.
def _patroni_config_patch(client: PatroniClient, body: dict) -> None:
    status, raw = client._call("PATCH", "/config", body)  # rest.py has no helper for it
    if status >= 300:
        raise PatroniRefused(client.api_url + "/config", status, raw.decode("utf-8", "replace"))


def _mode_refused(message: str, reason: str, **details) -> ClusterRefused:
    return ClusterRefused(message, action=AuditAction.CLUSTER_FAILOVER_MODE_REFUSED, target="cluster:failover",
                          reason=reason, details=details)


@audited_refusals
def failover_mode_set(*, user, automatic: bool) -> bool:
    """Switch automatic failover on or off for the whole cluster (administrators). The
    event is written first, in this transaction, so that a Patroni that refuses leaves
    no event of a change that did not happen, only the refusal."""
    if not has_capability(user, FAILOVER_MODE_CAPABILITY):
        raise _mode_refused("Only administrators switch automatic failover on or off.", "not allowed",
                            role=getattr(user, "role", ""))
    if not _database_replicated():
        raise _mode_refused("This node's database is not replicated under Patroni: there is no failover to set.",
                            "database not replicated")
    try:
        client = patroni_client(timeout=5.0)
        view = client.cluster()
    except (PatroniAPIError, LookupError, OSError, ValueError) as exc:
        raise _mode_refused(f"Patroni cannot be reached ({exc}).", "patroni not reached") from None
    if view.paused != automatic:
        raise _mode_refused(f"Automatic failover is already {'on' if automatic else 'off'}.", "no change")
    audit_record(action=AuditAction.CLUSTER_FAILOVER_MODE_CHANGED, target="cluster:failover",
                 details={"automatic": automatic, "ttl_seconds": automatic_failover_ttl(),
                          "patroni": {"pause": not automatic}})
    try:
        _patroni_config_patch(client, {"pause": None if automatic else True})
    except PatroniAPIError as exc:
        raise _mode_refused(f"Patroni did not change its mode: {exc.reason}.", "patroni refused") from None
    transaction.on_commit(patroni_status_forget)
    return automatic


# --- carrying it out (the "cluster.leadership" job) -------------------------------------------
class LeadershipFailure(RuntimeError):
    """The move cannot go on; the message is the reason the request fails with."""


def console_writable() -> bool:
    """Whether this process's database connection takes writes now. On PostgreSQL a fresh
    connection (libpq multi-host, ``target_session_attrs=read-write``) finds the primary."""
    if connection.vendor != "postgresql":
        return True
    if not connection.in_atomic_block:
        connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return not cursor.fetchone()[0]


def _leads(client: PatroniClient, candidate: str) -> bool:
    view = client.cluster()
    lead = view.leader
    return lead is not None and lead.name == candidate and lead.state == "running"


def _wait(what: str, predicate, deadline: float, interval: float = 0.25) -> None:
    """Call ``predicate`` until true or ``deadline`` (bounded also by a count)."""
    last = ""
    for _ in range(int(max(0.0, deadline - time.monotonic()) / interval) + 2):
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 — "not yet" while the lead moves
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    raise LeadershipFailure(f"{what} within {wait_seconds():g} s" + (f" (last: {last[:300]})" if last else ""))


def _reachable(api_url: str) -> bool:
    try:
        patroni_client(api_url, timeout=3.0).patroni()
        return True
    except PatroniAPIError:
        return False


@dataclass(frozen=True)
class Moved:
    method: str  # switchover, failover, none
    previous_leader: str
    answer: str
    seconds: float
    old_leader_follows: bool | None


def _move(request: LeadershipRequest, log) -> Moved:
    try:
        view = _cluster_view()
    except (PatroniAPIError, LookupError, OSError, ValueError) as exc:
        raise LeadershipFailure(f"Patroni cannot be asked who leads: {exc}") from None
    candidate = view.member(request.candidate)
    if candidate is None:
        raise LeadershipFailure(f"{request.candidate} is no longer a PostgreSQL member of the cluster")
    leader = view.leader
    if leader is not None and leader.name == candidate.name:
        log(f"{candidate.name} leads already; nothing to move")
        return Moved("none", leader.name, "already the leader", 0.0, None)
    candidate_api = patroni_client(candidate.api_url, timeout=5.0)
    switchover = leader is not None and bool(leader.api_url) and _reachable(leader.api_url)
    method = "switchover" if switchover else "failover"
    log(f"{method} from {leader.name if leader else '(no leader)'} to {candidate.name}"
        + ("" if switchover else ": the leader's Patroni cannot be reached"))
    answer = ""
    deadline = time.monotonic() + wait_seconds()
    started = time.monotonic()
    # The console's own connection goes to the primary that is about to step down.
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        connection.close()
    try:
        if switchover:
            answer = patroni_client(leader.api_url, timeout=5.0).switchover(leader=leader.name,
                                                                            candidate=candidate.name)
        else:
            answer = candidate_api.failover(candidate=candidate.name)
    except PatroniRefused as exc:
        raise LeadershipFailure(f"Patroni refused the {method}: {exc.reason}") from None
    except PatroniUnavailable as exc:
        # The answer may be lost while Patroni carries it out: what counts is who leads.
        answer = f"no answer ({exc.reason})"
    except PatroniAPIError as exc:
        raise LeadershipFailure(f"the {method} could not be asked for: {exc}") from None
    _wait(f"{candidate.name} did not lead", lambda: _leads(candidate_api, candidate.name), deadline)
    _wait("the console's database did not take writes", console_writable, deadline)
    seconds = time.monotonic() - started
    follows = None
    if leader is not None and switchover:
        # The old leader rejoins as a replica (pg_rewind if need be); looked at, not waited
        # out. After a failover it is down, and rejoins whenever it comes back.
        def streaming() -> bool:
            m = candidate_api.cluster().member(leader.name)
            return m is not None and m.state == "streaming"

        try:
            _wait(f"{leader.name} did not follow", streaming, min(deadline, time.monotonic() + 20.0))
            follows = True
        except LeadershipFailure:
            follows = False
    return Moved(method, leader.name if leader else "", answer, seconds, follows)


def _fail(request_id: int, reason: str, *, method: str = "", seconds: float | None = None) -> None:
    with transaction.atomic():
        request = LeadershipRequest.objects.select_for_update().get(pk=request_id)
        if request.state not in (RequestState.APPROVED, RequestState.RUNNING):
            return
        request.state = RequestState.FAILED
        request.failure_reason = reason[:2000]
        request.finished_at = timezone.now()
        request.method = method or request.method
        request.seconds = seconds
        request.save(update_fields=["state", "failure_reason", "finished_at", "method", "seconds"])
        audit_record(action=AuditAction.CLUSTER_LEADERSHIP_FAILED, target=request_target(request),
                     outcome=Outcome.FAILED,
                     details={"address": request.address, "candidate": request.candidate, "reason": reason[:2000],
                              "method": request.method, "seconds": seconds})


def leadership_reconcile() -> int:
    """Fail, with the reason, the approved or running requests whose job ended without
    success in a way the job could not record (its worker killed on its last attempt,
    the job cancelled): else the request would stay "running" and block every other
    change of leader. The leader's housekeeping; returns how many were failed."""
    from pamportal.jobs.choices import Status

    stuck = (LeadershipRequest.objects.filter(state__in=[RequestState.APPROVED, RequestState.RUNNING],
                                              job__status__in=[Status.FAILED, Status.CANCELLED, Status.SKIPPED])
             .select_related("job"))
    count = 0
    for request in list(stuck[:50]):
        error = request.job.steps.exclude(error="").order_by("-index").values_list("error", flat=True).first()
        _fail(request.pk, f"its job {request.job.status}" + (f": {error}" if error else ""))
        count += 1
    return count


def leadership_move(*, request_id: int, log=lambda text, level="info": None) -> dict:
    """Carry out an approved request, once: a request done already is not moved again, a
    request whose operation changed after the votes fails. Raises LeadershipFailure
    (the request failed with the reason, audited) when the lead did not move."""
    from .requests import request_changed  # requests imports this module for its hash

    with transaction.atomic():
        request = LeadershipRequest.objects.select_for_update().get(pk=request_id)
        if request.state == RequestState.DONE:
            return {"again": True}
        if request.state not in (RequestState.APPROVED, RequestState.RUNNING):
            raise LeadershipFailure(f"the request is {request.get_state_display().lower()}")
        changed = request_changed(request)
        if not changed:
            request.state = RequestState.RUNNING
            request.save(update_fields=["state"])
    if changed:
        _fail(request_id, "the request changed after the votes were cast")
        raise LeadershipFailure("the request changed after the votes were cast")
    try:
        moved = _move(request, log)
    except LeadershipFailure as exc:
        _fail(request_id, str(exc), method=request.method)
        raise
    with transaction.atomic():
        request = LeadershipRequest.objects.select_for_update().get(pk=request_id)
        now = timezone.now()
        request.state = RequestState.DONE
        request.finished_at = now
        request.method = moved.method
        request.previous_leader = moved.previous_leader
        request.seconds = round(moved.seconds, 3)
        request.outcome_detail = moved.answer[:1000]
        request.save(update_fields=["state", "finished_at", "method", "previous_leader", "seconds", "outcome_detail"])
        audit_record(action=AuditAction.CLUSTER_LEADERSHIP_MOVED, target=request_target(request),
                     details={"address": request.address, "candidate": request.candidate,
                              "previous_leader": moved.previous_leader, "method": moved.method,
                              "seconds": request.seconds, "lag_seen_bytes": request.lag_seen,
                              "old_leader_follows": moved.old_leader_follows, "patroni": moved.answer[:500]})
    patroni_status_forget()
    # The console's records of who leads (members, nodes) follow Patroni's at once rather
    # than at the next periodic look (``leader_follow``, which every node's worker runs).
    try:
        from .leader_follow import leader_follow

        leader_follow(how=f"approved change of leader ({moved.method})")
    except Exception as exc:  # noqa: BLE001 — the move is done and recorded; the periodic follow catches up
        log(f"the console's record of the leader is not updated yet: {exc}", "warning")
    log(f"{request.candidate} leads ({moved.method}, {moved.seconds:.1f} s to a writable console)"
        + ("" if moved.old_leader_follows is None else
           f"; {moved.previous_leader} {'follows it' if moved.old_leader_follows else 'does not follow it yet'}"))
    return {"method": moved.method, "seconds": request.seconds, "leader": request.candidate,
            "previous_leader": moved.previous_leader, "old_leader_follows": moved.old_leader_follows}


# --- the leadership page ---------------------------------------------------------------------
@dataclass
class CandidateRow:
    """A PostgreSQL member as the leadership page lists it, with its cluster member."""

    database: object  # database_view.DatabaseMember
    member: ClusterMember | None
    offer: LeadershipOffer


def leadership_candidates(database: DatabaseStatus) -> list[CandidateRow]:
    """Every PostgreSQL member Patroni lists, matched to its cluster member by name."""
    if not database.ok:
        return []
    members = list(ClusterMember.objects.exclude(state=MemberState.REMOVED))
    under_way = leadership_under_way()
    rows = []
    for db in database.members:
        member = next((m for m in members if patroni_name_of(m, [db.name]) == db.name), None)
        offer = (leadership_offer(member, database, under_way=under_way) if member is not None
                 else LeadershipOffer(False, "no cluster member of that name", db.name, db.lag))
        rows.append(CandidateRow(database=db, member=member, offer=offer))
    return rows


def leadership_request_views(user, *, limit: int = 20) -> list:
    """Leadership requests, open ones first, as the approvals page shows requests."""
    from django.db.models import Prefetch

    from .models import Approval
    from .selectors import _request_view

    now = timezone.now()
    votes = Prefetch("votes", queryset=Approval.objects.select_related("approver").order_by("voted_at", "id"))
    rows = LeadershipRequest.objects.select_related("requested_by", "job", "member").prefetch_related(votes)[:limit]
    views = [_request_view(LeadershipRequest.KIND, request, user, now) for request in rows]
    views.sort(key=lambda v: (not v.open, -v.request.requested_at.timestamp()))
    return views
