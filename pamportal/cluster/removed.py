"""This node removed from its cluster, on the node itself: learning it (the leader's
notice on the delegation API, or etcd's member list when the node was down at the
time), no longer wanting its etcd member, and wiping its cluster state with a typed
confirmation so that it can be set up again or join with a new bundle.

The node revokes nothing: the leader revoked its certificate, which stays here only as
evidence (its row is kept, marked replaced, when the state is wiped). Every write goes
with its audit event in this node's own trail; every refused notice is audited too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from pamportal.audit.actions import AuditAction
from pamportal.audit.refusals import Refused, audited_refusals
from pamportal.audit.services import audit_record
from pamportal.core.files import write_private
from pamportal.core.memo import Memo
from pamportal.crypto import ca as ca_format
from pamportal.nodes.identity import node_filter, own_rows, shared_database_address
from pamportal.nodes.models import Certificate, CertificateKind, Node, NodeRole
from pamportal.nodes.selectors import certificate_is_own
from pamportal.nodes.services import ca_cert_path

from . import conf, local_etcd, protocol
from .etcd import EtcdClient, EtcdException
from .etcd_process import client_url, peer_url
from .follower_models import FollowerJoin, JoinState, NodeRemoval, RemovalSource

NOTICE_MAX_BYTES = 8 * 1024
NOTICE_FIELDS = frozenset({"notice", "version", "cluster_id", "address", "certificate_serial", "etcd_member_id",
                           "request_number", "request_id", "removed_at", "reason", "leader_address"})
_NOTICE_TEXT = {"cluster_id": 128, "address": 253, "certificate_serial": 64, "etcd_member_id": 24,
                "request_id": 64, "removed_at": 64, "reason": 500, "leader_address": 253}
# What etcd prints when its peers refuse a member that was removed.
ETCD_REMOVED_TEXT = "permanently removed from the cluster"
# The member configuration, moved aside once the node knows it was removed: serve (and
# the unit's ConditionPathExists=) no longer start etcd from it; kept until the wipe.
REMOVED_CONFIG_NAME = "member.removed.json"
# Joins in which this node holds a member that can be removed.
MEMBER_JOIN_STATES = (JoinState.JOINING, JoinState.JOINED)

# code -> HTTP status of the delegation API's answer
NOTICE_REFUSALS = {
    "no_client_certificate": 401,
    "not_cluster_certificate": 403,
    "not_leader": 403,
    "bad_request": 400,
    "too_large": 413,
    "too_deep": 400,
    "lone_surrogate": 400,
    "nul_character": 400,
    "number_too_large": 400,
    "not_member": 409,
    "wrong_cluster": 409,
    "wrong_node": 409,
}


class RemovalRefused(Refused):
    """A refused removal notice or wipe; ``code`` for the API, ``message`` for people."""

    def __init__(self, code: str, message: str, *, action=AuditAction.NODE_REMOVAL_NOTICE_REFUSED,
                 target: str = "removal-notice", **details):
        super().__init__(message, action=action, target=target, reason=message, code=code, details=details)

    @property
    def status(self) -> int:
        return NOTICE_REFUSALS.get(self.code, 400)


# --- reads -------------------------------------------------------------------------------------
def removal_current() -> NodeRemoval | None:
    """The removal every page shows: the newest one whose cluster state is not wiped."""
    return own_rows(NodeRemoval.objects, "address").filter(wiped_at__isnull=True).order_by("-pk").first()


# What every page's banner reads: at most once a second per process (a removal is
# rare; the process that records or wipes one forgets it at once, others within a second).
_removal_memo = Memo(removal_current, seconds=1.0, key=shared_database_address)
post_save.connect(_removal_memo.forget, sender=NodeRemoval, weak=False)
post_delete.connect(_removal_memo.forget, sender=NodeRemoval, weak=False)


def removal_current_for(request) -> NodeRemoval | None:
    """``removal_current`` as the pages show it, read once per request (the banner and
    the page share it), and at most once a second per process."""
    cache = getattr(request, "_pam_node_removal", None)
    if cache is None:
        cache = request._pam_node_removal = (_removal_memo.get(),)
    return cache[0]


def _member_join() -> FollowerJoin | None:
    """The join that made this node a member (handed over or joined), if it is the newest.
    On the cluster's shared database the node's join is in its database from before
    (and the first leader never joined): its membership is the cluster's member row
    (not yet wiped away), as an unsaved join naming the leader recorded now."""
    address = shared_database_address()
    if address:
        return _shared_membership(address)
    join = own_rows(FollowerJoin.objects, "own_address").order_by("-pk").first()
    return join if join is not None and join.state in MEMBER_JOIN_STATES else None


def _shared_membership(address: str) -> FollowerJoin | None:
    from .models import LIVE_MEMBER_STATES, ClusterMember, MemberRole, MemberState

    member = (ClusterMember.objects.filter(address=address, state__in=[*LIVE_MEMBER_STATES, MemberState.REMOVED])
              .first())
    ca_row = _cluster_ca()
    if member is None or ca_row is None:
        return None
    leader = (ClusterMember.objects.filter(role=MemberRole.LEADER, state__in=LIVE_MEMBER_STATES)
              .values_list("address", flat=True).first())
    return FollowerJoin(state=JoinState.JOINED, own_address=address, leader_address=leader or "",
                        cluster_id=ca_format.cluster_id_of(ca_row.sha256), ca_cert_pem=ca_row.cert_pem)


def _own_certificate() -> Certificate | None:
    """This node's certificate: its row; on the cluster's shared database (which holds
    the first leader's alone) the certificate file its listeners serve, as an unsaved row."""
    if shared_database_address():
        try:
            pem = Path(settings.PAM_TLS_CERT).read_bytes()
            info = ca_format.certificate_info(pem)
        except (OSError, ValueError):
            return None
        return Certificate(kind=CertificateKind.NODE_TLS, subject=info.subject, names=info.names,
                           serial=f"{info.serial:x}", sha256=info.sha256, cert_pem=pem.decode())
    row = Certificate.objects.filter(kind=CertificateKind.NODE_TLS, replaced_at__isnull=True).first()
    return row if certificate_is_own(row) else None


def _cluster_ca() -> Certificate | None:
    return Certificate.objects.filter(kind=CertificateKind.CLUSTER_CA, replaced_at__isnull=True).first()


def removed_config_path() -> Path:
    return local_etcd.etcd_dir() / REMOVED_CONFIG_NAME


# --- the leader's notice -------------------------------------------------------------------------
@dataclass(frozen=True)
class RemovalNotice:
    cluster_id: str
    address: str
    certificate_serial: str
    etcd_member_id: str
    request_number: int
    request_id: str
    removed_at: datetime
    reason: str
    leader_address: str


def parse_notice(body: bytes) -> RemovalNotice:
    """The notice's shape: strict JSON (``protocol.loads_strict``), exactly
    NOTICE_FIELDS, version 1, bounded strings, a positive request number, a date."""
    try:
        data = protocol.loads_strict(body, max_bytes=NOTICE_MAX_BYTES)
    except protocol.ProtocolError as error:
        raise RemovalRefused(error.code, error.message.replace("join request", "removal notice")) from None

    def bad(detail: str) -> RemovalRefused:
        return RemovalRefused("bad_request", f"The removal notice is not valid: {detail}.")

    if not isinstance(data, dict):
        raise bad("the body must be a JSON object")
    missing, extra = sorted(NOTICE_FIELDS - data.keys()), sorted(data.keys() - NOTICE_FIELDS)
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    if extra:
        raise bad(f"unknown {', '.join(extra)[:200]}")
    if data["notice"] != "removed" or data["version"] != 1 or isinstance(data["version"], bool):
        raise bad("not a version 1 removal notice")
    for name, limit in _NOTICE_TEXT.items():
        value = data[name]
        if not isinstance(value, str) or len(value) > limit:
            raise bad(f"{name} must be a string of at most {limit} characters")
    for name in ("cluster_id", "address", "certificate_serial", "request_id", "removed_at", "leader_address"):
        if not data[name]:
            raise bad(f"{name} is empty")
    number = data["request_number"]
    if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 2**31:
        raise bad("request_number must be a positive integer")
    removed_at = parse_datetime(data["removed_at"])
    if removed_at is None or removed_at.tzinfo is None:
        raise bad("removed_at must be an ISO 8601 date with its time zone")
    return RemovalNotice(
        cluster_id=data["cluster_id"], address=data["address"], certificate_serial=data["certificate_serial"].lower(),
        etcd_member_id=data["etcd_member_id"], request_number=number, request_id=data["request_id"],
        removed_at=removed_at, reason=data["reason"], leader_address=data["leader_address"],
    )


def _peer_facts(peer_der: bytes | None) -> tuple[x509.Certificate | None, dict]:
    if not peer_der:
        return None, {}
    try:
        cert = x509.load_der_x509_certificate(peer_der)
    except ValueError:
        return None, {"peer_certificate": "not a certificate"}
    info = ca_format.certificate_info(cert.public_bytes(serialization.Encoding.PEM))
    return cert, {"peer_subject": info.subject[:200], "peer_serial": f"{info.serial:x}", "peer_names": info.names[:8]}


def _check_caller(peer: x509.Certificate | None, join: FollowerJoin | None, facts: dict) -> None:
    """Only the leader this node joined, with a certificate from this cluster's CA."""
    if peer is None:
        raise RemovalRefused("no_client_certificate", "A removal notice needs the leader's client certificate.",
                             **facts)
    ca_row = _cluster_ca()
    pem = peer.public_bytes(serialization.Encoding.PEM)
    try:
        if ca_row is None:
            raise ValueError("this node has no cluster CA")
        ca_format.verify_issued_by(pem, ca_row.cert_pem.encode())
        info = ca_format.certificate_info(pem)
        now = timezone.now()
        if not info.not_before <= now <= info.not_after:
            raise ValueError("outside its validity")
    except Exception as exc:  # a bad signature, another issuer, an unusable CA: all the same answer
        raise RemovalRefused("not_cluster_certificate", "The caller's certificate is not one of this cluster's.",
                             problem=str(exc)[:200], **facts) from None
    if join is None:
        raise RemovalRefused("not_member", "This node is not a member of a cluster; there is nothing to remove.",
                             **facts)
    if join.leader_address not in info.names:
        raise RemovalRefused("not_leader", f"Only the leader ({join.leader_address}) tells this node it was "
                                           f"removed; the caller's certificate is for {', '.join(info.names)[:120]}.",
                             **facts)


@audited_refusals
def removal_notice_accept(*, peer_der: bytes | None, body: bytes, source_ip: str = "") -> tuple[NodeRemoval, bool]:
    """The leader says this node was removed. Checked in this order, each refusal
    audited with its code and nothing changed: a client certificate, from this
    cluster's CA, the leader's; the notice's shape; this cluster, this node (address
    and certificate serial). Returns (the removal, whether this notice told anything
    new); a notice repeated is answered again and changes nothing."""
    peer, facts = _peer_facts(peer_der)
    facts["source_ip"] = source_ip[:64]
    join = _member_join()
    _check_caller(peer, join, facts)
    notice = parse_notice(body)
    if notice.cluster_id != join.cluster_id:
        raise RemovalRefused("wrong_cluster", f"This node is a member of cluster {join.cluster_id}, not of "
                                              f"{notice.cluster_id[:64]}.", **facts)
    own = _own_certificate()
    if notice.address != join.own_address or own is None or own.serial.lower() != notice.certificate_serial:
        raise RemovalRefused("wrong_node", f"The notice is for {notice.address[:80]} with certificate "
                                           f"{notice.certificate_serial[:64]}, not for this node "
                                           f"({join.own_address}).", **facts)
    removal = (own_rows(NodeRemoval.objects, "address").select_for_update().filter(wiped_at__isnull=True)
               .order_by("-pk").first())
    told = {"request_number": notice.request_number, "request_id": notice.request_id,
            "removed_at": notice.removed_at, "reason": notice.reason, "leader_address": notice.leader_address}
    if removal is not None and removal.request_number == notice.request_number:
        return removal, False
    now = timezone.now()
    if removal is None:
        removal = _learn(source=RemovalSource.LEADER, join=join, notice_received_at=now, **told)
    else:
        for name, value in told.items():
            setattr(removal, name, value)
        removal.notice_received_at = now
        removal.save()
        audit_record(action=AuditAction.NODE_REMOVAL_NOTICE, target=_target(removal),
                     details={**_told_details(removal), **facts})
    return removal, True


def _target(removal: NodeRemoval) -> str:
    return f"node:{removal.address}"


def _told_details(removal: NodeRemoval) -> dict:
    return {"cluster_id": removal.cluster_id, "source": removal.source, "request_number": removal.request_number,
            "request_id": removal.request_id, "reason": removal.reason,
            "removed_at": removal.removed_at.isoformat() if removal.removed_at else None,
            "leader": removal.leader_address, "certificate_serial": removal.certificate_serial}


def _learn(*, source: str, join: FollowerJoin, evidence: str = "", **told) -> NodeRemoval:
    """Inside the caller's transaction: record the removal and its event; once that
    commits, etcd is no longer wanted (its configuration moved aside)."""
    own = _own_certificate()
    member = local_etcd.local_member_config()
    removal = NodeRemoval.objects.create(
        learned_at=timezone.now(), source=source, cluster_id=join.cluster_id, address=join.own_address,
        leader_address=told.pop("leader_address", "") or join.leader_address,
        certificate_serial=own.serial if own is not None else "", certificate_sha256=own.sha256 if own else "",
        etcd_member_name=member.name if member is not None else "", **told,
    )
    audit_record(action=AuditAction.NODE_REMOVED, target=_target(removal),
                 details={**_told_details(removal), "etcd_member": removal.etcd_member_name,
                          "certificate_kept_as_evidence": removal.certificate_sha256,
                          **({"evidence": evidence} if evidence else {})})
    transaction.on_commit(etcd_unwanted)
    return removal


def etcd_unwanted() -> bool:
    """Move the member configuration aside: ``serve`` stops the member within a second
    and never starts it again, and the systemd unit's ConditionPathExists= no longer
    holds. True if there was one to move."""
    path = local_etcd.config_path()
    try:
        os.replace(path, removed_config_path())
    except FileNotFoundError:
        return False
    return True


def removal_enforce() -> bool:
    """A removal this node knows of, yet a member configuration (a move cut short):
    move it aside now. Periodic, and cheap when there is nothing to do."""
    if local_etcd.config_path().exists() and removal_current() is not None:
        return etcd_unwanted()
    return False


# --- finding out from etcd ------------------------------------------------------------------------
def _peer_endpoints(join: FollowerJoin) -> list[str]:
    """Client URLs of the other members this node knows: the leader, and the members
    of the initial cluster it was handed (this node's own left out)."""
    own = peer_url(join.own_address, conf.etcd_peer_port())
    initial = ""
    for path in (local_etcd.config_path(), removed_config_path()):
        try:
            initial = str(json.loads(path.read_text()).get("initial_cluster", ""))
            break
        except (OSError, ValueError, AttributeError):
            continue
    hosts = [join.leader_address]
    for entry in initial.split(","):
        _name, _, url = entry.partition("=")
        if not url or url == own:
            continue
        match = re.match(r"^https://(\[[^\]]+\]|[^:/]+):\d+$", url)
        if match:
            hosts.append(match[1].strip("[]"))
    return [client_url(h, conf.etcd_client_port()) for h in dict.fromkeys(hosts) if h != join.own_address]


def removal_check(*, etcd_said_removed: bool = False, timeout: float = 2.0) -> NodeRemoval | None:
    """Ask the other members whether this node's etcd member is still in the cluster.
    Absent from their member list: this node was removed (the leader tells the details
    when it reaches the node). ``etcd_said_removed``: this node's own member exited
    saying so; believed when no other member answers. Returns a new removal or None."""
    join = _member_join()
    if join is None or join.state != JoinState.JOINED or removal_current() is not None:
        return None
    endpoints = _peer_endpoints(join)
    evidence = ""
    if endpoints:
        ca_file, cert_file, key_file = str(ca_cert_path()), str(settings.PAM_TLS_CERT), str(settings.PAM_TLS_KEY)
        try:
            members = EtcdClient(endpoints, ca_file, cert_file, key_file, timeout=timeout).member_list()
        except (EtcdException, OSError, ValueError):
            members = None
        if members is not None:
            own = peer_url(join.own_address, conf.etcd_peer_port())
            if any(own in m.peer_urls for m in members):
                return None
            evidence = f"absent from the member list of {len(members)} member{'s' if len(members) != 1 else ''}"
    if not evidence and etcd_said_removed:
        evidence = "this node's etcd member exited saying it was permanently removed"
    if not evidence:
        return None
    with transaction.atomic():
        if removal_current() is not None:
            return None
        return _learn(source=RemovalSource.ETCD, join=join, evidence=evidence)


def etcd_log_says_removed(log_path: Path, *, since: int = 0, tail_bytes: int = 64 * 1024) -> bool:
    """Whether the member's log, from offset ``since`` (where its last run began), says
    its peers refused it as removed (only the last ``tail_bytes`` are read)."""
    try:
        with open(log_path, "rb") as log:
            end = log.seek(0, os.SEEK_END)
            log.seek(max(since, end - tail_bytes, 0))
            return ETCD_REMOVED_TEXT.encode() in log.read()
    except OSError:
        return False


# --- wiping the cluster state ------------------------------------------------------------------------
def wipe_confirmation(removal: NodeRemoval) -> str:
    """What the operator types to confirm the wipe: this node's address."""
    return removal.address


def _wipe_refused(code: str, message: str, **details) -> RemovalRefused:
    return RemovalRefused(code, message, action=AuditAction.NODE_CLUSTER_WIPE_REFUSED, target="node:cluster-state",
                          **details)


@audited_refusals
def cluster_state_wipe(*, user, confirmation: str) -> NodeRemoval:
    """After a removal: forget the cluster on this node so that it can be set up again
    as a standalone server or join with a new bundle. The certificates stay as rows
    (marked replaced: the revoked one is evidence), the console gets a self-signed
    certificate, the cluster CA file, the etcd member and its data go, and the node is
    no longer finalised. The MEK stays (the audit signing key is sealed under it, and a
    rejoin of the same cluster needs it), but no longer binds the node: a bundle of
    another cluster replaces it, and the setup wizard keeps it when typed back or
    discards it for a new one; either way the audit signing key is re-sealed, not lost
    (``nodes.keys.mek_change_prepare``)."""
    removal = (own_rows(NodeRemoval.objects, "address").select_for_update().filter(wiped_at__isnull=True)
               .order_by("-pk").first())
    if removal is None:
        raise _wipe_refused("not_removed", "This node has not been removed from a cluster; there is nothing to wipe.")
    expected = wipe_confirmation(removal)
    if (confirmation or "").strip() != expected:
        raise _wipe_refused("wrong_confirmation", f"Type this node's address, {expected}, to confirm the wipe.",
                            typed=(confirmation or "")[:80])
    now = timezone.now()
    username = user.get_username() if user is not None else ""
    if shared_database_address():
        return _wipe_shared(removal, username=username, now=now)
    replaced = list(Certificate.objects.filter(replaced_at__isnull=True).values_list("kind", "serial"))
    Certificate.objects.filter(replaced_at__isnull=True).update(replaced_at=now)
    node, _ = Node.objects.select_for_update().get_or_create(**node_filter())
    node.role = NodeRole.STANDALONE
    node.finalised_at = None
    node.finalised_by = ""
    node.save()
    when = timezone.localtime(removal.removed_on).strftime("%Y-%m-%d")
    by = f" by request {removal.request_number}" if removal.request_number else ""
    for join in own_rows(FollowerJoin.objects, "own_address").select_for_update().filter(state__in=MEMBER_JOIN_STATES):
        join.state = JoinState.FAILED
        join.failure_reason = (f"Removed from cluster {removal.cluster_id} on {when}{by}; its cluster state was "
                               f"wiped by {username}.")
        join.sealed_join_token = join.sealed_poll_secret = ""
        join.save(update_fields=["state", "failure_reason", "sealed_join_token", "sealed_poll_secret", "updated_at"])
    removal.wiped_at = now
    removal.wiped_by = username
    removal.save(update_fields=["wiped_at", "wiped_by"])
    audit_record(action=AuditAction.NODE_CLUSTER_STATE_WIPED, target=_target(removal),
                 details={**_told_details(removal), "certificates_kept_as_evidence": [
                     {"kind": kind, "serial": serial} for kind, serial in replaced]})
    transaction.on_commit(cluster_files_wipe)
    return removal


# The removal's fields copied into the node's own database when it leaves the cluster's.
_REMOVAL_COPIED = ("learned_at", "source", "cluster_id", "address", "leader_address", "request_number", "request_id",
                   "removed_at", "reason", "notice_received_at", "certificate_serial", "certificate_sha256",
                   "etcd_member_name")


def _wipe_shared(removal: NodeRemoval, *, username: str, now) -> NodeRemoval:
    """The wipe of a node on the cluster's shared database (a replicated member): the
    cluster's chain records it and the node's row goes from the cluster's database;
    once that commits the node leaves it for its own (``replication.leave``), where
    the certificates, the node's setup and the cluster files are wiped as on any node.
    The cluster's certificate rows are the cluster's: never touched from here."""
    from pamportal.replication.leave import database_leave

    removal.wiped_at = now
    removal.wiped_by = username
    removal.save(update_fields=["wiped_at", "wiped_by"])
    Node.objects.filter(**node_filter()).delete()
    audit_record(action=AuditAction.NODE_CLUSTER_STATE_WIPED, target=_target(removal),
                 details={**_told_details(removal), "left_the_cluster_database": True})
    copied = {name: getattr(removal, name) for name in _REMOVAL_COPIED}
    transaction.on_commit(lambda: database_leave(removal=copied, username=username))
    return removal


def cluster_files_wipe() -> None:
    """The files of the wiped cluster state: the etcd member (configuration and data),
    the cluster CA file (``serve`` then stops the cluster listeners), and the console's
    certificate, replaced by a self-signed one as on first boot."""
    local_etcd.local_member_forget()
    ca_cert_path().unlink(missing_ok=True)
    names = ["localhost", "127.0.0.1", "::1", settings.PAM_NODE_ADDRESS]
    if settings.PAM_BIND_ADDRESS not in ("0.0.0.0", "::"):
        names.append(settings.PAM_BIND_ADDRESS)
    cert_pem, key_pem = ca_format.self_signed_certificate(list(dict.fromkeys(names)))
    write_private(Path(settings.PAM_TLS_KEY), key_pem, 0o600)
    write_private(Path(settings.PAM_TLS_CERT), cert_pem, 0o644)

