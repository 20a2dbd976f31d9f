"""Starting, running again and cancelling jobs: what people (and other apps) ask of the
engine. Running and reaping are ``engine`` and ``reaper``."""

from __future__ import annotations

from django.db import transaction

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import audited_refusals
from pamportal.audit.services import audit_record

from . import placement, registry
from .choices import OutputLevel, Status
from .engine import IllegalTransition, JobNotFound, JobRefused, job_enqueue, job_log, status_transition
from .models import Job, Step

__all__ = [
    "IllegalTransition", "JobNotFound", "JobRefused", "job_cancel", "job_create", "job_refusal_record", "job_rerun",
]


@transaction.atomic
def job_create(*, kind: str, params: dict | None = None, created_by=None, title: str | None = None, enqueue: bool = True) -> Job:
    """Create a job and its steps from the registry, audited; queued once committed.

    ``enqueue=False`` is for running the job in-process (``engine.job_execute``) instead.
    """
    spec = registry.get(kind)
    if not spec.steps:
        raise ValueError(f"job kind {kind!r} has no steps")
    job = Job.objects.create(kind=kind, title=title or spec.title, params=placement.job_params(kind, params),
                             created_by=created_by)
    Step.objects.bulk_create(
        Step(job=job, index=i, name=s.name, title=s.title, max_attempts=max(1, s.max_attempts))
        for i, s in enumerate(spec.steps)
    )
    who = created_by.get_username() if created_by is not None else "the system"
    job_log(job, f"{job.title} requested by {who}")
    audit_record(
        action=AuditAction.JOB_STARTED, target=f"job:{job.pk}",
        details={"kind": kind, "title": job.title, "steps": len(spec.steps)},
    )
    if enqueue:
        job_enqueue(job.pk)
    return job


# --- rerun and cancel ---------------------------------------------------------------------
def _actor_name(user) -> str:
    return user.get_username() if user is not None else "the system"


def job_refusal_record(*, action: AuditAction, job_id: int, reason: str, outcome: Outcome = Outcome.DENIED) -> None:
    """A run-again or cancel that was refused (wrong role, or a job in a state that does
    not allow it): the event names the job and the reason."""
    JobRefused(reason, job_id=job_id, action=action, outcome=outcome).record()


def _locked_job(job_id: int, action: AuditAction) -> Job:
    job = Job.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        raise JobNotFound(f"no job #{job_id}", job_id=job_id, action=action)
    return job


@audited_refusals
def job_rerun(*, job_id: int, user) -> Job:
    """Run a failed or cancelled job again: it and its unfinished steps back to pending.
    Refused (and the refusal audited) for a missing job or one in another state."""
    job = _locked_job(job_id, AuditAction.JOB_RERUN)
    previous = job.status
    if previous not in (Status.FAILED, Status.CANCELLED):
        raise IllegalTransition(job, previous, Status.PENDING, "only a failed or cancelled job can be run again",
                                action=AuditAction.JOB_RERUN)
    status_transition(job, Status.PENDING, runs=job.runs + 1)
    again = Step.objects.select_for_update().filter(
        job=job, status__in=[Status.FAILED, Status.CANCELLED, Status.SKIPPED]
    )
    names = []
    for step in again:
        status_transition(step, Status.PENDING, attempts=0, error="", result={}, lease_owner="", lease_expires_at=None)
        names.append(step.name)
    job_log(job, f"run {job.runs} requested by {_actor_name(user)} (the job had {previous}); "
                 f"steps to run again: {', '.join(names) or 'none'}")
    audit_record(
        action=AuditAction.JOB_RERUN, target=f"job:{job.pk}",
        details={"kind": job.kind, "run": job.runs, "previous": previous, "steps": names},
    )
    job_enqueue(job.pk)
    return job


@audited_refusals
def job_cancel(*, job_id: int, user) -> Job:
    """Cancel a pending or running job. A step already running is marked cancelled; its
    worker finds it so when the step returns and discards the outcome."""
    job = _locked_job(job_id, AuditAction.JOB_CANCELLED)
    if job.status not in (Status.PENDING, Status.RUNNING):
        raise IllegalTransition(job, job.status, Status.CANCELLED, "only a pending or running job can be cancelled",
                                action=AuditAction.JOB_CANCELLED)
    for step in Step.objects.select_for_update().filter(job=job, status__in=[Status.PENDING, Status.RUNNING]):
        status_transition(step, Status.CANCELLED, lease_expires_at=None)
    status_transition(job, Status.CANCELLED)
    job_log(job, f"job cancelled by {_actor_name(user)}", level=OutputLevel.WARNING)
    audit_record(action=AuditAction.JOB_CANCELLED, target=f"job:{job.pk}", details={"kind": job.kind, "run": job.runs})
    return job
