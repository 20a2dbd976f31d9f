"""The cluster's job kinds: making a bundle, joining a follower, removing a node.

The join follows etcd's own order: sign the follower's certificate, add it as a
learner, hand over what it needs to start its member, wait for the member to start
and catch up, promote it, mark it active. Every step reads the request's row first
and acts only on what is not done yet (the certificate, the stored member id, a
member already holding the follower's peer URL), so a task delivered twice or a step
re-run after its worker died neither signs twice nor adds a second learner. Any
failure undoes the join: the learner is removed from etcd, the certificate revoked,
the request failed with the reason.
"""

from __future__ import annotations

import ipaddress
import socket
import time

from django.db import transaction
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record
from pamportal.core import config
from pamportal.crypto import ca
from pamportal.jobs.choices import Status
from pamportal.jobs.registry import RUNS_ON_LEADER, JobKind, StepSpec, register
from pamportal.nodes import keystore
from pamportal.nodes.models import SEAL_PURPOSE, CertificateKind, NodeRole
from pamportal.replication import join as replication_join

from . import conf, connections
from .bundles import BUNDLE_KIND, bundle_build
from .etcd import EtcdException, LearnerNotReady, MemberNotLearner
from .etcd_process import certificate_addresses, initial_cluster_for_join
from .follower_models import JoinReplica
from .leadership import leadership_move
from .local_etcd import member_name
from .members import (
    ca_row,
    certificate_revoke,
    follower_node_forget,
    leader_member_ensure,
    member_certificate_serial,
    node_locked,
)
from .models import ClusterMember, JoinRequest, MemberRole, MemberState, RemovalRequest, RequestState
from .quorum import quorum_ok_after_remove
from .refusals import request_target
from .removal import REMOVABLE_STATES, REMOVE_KIND, removal_notify
from .requests import JOIN_KIND, LEADERSHIP_KIND, request_changed


class JoinFailure(RuntimeError):
    """A join step cannot go on; the message is the reason the request fails with."""


class RequestClosed(RuntimeError):
    """The request is no longer being carried out (failed, denied ...); nothing to undo."""


# --- the bundle -----------------------------------------------------------------------------
def _bundle_build(ctx) -> dict:
    result = bundle_build(bundle_pk=ctx.params["bundle_id"])
    ctx.log(f"bundle {result['bundle_id']}: " + ("file written" if "bytes" in result else
                                                 result.get("skipped", "already written")))
    return result


BUNDLE = register(JobKind(
    name=BUNDLE_KIND, title="Joining bundle",
    runs_on=RUNS_ON_LEADER,
    steps=(StepSpec("build", "Write the encrypted bundle file", _bundle_build, max_attempts=2),),
))


# --- join helpers -----------------------------------------------------------------------------
def _request(request_id: int, *, lock: bool = False) -> JoinRequest:
    rows = JoinRequest.objects.select_related("bundle")
    if lock:
        rows = rows.select_for_update(of=("self",))
    return rows.get(pk=request_id)


def _ensure_running(request: JoinRequest) -> None:
    if request.state not in (RequestState.APPROVED, RequestState.RUNNING):
        raise RequestClosed(f"the join request is {request.get_state_display().lower()}")


def _names_for(address: str) -> list[str]:
    """The follower's address and the IPs it resolves to (best effort, bounded), plus
    what etcd needs for peers on loopback aliases (see ``certificate_addresses``)."""
    names = [address]
    try:
        ipaddress.ip_address(address)
        return list(dict.fromkeys(names + certificate_addresses(address)))
    except ValueError:
        pass
    try:
        for info in socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)[:8]:
            ip = info[4][0]
            if ip not in names:
                names.append(ip)
    except OSError:
        pass
    return names


