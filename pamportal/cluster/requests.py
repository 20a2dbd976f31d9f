"""Join requests from followers (the setup API), and the votes on join and removal
requests: M approvals start the job exactly once, one denial is final, and a request
whose operation changed after it was made or voted on fails."""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pamportal.accounts.models import TOTPDevice
from pamportal.accounts.roles import Role
from pamportal.accounts.services import totp_code_problem
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import audited_refusals
from pamportal.audit.services import audit_record
from pamportal.crypto.bundle import join_proof_verify
from pamportal.crypto.ca import csr_problem
from pamportal.crypto.secrets import secret_digest
from pamportal.jobs.services import job_create
from pamportal.nodes import keystore

from . import protocol
from .follower_models import JoinReplica
from .members import follower_node_record, node_locked
from .models import (
    LIVE_MEMBER_STATES,
    Approval,
    BundleState,
    ClusterMember,
    Decision,
    JoiningBundle,
    JoinRequest,
    LeadershipRequest,
    RemovalRequest,
    RequestState,
)
from .policy import policy_ensure
from .refusals import ClusterRefused, request_target
from .removal import REMOVE_KIND

JOIN_KIND = "cluster.join"
LEADERSHIP_KIND = "cluster.leadership"  # its job is in ``jobs``, its services in ``leadership``


def _username(user) -> str:
    return user.get_username() if user is not None else "the system"


# --- join requests from followers (the setup API) --------------------------------------------
def _join_refused(code: str, target: str, *, detail: str = "", extra: str = "", **details) -> ClusterRefused:
    return ClusterRefused(protocol.refusal_message(code, detail, extra), action=AuditAction.CLUSTER_JOIN_REFUSED,
                          target=target, reason=code.replace("_", " "), code=code, details=details)


def join_refusal_record(*, code: str, message: str, target: str = "setup-api", **details) -> None:
    """Record a request the API refused before it reached ``join_request_create``."""
    ClusterRefused(message, action=AuditAction.CLUSTER_JOIN_REFUSED, target=target, reason=code.replace("_", " "),
                   code=code, details=details).record()


@dataclass(frozen=True)
class JoinAccepted:
    request: JoinRequest
    poll_secret: str


