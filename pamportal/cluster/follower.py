"""First boot as a follower: open the joining bundle with the MEK, check the way to the
leader, ask the leader's setup API (2390) to join, and follow the request until this
node is a voting member of the cluster.

The leader's certificate is pinned to the CA carried in the bundle. Secrets this node
keeps meanwhile (join token, poll secret, its new private key) are sealed under the
MEK, which is installed once it has opened the bundle (so it is the cluster's).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from pamportal.accounts import totp_seal
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import Refused, audited_refusals
from pamportal.audit.services import audit_record
from pamportal.core.addresses import address_problem
from pamportal.crypto import bundle as bundle_format
from pamportal.crypto import ca as ca_format
from pamportal.crypto import mek as mek_format
from pamportal.jobs.choices import OutputLevel
from pamportal.jobs.registry import JobKind, StepSpec, register
from pamportal.jobs.services import job_create
from pamportal.nodes import keys, keystore
from pamportal.nodes import services as node_services
from pamportal.nodes.identity import node_filter, own_rows
from pamportal.nodes.models import Certificate, Node, NodeRole
from pamportal.preflight import conf as preflight_conf
from pamportal.preflight.checks import check_address_self
from pamportal.replication import join as replication_join
from pamportal.replication import process as replication_process

from . import conf as cluster_conf
from . import local_etcd, protocol
from .etcd_process import certificate_addresses
from .follower_models import FollowerJoin, JoinState, ReplicaState
from .follower_selectors import join_current
from .removed import cluster_files_wipe

logger = logging.getLogger(__name__)
FOLLOW_KIND = "cluster.follow"
CLOCK_LIMIT_SECONDS = 2.0
PROBE_TIMEOUT = 3.0
POLL_INTERVAL = 2.0
# One follow job asks the leader every POLL_INTERVAL for at most this long, then hands
# over to a new follow job (see ``join_follow``).
FOLLOW_ROUND_SECONDS = 300.0
# The seal purposes of what the follower keeps while joining.
_TOKEN, _POLL, _KEY = "join-token", "join-poll-secret", "node-tls-key"


class JoinRefused(Refused):
    """A refusal the operator reads, with a stable code for the audit trail."""

    def __init__(self, code: str, message: str, *, target: str = "join"):
        super().__init__(message, action=AuditAction.JOIN_REFUSED_LOCALLY, target=target, reason=message, code=code)

    def audit_details(self) -> dict:
        return {"code": self.code, "message": self.message}


# --- 1. open the bundle ----------------------------------------------------------------
@audited_refusals
def join_bundle_open(*, user, data: bytes, mek_text: str, own_address: str) -> FollowerJoin:
    """Open the bundle with the typed MEK and keep what it says. Refusals (wrong MEK,
    tampered, expired, for another address, not a bundle …) change nothing."""
    own_address = (own_address or "").strip()
    problem = address_problem(own_address)
    if problem:
        raise JoinRefused("bad_address", f"This node's address “{own_address[:80]}” {problem}.", target="join:bundle")
    try:
        key = mek_format.decode(mek_text)
    except mek_format.MekFormatError as error:
        raise JoinRefused("mek_format", str(error), target="join:bundle") from None
    try:
        opened = bundle_format.bundle_open(data, mek=key, now=timezone.now(), own_address=own_address)
    except bundle_format.BundleError as error:
        raise JoinRefused(error.code, error.message, target=f"bundle:{error.bundle_id or 'unknown'}") from None
    current = join_current()
    if current is not None and current.state not in RESTARTABLE_STATES:
        raise JoinRefused("join_under_way", "A join is already under way on this node; follow it on its page.",
                          target="join:bundle")
    replacing = keystore.mek_exists() and not keystore.mek_matches(key)
    binding = keys.mek_binding() if replacing else ""
    if binding:
        raise JoinRefused("other_mek", f"This node already holds another Master Encryption Key, and {binding}. "
                          f"{_OTHER_MEK_WAY.get(binding.split()[0], '')}", target="join:bundle")
    if current is not None and current.state != JoinState.FAILED:
        # An unsent join this bundle takes the place of: ended, as "start again" would.
        _discard(current, reason=f"Replaced by bundle {opened.bundle_id}, opened by {user.get_username()}.")
    if replacing:
        # The node held that key only for now (an ended or unsent join, the wizard's
        # key before finalise, a cluster's key kept after a wipe): the audit signing key
        # moves to the cluster's MEK, the rest sealed under the old one is destroyed.
        details = keys.mek_change_prepare(
            new_key=key, reason=f"replaced by the MEK of cluster {opened.cluster_id} (bundle {opened.bundle_id})")
        audit_record(action=AuditAction.MEK_DISCARDED, target=f"bundle:{opened.bundle_id}", details=details)
    join = FollowerJoin.objects.create(
        created_by=user.get_username(), own_address=opened.follower_address,
        leader_address=opened.leader_address, leader_ports=opened.leader_ports.as_dict(),
        leader_version=opened.leader_version, cluster_id=opened.cluster_id, bundle_id=opened.bundle_id,
        ca_cert_pem=opened.ca_cert_pem, bundle_expires=opened.expires,
        # Sealed under the typed key: the key file takes it last, below.
        sealed_join_token=mek_format.seal(key, _TOKEN, opened.join_token.encode()),
        mek_fingerprint=mek_format.fingerprint(key),
    )
    audit_record(action=AuditAction.JOIN_BUNDLE_OPENED, target=f"bundle:{opened.bundle_id}",
                 details={"leader": opened.leader_address, "cluster_id": opened.cluster_id,
                          "own_address": opened.follower_address, "mek_replaced": bool(replacing)})
    # Last: a failure writing the key file rolls the join and its events back.
    keys.mek_change_files(new_key=key)
    return join


# What an operator can do when the MEK this node holds is bound (``keys.mek_binding``),
# by the first word of the binding.
_OTHER_MEK_WAY = {
    "this": "Open a bundle of the cluster whose certificates this node holds, with that cluster's MEK; or, once "
            "that cluster has removed this node, wipe its cluster state and start again.",
    "a": "Follow that join on its page: once the leader ends it (denied, expired, failed), another bundle can be "
         "opened with another MEK.",
}


def _forget_join_mek(join: FollowerJoin, *, reason: str) -> bool:
    """Inside the caller's transaction, last: forget the MEK this join brought to the
    node, now that the join ended without joining, so that a bundle of another cluster
    opens with its own MEK. Kept when the node holds it for anything else: its own
    (the wizard's, or kept after a wipe), or bound (``keys.mek_binding``)."""
    node = Node.objects.filter(**node_filter()).first()
    if node is not None and node.mek_fingerprint:
        return False
    if keys.mek_binding():
        return False
    try:
        held = keystore.mek_load()
    except keystore.MekMissing:
        return False
    if not hmac.compare_digest(mek_format.fingerprint(held), join.mek_fingerprint):
        return False
    details = keys.mek_change_prepare(new_key=None, reason=reason)
    audit_record(action=AuditAction.MEK_DISCARDED, target=f"bundle:{join.bundle_id}", details=details)
    keys.mek_change_files(new_key=None)
    return True


# States in which nothing has reached the leader yet (or the leader ended the request):
# the operator may drop this join and open another bundle.
RESTARTABLE_STATES = (JoinState.OPENED, JoinState.CHECKED, JoinState.FAILED)
DISCARDED_REASON = "Discarded by {user} to start again with another bundle."


@audited_refusals
def join_discard(*, user) -> FollowerJoin | None:
    """Drop the join that has not been sent (or that the leader ended), so the operator
    can open another bundle. Refused while a request waits on the leader or the node
    is joining: the leader holds that request, and only it can end it."""
    join = own_rows(FollowerJoin.objects, "own_address").select_for_update().order_by("-pk").first()
    if join is None:
        return None
    if join.state not in RESTARTABLE_STATES:
        raise JoinRefused("join_pending", "The leader holds this node's join request; it cannot be discarded here. "
                          "Ask the approvers on the leader to deny it, or wait until it expires.",
                          target=f"bundle:{join.bundle_id}")
    _discard(join, reason=DISCARDED_REASON.format(user=user.get_username()))
    # The MEK came with this join: a bundle of another cluster brings its own.
    _forget_join_mek(join, reason=f"forgotten with the join of bundle {join.bundle_id}, discarded by "
                                  f"{user.get_username()}")
    return join


def _discard(join: FollowerJoin, *, reason: str) -> None:
    """Inside the caller's transaction: end an unsent (or ended) join and destroy its
    secrets; audited."""
    if join.state != JoinState.FAILED:
        join.state = JoinState.FAILED
        join.failure_reason = reason
    # The bundle's token, the poll secret and the key are of no further use.
    join.sealed_join_token = join.sealed_poll_secret = join.sealed_node_key = ""
    join.save(update_fields=["state", "failure_reason", "sealed_join_token", "sealed_poll_secret", "sealed_node_key",
                             "updated_at"])
    audit_record(action=AuditAction.JOIN_DISCARDED, target=f"bundle:{join.bundle_id}",
                 details={"leader": join.leader_address, "sent": bool(join.request_id)})


# --- 2. preflight against the leader -----------------------------------------------------
def _leader_context(join: FollowerJoin) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=join.ca_cert_pem)  # pinned: only the cluster CA
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _leader_url(join: FollowerJoin, path: str) -> str:
    host = join.leader_address
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{join.leader_ports['setup_api']}{path}"


