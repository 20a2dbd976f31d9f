"""Periodic cluster housekeeping. Thin: who is acting, then the services."""

from __future__ import annotations

from celery import shared_task

from pamportal.core.context import acting
from pamportal.jobs.placement import leader_jobs_take

from .bundles import bundles_expire
from .database_view import patroni_status
from .jobs import joins_reconcile
from .leader_follow import hosts_follow, leader_follow, this_node_leads
from .leadership import leadership_reconcile
from .members import members_heartbeat
from .removal import removal_notices_retry
from .removed import removal_check, removal_enforce
from .requests import requests_expire


@shared_task(name="pamportal.cluster.tasks.housekeeping", acks_late=True, ignore_result=True)
def housekeeping() -> dict:
    """Expire bundles and requests, undo joins and fail changes of leader whose job died
    unseen: the leader's work (on a replicated cluster every node's worker runs this task)."""
    if not this_node_leads():
        return {}
    with acting(actor_id=None, actor_name="cluster housekeeping"):
        return {
            "bundles_expired": bundles_expire(),
            "requests_expired": requests_expire(),
            "joins_undone": joins_reconcile(),
            "leadership_requests_failed": leadership_reconcile(),
        }


@shared_task(name="pamportal.cluster.tasks.heartbeats", acks_late=True, ignore_result=True)
def heartbeats() -> int:
    """The leader: each follower's heartbeat, and removed nodes not told yet. Every node:
    whether it is still in etcd's member list (for a removal made while it was down)."""
    with acting(actor_id=None, actor_name="cluster heartbeat"):
        count = 0
        if this_node_leads():
            count = members_heartbeat()
            removal_notices_retry()
        removal_enforce()
        removal_check()
        return count


@shared_task(name="pamportal.cluster.tasks.leader_follow", acks_late=True, ignore_result=True)
def leader_follow_task() -> str | None:
    """Every node: record Patroni's leader as the cluster's leader if it changed, and
    list Patroni's members as this node's database hosts (one read of Patroni for both).
    The leader then takes the cluster's jobs that a node which does not lead left for it."""
    status = patroni_status(max_age=0.0)
    hosts_follow(status=status)
    with acting(actor_id=None, actor_name="cluster leader follow"):
        changed = leader_follow(status=status, how="failover or switchover seen in Patroni")
        leader_jobs_take()
        return changed