@audited_refusals
def join_request_create(*, payload: protocol.JoinPayload, source_ip: str = "") -> JoinAccepted:
    """A follower asks to join. Checked in this order, each refusal with its code:
    unknown bundle, bad token, expired, used, revoked, another address, bad MEK proof,
    incompatible version, bad CSR. On success the bundle is used up and the request
    waits for approvals (the policy in force copied onto it)."""
    try:
        bundle_uuid = uuid.UUID(payload.bundle_id)
    except ValueError:
        bundle_uuid = None
    target = f"bundle:{payload.bundle_id[:64]}"
    facts = {"follower_address": payload.follower_address[:253], "follower_version": payload.follower_version[:32]}
    node = node_locked()
    if node is None or node.finalised_at is None:
        raise _join_refused("not_ready", target, detail="its setup is not finalised", **facts)
    bundle = JoiningBundle.objects.select_for_update().filter(bundle_id=bundle_uuid).first() if bundle_uuid else None
    if bundle is None:
        raise _join_refused("unknown_bundle", target, **facts)
    if not bundle.token_hash or not hmac.compare_digest(bundle.token_hash, secret_digest(payload.token)):
        raise _join_refused("bad_token", target, **facts)
    now = timezone.now()
    if bundle.state == BundleState.EXPIRED or (bundle.state == BundleState.OUTSTANDING and bundle.expires_at <= now):
        raise _join_refused("expired", target, detail=bundle.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC"), **facts)
    if bundle.state == BundleState.USED:
        raise _join_refused("used", target, **facts)
    if bundle.state == BundleState.REVOKED:
        raise _join_refused("revoked", target, **facts)
    if payload.follower_address != bundle.follower_address:
        raise _join_refused("wrong_address", target, detail=bundle.follower_address, **facts)
    if not join_proof_verify(keystore.mek_load(), payload.proof_message, payload.proof):
        raise _join_refused("bad_proof", target, **facts)
    try:
        compatible = protocol.versions_compatible(settings.PAM_VERSION, payload.follower_version)
    except ValueError:
        compatible = False
    if not compatible:
        raise _join_refused("incompatible_version", target, detail=payload.follower_version[:32],
                            extra=settings.PAM_VERSION, **facts)
    problem = csr_problem(payload.csr_pem)
    if problem:
        raise _join_refused("bad_csr", target, detail=problem, **facts)
    if ClusterMember.objects.filter(address=bundle.follower_address, state__in=LIVE_MEMBER_STATES).exists():
        raise _join_refused("wrong_address", target, detail=f"{bundle.follower_address} (already a member)", **facts)

    policy = policy_ensure()
    secret = secrets.token_urlsafe(32)
    request = JoinRequest.objects.create(
        bundle=bundle, follower_address=bundle.follower_address, follower_version=payload.follower_version,
        csr_pem=payload.csr_pem, preflight_summary=payload.preflight_summary, poll_secret_hash=secret_digest(secret),
        source_address=source_ip[:64],
        requested_at=now, expires_at=now + timedelta(hours=policy.request_lifetime_hours),
        required_approvals=policy.required_approvals, approver_role=policy.approver_role,
        request_hash=protocol.join_request_hash(
            bundle_id=str(bundle.bundle_id), follower_address=bundle.follower_address,
            follower_version=payload.follower_version, csr_pem=payload.csr_pem,
            preflight_summary=payload.preflight_summary,
        ),
    )
    bundle.state = BundleState.USED
    bundle.state_changed_at = now
    bundle.file = None
    bundle.save(update_fields=["state", "state_changed_at", "file"])
    audit_record(action=AuditAction.CLUSTER_BUNDLE_USED, target=target,
                 details={**facts, "join_request": str(request.public_id)})
    audit_record(
        action=AuditAction.CLUSTER_JOIN_REQUESTED, target=f"join-request:{request.public_id}",
        details={**facts, "bundle": str(bundle.bundle_id), "required_approvals": request.required_approvals,
                 "approver_role": request.approver_role, "request_hash": request.request_hash,
                 "expires_at": request.expires_at.isoformat(), "source_ip": source_ip},
    )
    return JoinAccepted(request=request, poll_secret=secret)


def join_request_for_poll(*, public_id, poll_secret: str) -> JoinRequest:
    """The request a follower polls for, if its poll secret matches (refusals audited)."""
    request = JoinRequest.objects.filter(public_id=public_id).first()
    target = f"join-request:{public_id}"
    code = None
    if request is None:
        code = "unknown_request"
    elif not poll_secret or not hmac.compare_digest(request.poll_secret_hash, secret_digest(poll_secret)):
        code = "unauthorised"
    if code is not None:
        refused = _join_refused(code, target)
        refused.action = AuditAction.CLUSTER_JOIN_POLL_REFUSED
        refused.record()
        raise refused
    return request


def join_replica_report(*, public_id, poll_secret: str, report: protocol.ReplicaReport) -> JoinRequest:
    """The follower's report on its database replica (authenticated as its poll is). A
    ready replica's pre-join head and export digests go into the cluster's chain, once:
    that event is how the follower's own trail from before the join stays provable after
    its database is replaced by the cluster's. The join step waiting for the report
    (``jobs._replica``) goes on or fails the join with the reason. A report that repeats
    the first is answered again; a different one is refused."""
    request = join_request_for_poll(public_id=public_id, poll_secret=poll_secret)  # refusals recorded
    return _replica_report_record(request_pk=request.pk, report=report)


@audited_refusals
def _replica_report_record(*, request_pk: int, report: protocol.ReplicaReport) -> JoinRequest:
    request = JoinRequest.objects.select_for_update(of=("self",)).get(pk=request_pk)
    target = request_target(request)
    replica = JoinReplica.objects.select_for_update().filter(request=request).first()
    problem = ""
    if replica is None:
        problem = "the cluster's database is not replicated for this join"
    elif request.state != RequestState.RUNNING:
        problem = f"the join request is {request.get_state_display().lower()}"
    elif replica.promoted_at is None:
        problem = "the node's etcd member is not a voting member yet"
    elif replica.reported_at is not None:
        if (replica.outcome, replica.member, replica.pre_join_position, replica.pre_join_hash) == (
                report.outcome, report.member, report.head_position, report.head_hash):
            return request  # the same report again (its answer was lost)
        problem = f"the node already reported its replica {replica.outcome}"
    if problem:
        raise _join_refused("replica_unexpected", target, detail=problem)
    replica.reported_at = timezone.now()
    replica.outcome = report.outcome
    replica.reason = report.reason
    replica.member = report.member
    replica.postgres_port = report.postgres_port
    replica.pre_join_position = report.head_position
    replica.pre_join_hash = report.head_hash
    replica.export = report.export
    replica.save()
    if report.outcome == "ready":
        follower_node_record(address=request.follower_address, finalised_by=f"join request {request.pk}")
        audit_record(action=AuditAction.CLUSTER_JOIN_REPLICA_READY, target=target,
                     details={"address": request.follower_address, "member": report.member,
                              "postgres_port": report.postgres_port, "pre_join_head": {"position": report.head_position, "hash": report.head_hash},
                              "pre_join_export": report.export})
    else:
        audit_record(action=AuditAction.CLUSTER_JOIN_REPLICA_FAILED, target=target, outcome=Outcome.FAILED,
                     details={"address": request.follower_address, "member": report.member,
                              "reason": report.reason})
    return request


# --- votes --------------------------------------------------------------------------------
def current_hash(request) -> str:
    """The hash of the operation as stored now; votes carry the hash they were cast on."""
    if isinstance(request, LeadershipRequest):
        from .leadership import leadership_request_hash

        return leadership_request_hash(address=request.address, candidate=request.candidate, reason=request.reason)
    if isinstance(request, JoinRequest):
        return protocol.join_request_hash(
            bundle_id=str(request.bundle.bundle_id), follower_address=request.follower_address,
            follower_version=request.follower_version, csr_pem=request.csr_pem,
            preflight_summary=request.preflight_summary,
        )
    return protocol.removal_request_hash(address=request.address, etcd_member_id=request.etcd_member_id,
                                         reason=request.reason)


def request_changed(request) -> bool:
    """Whether the operation differs from what was requested or from what anyone voted on."""
    digest = current_hash(request)
    if digest != request.request_hash:
        return True
    return request.votes.exclude(request_hash=digest).exists()


def _vote_refused(message: str, reason: str, target: str, **details) -> ClusterRefused:
    return ClusterRefused(message, action=AuditAction.CLUSTER_VOTE_REFUSED, target=target, reason=reason,
                          details=details)


def _totp_check(user, code: str, target: str) -> None:
    """The approver's code, checked again at the vote. Its own transaction, so a wrong
    code counts against the device's throttle even though the vote is refused."""
    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).first()
        if device is None:
            reason, message = "no TOTP device", "You have no authenticator enrolled; enrol one before voting."
        else:
            problem = totp_code_problem(device, code)
            if problem is None:
                return
            reason, message = problem
    raise _vote_refused(message, reason, target)