def leader_call(join: FollowerJoin, path: str, *, body: dict | None = None, bearer: str = "",
                timeout: float = 10.0) -> tuple[int, dict]:
    """Call the leader's setup API; (HTTP status, JSON answer). Raises OSError when the
    leader cannot be reached or its certificate is not from the bundle's CA."""
    data = protocol.canonical(body) if body is not None else None
    request = urllib.request.Request(_leader_url(join, path), data=data, method="POST" if body is not None else "GET")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_leader_context(join)) as response:
            return response.status, json.loads(response.read(1 << 20) or b"{}")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read(1 << 20) or b"{}")
        except ValueError:
            return error.code, {}


def _check(check_id: str, title: str, ok: bool, measured: str, message: str) -> dict:
    return {"id": check_id, "title": title, "ok": ok, "measured": measured, "message": message}


def _reachable(host: str, port: int) -> tuple[bool, str]:
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return True, f"connected in {(time.monotonic() - started) * 1000:.0f} ms"
    except OSError as error:
        return False, error.strerror or str(error)


def _port_free(host: str, port: int) -> tuple[bool, str]:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the real server will: reuse past TIME_WAIT, but not a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as error:
            return False, error.strerror or str(error)
    return True, "free"


def join_preflight(*, user) -> FollowerJoin:
    """Check the way to the leader and this node's readiness; errors block the join."""
    join = join_current()
    if join is None or join.state not in (JoinState.OPENED, JoinState.CHECKED):
        raise JoinRefused("no_bundle", "Open a joining bundle first.")
    results = []
    names = {"https": "console (HTTPS)", "etcd_client": "etcd client", "etcd_peer": "etcd peer",
             "setup_api": "cluster setup API", "delegation": "delegation API"}
    for key, title in names.items():
        port = join.leader_ports[key]
        ok, measured = _reachable(join.leader_address, port)
        results.append(_check(f"leader.port.{port}", f"Leader's {title} port {port} reachable", ok, measured,
                              "reachable" if ok else f"cannot reach {join.leader_address}:{port}: {measured}"))
    # Clock and version: ask the leader (certificate pinned to the bundle's CA).
    try:
        before = time.time()
        status, answer = leader_call(join, protocol.SETUP_API_PREFIX + "time", timeout=PROBE_TIMEOUT + 2)
        after = time.time()
        offset = float(answer["epoch"]) - (before + after) / 2
        ok = status == 200 and abs(offset) <= CLOCK_LIMIT_SECONDS
        results.append(_check("clock.leader-offset", "Clock within 2 s of the leader's", ok, f"{offset:+.3f} s",
                              "in step" if ok else "this node's clock differs from the leader's by more than 2 s; "
                              "point both at the same NTP servers"))
        # The leader tells only its major.feature (older leaders: the full version).
        leader_version = str(answer.get("feature_version") or answer.get("version") or join.leader_version)
        replicated = answer.get("replicated") if isinstance(answer.get("replicated"), bool) else None
    except (OSError, ValueError, KeyError, TypeError) as error:
        results.append(_check("clock.leader-offset", "Clock within 2 s of the leader's", False, "no answer",
                              f"the leader's setup API did not answer over TLS pinned to the cluster CA: {error}"))
        leader_version = join.leader_version
        replicated = None
    try:
        compatible = protocol.feature_version_compatible(leader_version, settings.PAM_VERSION)
    except ValueError:  # not a version at all
        compatible = False
    results.append(_check("version.compatible", "Same major.feature version as the leader", compatible,
                          f"this node {settings.PAM_VERSION}, leader {leader_version}",
                          "compatible" if compatible else "upgrade this node to the leader's version first"))
    own = check_address_self(preflight_conf.context_default(address=join.own_address))
    results.append(_check("address.resolves-to-self", "This node's address resolves to itself",
                          own.status == "pass", own.measured, own.message))
    for port, title in ((settings.PAM_ETCD_CLIENT_PORT, "etcd client"), (settings.PAM_ETCD_PEER_PORT, "etcd peer"),
                        (settings.PAM_DELEGATION_API_PORT, "delegation API")):
        ok, measured = _port_free(join.own_address, port)
        results.append(_check(f"port.{port}.free", f"This node's {title} port {port} free", ok, measured,
                              "free" if ok else f"port {port} on {join.own_address} is in use: {measured}"))
    if replicated:
        results += _replica_checks(join)
    passed = all(r["ok"] for r in results)
    with transaction.atomic():
        join.preflight = results
        join.cluster_replicated = replicated
        join.state = JoinState.CHECKED if passed else JoinState.OPENED
        join.save(update_fields=["preflight", "cluster_replicated", "state", "updated_at"])
        audit_record(action=AuditAction.JOIN_PREFLIGHT, target=f"leader:{join.leader_address}",
                     outcome=Outcome.SUCCEEDED if passed else Outcome.FAILED,
                     details={"failed": [r["id"] for r in results if not r["ok"]]})
    return join