def join_undo(*, request_id: int, reason: str, log=None) -> bool:
    """Undo whatever a failed join did: the learner (found by the stored id or the
    follower's peer URL) removed from etcd, the certificate revoked, the member row
    failed, the request failed with ``reason``. Idempotent; a joined request is kept."""
    def say(text: str) -> None:
        if log is not None:
            log(text, "warning")

    undoable = (RequestState.APPROVED, RequestState.RUNNING, RequestState.FAILED)
    request = _request(request_id)
    if request.state not in undoable:
        return False
    member_id, address = request.etcd_member_id, request.follower_address
    problems: list[str] = []
    removed = False
    try:
        client = connections.etcd_client()
        members = client.member_list()
        target = connections.find_member(members, member_id=member_id or None, address=address)
        # Only ever the follower's own member: never one with another peer URL.
        if target is not None and connections.member_peer_url(address) in target.peer_urls:
            client.member_remove(target.id, wait=10)
            removed = True
            say(f"etcd member {target.hex_id} ({address}) removed")
    except EtcdException as exc:
        problems.append(f"the learner could not be removed from etcd: {exc}")
        say(problems[-1])
    with transaction.atomic():
        request = _request(request_id, lock=True)
        if request.state not in undoable:
            return False
        revoked = certificate_revoke(serial=request.cert_serial, address=address,
                                              reason=f"join failed: {reason}")
        ClusterMember.objects.filter(address=address, role=MemberRole.FOLLOWER,
                                     state__in=[MemberState.JOINING]).update(state=MemberState.FAILED)
        follower_node_forget(address)
        first = request.state != RequestState.FAILED
        request.state = RequestState.FAILED
        if first or not request.failure_reason:
            request.failure_reason = reason[:2000] + ("" if not problems else " (" + "; ".join(problems) + ")")
        request.finished_at = request.finished_at or timezone.now()
        request.save(update_fields=["state", "failure_reason", "finished_at"])
        if first or removed or revoked:
            audit_record(action=AuditAction.CLUSTER_JOIN_FAILED, target=request_target(request), outcome=Outcome.FAILED,
                         details={"reason": reason[:2000], "learner_removed": removed, "certificate_revoked": revoked,
                                  "problems": problems, "address": address})
    return True


def _guarded(step):
    """Run a join step; on a failure undo the join and fail the step with the reason.
    A worker that lost its lease leaves the undo to whoever holds the step now."""

    def run(ctx):
        request_id = ctx.params["request_id"]
        try:
            return step(ctx, request_id)
        except RequestClosed as closed:
            # Failed meanwhile (another worker's undo, the reconciler): make sure
            # nothing this step did is left behind, then stop.
            join_undo(request_id=request_id, reason=str(closed), log=ctx.log)
            raise RuntimeError(f"nothing to do: {closed}") from None
        except Exception as exc:
            if ctx.lease_lost.is_set():
                raise
            reason = str(exc) if isinstance(exc, JoinFailure) else f"{type(exc).__name__}: {exc}"
            ctx.log(f"join failed: {reason}; undoing it", "error")
            join_undo(request_id=request_id, reason=reason, log=ctx.log)
            raise JoinFailure(reason) from exc

    run.__name__ = step.__name__
    return run


# --- the join steps ----------------------------------------------------------------------------
def _sign(ctx, request_id: int) -> dict:
    request = _request(request_id)
    _ensure_running(request)
    names = _names_for(request.follower_address)  # DNS outside the transaction
    with transaction.atomic():
        node = node_locked()  # lock order: the node row, then the request
        request = _request(request_id, lock=True)
        _ensure_running(request)
        if request_changed(request):
            raise JoinFailure("the request changed after the votes were cast (its hash no longer matches)")
        if request.cert_pem:
            ctx.log(f"certificate {request.cert_serial} was already issued")
            return {"serial": request.cert_serial, "again": True}
        leader_member_ensure(node)
        ca_cert = ca_row()
        ca_key = keystore.unseal(purpose=SEAL_PURPOSE[CertificateKind.CLUSTER_CA], sealed=ca_cert.sealed_key)
        cert_pem = ca.sign_csr(ca_cert_pem=ca_cert.cert_pem.encode(), ca_key_pem=ca_key,
                               csr_pem=request.csr_pem.encode(), names=names)
        info = ca.certificate_info(cert_pem)
        member = ClusterMember.objects.select_for_update().filter(address=request.follower_address).first()
        if member is not None and member.state in (MemberState.ACTIVE, MemberState.REMOVING):
            raise JoinFailure(f"{request.follower_address} is already a member of the cluster")
        if member is None:
            member = ClusterMember(address=request.follower_address)
        member.role = MemberRole.FOLLOWER
        member.state = MemberState.JOINING
        member.version = request.follower_version
        member.cert_serial = f"{info.serial:x}"
        member.etcd_member_id = ""
        member.etcd_name = request.follower_address
        member.joined_at = member.removed_at = None
        member.save()
        request.cert_pem = cert_pem.decode()
        request.cert_serial = f"{info.serial:x}"
        request.ca_pem = ca_cert.cert_pem
        request.state = RequestState.RUNNING
        request.save(update_fields=["cert_pem", "cert_serial", "ca_pem", "state"])
        audit_record(action=AuditAction.CLUSTER_JOIN_CERT_ISSUED, target=request_target(request),
                     details={"serial": request.cert_serial, "names": names, "sha256": info.sha256,
                              "not_after": info.not_after.isoformat()})
    ctx.log(f"certificate {request.cert_serial} issued for {', '.join(names)}")
    return {"serial": request.cert_serial, "names": names}


