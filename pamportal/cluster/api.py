"""The cluster setup API (port 2390, on the leader) and the delegation API (port 2391,
every node, mutual TLS): the heartbeat, and the leader's notice that a node was removed. JSON in and out, no sessions, no CSRF: a join is
authenticated by the bundle's join token and the MEK proof, a poll by its poll secret,
the delegation API by the cluster-CA client certificate gunicorn requires.

Every answer is ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``;
the codes are in ``protocol.REFUSALS`` and the follower shows the message.
"""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from pamportal.accounts import totp_seal
from pamportal.nodes import keystore
from pamportal.nodes.selectors import node_address, node_current
from pamportal.replication.join import database_replicated

from . import conf, local_etcd, protocol, removed
from .follower_models import JoinReplica
from .models import Decision, RequestState
from .refusals import ClusterRefused
from .requests import join_refusal_record, join_replica_report, join_request_create, join_request_for_poll


def _refusal(code: str, message: str) -> JsonResponse:
    status = protocol.REFUSALS.get(code, (400, ""))[0]
    return JsonResponse({"ok": False, "error": {"code": code, "message": message}}, status=status)


def _source_ip(request) -> str:
    return request.META.get("REMOTE_ADDR", "")


@csrf_exempt
@never_cache
@require_POST
def join(request):
    """``POST api/setup/v1/join``: a follower asks to join with its bundle's token."""
    length = request.META.get("CONTENT_LENGTH") or "0"
    limit = conf.setup_api_max_body()
    try:
        declared = int(length)
    except ValueError:
        declared = 0
    try:
        if declared > limit:
            raise protocol.ProtocolError("too_large", protocol.refusal_message("too_large", str(limit)))
        body = request.read(limit + 1)
        payload = protocol.parse_join(protocol.loads_strict(body, max_bytes=limit))
    except protocol.ProtocolError as error:
        join_refusal_record(code=error.code, message=error.message, source_ip=_source_ip(request))
        return _refusal(error.code, error.message)
    try:
        accepted = join_request_create(payload=payload, source_ip=_source_ip(request))
    except ClusterRefused as refused:
        return _refusal(refused.code, refused.message)
    join_request = accepted.request
    return JsonResponse({
        "ok": True,
        "request_id": str(join_request.public_id),
        "poll_secret": accepted.poll_secret,
        "state": join_request.state,
        "required_approvals": join_request.required_approvals,
        "expires_at": join_request.expires_at.isoformat(),
    }, status=201)


def _bearer(request) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def join_status_payload(join_request) -> dict:
    """What the follower's poll gets back."""
    votes = list(join_request.votes.all())
    data = {
        "ok": True,
        "request_id": str(join_request.public_id),
        "state": join_request.state,
        "approvals": sum(1 for v in votes if v.decision == Decision.APPROVE),
        "denials": sum(1 for v in votes if v.decision == Decision.DENY),
        "required_approvals": join_request.required_approvals,
        "expires_at": join_request.expires_at.isoformat(),
        "failure_reason": join_request.failure_reason,
        "handover": None,
        "replica": {"wanted": False},
    }
    replica = JoinReplica.objects.filter(request=join_request).first()
    if replica is not None:
        # The follower becomes a replica of the cluster's database once its etcd member
        # votes (Patroni needs a voting member), then reports (``join_replica``).
        data["replica"] = {"wanted": True, "promoted": replica.promoted_at is not None,
                           "reported": replica.outcome or None}
    if join_request.state == RequestState.PENDING and join_request.expires_at <= timezone.now():
        data["state"] = RequestState.EXPIRED.value
    if join_request.handed_over_at is not None and join_request.state in (RequestState.RUNNING, RequestState.DONE):
        data["handover"] = {
            "cert_pem": join_request.cert_pem,
            "ca_pem": join_request.ca_pem,
            "etcd_initial_cluster": join_request.etcd_initial_cluster,
            "etcd_member_name": join_request.etcd_member_name,
            "etcd_member_id": join_request.etcd_member_id,
            "etcd_initial_cluster_state": "existing",
            "etcd_initial_cluster_token": local_etcd.handover_cluster_token(),
            # The cluster's database: replicated (hosts to list, leader first) or not.
            "database": {"replicated": replica is not None, "hosts": replica.hosts if replica is not None else []},
        }
        if replica is not None:
            # The TOTP devices in that database are sealed with the cluster's key: the
            # follower adopts it (sealed under the MEK) when it switches databases.
            data["handover"]["database"]["totp_seal_key"] = keystore.seal(
                purpose=protocol.TOTP_KEY_PURPOSE, data=totp_seal.key_export())
    return data