def _replica_checks(join: FollowerJoin) -> list[dict]:
    """The cluster's database is replicated: this node will run a PostgreSQL member
    under Patroni, a replica of the leader's, so Patroni must be here and its ports free."""
    results = []
    try:
        binary = replication_process.patroni_binary()
        results.append(_check("replica.patroni", "Patroni installed (this node becomes a database replica)", True,
                              str(binary), "installed"))
    except replication_process.PatroniNotInstalled as error:
        results.append(_check("replica.patroni", "Patroni installed (this node becomes a database replica)", False,
                              "missing", str(error)))
    for port, title in ((settings.PAM_POSTGRES_PORT, "PostgreSQL"), (settings.PAM_PATRONI_PORT, "Patroni REST API")):
        ok, measured = _port_free(join.own_address, port)
        results.append(_check(f"port.{port}.free", f"This node's {title} port {port} free", ok, measured,
                              "free" if ok else f"port {port} on {join.own_address} is in use: {measured}"))
    return results


# --- 3. ask the leader ---------------------------------------------------------------------
def join_request_send(*, user) -> FollowerJoin:
    """Send the join request (CSR, preflight summary, MEK proof) to the leader. Not one
    transaction: nothing is held open while the leader answers, and a refusal by the
    leader is recorded as such (``record()``), with nothing else changed."""
    join = join_current()
    if join is None or join.state != JoinState.CHECKED:
        raise JoinRefused("not_checked", "Run the checks against the leader first; they must all pass.")
    key = keystore.mek_load()
    names = list(dict.fromkeys([join.own_address, *certificate_addresses(join.own_address)]))
    csr_pem, key_pem = ca_format.make_csr(names=names)
    request = {
        "bundle_id": join.bundle_id,
        "token": keystore.unseal(purpose=_TOKEN, sealed=join.sealed_join_token).decode(),
        "follower_address": join.own_address,
        "follower_version": settings.PAM_VERSION,
        "csr_pem": csr_pem.decode(),
        "preflight_summary": {"passed": [r["id"] for r in join.preflight if r["ok"]],
                              "failed": [r["id"] for r in join.preflight if not r["ok"]]},
    }
    request["proof"] = bundle_format.join_proof(key, protocol.proof_message(request))
    try:
        status, answer = leader_call(join, protocol.SETUP_API_PREFIX + "join", body=request)
    except OSError as error:
        refused = JoinRefused("leader_unreachable", f"The leader's setup API did not answer: {error}",
                              target="join:request")
        refused.record()
        raise refused from None
    if status != 201 or not answer.get("ok"):
        error = answer.get("error") or {}
        refused = JoinRefused(error.get("code", f"http_{status}"),
                              error.get("message", f"The leader refused the join (HTTP {status})."),
                              target="join:request")
        refused.record()
        raise refused
    with transaction.atomic():
        join.request_id = answer["request_id"]
        join.sealed_poll_secret = keystore.seal(purpose=_POLL, data=answer["poll_secret"].encode())
        join.sealed_node_key = keystore.seal(purpose=_KEY, data=key_pem)
        join.csr_pem = csr_pem.decode()
        join.state = JoinState.REQUESTED
        join.last_status = {"state": answer.get("state"), "approvals": 0,
                            "required_approvals": answer.get("required_approvals")}
        join.job = job_create(kind=FOLLOW_KIND, params={"join_id": join.pk}, created_by=user,
                              title=f"Join the cluster of {join.leader_address}")
        join.save()
        audit_record(action=AuditAction.JOIN_REQUESTED, target=f"leader:{join.leader_address}",
                     details={"request_id": join.request_id, "bundle_id": join.bundle_id})
    return join