def _learner(ctx, request_id: int) -> dict:
    request = _request(request_id)
    _ensure_running(request)
    if not request.cert_pem:
        raise JoinFailure("no certificate was issued before the learner step")
    client = connections.etcd_client()
    members = client.member_list()
    peer = connections.member_peer_url(request.follower_address)
    if request.etcd_member_id:
        found = connections.find_member(members, member_id=request.etcd_member_id)
        if found is None:
            raise JoinFailure(f"the learner {request.etcd_member_id} is no longer in etcd")
        ctx.log(f"the learner {found.hex_id} was already added")
        return {"member_id": request.etcd_member_id, "again": True}
    existing = connections.find_member(members, address=request.follower_address)
    if existing is not None:
        # A learner this join added before its worker died, found by its peer URL.
        member = existing
        ctx.log(f"etcd already has a member with {peer} ({member.hex_id}); adopting it")
    else:
        # etcd refuses membership changes for ~5 s after a promote or restart
        # ("unhealthy cluster"); the refusal is definite, so waiting it out is safe.
        member, members = client.member_add([peer], learner=True, wait=10)
        ctx.log(f"added {peer} to etcd as learner {member.hex_id}")
    with transaction.atomic():
        request = _request(request_id, lock=True)
        _ensure_running(request)
        request.etcd_member_id = str(member.id)
        request.etcd_member_name = member_name(request.follower_address)
        request.save(update_fields=["etcd_member_id", "etcd_member_name"])
        ClusterMember.objects.filter(address=request.follower_address).update(etcd_member_id=str(member.id))
        audit_record(action=AuditAction.CLUSTER_JOIN_LEARNER_ADDED, target=request_target(request),
                     details={"member_id": str(member.id), "hex_id": member.hex_id, "peer_url": peer,
                              "adopted": existing is not None})
    return {"member_id": str(member.id), "hex_id": member.hex_id}


def _handover(ctx, request_id: int) -> dict:
    request = _request(request_id)
    _ensure_running(request)
    if not request.etcd_member_id:
        raise JoinFailure("no learner was added before the handover")
    members = connections.etcd_client().member_list()
    if connections.find_member(members, member_id=request.etcd_member_id) is None:
        raise JoinFailure(f"the learner {request.etcd_member_id} is no longer in etcd")
    initial = initial_cluster_for_join(members, int(request.etcd_member_id), request.etcd_member_name)
    with transaction.atomic():
        request = _request(request_id, lock=True)
        _ensure_running(request)
        first = request.handed_over_at is None
        request.etcd_initial_cluster = initial
        request.handed_over_at = request.handed_over_at or timezone.now()
        request.save(update_fields=["etcd_initial_cluster", "handed_over_at"])
        # Decided once, with the handover: a leader whose database is its Patroni member
        # makes the follower a replica of it (the step "replica" waits for that).
        replica = JoinReplica.objects.filter(request=request).first()
        if first and replica is None and replication_join.database_replicated():
            replica = JoinReplica.objects.create(request=request, hosts=replication_join.database_hosts())
        if first:
            audit_record(action=AuditAction.CLUSTER_JOIN_HANDED_OVER, target=request_target(request),
                         details={"initial_cluster": initial, "member_name": request.etcd_member_name,
                                  "database_replicated": replica is not None})
    ctx.log(f"handed over; the follower starts its member with --initial-cluster {initial}"
            + ("; it then becomes a replica of the cluster's database" if replica is not None else
               "; the cluster's database is not replicated (the leader is not on PostgreSQL under Patroni)"))
    return {"initial_cluster": initial, "database_replicated": replica is not None}


