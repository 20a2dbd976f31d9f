"""The job engine: creating, running, re-running, cancelling and reaping jobs.

Every status change goes through ``status_transition`` (row locked, TRANSITIONS
checked). A step runs only after its worker has claimed it in a locked transaction
(status pending -> running, lease owner and expiry written), so a task the queue
delivers twice, or a second worker, finds the step held and leaves it alone:
exactly-once comes from the database, never from the queue. While the step runs a
thread renews the lease; a worker that dies stops renewing, and ``leases_reap``
re-queues or fails its step with the reason in the job's output.

Lock order, everywhere: job row, then step rows, then the audit head (inside
``audit_record``). The lease renewal touches one step row and holds nothing else.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.db.models import Max, Q
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record

from . import registry
from .choices import TERMINAL, TRANSITIONS, OutputLevel, Status
from .models import Job, OutputLine, Step

logger = logging.getLogger(__name__)

MAX_LINE_CHARS = 10_000
DONE_STEP = frozenset({Status.SUCCEEDED, Status.SKIPPED})


class IllegalTransition(Exception):
    """A status move that TRANSITIONS does not allow."""

    def __init__(self, obj: Job | Step, current: str, to: str, why: str = ""):
        self.obj, self.current, self.to = obj, current, to
        what = f"job #{obj.pk}" if isinstance(obj, Job) else f"step {obj.name!r} of job #{obj.job_id}"
        if not why:
            allowed = ", ".join(sorted(TRANSITIONS[Status(current)])) or "nothing (final)"
            why = f"from {current} it may move to {allowed}"
        super().__init__(f"{what} cannot move from {current} to {to}; {why}")


class JobNotFound(LookupError):
    pass


def _lease_length() -> timedelta:
    return timedelta(seconds=float(settings.PAM_JOB_LEASE_SECONDS))


def _enqueue(job_id: int) -> None:
    from .tasks import run_job

    transaction.on_commit(lambda: run_job.delay(job_id))


# --- the one transition service ---------------------------------------------------------
@transaction.atomic
def status_transition(obj: Job | Step, to: Status | str, **changes: Any) -> Job | Step:
    """Move a job or a step to ``to`` under a row lock, refusing illegal moves.

    Sets ``started_at`` on entering running, ``finished_at`` on entering a terminal
    state, clears both on going back to pending. ``changes`` are further fields to
    write in the same UPDATE. Returns the locked, updated row (and refreshes ``obj``).
    """
    model = type(obj)
    to = Status(to)
    locked = model.objects.select_for_update().get(pk=obj.pk)
    current = Status(locked.status)
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(locked, current, to)
    now = timezone.now()
    locked.status = to
    fields = {"status"}
    if to == Status.RUNNING:
        locked.started_at, locked.finished_at = now, None
        fields |= {"started_at", "finished_at"}
    elif to == Status.PENDING:
        locked.started_at = locked.finished_at = None
        fields |= {"started_at", "finished_at"}
    elif to in TERMINAL:
        locked.finished_at = now
        fields.add("finished_at")
    for name, value in changes.items():
        setattr(locked, name, value)
        fields.add(name)
    locked.save(update_fields=sorted(fields))
    for name in fields:
        setattr(obj, name, getattr(locked, name))
    return locked


# --- output ---------------------------------------------------------------------------
@transaction.atomic
def job_log(job: Job | int, text: str, *, step: Step | int | None = None, level: str = OutputLevel.INFO) -> OutputLine:
    """Append one output line; its counter is the job's next, taken under the job lock."""
    job_id = job.pk if isinstance(job, Job) else job
    step_id = step.pk if isinstance(step, Step) else step
    counter = Job.objects.select_for_update().values_list("output_counter", flat=True).get(pk=job_id) + 1
    Job.objects.filter(pk=job_id).update(output_counter=counter)
    text = str(text)
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + " [truncated]"
    return OutputLine.objects.create(job_id=job_id, step_id=step_id, counter=counter, level=OutputLevel(level), text=text)