@csrf_exempt
@never_cache
@require_GET
def join_status(request, request_id):
    """``GET api/setup/v1/join/<request_id>`` with ``Authorization: Bearer <poll_secret>``."""
    try:
        join_request = join_request_for_poll(public_id=request_id, poll_secret=_bearer(request))
    except ClusterRefused as refused:
        return _refusal(refused.code, refused.message)
    return JsonResponse(join_status_payload(join_request))


@csrf_exempt
@never_cache
@require_GET
def leader_time(request):
    """``GET api/setup/v1/time``: the leader's clock, for the follower's 2-second check,
    and its major.feature version (all a follower needs to check it may join; the patch
    level would tell anyone which fixes the leader lacks)."""
    now = timezone.now()
    return JsonResponse({"ok": True, "time": now.isoformat(), "epoch": now.timestamp(),
                         "feature_version": protocol.feature_version(settings.PAM_VERSION),
                         # so the follower can say, before the join is asked, that its own
                         # accounts and trail will be replaced by the cluster's
                         "replicated": database_replicated()})


@csrf_exempt
@never_cache
@require_POST
def join_replica(request, request_id):
    """``POST api/setup/v1/join/<request_id>/replica`` with ``Authorization: Bearer
    <poll_secret>``: the follower's database replica is ready (its pre-join head and the
    digests of its signed export), or failed (the reason). Strict JSON."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or "0")
    except ValueError:
        declared = 0
    limit = protocol.REPLICA_MAX_BYTES
    try:
        if declared > limit:
            raise protocol.ProtocolError("too_large", protocol.refusal_message("too_large", str(limit)))
        report = protocol.parse_replica_report(protocol.loads_strict(request.read(limit + 1), max_bytes=limit))
    except protocol.ProtocolError as error:
        join_refusal_record(code=error.code, message=error.message, target=f"join-request:{request_id}",
                            source_ip=_source_ip(request))
        return _refusal(error.code, error.message)
    try:
        join_request = join_replica_report(public_id=request_id, poll_secret=_bearer(request), report=report)
    except ClusterRefused as refused:
        return _refusal(refused.code, refused.message)
    return JsonResponse({"ok": True, "request_id": str(join_request.public_id), "outcome": report.outcome})


@csrf_exempt
@never_cache
@require_GET
def heartbeat(request):
    """``GET api/delegation/v1/heartbeat``: this node is up, and who it is. Served only
    behind mutual TLS (cluster-CA client certificates), so the caller is a node."""
    node = node_current()
    return JsonResponse({
        "ok": True, "status": "ok", "address": node_address(node), "role": node.role,
        "version": settings.PAM_VERSION, "finalised": node.finalised_at is not None,
        "time": timezone.now().isoformat(),
    })


def peer_certificate(request) -> bytes | None:
    """The client certificate (DER) of the TLS connection this request came on: gunicorn
    puts its socket in the environ; the delegation listener requires the certificate."""
    sock = request.META.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        return getpeercert(binary_form=True) or None
    except (OSError, ValueError):
        return None


@csrf_exempt
@never_cache
@require_POST
def removed_notice(request):
    """``POST api/delegation/v1/removed``: the leader tells this node it was removed
    from the cluster. Only the leader's certificate; strict JSON; this cluster and this
    node (``removed.removal_notice_accept``). This node then stops wanting its etcd
    member and every page of its console says it was removed."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or "0")
    except ValueError:
        declared = 0
    body = b"" if declared > removed.NOTICE_MAX_BYTES else request.read(removed.NOTICE_MAX_BYTES + 1)
    if declared > removed.NOTICE_MAX_BYTES:
        body = b" " * (removed.NOTICE_MAX_BYTES + 1)  # refused as too large, unread
    try:
        removal, new = removed.removal_notice_accept(peer_der=peer_certificate(request), body=body,
                                                     source_ip=_source_ip(request))
    except removed.RemovalRefused as refused:
        return JsonResponse({"ok": False, "error": {"code": refused.code, "message": refused.message}},
                            status=refused.status)
    return JsonResponse({"ok": True, "address": removal.address, "cluster_id": removal.cluster_id,
                         "request_number": removal.request_number, "new": new,
                         "learned_at": removal.learned_at.isoformat()})