def _promote(ctx, request_id: int) -> dict:
    request = _request(request_id)
    _ensure_running(request)
    wait = conf.join_wait_seconds()
    interval = max(0.01, conf.join_poll_interval())
    deadline = time.monotonic() + wait
    client = connections.etcd_client()
    started = False
    last_problem = ""
    for _ in range(int(wait / interval) + 2):  # bounded, and by the deadline too
        if ctx.lease_lost.is_set():
            raise RuntimeError("this worker lost the step's lease")
        try:
            members = client.member_list()
        except EtcdException as exc:
            members, last_problem = None, str(exc)
        if members is not None:
            member = connections.find_member(members, member_id=request.etcd_member_id)
            if member is None:
                raise JoinFailure(f"the learner {request.etcd_member_id} is no longer in etcd")
            if member.is_voter:
                ctx.log(f"member {member.hex_id} is a voting member")
                break
            if member.started:
                if not started:
                    ctx.log(f"the follower's member {member.name} has started; promoting it once it has caught up")
                started = True
                try:
                    client.member_promote(member.id)
                    ctx.log(f"member {member.hex_id} promoted")
                    break
                except MemberNotLearner:
                    break
                except LearnerNotReady as exc:
                    last_problem = str(exc)
                except EtcdException as exc:
                    last_problem = str(exc)
        if time.monotonic() >= deadline:
            if not started:
                raise JoinFailure(f"the follower's etcd member did not start within {wait:g} s")
            raise JoinFailure(f"the follower's etcd member did not catch up within {wait:g} s ({last_problem})")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    else:
        raise JoinFailure(f"the follower's etcd member was not promoted within {wait:g} s")
    with transaction.atomic():
        request = _request(request_id, lock=True)
        _ensure_running(request)
        audit_record(action=AuditAction.CLUSTER_JOIN_PROMOTED, target=request_target(request),
                     details={"member_id": request.etcd_member_id})
        JoinReplica.objects.filter(request=request, promoted_at__isnull=True).update(promoted_at=timezone.now())
    return {"member_id": request.etcd_member_id, "promoted": True}


def replica_wait_seconds() -> float:
    """How long the leader waits for the follower's replica (its basebackup is bounded
    by ``PAM_REPLICA_BOOTSTRAP_SECONDS`` on the follower; this leaves room for the seal)."""
    return config.env("PAM_JOIN_REPLICA_SECONDS", 900.0, float)


def _replica(ctx, request_id: int) -> dict:
    """Wait for the follower to report its database replica: ready (then the join goes
    on) or failed (then the join is undone with its reason). Nothing to do when the
    cluster's database is not replicated."""
    request = _request(request_id)
    _ensure_running(request)
    replica = JoinReplica.objects.filter(request=request).first()
    if replica is None:
        ctx.log("the cluster's database is not replicated: no replica to wait for")
        return {"replicated": False}
    wait = replica_wait_seconds()
    deadline = time.monotonic() + wait
    ctx.log(f"waiting for {request.follower_address} to become a replica of the cluster's database "
            f"(basebackup from this node), at most {wait:g} s")
    for _ in range(int(wait) + 2):  # bounded, and by the deadline too
        if ctx.lease_lost.is_set():
            raise RuntimeError("this worker lost the step's lease")
        replica.refresh_from_db()
        _ensure_running(_request(request_id))
        if replica.outcome == "ready":
            ctx.log(f"{request.follower_address}'s replica {replica.member} streams; its pre-join trail (head "
                    f"{replica.pre_join_position}) is sealed in {replica.export.get('file', '?')}")
            return {"replicated": True, "member": replica.member, "pre_join_position": replica.pre_join_position,
                    "pre_join_hash": replica.pre_join_hash}
        if replica.outcome == "failed":
            raise JoinFailure(f"the node's database replica failed: {replica.reason}")
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    raise JoinFailure(f"the node did not report its database replica within {wait:g} s")