# --- 4. follow the request until this node is a member --------------------------------------
def _apply_handover(join: FollowerJoin, handover: dict) -> None:
    """Install the certificate, the CA and this node's etcd member configuration. Safe to
    run again (a re-queued step): every write is idempotent."""
    cert_pem, ca_pem = handover["cert_pem"].encode(), handover["ca_pem"].encode()
    if ca_pem.strip() != join.ca_cert_pem.encode().strip():
        raise RuntimeError("the leader handed over a CA other than the one in the bundle")
    ca_format.verify_issued_by(cert_pem, ca_pem)
    key_pem = keystore.unseal(purpose=_KEY, sealed=join.sealed_node_key)
    if not ca_format.key_matches(cert_pem, key_pem):
        raise RuntimeError("the certificate the leader signed is not for this node's key")
    now = timezone.now()
    with transaction.atomic():
        keys.certificates_install(ca_cert_pem=ca_pem, cert_pem=cert_pem, sealed_key=join.sealed_node_key, now=now)
        node, _ = Node.objects.select_for_update().get_or_create(**node_filter())
        node.address = join.own_address
        node.role = NodeRole.FOLLOWER
        node.mek_fingerprint = join.mek_fingerprint
        node.save()
        join.state = JoinState.JOINING
        database = handover.get("database") or {}
        if database.get("replicated"):
            join.replica = {**join.replica, "hosts": list(database.get("hosts") or []),
                            "totp_seal_key": str(database.get("totp_seal_key") or "")}
        join.save(update_fields=["state", "replica", "updated_at"])
        audit_record(action=AuditAction.JOIN_HANDOVER_APPLIED, target=f"node:{join.own_address}",
                     details={"etcd_member": handover.get("etcd_member_name", ""),
                              "database_replicated": bool(database.get("replicated"))})
    node_services.node_tls_files_write(cert_pem=cert_pem, key_pem=key_pem, ca_cert_pem=ca_pem)
    local_etcd.local_member_configure(
        address=join.own_address, name=handover["etcd_member_name"],
        initial_cluster=handover["etcd_initial_cluster"], initial_state="existing",
        # A leader from before per-cluster tokens hands none over: its cluster's is the old one.
        cluster_token=handover.get("etcd_initial_cluster_token") or local_etcd.LEGACY_CLUSTER_TOKEN,
    )


