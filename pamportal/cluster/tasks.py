"""Periodic cluster housekeeping. Thin: who is acting, then the services."""

from __future__ import annotations

from celery import shared_task

from pamportal.core.context import acting


@shared_task(name="pamportal.cluster.tasks.housekeeping", acks_late=True, ignore_result=True)
def housekeeping() -> dict:
    """Expire bundles and requests, and undo joins whose job died unseen."""
    from . import jobs, services

    with acting(actor_id=None, actor_name="cluster housekeeping"):
        return {
            "bundles_expired": services.bundles_expire(),
            "requests_expired": services.requests_expire(),
            "joins_undone": jobs.joins_reconcile(),
        }


@shared_task(name="pamportal.cluster.tasks.heartbeats", acks_late=True, ignore_result=True)
def heartbeats() -> int:
    from . import services

    with acting(actor_id=None, actor_name="cluster heartbeat"):
        return services.members_heartbeat()