def _activate(ctx, request_id: int) -> dict:
    with transaction.atomic():
        node = node_locked()
        request = _request(request_id, lock=True)
        if request.state == RequestState.DONE:
            return {"again": True}
        _ensure_running(request)
        now = timezone.now()
        if node is not None and node.role == NodeRole.STANDALONE:
            node.role = NodeRole.LEADER
            node.save(update_fields=["role", "updated_at"])
        ClusterMember.objects.filter(address=request.follower_address).update(
            state=MemberState.ACTIVE, joined_at=now, version=request.follower_version,
            etcd_member_id=request.etcd_member_id, etcd_name=request.etcd_member_name,
        )
        request.state = RequestState.DONE
        request.finished_at = now
        request.save(update_fields=["state", "finished_at"])
        audit_record(action=AuditAction.CLUSTER_JOINED, target=request_target(request),
                     details={"address": request.follower_address, "version": request.follower_version,
                              "member_id": request.etcd_member_id, "certificate_serial": request.cert_serial})
    ctx.log(f"{request.follower_address} is an active member of the cluster")
    replica = JoinReplica.objects.filter(request=request).first()
    if replica is not None and replica.outcome == "ready" and replica.postgres_port:
        # This node's own list gains the member, so its console finds the primary when it moves.
        try:
            if replication_join.hosts_add(request.follower_address, replica.postgres_port):
                ctx.log(f"{request.follower_address} added to this node's database hosts")
        except Exception as exc:  # noqa: BLE001 — the join is done; the list is best effort
            ctx.log(f"this node's database hosts were not updated: {exc}", "warning")
    return {"address": request.follower_address, "active": True}


JOIN = register(JobKind(
    name=JOIN_KIND, title="Join a node to the cluster",
    runs_on=RUNS_ON_LEADER,
    steps=(
        StepSpec("sign", "Sign the node's certificate with the cluster CA", _guarded(_sign), max_attempts=2),
        StepSpec("learner", "Add the node to etcd as a learner", _guarded(_learner), max_attempts=2),
        StepSpec("handover", "Hand the node its certificate, the CA and the etcd cluster", _guarded(_handover),
                 max_attempts=2),
        StepSpec("promote", "Wait for the node's etcd member, then promote it", _guarded(_promote), max_attempts=2),
        StepSpec("replica", "Wait for the node's database replica (when the cluster's database is replicated)",
                 _guarded(_replica), max_attempts=2),
        StepSpec("activate", "Mark the node an active member", _guarded(_activate), max_attempts=2),
    ),
))


def joins_reconcile() -> int:
    """Undo joins whose job ended without success in a way no step could catch (a
    worker killed on its last attempt, a cancelled job). Periodic."""
    count = 0
    stuck = JoinRequest.objects.filter(
        state__in=[RequestState.APPROVED, RequestState.RUNNING],
        job__status__in=[Status.FAILED, Status.CANCELLED, Status.SKIPPED],
    ).select_related("job")
    for request in list(stuck[:50]):
        error = request.job.steps.exclude(error="").order_by("-index").values_list("error", flat=True).first()
        reason = f"the join job {request.job.status}" + (f": {error}" if error else "")
        if join_undo(request_id=request.pk, reason=reason):
            count += 1
    return count


