"""The reaper: steps whose worker stopped renewing their lease are re-queued (while
they have attempts left) or failed, with the reason in the job's output; jobs left
waiting with nothing running are queued again."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record

from .choices import TERMINAL, OutputLevel, Status
from .engine import job_enqueue, job_finish, job_log, status_transition
from .leases import lease_length
from .models import Job, Step

logger = logging.getLogger(__name__)


def _reap_step(step_id: int, now: datetime) -> str | None:
    with transaction.atomic():
        job_id = Step.objects.filter(pk=step_id).values_list("job_id", flat=True).first()
        if job_id is None:
            return None
        job = Job.objects.select_for_update().get(pk=job_id)
        step = Step.objects.select_for_update().get(pk=step_id)
        if step.status != Status.RUNNING or step.lease_expires_at is None or step.lease_expires_at >= now:
            return None  # finished or renewed meanwhile
        owner = step.lease_owner or "(unknown)"
        expired = timezone.localtime(step.lease_expires_at).strftime("%Y-%m-%d %H:%M:%S %Z")
        details = {"step": step.name, "owner": owner, "lease_expired_at": step.lease_expires_at.isoformat(),
                   "attempts": step.attempts, "max_attempts": step.max_attempts}
        if step.attempts < step.max_attempts:
            reason = (f"worker {owner} stopped renewing its lease at {expired}; step {step.name!r} re-queued "
                      f"(attempt {step.attempts} of {step.max_attempts} was cut short)")
            status_transition(step, Status.PENDING, lease_owner="", lease_expires_at=None, error=reason)
            job_log(job, reason, step=step, level=OutputLevel.WARNING)
            audit_record(action=AuditAction.STEP_LEASE_EXPIRED, target=f"job:{job.pk}", outcome=Outcome.FAILED,
                         details={**details, "then": "re-queued"})
            if job.status not in TERMINAL:
                job_enqueue(job.pk)
            return "requeued"
        reason = (f"worker {owner} stopped renewing its lease at {expired}; step {step.name!r} failed "
                  f"(attempt {step.attempts} of {step.max_attempts})")
        status_transition(step, Status.FAILED, lease_expires_at=None, error=reason)
        job_log(job, reason, step=step, level=OutputLevel.ERROR)
        audit_record(action=AuditAction.STEP_LEASE_EXPIRED, target=f"job:{job.pk}", outcome=Outcome.FAILED,
                     details={**details, "then": "failed"})
        if job.status not in TERMINAL:
            job_finish(job, Status.FAILED, f"step {step.name!r} lost its worker")
        return "failed"


def reapable_jobs() -> Q:
    """Which jobs this node's reaper looks after. On a database of the node's own: all.
    On the cluster's shared database every node's worker runs the reaper: a job bound
    to a node (its params name the node: facts, for one) is that node's alone, since
    only there it means anything; the cluster's jobs (bundles, joins, removals, changes
    of leader) are the leader's, so after a failover the new leader's reaper resumes or
    fails what the dead leader was running, with the reason in the job's output."""
    from pamportal.cluster.leader_follow import this_node_leads
    from pamportal.nodes.identity import shared_database_address

    address = shared_database_address()
    if not address:
        return Q()
    own = Q(params__node_address=address)
    return own | ~Q(params__has_key="node_address") if this_node_leads() else own


def stall_after() -> timedelta:
    """How long a job may wait, with no step running and no output, before the reaper
    puts it on the queue again (its message may have died with a worker)."""
    return max(3 * lease_length(), timedelta(seconds=2 * float(settings.PAM_JOB_REAPER_INTERVAL)))


def _requeue_stalled(now: datetime) -> int:
    """Pending/running jobs with no running step and no output for ``stall_after()``:
    queue them again. Harmless if their message was only slow (the claim decides), and
    bounded: the line written here is new activity, so at most once per period."""
    cutoff = now - stall_after()
    candidates = (
        Job.objects.filter(reapable_jobs(), status__in=[Status.PENDING, Status.RUNNING])
        .exclude(steps__status=Status.RUNNING)
        .annotate(last_activity=Max("output__time"))
        .filter(Q(last_activity__lt=cutoff) | Q(last_activity__isnull=True, created_at__lt=cutoff))
        .values_list("pk", flat=True)[:100]
    )
    count = 0
    for job_id in list(candidates):
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            if job.status not in (Status.PENDING, Status.RUNNING) or job.steps.filter(status=Status.RUNNING).exists():
                continue
            last = job.output.aggregate(last=Max("time"))["last"] or job.created_at
            if last >= cutoff:
                continue
            job_log(job, f"no worker has taken this job since {timezone.localtime(last):%Y-%m-%d %H:%M:%S %Z} "
                         f"(its queue message may have been lost with a worker); queued again",
                    level=OutputLevel.WARNING)
            job_enqueue(job.pk)
            count += 1
    return count


def leases_reap(now: datetime | None = None) -> dict[str, int]:
    """Every running step whose lease expired before ``now``: re-queued while it has
    attempts left, else failed (and its job with it); the reason goes to the output.
    Then jobs left waiting with nothing running are queued again (``stalled``)."""
    now = now or timezone.now()
    expired = list(
        Step.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now)
        .filter(job__in=Job.objects.filter(reapable_jobs())).order_by("lease_expires_at")
        .values_list("pk", flat=True)[:500]
    )
    counts = {"requeued": 0, "failed": 0}
    for step_id in expired:
        outcome = _reap_step(step_id, now)
        if outcome:
            counts[outcome] += 1
    counts["stalled"] = _requeue_stalled(now)
    if any(counts.values()):
        logger.warning("reaped expired step leases: %s", counts)
    return counts
