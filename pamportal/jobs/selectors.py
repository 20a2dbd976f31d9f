"""Reading jobs for pages: lists, one job's progress and output, as the user may see them.

Each job kind names the capability that shows its jobs (``JobKind.view_capability``):
an audit export is read only by those who may read the audit trail."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from pamportal.accounts.roles import has_capability

from . import registry
from .choices import TERMINAL
from .engine import JobNotFound
from .models import Job, OutputLine, Step


def job_visible_to(user, job: Job) -> bool:
    return has_capability(user, registry.view_capability_of(job.kind))


def _hidden_kinds(user) -> list[str]:
    return [name for name, kind in registry.all_kinds().items() if not has_capability(user, kind.view_capability)]


def job_list(*, user) -> QuerySet[Job]:
    """The jobs ``user`` may see, newest first."""
    jobs = Job.objects.select_related("created_by").order_by("-created_at", "-id")
    if not has_capability(user, registry.DEFAULT_VIEW_CAPABILITY):
        return jobs.filter(kind__in=[name for name, kind in registry.all_kinds().items()
                                     if has_capability(user, kind.view_capability)])
    return jobs.exclude(kind__in=_hidden_kinds(user))


def access_job_by_id(user, job_id: int) -> Job:
    """The job, if it exists and ``user`` may see it; else ``JobNotFound``, the same
    for a missing job and a forbidden one."""
    job = Job.objects.select_related("created_by").filter(pk=job_id).first()
    if job is None or not job_visible_to(user, job):
        raise JobNotFound(f"no job #{job_id}", job_id=job_id)
    return job


def job_output(job: Job, *, after: int = 0) -> QuerySet[OutputLine]:
    """Output lines in order; ``after`` gives only the lines after counter N. The job
    comes from ``access_job_by_id`` (or a page that already checked it)."""
    return OutputLine.objects.filter(job=job, counter__gt=after).select_related("step").order_by("counter")


@dataclass(frozen=True)
class JobProgress:
    job: Job
    steps: list[Step]
    done: int
    total: int
    output: list[OutputLine]

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 100


def job_progress(job: Job) -> JobProgress:
    steps = list(job.steps.order_by("index"))
    done = sum(1 for s in steps if s.status in TERMINAL)
    return JobProgress(job=job, steps=steps, done=done, total=len(steps), output=list(job_output(job)))
