"""Everything that changes the cluster as the leader sees it: joining bundles, join
requests from followers, votes, the approval policy, node removal.

Each service is one transaction with its audit event. A refusal rolls the service's
work back and is recorded in a transaction of its own (outcome denied), so the audit
trail keeps it while nothing else changes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import wraps

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pamportal.accounts.roles import Role
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.repeats import audit_refusal_repeated
from pamportal.audit.services import audit_record
from pamportal.core import context

from . import conf, protocol
from .models import (
    LIVE_MEMBER_STATES,
    OPEN_REQUEST_STATES,
    Approval,
    ApprovalPolicy,
    BundleState,
    ClusterMember,
    Decision,
    JoiningBundle,
    JoinRequest,
    MemberRole,
    MemberState,
    RemovalRequest,
    RequestState,
    RevokedCertificate,
)

BUNDLE_KIND = "cluster.bundle"
JOIN_KIND = "cluster.join"
REMOVE_KIND = "cluster.remove"


class ClusterRefused(Exception):
    """A cluster change that the rules refuse; ``message`` is for the operator (or the
    follower, with ``code``)."""

    def __init__(self, message: str, *, action: AuditAction, target: str, reason: str, code: str = "",
                 details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.action = action
        self.target = target
        self.reason = reason
        self.code = code
        self.details = details or {}
        # Set when the refusal must also fail a request (votes voided by a change).
        self.void_request: tuple[type, int] | None = None


def _audited_refusals(service):
    """Run ``service`` in its own transaction; a refusal rolls it back, is recorded on
    its own (outcome denied) and raised again."""

    atomic_service = transaction.atomic(service)

    @wraps(service)
    def wrapper(**kwargs):
        try:
            return atomic_service(**kwargs)
        except ClusterRefused as refused:
            _record_refusal(refused)
            raise

    return wrapper


# Refusals of the setup API (2390), which anyone who reaches the port can cause.
_ANONYMOUS_REFUSALS = frozenset({AuditAction.CLUSTER_JOIN_REFUSED, AuditAction.CLUSTER_JOIN_POLL_REFUSED})


def _record_refusal(refused: ClusterRefused) -> None:
    with transaction.atomic():
        if refused.void_request is not None:
            model, pk = refused.void_request
            _request_void(model, pk, refused.reason)
        event = {
            "action": refused.action, "target": refused.target, "outcome": Outcome.DENIED,
            "details": {"reason": refused.reason, **({"code": refused.code} if refused.code else {}),
                        **refused.details},
        }
        if refused.action in _ANONYMOUS_REFUSALS:
            # Bounded per source address and kind: a flood is counted, not listed.
            audit_refusal_repeated(source=context.current().source_ip,
                                   kind=f"{refused.action}:{refused.code or refused.reason}"[:128], **event)
        else:
            audit_record(**event)


def _username(user) -> str:
    return user.get_username() if user is not None else "the system"


# --- the node and the cluster -------------------------------------------------------------
def _node_locked():
    """This node's row, locked: every change to membership or bundles takes it first,
    so the licence cap and address checks cannot race."""
    from pamportal.nodes.models import Node

    return Node.objects.select_for_update().filter(pk=Node.SINGLETON_PK).first()


def _ca_row():
    from pamportal.nodes.models import Certificate, CertificateKind

    return Certificate.objects.filter(kind=CertificateKind.CLUSTER_CA, replaced_at__isnull=True).first()


def cluster_id_of(ca_sha256: str) -> str:
    """The cluster's id: the cluster is its CA, so the id is derived from the CA's hash."""
    import uuid

    return str(uuid.UUID(hex=ca_sha256[:32]))


def policy_current() -> ApprovalPolicy:
    policy, _ = ApprovalPolicy.objects.get_or_create(pk=ApprovalPolicy.SINGLETON_PK)
    return policy


def leader_member_ensure(node) -> ClusterMember:
    """The leader's own member row (made the first time the cluster is touched)."""
    from pamportal.nodes.selectors import node_address

    address = node_address(node)
    member = ClusterMember.objects.filter(role=MemberRole.LEADER).first()
    if member is None:
        member = ClusterMember.objects.create(
            address=address, role=MemberRole.LEADER, state=MemberState.ACTIVE, version=settings.PAM_VERSION,
            joined_at=node.finalised_at or timezone.now(), etcd_name=address,
        )
    return member


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


