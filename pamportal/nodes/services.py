"""Actions on this node."""

from __future__ import annotations

from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create

from .facts import KIND as FACTS_KIND
from .selectors import node_facts_running


def node_facts_collect(*, user, enqueue: bool = True) -> tuple[Job, bool]:
    """Start a "collect node facts" job, unless one is already under way.

    Returns the job and whether it was created now.
    """
    running = node_facts_running()
    if running is not None:
        return running, False
    return job_create(kind=FACTS_KIND, created_by=user, enqueue=enqueue), True
