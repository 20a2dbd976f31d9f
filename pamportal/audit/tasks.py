"""Celery tasks of the audit trail. Thin: who is acting, then the service."""

from __future__ import annotations

from celery import shared_task

from pamportal.core.context import acting

from .checkpoints import audit_checkpoint_periodic
from .repeats import audit_repeats_flush
from .siem import siem_forward as forward


@shared_task(name="pamportal.audit.tasks.checkpoint", acks_late=True, ignore_result=True)
def checkpoint() -> dict:
    with acting(actor_id=None, actor_name="audit checkpoint"):
        return audit_checkpoint_periodic()


@shared_task(name="pamportal.audit.tasks.siem_forward", acks_late=True, ignore_result=True)
def siem_forward() -> dict:
    with acting(actor_id=None, actor_name="SIEM forwarding"):
        return forward()


@shared_task(name="pamportal.audit.tasks.repeats_flush", acks_late=True, ignore_result=True)
def repeats_flush() -> int:
    with acting(actor_id=None, actor_name="audit repeat counter"):
        return audit_repeats_flush()