# --- joining bundles ----------------------------------------------------------------------
def _bundle_refused(message: str, reason: str, target: str, **details) -> ClusterRefused:
    return ClusterRefused(message, action=AuditAction.CLUSTER_BUNDLE_REFUSED, target=target, reason=reason,
                          details=details)


def _address_clean(address: str) -> str:
    from pamportal.crypto.bundle import address_problem, normalize_address

    address = normalize_address(address or "")
    problem = address_problem(address)
    if problem:
        raise _bundle_refused(f"“{address[:80]}” {problem}: a follower's address is an FQDN or an IP address.",
                              "bad address", f"address:{address[:200]}")
    return address


@_audited_refusals
def bundle_generate(*, user, follower_address: str) -> JoiningBundle:
    """Start a "cluster.bundle" job making a joining bundle for one follower address."""
    from pamportal.jobs.services import job_create
    from pamportal.licensing.selectors import licence_status
    from pamportal.nodes.selectors import node_address

    address = _address_clean(follower_address)
    target = f"address:{address}"
    node = _node_locked()
    if node is None or node.finalised_at is None:
        raise _bundle_refused("This node's setup is not finalised; finish it before forming a cluster.",
                              "node not finalised", target)
    if _ca_row() is None:
        raise _bundle_refused("This node has no cluster CA yet.", "no cluster CA", target)
    if address == node_address(node):
        raise _bundle_refused(f"{address} is this node, the leader.", "address is the leader", target)
    if ClusterMember.objects.filter(address=address, state__in=LIVE_MEMBER_STATES).exists():
        raise _bundle_refused(f"{address} is already in the cluster.", "address already in the cluster", target)
    now = timezone.now()
    if JoiningBundle.objects.filter(follower_address=address, state=BundleState.OUTSTANDING,
                                    expires_at__gt=now).exists():
        raise _bundle_refused(f"{address} already has an outstanding bundle; revoke it first to make another.",
                              "outstanding bundle for the address", target)
    if JoinRequest.objects.filter(follower_address=address, state__in=OPEN_REQUEST_STATES).exists():
        raise _bundle_refused(f"A join request from {address} is already under way.", "join under way", target)
    status = licence_status(now)
    if not status.ok:
        raise _bundle_refused(f"No bundle without a valid licence: {status.message}", "no valid licence", target)
    leader_member_ensure(node)
    counted = nodes_counted(now=now)
    if counted >= status.max_nodes:
        raise _bundle_refused(
            f"The licence allows {status.max_nodes} node{'s' if status.max_nodes != 1 else ''} and the cluster "
            f"already counts {counted} (members, outstanding bundles and joins under way). Revoke a bundle, remove "
            f"a node or install a licence for more nodes.",
            "licence node cap reached", target, max_nodes=status.max_nodes, counted=counted,
        )
    bundle = JoiningBundle.objects.create(
        follower_address=address, created_by=user, created_at=now, expires_at=now + conf.bundle_lifetime(),
        state_changed_at=now,
    )
    job = job_create(kind=BUNDLE_KIND, params={"bundle_id": bundle.pk}, created_by=user,
                     title=f"Joining bundle for {address}")
    bundle.job = job
    bundle.save(update_fields=["job"])
    audit_record(
        action=AuditAction.CLUSTER_BUNDLE_CREATED, target=f"bundle:{bundle.bundle_id}",
        details={"follower_address": address, "expires_at": bundle.expires_at.isoformat(), "job": job.pk,
                 "nodes_counted": counted + 1, "max_nodes": status.max_nodes},
    )
    return bundle