# --- create ---------------------------------------------------------------------------
@transaction.atomic
def job_create(*, kind: str, params: dict | None = None, created_by=None, title: str | None = None, enqueue: bool = True) -> Job:
    """Create a job and its steps from the registry, audited; queued once committed.

    ``enqueue=False`` is for running the job in-process (``job_execute``) instead.
    """
    spec = registry.get(kind)
    if not spec.steps:
        raise ValueError(f"job kind {kind!r} has no steps")
    job = Job.objects.create(kind=kind, title=title or spec.title, params=params or {}, created_by=created_by)
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
        _enqueue(job.pk)
    return job


# --- execute --------------------------------------------------------------------------
@dataclass
class StepContext:
    """What a step function gets: the job, its step, the job's params, and ``log``."""

    job: Job
    step: Step
    worker_id: str
    lease_lost: threading.Event = field(default_factory=threading.Event)

    @property
    def params(self) -> dict:
        return self.job.params

    def log(self, text: str, level: str = OutputLevel.INFO) -> None:
        job_log(self.job, text, step=self.step, level=level)


def lease_renew(*, step_id: int, worker_id: str, now: datetime | None = None) -> bool:
    """Extend the lease of a step this worker still holds; False when it holds it no more."""
    now = now or timezone.now()
    return bool(
        Step.objects.filter(pk=step_id, status=Status.RUNNING, lease_owner=worker_id).update(
            lease_expires_at=now + _lease_length()
        )
    )


class _LeaseKeeper(threading.Thread):
    """Renews a step's lease every third of the lease length until stopped."""

    def __init__(self, step_id: int, worker_id: str, lost: threading.Event):
        super().__init__(name=f"lease-{step_id}", daemon=True)
        self.step_id, self.worker_id, self.lost = step_id, worker_id, lost
        self.stopping = threading.Event()
        self.interval = max(0.05, _lease_length().total_seconds() / 3)

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.interval):
                try:
                    if not lease_renew(step_id=self.step_id, worker_id=self.worker_id):
                        logger.warning("worker %s lost the lease of step %s", self.worker_id, self.step_id)
                        self.lost.set()
                        return
                except Exception:  # a busy database: try again at the next interval
                    logger.exception("renewing the lease of step %s failed", self.step_id)
                    close_old_connections()
        finally:
            connections.close_all()  # this thread's connections only

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=max(5.0, self.interval * 2))


def _finish_job(job: Job, status: Status, reason: str = "") -> None:
    """Inside a transaction holding the job lock: end the job and skip what did not run."""
    if status != Status.SUCCEEDED:
        for step in Step.objects.select_for_update().filter(job=job, status=Status.PENDING):
            status_transition(step, Status.SKIPPED if status == Status.FAILED else Status.CANCELLED)
    status_transition(job, status)
    done = Step.objects.filter(job=job, status=Status.SUCCEEDED).count()
    total = Step.objects.filter(job=job).count()
    job_log(job, f"job {status.label.lower()} ({done} of {total} steps succeeded){': ' + reason if reason else ''}",
            level=OutputLevel.INFO if status == Status.SUCCEEDED else OutputLevel.ERROR)
    audit_record(
        action=AuditAction.JOB_FINISHED, target=f"job:{job.pk}",
        outcome=Outcome.SUCCEEDED if status == Status.SUCCEEDED else Outcome.FAILED,
        details={"kind": job.kind, "status": status.value, "run": job.runs, **({"reason": reason} if reason else {})},
    )


