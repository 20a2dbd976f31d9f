"""Periodic cluster housekeeping. Thin: who is acting, then the services."""

from __future__ import annotations

from celery import shared_task

from pamportal.core.context import acting

from .bundles import bundles_expire
from .jobs import joins_reconcile
from .members import members_heartbeat
from .removal import removal_notices_retry
from .removed import removal_check, removal_enforce
from .requests import requests_expire


@shared_task(name="pamportal.cluster.tasks.housekeeping", acks_late=True, ignore_result=True)
def housekeeping() -> dict:
    """Expire bundles and requests, and undo joins whose job died unseen."""
    with acting(actor_id=None, actor_name="cluster housekeeping"):
        return {
            "bundles_expired": bundles_expire(),
            "requests_expired": requests_expire(),
            "joins_undone": joins_reconcile(),
        }


@shared_task(name="pamportal.cluster.tasks.heartbeats", acks_late=True, ignore_result=True)
def heartbeats() -> int:
    """The leader: each follower's heartbeat, and removed nodes not told yet. Every node:
    whether it is still in etcd's member list (for a removal made while it was down)."""
    with acting(actor_id=None, actor_name="cluster heartbeat"):
        count = members_heartbeat()
        removal_notices_retry()
        removal_enforce()
        removal_check()
        return count