def _finish(join: FollowerJoin) -> None:
    with transaction.atomic():
        Node.objects.filter(**node_filter()).update(finalised_at=timezone.now(), finalised_by=join.created_by)
        join.state = JoinState.JOINED
        join.save(update_fields=["state", "updated_at"])
        audit_record(action=AuditAction.JOIN_COMPLETED, target=f"node:{join.own_address}",
                     details={"leader": join.leader_address, "request_id": join.request_id})


def _handover_undo(join: FollowerJoin) -> list[str]:
    """Inside the caller's transaction: the leader undoes a failed join (removes the
    member, revokes the certificate it signed), so this node undoes its half of the
    handover: the certificates it installed stay only as replaced rows (evidence), the
    node is no follower and no longer records the cluster's MEK as its own; once this
    commits the console gets a self-signed certificate again. Returns the serials."""
    now = timezone.now()
    current = Certificate.objects.filter(replaced_at__isnull=True)
    serials = list(current.values_list("serial", flat=True))
    current.update(replaced_at=now)
    node = Node.objects.select_for_update().filter(**node_filter()).first()
    if node is not None and node.finalised_at is None:
        node.role = NodeRole.STANDALONE
        if node.mek_fingerprint == join.mek_fingerprint and node.mek_generated_at is None:
            node.mek_fingerprint = ""
        node.save()
    transaction.on_commit(cluster_files_wipe)
    return serials