def step_claim(job_id: int, worker_id: str) -> tuple[str, Job | None, Step | None]:
    """Lock the job, pick its next step and claim it (running, lease owner and expiry,
    attempts + 1). Returns (outcome, job, step): "claimed" with the step, or why there
    is nothing to run here: the job's final status, "held" (a step is running under
    someone's lease) or "missing"."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            return "missing", None, None
        if job.status in TERMINAL:
            return job.status, job, None
        step = (
            Step.objects.select_for_update().filter(job=job).exclude(status__in=DONE_STEP).order_by("index").first()
        )
        if step is None:
            if job.status == Status.PENDING:
                status_transition(job, Status.RUNNING)
            _finish_job(job, Status.SUCCEEDED)
            return Status.SUCCEEDED.value, job, None
        if step.status == Status.RUNNING:
            # Another worker holds it (or held it and died: the reaper decides, once its
            # lease has expired). Either way it is not ours to run.
            return "held", job, step
        if step.status != Status.PENDING:  # failed/cancelled under a job not yet ended
            if job.status == Status.PENDING:
                status_transition(job, Status.RUNNING)
            _finish_job(job, Status.FAILED, f"step {step.name!r} is {step.status}")
            return Status.FAILED.value, job, step
        if job.status == Status.PENDING:
            status_transition(job, Status.RUNNING)
            job_log(job, f"run {job.runs} started on worker {worker_id}")
        now = timezone.now()
        status_transition(
            step, Status.RUNNING,
            lease_owner=worker_id, lease_expires_at=now + _lease_length(), attempts=step.attempts + 1,
            error="",
        )
        job_log(job, f"step {step.index + 1} \u00b7 {step.title}: started (attempt {step.attempts} of {step.max_attempts})", step=step)
        return "claimed", job, step


def _json_safe(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        value = {"value": value}
    return json.loads(json.dumps(value, default=str))


def _record_step_outcome(job: Job, step: Step, worker_id: str, result: dict | None, error: str) -> str:
    """Lock job and step; record the outcome only if this worker still holds the lease."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        current = Step.objects.select_for_update().get(pk=step.pk)
        if current.status != Status.RUNNING or current.lease_owner != worker_id:
            job_log(job, f"step {step.name}: worker {worker_id} finished after losing its lease "
                         f"(step is now {current.status}); its outcome was discarded", step=step,
                    level=OutputLevel.WARNING)
            return "lost"
        if error:
            status_transition(current, Status.FAILED, error=error, lease_expires_at=None)
            job_log(job, f"step {step.name} failed: {error}", step=step, level=OutputLevel.ERROR)
            _finish_job(job, Status.FAILED, f"step {step.name!r} failed")
            return Status.FAILED.value
        status_transition(current, Status.SUCCEEDED, result=result, lease_expires_at=None)
        job_log(job, f"step {step.index + 1} \u00b7 {step.title}: succeeded", step=step)
        return Status.SUCCEEDED.value


def job_execute(*, job_id: int, worker_id: str) -> str:
    """Run a job's pending steps in order, each only after claiming it under a lease.

    Returns how it ended here: "succeeded", "failed", "cancelled" (the job's status),
    "held" (another worker holds the next step), "lost" (this worker's lease was taken
    away while the step ran; its outcome was discarded) or "missing".
    """
    for _ in range(Step.objects.filter(job_id=job_id).count() + 1):
        outcome, job, step = step_claim(job_id, worker_id)
        if outcome != "claimed":
            return outcome
        ctx = StepContext(job=job, step=step, worker_id=worker_id)
        keeper = _LeaseKeeper(step.pk, worker_id, ctx.lease_lost)
        keeper.start()
        result, error = None, ""
        try:
            # A kind or step this worker does not know (a plugin not loaded here) is the
            # step's failure, with the reason, not a task crash leaving it "running".
            spec = next((s for s in registry.get(job.kind).steps if s.name == step.name), None)
            if spec is None:
                raise LookupError(f"job kind {job.kind!r} has no step named {step.name!r}")
            result = _json_safe(spec.run(ctx))
        except Exception as exc:  # the step's failure is recorded, not raised
            logger.exception("step %s of job %s failed", step.name, job_id)
            error = f"{type(exc).__name__}: {exc}"[:2000]
        finally:
            keeper.stop()
        outcome = _record_step_outcome(job, step, worker_id, result, error)
        if outcome != Status.SUCCEEDED.value:
            return outcome
    return Job.objects.values_list("status", flat=True).get(pk=job_id)


# --- rerun and cancel ---------------------------------------------------------------------
def _actor_name(user) -> str:
    return user.get_username() if user is not None else "the system"


@transaction.atomic
def job_refusal_record(*, action: AuditAction, job_id: int, reason: str, outcome: Outcome = Outcome.DENIED) -> None:
    """A run-again or cancel that was refused (wrong role, or a job in a state that does
    not allow it): the event names the job and the reason."""
    audit_record(action=action, target=f"job:{job_id}", outcome=outcome, details={"reason": reason[:300]})