@transaction.atomic
def bundle_build(*, bundle_pk: int) -> dict:
    """The "cluster.bundle" step: write the file (once). A new single-use token goes
    into the encrypted file; only its hash stays here."""
    from pamportal.crypto.bundle import bundle_create, new_join_token, token_hash
    from pamportal.nodes import keystore
    from pamportal.nodes.selectors import node_address

    bundle = JoiningBundle.objects.select_for_update().get(pk=bundle_pk)
    if bundle.file is not None or bundle.token_hash:
        return {"bundle_id": str(bundle.bundle_id), "already_built": True}
    if bundle.state != BundleState.OUTSTANDING:
        return {"bundle_id": str(bundle.bundle_id), "skipped": f"the bundle is {bundle.state}"}
    ca_row = _ca_row()
    token = new_join_token()
    data = bundle_create(
        mek=keystore.mek_load(), cluster_id=cluster_id_of(ca_row.sha256), bundle_id=str(bundle.bundle_id),
        leader_address=node_address(), leader_ports=conf.leader_ports(), ca_cert_pem=ca_row.cert_pem,
        follower_address=bundle.follower_address, leader_version=settings.PAM_VERSION, join_token=token,
        created=bundle.created_at, expires=bundle.expires_at,
    )
    bundle.token_hash = token_hash(token)
    bundle.file = data
    bundle.save(update_fields=["token_hash", "file"])
    return {"bundle_id": str(bundle.bundle_id), "bytes": len(data), "expires_at": bundle.expires_at.isoformat()}


def _bundle_locked(bundle_id, action_target: str) -> JoiningBundle:
    bundle = JoiningBundle.objects.select_for_update().filter(bundle_id=bundle_id).first()
    if bundle is None:
        raise _bundle_refused("There is no such joining bundle.", "no such bundle", action_target)
    return bundle


@dataclass(frozen=True)
class BundleFile:
    filename: str
    data: bytes


@_audited_refusals
def bundle_download(*, user, bundle_id) -> BundleFile:
    """The bundle file (encrypted under the MEK), audited at each download."""
    target = f"bundle:{bundle_id}"
    bundle = _bundle_locked(bundle_id, target)
    now = timezone.now()
    if bundle.state != BundleState.OUTSTANDING:
        raise _bundle_refused(f"This bundle is {bundle.get_state_display().lower()}; it cannot be downloaded.",
                              f"bundle {bundle.state}", target)
    if bundle.expires_at <= now:
        raise _bundle_refused("This bundle has expired.", "bundle expired", target)
    if bundle.file is None:
        raise _bundle_refused("This bundle is still being made; try again in a moment.", "bundle not built yet",
                              target)
    bundle.download_count += 1
    bundle.downloaded_at = now
    bundle.save(update_fields=["download_count", "downloaded_at"])
    audit_record(action=AuditAction.CLUSTER_BUNDLE_DOWNLOADED, target=target,
                 details={"follower_address": bundle.follower_address, "download": bundle.download_count})
    safe = bundle.follower_address.replace(":", "-")
    return BundleFile(filename=f"pamportal-join-{safe}.bundle", data=bytes(bundle.file))


@_audited_refusals
def bundle_revoke(*, user, bundle_id) -> JoiningBundle:
    target = f"bundle:{bundle_id}"
    bundle = _bundle_locked(bundle_id, target)
    if bundle.state != BundleState.OUTSTANDING:
        raise _bundle_refused(f"This bundle is already {bundle.get_state_display().lower()}.",
                              f"bundle {bundle.state}", target)
    bundle.state = BundleState.REVOKED
    bundle.state_changed_at = timezone.now()
    bundle.file = None
    bundle.save(update_fields=["state", "state_changed_at", "file"])
    audit_record(action=AuditAction.CLUSTER_BUNDLE_REVOKED, target=target,
                 details={"follower_address": bundle.follower_address})
    return bundle


@transaction.atomic
def bundles_expire(*, now: datetime | None = None) -> int:
    """Outstanding bundles past their expiry become expired (and lose their file)."""
    now = now or timezone.now()
    count = 0
    for bundle in JoiningBundle.objects.select_for_update().filter(state=BundleState.OUTSTANDING, expires_at__lte=now):
        bundle.state = BundleState.EXPIRED
        bundle.state_changed_at = now
        bundle.file = None
        bundle.save(update_fields=["state", "state_changed_at", "file"])
        audit_record(action=AuditAction.CLUSTER_BUNDLE_EXPIRED, target=f"bundle:{bundle.bundle_id}",
                     details={"follower_address": bundle.follower_address,
                              "expired_at": bundle.expires_at.isoformat()})
        count += 1
    return count


# --- join requests from followers (the setup API) --------------------------------------------
def _join_refused(code: str, target: str, *, detail: str = "", extra: str = "", **details) -> ClusterRefused:
    return ClusterRefused(protocol.refusal_message(code, detail, extra), action=AuditAction.CLUSTER_JOIN_REFUSED,
                          target=target, reason=code.replace("_", " "), code=code, details=details)