def _fail(join: FollowerJoin, reason: str) -> None:
    with transaction.atomic():
        undone = _handover_undo(join) if join.state == JoinState.JOINING else []
        join.state = JoinState.FAILED
        join.failure_reason = reason
        join.save(update_fields=["state", "failure_reason", "updated_at"])
        audit_record(action=AuditAction.JOIN_FAILED, target=f"node:{join.own_address}", outcome=Outcome.FAILED,
                     details={"reason": reason, "request_id": join.request_id,
                              **({"certificates_kept_as_evidence": undone} if undone else {})})
        # Ended without joining: the MEK it brought goes, so that a bundle of another
        # cluster opens with its own (kept if the node holds it for anything else).
        _forget_join_mek(join, reason=f"forgotten with the join of bundle {join.bundle_id}, which failed")
    try:
        # Nothing of a half-made database replica stays (its member directory).
        replication_join.replica_forget()
    except Exception as error:  # noqa: BLE001 — the join's failure is recorded; this is tidying
        logger.warning("the database member of the failed join was not removed: %s", error)
    local_etcd.local_member_forget()


def _follow_until(ctx) -> datetime:
    """When following gives up: carried from round to round, counted from the first."""
    carried = parse_datetime(ctx.params.get("follow_until") or "")
    return carried or ctx.job.created_at + timedelta(seconds=cluster_conf.join_follow_seconds())


def _poll_once(ctx, join: FollowerJoin, secret: str, last: tuple | None) -> tuple[dict | None, tuple | None]:
    """Ask the leader once. Returns (the step's result when the follow is over, what was
    seen); raises when the join failed. (None, …): ask again later."""
    status, answer = leader_call(join, f"{protocol.SETUP_API_PREFIX}join/{join.request_id}", bearer=secret)
    if status != 200 or not answer.get("ok"):
        message = (answer.get("error") or {}).get("message", f"HTTP {status}")
        _fail(join, message)
        raise RuntimeError(f"the leader refused the poll: {message}")
    seen = (answer["state"], answer.get("approvals"), answer.get("denials"), bool(answer.get("handover")))
    if seen != last:
        ctx.log(f"leader says: {answer['state']}; approvals {answer.get('approvals')} of "
                f"{answer.get('required_approvals')}, denials {answer.get('denials')}")
        FollowerJoin.objects.filter(pk=join.pk).update(last_status=answer | {"handover": bool(answer.get("handover"))})
    if answer["state"] in ("denied", "expired", "failed"):
        reason = answer.get("failure_reason") or f"the join request was {answer['state']} on the leader"
        _fail(join, reason)
        raise RuntimeError(reason)
    handover = answer.get("handover")
    if handover and join.state != JoinState.JOINING:
        ctx.log("certificate and etcd configuration received; starting this node's etcd member")
        _apply_handover(join, handover)
        join.refresh_from_db()
    replica = answer.get("replica") or {}
    if (replica.get("wanted") and replica.get("promoted") and not replica.get("reported")
            and join.state == JoinState.JOINING and answer["state"] == "joining"):
        _replica_steps(ctx, join, secret)
        join.refresh_from_db()
    if answer["state"] == "joined":
        _finish(join)
        ctx.log("this node is a voting member of the cluster")
        result = {"state": "joined", "leader": join.leader_address}
        join.refresh_from_db()
        if join.replica_state == ReplicaState.REPORTED:
            result["database"] = _switch(ctx, join)
        return result, seen
    return None, seen


# --- 5. a replica of the cluster's database (when the leader's is replicated) ----------------
def _replica_report(join: FollowerJoin, secret: str, report: dict) -> None:
    status, answer = leader_call(join, f"{protocol.SETUP_API_PREFIX}join/{join.request_id}/replica", body=report,
                                 bearer=secret)
    if status != 200 or not answer.get("ok"):
        message = (answer.get("error") or {}).get("message", f"HTTP {status}")
        raise RuntimeError(f"the leader refused the replica report: {message}")


def _replica_save(join: FollowerJoin, state: str, **replica) -> None:
    join.replica_state = state
    join.replica = {**join.replica, **replica}
    join.save(update_fields=["replica_state", "replica", "updated_at"])


