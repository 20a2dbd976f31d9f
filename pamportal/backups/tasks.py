"""The scheduled backup. Thin: the schedule acts as the system, the service decides."""

from __future__ import annotations

from celery import shared_task

from pamportal.core.context import acting

from .services import backup_scheduled_start


@shared_task(name="pamportal.backups.tasks.scheduled_backup", acks_late=True, ignore_result=True)
def scheduled_backup() -> int | None:
    """Start a backup job when one is due (``services.backup_schedule_blocker``): on the
    leader of a finalised node, none under way, none within ``PAM_BACKUP_INTERVAL_SECONDS``."""
    with acting(actor_id=None, actor_name="backup schedule"):
        job = backup_scheduled_start()
        return job.pk if job is not None else None