def _request_vote(model, *, request_id: int, user, decision: str, totp_code: str):
    # Not ``audited_refusals``: the TOTP check commits on its own (the device's
    # throttle), so the vote is not one transaction; the refusal is recorded here.
    target = f"{model.KIND}-request#{request_id}"
    try:
        return _vote_checked(model, request_id=request_id, user=user, decision=decision, totp_code=totp_code,
                             target=target)
    except ClusterRefused as refused:
        refused.record()
        raise


def _vote_checked(model, *, request_id, user, decision, totp_code, target):
    try:
        decision = Decision(decision)
    except ValueError:
        raise _vote_refused("Choose approve or deny.", "no decision", target) from None
    request = model.objects.filter(pk=request_id).first()
    if request is None:
        raise _vote_refused("There is no such request.", "no such request", target)
    target = request_target(request)
    if user.role != request.approver_role:
        raise _vote_refused(
            f"Only users with the {Role(request.approver_role).label.lower()} role vote on this request.",
            "not an approver", target, role=user.role)
    _totp_check(user, totp_code, target)
    with transaction.atomic():
        return _vote_record(model, request_id=request_id, user=user, decision=decision, target=target)


def _vote_record(model, *, request_id, user, decision, target):
    related = ("bundle", "bundle__created_by") if model is JoinRequest else ("requested_by",)
    request = model.objects.select_for_update(of=("self",)).select_related(*related).get(pk=request_id)
    now = timezone.now()
    if request.state == RequestState.PENDING and request.expires_at <= now:
        raise _vote_refused(f"This request expired at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC; it can no longer "
                            f"be voted on.", "request expired", target)
    if request.state != RequestState.PENDING:
        raise _vote_refused(f"This request is {request.get_state_display().lower()}; votes are closed.",
                            f"request {request.state}", target)
    requester = request.requester
    if requester is not None and requester.pk == user.pk:
        raise _vote_refused("You made this request, so you cannot vote on it.", "self-approval", target)
    if request.votes.filter(approver=user).exists():
        raise _vote_refused("You have already voted on this request; each approver votes once.", "second vote",
                            target)
    if request_changed(request):
        refused = _vote_refused("The request changed after it was made; its votes are void and it has failed.",
                                "changed after votes", target)
        refused.void_request = (model, request.pk)
        raise refused
    digest = request.request_hash
    fk = f"{model.KIND}_request"  # Approval's foreign key to this kind of request
    Approval.objects.create(**{fk: request}, approver=user, decision=decision, request_hash=digest, voted_at=now)
    approvals = request.votes.filter(decision=Decision.APPROVE, request_hash=digest).count()
    audit_record(action=AuditAction.CLUSTER_VOTE, target=target,
                 details={"decision": decision.value, "approvals": approvals,
                          "required_approvals": request.required_approvals, "request_hash": digest})
    if decision == Decision.DENY:
        request.state = RequestState.DENIED
        request.decided_at = request.finished_at = now
        request.save(update_fields=["state", "decided_at", "finished_at"])
        audit_record(action=AuditAction.CLUSTER_REQUEST_DENIED, target=target, outcome=Outcome.DENIED,
                     details={"denied_by": _username(user)})
        return request
    if approvals >= request.required_approvals:
        kind, title = ((JOIN_KIND, f"Join {request.follower_address} to the cluster") if model is JoinRequest
                       else (LEADERSHIP_KIND, f"Make {request.address} the cluster leader")
                       if model is LeadershipRequest
                       else (REMOVE_KIND, f"Remove {request.address} from the cluster"))
        # Under the request's row lock and only from "pending": one job, ever.
        job = job_create(kind=kind, params={"request_id": request.pk}, created_by=None, title=title)
        request.state = RequestState.APPROVED
        request.decided_at = now
        request.job = job
        request.save(update_fields=["state", "decided_at", "job"])
        audit_record(action=AuditAction.CLUSTER_REQUEST_APPROVED, target=target,
                     details={"approvals": approvals, "job": job.pk,
                              "approvers": list(request.votes.filter(decision=Decision.APPROVE)
                                                .values_list("approver__username", flat=True))})
    return request


