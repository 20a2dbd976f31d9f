"""Celery tasks of the job engine. Thin: who is acting, then the service."""

from __future__ import annotations

import os
import socket

from celery import shared_task

from pamportal.core.context import acting

from .engine import job_execute
from .reaper import leases_reap


def _worker_id(task) -> str:
    host = getattr(task.request, "hostname", None) or socket.gethostname()
    return f"{host}:{os.getpid()}"


@shared_task(bind=True, name="pamportal.jobs.tasks.run_job", acks_late=True, ignore_result=True)
def run_job(self, job_id: int) -> str:
    worker_id = _worker_id(self)
    with acting(actor_id=None, actor_name=f"worker {worker_id}"):
        return job_execute(job_id=job_id, worker_id=worker_id)


@shared_task(name="pamportal.jobs.tasks.reap_expired_leases", acks_late=True, ignore_result=True)
def reap_expired_leases() -> dict:
    with acting(actor_id=None, actor_name="job lease reaper"):
        return leases_reap()
