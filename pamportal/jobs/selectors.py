"""Reading jobs for pages: lists, and one job's progress and output."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from .choices import TERMINAL
from .models import Job, OutputLine, Step


def job_list() -> QuerySet[Job]:
    return Job.objects.select_related("created_by").order_by("-created_at", "-id")


def job_output(job: Job, *, after: int = 0) -> QuerySet[OutputLine]:
    """Output lines in order; ``after`` gives only the lines after counter N."""
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
