"""The PAM leader is the Patroni leader: the cluster's records follow the database.

Two records follow Patroni here: who leads (below), and each node's list of the
cluster's database hosts (``hosts_follow``), so that a member that joined after this
node, or left, is in or out of the hosts libpq tries after the next failover.

Patroni alone decides who leads the cluster's database (an approved "set cluster
leader", or a failover after the leader died). The console's own records of who leads
(``ClusterMember.role``, ``Node.role``: what the pages say, who serves bundles and the
setup API, who may be removed) are brought in line with it here, by every node's worker
every ``PAM_LEADER_FOLLOW_SECONDS`` (5 s by default), and at once by the leadership
job. The change is one transaction on the cluster's database, so two nodes that see
the new leader at the same moment record it once: the second finds it recorded.

Nothing changes while Patroni cannot be asked, names no leader, or names a leader that
is not running (a leader in the middle of a promotion): the last known leader stays
recorded until Patroni says otherwise. A leader that is no live member of ours (a
member Patroni lists that the console does not know) is logged, never recorded.
"""

from __future__ import annotations

import logging

from django.db import transaction

from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
from pamportal.nodes.models import Node, NodeRole

from .database_view import DatabaseStatus, patroni_status
from .models import LIVE_MEMBER_STATES, ClusterMember, MemberRole

logger = logging.getLogger(__name__)


def this_node_leads() -> bool:
    """Whether the leader's periodic work (followers' heartbeats, expiries, undoing
    dead joins) is this node's: a standalone node or the recorded leader. On a
    replicated cluster every node's worker runs the periodic tasks; only one does that."""
    from pamportal.nodes.selectors import node_current

    return node_current().role != NodeRole.FOLLOWER


def leader_follow(*, status: DatabaseStatus | None = None, how: str = "seen in Patroni") -> str | None:
    """Record Patroni's leader as the cluster's leader if it is not already. Returns the
    new leader's address when this call recorded a change, else None. ``status``:
    Patroni's view when the caller has it (read fresh otherwise)."""
    status = status if status is not None else patroni_status(max_age=0.0)
    if not status.replicated or not status.ok:
        return None
    leader = status.leader
    if leader is None or leader.state != "running" or not leader.host:
        return None
    with transaction.atomic():
        members = list(ClusterMember.objects.select_for_update().filter(state__in=LIVE_MEMBER_STATES)
                       .order_by("pk"))
        new = next((m for m in members if m.address == leader.host), None)
        if new is None:
            logger.warning("Patroni's leader %s (%s) is no live member of this cluster; not recorded",
                           leader.name, leader.host)
            return None
        old = [m for m in members if m.role == MemberRole.LEADER and m.pk != new.pk]
        if new.role == MemberRole.LEADER and not old:
            return None
        for member in old:
            member.role = MemberRole.FOLLOWER
            member.save(update_fields=["role"])
        new.role = MemberRole.LEADER
        new.save(update_fields=["role"])
        Node.objects.filter(address__in=[m.address for m in old]).update(role=NodeRole.FOLLOWER)
        Node.objects.filter(address=new.address).update(role=NodeRole.LEADER)
        audit_record(action=AuditAction.CLUSTER_LEADER_CHANGED, target=f"node:{new.address}",
                     details={"leader": new.address, "previous": [m.address for m in old], "how": how,
                              "patroni_member": leader.name, "timeline": leader.timeline})
    logger.info("the cluster's leader is now %s (was %s): %s", new.address,
                ", ".join(m.address for m in old) or "none recorded", how)
    return new.address


def hosts_follow(*, status: DatabaseStatus | None = None) -> list[str] | None:
    """Make this node's ``database.json`` list exactly the PostgreSQL members Patroni
    lists (the leader first, then the others by name; this node's own member always
    kept), when the set or the first host differs. Returns the new list ("host:port"),
    or None when nothing changed or Patroni's view is not complete enough to trust:
    not answering, no leader, or a member without host or port."""
    from django.conf import settings

    from pamportal.replication import database

    status = status if status is not None else patroni_status(max_age=0.0)
    if not status.replicated or not status.ok or status.leader is None:
        return None
    if any(not m.host or not m.port for m in status.members):
        return None
    try:
        current = database.read_database_file(settings.PAM_DATA_DIR)
    except database.DatabaseFileError:
        return None
    if current is None:
        return None
    others = sorted((m for m in status.members if not m.is_leader), key=lambda m: m.name)
    wanted = [database.DatabaseHost(host=m.host, port=m.port) for m in [status.leader, *others]]
    own = database.own_database_host()
    if own is not None and own not in wanted:
        wanted.append(own)
    if set(wanted) == set(current.hosts) and wanted[0] == current.hosts[0]:
        return None
    try:
        updated = database.database_hosts_update(settings.PAM_DATA_DIR, wanted, own=own)
    except database.HostsUpdateRefused as exc:
        logger.warning("%s", exc)
        return None
    return [f"{h.host}:{h.port}" for h in updated.hosts]