# --- removing a node ------------------------------------------------------------------------
def _remove(ctx) -> dict:
    request_id = ctx.params["request_id"]
    with transaction.atomic():
        request = RemovalRequest.objects.select_for_update(of=("self",)).select_related("member").get(pk=request_id)
        if request.state == RequestState.DONE:
            return {"again": True}
        if request.state not in (RequestState.APPROVED, RequestState.RUNNING):
            raise RuntimeError(f"the removal request is {request.get_state_display().lower()}")
        if request_changed(request):
            request.state = RequestState.FAILED
            request.failure_reason = "the request changed after the votes were cast"
            request.finished_at = timezone.now()
            request.save(update_fields=["state", "failure_reason", "finished_at"])
            audit_record(action=AuditAction.CLUSTER_REMOVAL_FAILED, target=request_target(request),
                         outcome=Outcome.FAILED, details={"reason": request.failure_reason})
            return {"failed": request.failure_reason}
        request.state = RequestState.RUNNING
        request.save(update_fields=["state"])
        member = ClusterMember.objects.select_for_update().get(pk=request.member_id)
        # What a failed removal puts the member back to. A re-run after a dead worker
        # finds it removing already and no longer knows: active, as it is likeliest.
        previous = member.state if member.state in REMOVABLE_STATES else MemberState.ACTIVE
        ClusterMember.objects.filter(pk=member.pk).update(state=MemberState.REMOVING)
    try:
        client = connections.etcd_client()
        members = client.member_list()
        target = connections.find_member(members, member_id=request.etcd_member_id or None, address=request.address)
        if target is not None:
            if not quorum_ok_after_remove(members, target.id):
                raise RuntimeError("removing it now would lose quorum")
            client.member_remove(target.id, wait=10)
            ctx.log(f"etcd member {target.hex_id} ({request.address}) removed")
        else:
            ctx.log(f"{request.address} has no etcd member (nothing to remove there)")
    except Exception as exc:
        reason = str(exc)
        with transaction.atomic():
            request = RemovalRequest.objects.select_for_update().get(pk=request_id)
            request.state = RequestState.FAILED
            request.failure_reason = reason[:2000]
            request.finished_at = timezone.now()
            request.save(update_fields=["state", "failure_reason", "finished_at"])
            ClusterMember.objects.filter(pk=request.member_id, state=MemberState.REMOVING).update(state=previous)
            audit_record(action=AuditAction.CLUSTER_REMOVAL_FAILED, target=request_target(request),
                         outcome=Outcome.FAILED, details={"reason": reason[:2000]})
        raise
    with transaction.atomic():
        request = RemovalRequest.objects.select_for_update(of=("self",)).select_related("member").get(pk=request_id)
        now = timezone.now()
        member = request.member
        member.cert_serial = member_certificate_serial(member.address, member.cert_serial)
        certificate_revoke(serial=member.cert_serial, address=member.address,
                                    reason=f"removed from the cluster: {request.reason}")
        ClusterMember.objects.filter(pk=member.pk).update(state=MemberState.REMOVED, removed_at=now,
                                                          etcd_member_id="")
        request.state = RequestState.DONE
        request.finished_at = now
        request.save(update_fields=["state", "finished_at"])
        audit_record(action=AuditAction.CLUSTER_NODE_REMOVED, target=request_target(request),
                     details={"address": member.address, "reason": request.reason,
                              "certificate_serial": member.cert_serial})
    # Tell the node, so that it stops its etcd member and says so on its pages; a node
    # that is down is told by the heartbeat task once it answers again.
    if removal_notify(request_id=request_id):
        ctx.log(f"{request.address} was told of its removal")
    else:
        ctx.log(f"{request.address} could not be told of its removal yet; it is told once it answers", "warning")
    return {"removed": request.address}


REMOVE = register(JobKind(
    name=REMOVE_KIND, title="Remove a node from the cluster",
    runs_on=RUNS_ON_LEADER,
    steps=(StepSpec("remove", "Remove the etcd member, revoke the certificate, tell the node", _remove,
                    max_attempts=2),),
))


# --- moving the leadership ------------------------------------------------------------------
def _lead(ctx) -> dict:
    # One attempt: a second one after a dead worker would find the request running and
    # the candidate perhaps leading already, which ``leadership_move`` records as done.
    return leadership_move(request_id=ctx.params["request_id"], log=ctx.log)


LEADERSHIP = register(JobKind(
    name=LEADERSHIP_KIND, title="Set the cluster leader",
    steps=(StepSpec("lead", "Switch over (or fail over) to the new leader and wait for a writable console",
                    _lead, max_attempts=2),),
))
