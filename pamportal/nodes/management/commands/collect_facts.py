"""Collect this node's facts now, in this process (no worker needed)."""

from __future__ import annotations

import os
import socket

from django.core.management.base import BaseCommand, CommandError

from pamportal.core.context import acting
from pamportal.jobs.engine import job_execute
from pamportal.jobs.models import Job
from pamportal.jobs.selectors import job_output
from pamportal.nodes.services import node_facts_collect


class Command(BaseCommand):
    help = "Run the 'collect node facts' job synchronously in this process and print its output."

    def handle(self, *args, **options):
        worker_id = f"console@{socket.gethostname()}:{os.getpid()}"
        with acting(actor_id=None, actor_name="console"):
            job, created = node_facts_collect(user=None, enqueue=False)
            if not created:
                raise CommandError(f"node facts are already being collected by job #{job.pk}")
            outcome = job_execute(job_id=job.pk, worker_id=worker_id)
        job = Job.objects.get(pk=job.pk)
        for line in job_output(job):
            self.stdout.write(f"{line.time:%H:%M:%S}  {line.text}")
        if job.status != "succeeded":
            raise CommandError(f"job #{job.pk} ended {job.status} ({outcome})")
        self.stdout.write(self.style.SUCCESS(f"node facts collected (job #{job.pk})"))