def join_refusal_record(*, code: str, message: str, target: str = "setup-api", **details) -> None:
    """Record a request the API refused before it reached ``join_request_create``."""
    _record_refusal(ClusterRefused(message, action=AuditAction.CLUSTER_JOIN_REFUSED, target=target,
                                   reason=code.replace("_", " "), code=code, details=details))


def _csr_problem(csr_pem: str) -> str | None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return "it is not a PEM certificate signing request"
    if not csr.is_signature_valid:
        return "its signature does not verify"
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return "node keys are ECDSA P-256"
    return None


@dataclass(frozen=True)
class JoinAccepted:
    request: JoinRequest
    poll_secret: str


def poll_secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@_audited_refusals
def join_request_create(*, payload: protocol.JoinPayload, source_ip: str = "") -> JoinAccepted:
    """A follower asks to join. Checked in this order, each refusal with its code:
    unknown bundle, bad token, expired, used, revoked, another address, bad MEK proof,
    incompatible version, bad CSR. On success the bundle is used up and the request
    waits for approvals (the policy in force copied onto it)."""
    import uuid

    from pamportal.crypto.bundle import join_proof_verify, token_hash
    from pamportal.nodes import keystore

    try:
        bundle_uuid = uuid.UUID(payload.bundle_id)
    except ValueError:
        bundle_uuid = None
    target = f"bundle:{payload.bundle_id[:64]}"
    facts = {"follower_address": payload.follower_address[:253], "follower_version": payload.follower_version[:32]}
    node = _node_locked()
    if node is None or node.finalised_at is None:
        raise _join_refused("not_ready", target, detail="its setup is not finalised", **facts)
    bundle = JoiningBundle.objects.select_for_update().filter(bundle_id=bundle_uuid).first() if bundle_uuid else None
    if bundle is None:
        raise _join_refused("unknown_bundle", target, **facts)
    if not bundle.token_hash or not hmac.compare_digest(bundle.token_hash, token_hash(payload.token)):
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
    problem = _csr_problem(payload.csr_pem)
    if problem:
        raise _join_refused("bad_csr", target, detail=problem, **facts)
    if ClusterMember.objects.filter(address=bundle.follower_address, state__in=LIVE_MEMBER_STATES).exists():
        raise _join_refused("wrong_address", target, detail=f"{bundle.follower_address} (already a member)", **facts)

    policy = policy_current()
    secret = secrets.token_urlsafe(32)
    request = JoinRequest.objects.create(
        bundle=bundle, follower_address=bundle.follower_address, follower_version=payload.follower_version,
        csr_pem=payload.csr_pem, preflight_summary=payload.preflight_summary, poll_secret_hash=poll_secret_hash(secret),
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
    if request is None:
        refused = _join_refused("unknown_request", target)
        refused.action = AuditAction.CLUSTER_JOIN_POLL_REFUSED
        _record_refusal(refused)
        raise refused
    if not poll_secret or not hmac.compare_digest(request.poll_secret_hash, poll_secret_hash(poll_secret)):
        refused = _join_refused("unauthorised", target)
        refused.action = AuditAction.CLUSTER_JOIN_POLL_REFUSED
        _record_refusal(refused)
        raise refused
    return request


# --- votes --------------------------------------------------------------------------------
def current_hash(request) -> str:
    """The hash of the operation as stored now; votes carry the hash they were cast on."""
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


def _target_of(request) -> str:
    return f"{request.KIND}-request:{request.public_id}"


def _request_void(model, pk: int, reason: str) -> None:
    """Fail a request whose operation changed after it was made or voted on."""
    request = model.objects.select_for_update().get(pk=pk)
    if request.state not in OPEN_REQUEST_STATES:
        return
    request.state = RequestState.FAILED
    request.failure_reason = "The request changed after votes were cast; the votes are void."
    request.finished_at = timezone.now()
    request.save(update_fields=["state", "failure_reason", "finished_at"])
    audit_record(action=AuditAction.CLUSTER_REQUEST_VOIDED, target=_target_of(request), outcome=Outcome.FAILED,
                 details={"reason": reason, "votes": request.votes.count()})


def _vote_refused(message: str, reason: str, target: str, **details) -> ClusterRefused:
    return ClusterRefused(message, action=AuditAction.CLUSTER_VOTE_REFUSED, target=target, reason=reason,
                          details=details)


def _totp_check(user, code: str, target: str) -> None:
    """The approver's code, checked again at the vote. Its own transaction, so a wrong
    code counts against the device's throttle even though the vote is refused."""
    from pamportal.accounts.models import TOTPDevice

    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).first()
        if device is None:
            reason, message = "no TOTP device", "You have no authenticator enrolled; enrol one before voting."
        elif not device.verify_is_allowed()[0]:
            reason, message = "too many wrong codes", "Too many wrong codes in a row. Wait a little and try again."
        elif not code or not device.verify_token(code.strip()):
            reason, message = "wrong TOTP code", "That 6-digit code does not match your authenticator. Try the current one."
        else:
            return
    raise _vote_refused(message, reason, target)


