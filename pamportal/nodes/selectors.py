"""What the dashboard knows about this node: its latest facts and any collection under way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pamportal.jobs.choices import ACTIVE, Status
from pamportal.jobs.models import Job

from .facts import KIND as FACTS_KIND


@dataclass(frozen=True)
class NodeFacts:
    job: Job
    facts: dict[str, Any]
    collected_at: datetime | None


def node_facts_latest() -> NodeFacts | None:
    """The merged step results of the newest succeeded "node.facts" job, or None."""
    job = Job.objects.filter(kind=FACTS_KIND, status=Status.SUCCEEDED).order_by("-finished_at", "-id").first()
    if job is None:
        return None
    facts: dict[str, Any] = {}
    for result in job.steps.order_by("index").values_list("result", flat=True):
        facts.update(result or {})
    return NodeFacts(job=job, facts=facts, collected_at=job.finished_at)


def node_facts_running() -> Job | None:
    """The newest facts job still pending or running, or None."""
    return Job.objects.filter(kind=FACTS_KIND, status__in=ACTIVE).order_by("-created_at", "-id").first()


def node_facts_last_failure(after: NodeFacts | None) -> Job | None:
    """The newest facts job that ended without success after the facts shown, if any."""
    jobs = Job.objects.filter(kind=FACTS_KIND, status__in=[Status.FAILED, Status.CANCELLED])
    if after is not None:
        jobs = jobs.filter(created_at__gt=after.job.created_at)
    return jobs.order_by("-created_at", "-id").first()