def _audited_refusals(action: AuditAction):
    """Run the service in its own transaction; when it refuses (no such job, illegal
    state), nothing it did is kept, the refusal is recorded (outcome failed), re-raised."""

    def decorator(service):
        atomic_service = transaction.atomic(service)

        @wraps(service)
        def wrapper(*, job_id: int, user) -> Job:
            try:
                return atomic_service(job_id=job_id, user=user)
            except (IllegalTransition, JobNotFound) as refused:
                job_refusal_record(action=action, job_id=job_id, reason=str(refused), outcome=Outcome.FAILED)
                raise

        return wrapper

    return decorator


@_audited_refusals(AuditAction.JOB_RERUN)
def job_rerun(*, job_id: int, user) -> Job:
    """Run a failed or cancelled job again: it and its unfinished steps back to pending."""
    job = Job.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        raise JobNotFound(f"no job #{job_id}")
    previous = job.status
    if previous not in (Status.FAILED, Status.CANCELLED):
        raise IllegalTransition(job, previous, Status.PENDING, "only a failed or cancelled job can be run again")
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
    _enqueue(job.pk)
    return job


@_audited_refusals(AuditAction.JOB_CANCELLED)
def job_cancel(*, job_id: int, user) -> Job:
    """Cancel a pending or running job. A step already running is marked cancelled; its
    worker finds it so when the step returns and discards the outcome."""
    job = Job.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        raise JobNotFound(f"no job #{job_id}")
    if job.status not in (Status.PENDING, Status.RUNNING):
        raise IllegalTransition(job, job.status, Status.CANCELLED, "only a pending or running job can be cancelled")
    for step in Step.objects.select_for_update().filter(job=job, status__in=[Status.PENDING, Status.RUNNING]):
        status_transition(step, Status.CANCELLED, lease_expires_at=None)
    status_transition(job, Status.CANCELLED)
    job_log(job, f"job cancelled by {_actor_name(user)}", level=OutputLevel.WARNING)
    audit_record(action=AuditAction.JOB_CANCELLED, target=f"job:{job.pk}", details={"kind": job.kind, "run": job.runs})
    return job


# --- the reaper -----------------------------------------------------------------------
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
                _enqueue(job.pk)
            return "requeued"
        reason = (f"worker {owner} stopped renewing its lease at {expired}; step {step.name!r} failed "
                  f"(attempt {step.attempts} of {step.max_attempts})")
        status_transition(step, Status.FAILED, lease_expires_at=None, error=reason)
        job_log(job, reason, step=step, level=OutputLevel.ERROR)
        audit_record(action=AuditAction.STEP_LEASE_EXPIRED, target=f"job:{job.pk}", outcome=Outcome.FAILED,
                     details={**details, "then": "failed"})
        if job.status not in TERMINAL:
            _finish_job(job, Status.FAILED, f"step {step.name!r} lost its worker")
        return "failed"


def stall_after() -> timedelta:
    """How long a job may wait, with no step running and no output, before the reaper
    puts it on the queue again (its message may have died with a worker)."""
    return max(3 * _lease_length(), timedelta(seconds=2 * float(settings.PAM_JOB_REAPER_INTERVAL)))


def _requeue_stalled(now: datetime) -> int:
    """Pending/running jobs with no running step and no output for ``stall_after()``:
    queue them again. Harmless if their message was only slow (the claim decides), and
    bounded: the line written here is new activity, so at most once per period."""
    cutoff = now - stall_after()
    candidates = (
        Job.objects.filter(status__in=[Status.PENDING, Status.RUNNING])
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
            _enqueue(job.pk)
            count += 1
    return count


def leases_reap(now: datetime | None = None) -> dict[str, int]:
    """Every running step whose lease expired before ``now``: re-queued while it has
    attempts left, else failed (and its job with it); the reason goes to the output.
    Then jobs left waiting with nothing running are queued again (``stalled``)."""
    now = now or timezone.now()
    expired = list(
        Step.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now).order_by("lease_expires_at")
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