def _replica_steps(ctx, join: FollowerJoin, secret: str) -> None:
    """This node's etcd member votes: bootstrap its database replica from the leader,
    seal its own audit trail, tell the leader (``replication.join``). Each part is done
    once (``replica_state``); a failure is reported to the leader, which undoes the join
    (the poll then sees it failed, and ``_fail`` removes what is left here)."""
    member = ""
    try:
        if join.replica_state in ("", ReplicaState.FAILED):
            if join.replica_state == ReplicaState.FAILED:
                member = join.replica.get("member", "")
                raise replication_join.ReplicaFailed(join.replica.get("reason", "the replica failed"))
            bootstrap = replication_join.replica_bootstrap(leader=join.leader_address, log=ctx.log)
            member = bootstrap.member
            with transaction.atomic():
                _replica_save(join, ReplicaState.READY, member=bootstrap.member,
                              postgres_port=bootstrap.postgres_port, bootstrap_seconds=round(bootstrap.seconds, 2))
                audit_record(action=AuditAction.JOIN_REPLICA_READY, target=f"node:{join.own_address}",
                             details={"member": bootstrap.member, "leader": join.leader_address,
                                      "state": bootstrap.state, "role": bootstrap.role,
                                      "seconds": round(bootstrap.seconds, 2)})
        if join.replica_state == ReplicaState.READY:
            ctx.log("sealing this node's audit trail from before the join into a signed export")
            sealed = replication_join.pre_join_audit_seal(
                action=AuditAction.JOIN_AUDIT_SEALED, target=f"node:{join.own_address}",
                details={"leader": join.leader_address, "cluster_id": join.cluster_id,
                         "why": "this node's accounts and audit trail are replaced by the cluster's; its trail up "
                                "to here is kept as a signed export in its data dir"})
            with transaction.atomic():
                _replica_save(join, ReplicaState.SEALED, pre_join_head=sealed["head"], export=sealed["export"],
                              export_path=sealed["path"])
            ctx.log(f"pre-join trail sealed: head {sealed['head']['position']} ({sealed['head']['hash'][:16]}…), "
                    f"{sealed['path']}")
        if join.replica_state == ReplicaState.SEALED:
            _replica_report(join, secret, {
                "outcome": "ready", "reason": "", "member": join.replica["member"],
                "postgres_port": join.replica["postgres_port"], "pre_join_head": join.replica["pre_join_head"],
                "export": join.replica["export"]})
            with transaction.atomic():
                _replica_save(join, ReplicaState.REPORTED)
            ctx.log("the leader recorded the replica and the pre-join head in the cluster's chain")
    except replication_join.ReplicaFailed as failed:
        reason = str(failed)
        ctx.log(f"the database replica failed: {reason}", level=OutputLevel.ERROR)
        if join.replica_state != ReplicaState.FAILED:
            with transaction.atomic():
                _replica_save(join, ReplicaState.FAILED, reason=reason[:2000], member=member)
        # The leader undoes the join with this reason (and the poll sees it failed).
        _replica_report(join, secret, {"outcome": "failed", "reason": reason[:2000],
                                       "member": member or local_etcd_member_name(join), "postgres_port": None,
                                       "pre_join_head": None, "export": None})


def local_etcd_member_name(join: FollowerJoin) -> str:
    config = local_etcd.local_member_config()
    return config.name if config is not None else local_etcd.member_name(join.own_address)


def _totp_key_adopt(join: FollowerJoin) -> bool:
    """The cluster's TOTP seal key, from the handover (sealed under the MEK), before the
    console reads the cluster's TOTP devices. A leader from before the key was handed
    over sends none: its devices then open on the nodes that enrolled them only."""
    sealed = join.replica.get("totp_seal_key") or ""
    if not sealed:
        return False
    return totp_seal.key_adopt(keystore.unseal(purpose=protocol.TOTP_KEY_PURPOSE, sealed=sealed))