def join_request_vote(*, request_id: int, user, decision: str, totp_code: str) -> JoinRequest:
    """One approver's vote on a join request (TOTP re-checked). M approvals start the
    join job, exactly once; one denial is final."""
    return _request_vote(JoinRequest, request_id=request_id, user=user, decision=decision, totp_code=totp_code)


def removal_request_vote(*, request_id: int, user, decision: str, totp_code: str) -> RemovalRequest:
    return _request_vote(RemovalRequest, request_id=request_id, user=user, decision=decision, totp_code=totp_code)


@transaction.atomic
def requests_expire(*, now: datetime | None = None) -> int:
    """Pending join, removal and leadership requests past their expiry become expired."""
    now = now or timezone.now()
    count = 0
    for model in (JoinRequest, RemovalRequest, LeadershipRequest):
        for request in model.objects.select_for_update().filter(state=RequestState.PENDING, expires_at__lte=now):
            request.state = RequestState.EXPIRED
            request.finished_at = now
            request.save(update_fields=["state", "finished_at"])
            audit_record(action=AuditAction.CLUSTER_REQUEST_EXPIRED, target=request_target(request),
                         outcome=Outcome.FAILED,
                         details={"expired_at": request.expires_at.isoformat(), "votes": request.votes.count()})
            count += 1
    return count


def leadership_request_vote(*, request_id: int, user, decision: str, totp_code: str) -> LeadershipRequest:
    """One approver's vote on "set cluster leader" (TOTP re-checked). M approvals start
    the leadership job, exactly once; one denial is final."""
    return _request_vote(LeadershipRequest, request_id=request_id, user=user, decision=decision,
                         totp_code=totp_code)