def _request_vote(model, *, request_id: int, user, decision: str, totp_code: str):
    target = f"{model.KIND}-request#{request_id}"
    try:
        return _vote_checked(model, request_id=request_id, user=user, decision=decision, totp_code=totp_code,
                             target=target)
    except ClusterRefused as refused:
        _record_refusal(refused)
        raise


def _vote_checked(model, *, request_id, user, decision, totp_code, target):
    try:
        decision = Decision(decision)
    except ValueError:
        raise _vote_refused("Choose approve or deny.", "no decision", target) from None
    request = model.objects.filter(pk=request_id).first()
    if request is None:
        raise _vote_refused("There is no such request.", "no such request", target)
    target = _target_of(request)
    if user.role != request.approver_role:
        raise _vote_refused(
            f"Only users with the {Role(request.approver_role).label.lower()} role vote on this request.",
            "not an approver", target, role=user.role)
    _totp_check(user, totp_code, target)
    with transaction.atomic():
        return _vote_record(model, request_id=request_id, user=user, decision=decision, target=target)


def _vote_record(model, *, request_id, user, decision, target):
    from pamportal.jobs.services import job_create

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
    fk = "join_request" if model is JoinRequest else "removal_request"
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
    """Pending join and removal requests past their expiry become expired."""
    now = now or timezone.now()
    count = 0
    for model in (JoinRequest, RemovalRequest):
        for request in model.objects.select_for_update().filter(state=RequestState.PENDING, expires_at__lte=now):
            request.state = RequestState.EXPIRED
            request.finished_at = now
            request.save(update_fields=["state", "finished_at"])
            audit_record(action=AuditAction.CLUSTER_REQUEST_EXPIRED, target=_target_of(request),
                         outcome=Outcome.FAILED,
                         details={"expired_at": request.expires_at.isoformat(), "votes": request.votes.count()})
            count += 1
    return count


def join_requests_expire(*, now: datetime | None = None) -> int:
    return requests_expire(now=now)


# --- the policy -----------------------------------------------------------------------------
@_audited_refusals
def policy_update(*, user, required_approvals: int, approver_role: str, request_lifetime_hours: int) -> ApprovalPolicy:
    """Change the approval policy; requests already made keep the one copied onto them."""
    target = "cluster-policy"
    if not 1 <= int(required_approvals) <= 10:
        raise ClusterRefused("Between 1 and 10 approvals.", action=AuditAction.CLUSTER_POLICY_CHANGED, target=target,
                             reason="approvals out of range")
    if approver_role not in (Role.APPROVER, Role.ADMINISTRATOR):
        raise ClusterRefused("Approvers are users with the approver or the administrator role.",
                             action=AuditAction.CLUSTER_POLICY_CHANGED, target=target, reason="role not allowed")
    if not 1 <= int(request_lifetime_hours) <= 24 * 14:
        raise ClusterRefused("A request lives between 1 hour and 14 days.", action=AuditAction.CLUSTER_POLICY_CHANGED,
                             target=target, reason="lifetime out of range")
    policy = policy_current()
    policy = ApprovalPolicy.objects.select_for_update().get(pk=policy.pk)
    before = {"required_approvals": policy.required_approvals, "approver_role": policy.approver_role,
              "request_lifetime_hours": policy.request_lifetime_hours}
    policy.required_approvals = int(required_approvals)
    policy.approver_role = approver_role
    policy.request_lifetime_hours = int(request_lifetime_hours)
    policy.updated_by = user
    policy.save()
    after = {"required_approvals": policy.required_approvals, "approver_role": policy.approver_role,
             "request_lifetime_hours": policy.request_lifetime_hours}
    audit_record(action=AuditAction.CLUSTER_POLICY_CHANGED, target=target, details={"before": before, "after": after})
    return policy


