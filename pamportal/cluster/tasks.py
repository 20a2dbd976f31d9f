"""Periodic cluster housekeeping. Thin: who is acting, then the services."""

from __future__ import annotations

from celery import shared_task

from pamportal.core.context import acting

from .bundles import bundles_expire
from .jobs import joins_reconcile
from .members import members_heartbeat
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
    with acting(actor_id=None, actor_name="cluster heartbeat"):
        return members_heartbeat()