def _switch(ctx, join: FollowerJoin) -> dict:
    """Last: this node's database becomes the cluster's (``database.json``); recorded in
    its own trail first, and the file written once that commits. ``serve`` notices the
    file, starts the member and moves the console and the worker onto it."""
    hosts = list(join.replica.get("hosts") or [])
    if join.replica_state != ReplicaState.SWITCHED:
        with transaction.atomic():
            _replica_save(join, ReplicaState.SWITCHED)
            audit_record(action=AuditAction.JOIN_DATABASE_SWITCHED, target=f"node:{join.own_address}",
                         details={"hosts": hosts, "member": join.replica.get("member"),
                                  "pre_join_head": join.replica.get("pre_join_head"),
                                  "export": join.replica.get("export_path")})
    # After the record commits (a step run again writes it again: the record says switched).
    # Its configuration as serve runs it (the join ran it as never the synchronous standby).
    replication_join.member_config_for_serve()
    if _totp_key_adopt(join):
        ctx.log("the cluster's TOTP key installed: second factors enrolled on any node work on this one "
                "(this node's own key is kept for its own database)")
    written = replication_join.database_switch(hosts=hosts, member=join.replica["member"],
                                               node_address=join.own_address)
    ctx.log("database.json written: this node now uses the cluster's database ("
            + ", ".join(f"{h.host}:{h.port}" for h in written.hosts) + "); the node's supervisor moves the console "
            "and the worker onto it")
    return {"hosts": [f"{h.host}:{h.port}" for h in written.hosts], "member": written.member}


def _follow_again(ctx, join: FollowerJoin, follow_until: datetime) -> dict:
    """Hand the follow over to a new follow job (queued once this commits), unless this
    round is no longer the join's own (its lease was lost, or a newer round runs)."""
    rounds = int(ctx.params.get("round") or 1) + 1
    with transaction.atomic():
        locked = FollowerJoin.objects.select_for_update().get(pk=join.pk)
        if locked.job_id != ctx.job.pk or ctx.lease_lost.is_set():
            return {"state": "superseded"}
        locked.job = job_create(
            kind=FOLLOW_KIND, created_by=ctx.job.created_by, title=ctx.job.title,
            params={"join_id": join.pk, "follow_until": follow_until.isoformat(), "round": rounds},
        )
        locked.save(update_fields=["job", "updated_at"])
    ctx.log(f"still waiting for the leader; the follow goes on in job #{locked.job_id}")
    return {"state": "waiting", "next_job": locked.job_id, "round": rounds}


def join_follow(ctx) -> dict:
    """The follow job's step, one bounded round of it: ask the leader every
    POLL_INTERVAL, apply the handover, and finish or fail; after FOLLOW_ROUND_SECONDS
    with no outcome, queue the next round as a new follow job and succeed. The engine
    has no "run me again in N seconds" result, so the round re-enqueues itself with
    ``job_create``. A round stops as soon as its worker loses the step's lease (the
    reaper hands the step to another worker), and the whole follow gives up after
    ``PAM_JOIN_FOLLOW_SECONDS``."""
    join = FollowerJoin.objects.get(pk=ctx.params["join_id"])
    if join.state == JoinState.JOINED:
        if join.replica_state in (ReplicaState.REPORTED, ReplicaState.SWITCHED) and not (
                replication_join.database_replicated()):  # a worker that died before the switch
            return {"state": "joined", "database": _switch(ctx, join)}
        return {"state": "joined"}
    secret = keystore.unseal(purpose=_POLL, sealed=join.sealed_poll_secret).decode()
    follow_until = _follow_until(ctx)
    round_ends = min(follow_until, timezone.now() + timedelta(seconds=FOLLOW_ROUND_SECONDS))
    last = None
    while not ctx.lease_lost.is_set():
        now = timezone.now()
        if now >= follow_until:
            _fail(join, "the join request did not finish in time")
            raise RuntimeError("the join request did not finish in time")
        if now >= round_ends:
            return _follow_again(ctx, join, follow_until)
        try:
            result, last = _poll_once(ctx, join, secret, last)
        except OSError as error:
            ctx.log(f"leader not reachable, trying again: {error}")
            ctx.lease_lost.wait(POLL_INTERVAL * 2)
            continue
        if result is not None:
            return result
        ctx.lease_lost.wait(POLL_INTERVAL)
    ctx.log("this worker lost the step's lease; the follow goes on where the step is run again",
            level=OutputLevel.WARNING)
    return {"state": "lease lost"}


register(JobKind(name=FOLLOW_KIND, title="Join a cluster",
                 steps=(StepSpec("follow", "Follow the join request on the leader", join_follow, max_attempts=3),)))