# --- certificates -----------------------------------------------------------------------------
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


# --- removing a node --------------------------------------------------------------------------
def _removal_refused(message: str, reason: str, target: str, **details) -> ClusterRefused:
    return ClusterRefused(message, action=AuditAction.CLUSTER_REMOVAL_REFUSED, target=target, reason=reason,
                          details=details)


def _quorum_problem(member: ClusterMember) -> str | None:
    """Why removing ``member`` would lose quorum (or cannot be checked), or None."""
    from . import membership
    from .etcd import EtcdException, failure_tolerance, quorum_ok_after_remove

    try:
        members = membership.etcd_client().member_list()
    except EtcdException as exc:
        return f"etcd cannot be asked whether the cluster keeps its quorum ({exc})"
    target = membership.find_member(members, member_id=member.etcd_member_id, address=member.address)
    if target is None:
        return None
    if not quorum_ok_after_remove(members, target.id):
        voters = sum(1 for m in members if m.is_voter)
        return (f"removing it would lose quorum: the cluster has {voters} voting member"
                f"{'s' if voters != 1 else ''} and tolerates {failure_tolerance(voters)} failure"
                f"{'s' if failure_tolerance(voters) != 1 else ''}")
    return None


@_audited_refusals
def removal_request_create(*, user, member_id: int, reason: str) -> RemovalRequest:
    """Ask to remove a follower; it needs the same approvals as a join."""
    reason = (reason or "").strip()
    member = ClusterMember.objects.select_for_update().filter(pk=member_id).first()
    target = f"member#{member_id}" if member is None else f"member:{member.address}"
    if member is None:
        raise _removal_refused("There is no such member.", "no such member", target)
    _node_locked()
    if member.role == MemberRole.LEADER:
        raise _removal_refused("The leader cannot be removed from its own cluster.", "member is the leader", target)
    if member.state not in (MemberState.ACTIVE, MemberState.FAILED, MemberState.JOINING):
        raise _removal_refused(f"{member.address} is {member.get_state_display().lower()}.", f"member {member.state}",
                               target)
    if len(reason) < 10:
        raise _removal_refused("Give a reason of at least 10 characters.", "no reason", target)
    if RemovalRequest.objects.filter(member=member, state__in=OPEN_REQUEST_STATES).exists():
        raise _removal_refused(f"A removal of {member.address} is already under way.", "removal under way", target)
    problem = _quorum_problem(member)
    if problem:
        raise _removal_refused(f"{member.address} cannot be removed: {problem}.", "would lose quorum", target)
    policy = policy_current()
    now = timezone.now()
    request = RemovalRequest.objects.create(
        member=member, address=member.address, etcd_member_id=member.etcd_member_id, reason=reason[:500],
        requested_by=user, requested_at=now, expires_at=now + timedelta(hours=policy.request_lifetime_hours),
        required_approvals=policy.required_approvals, approver_role=policy.approver_role,
        request_hash=protocol.removal_request_hash(address=member.address, etcd_member_id=member.etcd_member_id,
                                                   reason=reason[:500]),
    )
    audit_record(action=AuditAction.CLUSTER_REMOVAL_REQUESTED, target=_target_of(request),
                 details={"address": member.address, "reason": request.reason,
                          "required_approvals": request.required_approvals, "request_hash": request.request_hash})
    return request


# --- heartbeats -----------------------------------------------------------------------------
def members_heartbeat() -> int:
    """Ask every live follower's delegation API for a heartbeat; store the answers."""
    from . import membership

    count = 0
    for member in ClusterMember.objects.filter(state__in=LIVE_MEMBER_STATES).exclude(role=MemberRole.LEADER):
        result = membership.delegation_heartbeat(member)
        ClusterMember.objects.filter(pk=member.pk).update(
            last_heartbeat_at=timezone.now(), last_heartbeat_ok=result.ok, last_heartbeat_detail=result.detail[:500])
        count += 1
    return count
