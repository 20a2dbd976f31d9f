"""The "preflight" job kind: one step per check, the independent checks run at once.

The engine runs a job's steps one after another, each after claiming it. The first
step a worker claims here also claims every other pending step of the job (same lock
order as the engine: job row, then step rows; status running, lease owner and expiry),
runs all their checks in parallel, and records each step's outcome as its check
finishes, still under its lease. So a run lasts as long as its slowest check, every
check is its own step with its own status and timestamps, and a worker that dies
mid-run leaves leases that the reaper expires and re-queues (``max_attempts=2``): the
next worker claims what is left and runs only that.

Only the worker's own thread touches the database; the checks' threads are plain
probes (``checks.run_parallel`` calls back into this thread).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pamportal.jobs.choices import Status
from pamportal.jobs.models import Job, Step
from pamportal.jobs.registry import JobKind, StepSpec, register
from pamportal.jobs.services import job_log, status_transition

from . import services
from .checks import BY_ID, CATALOGUE, Check, CheckResult, PreflightContext, run_parallel
from .models import PreflightRun


def _lease() -> timedelta:
    return timedelta(seconds=float(settings.PAM_JOB_LEASE_SECONDS))


def _claim_others(job_id: int, own_step: Step, worker_id: str) -> list[Step]:
    """Claim the job's other pending steps for this worker, as ``step_claim`` would."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status != Status.RUNNING:
            return []
        steps = list(
            Step.objects.select_for_update().filter(job=job, status=Status.PENDING).exclude(pk=own_step.pk)
            .order_by("index")
        )
        expires = timezone.now() + _lease()
        for step in steps:
            status_transition(step, Status.RUNNING, lease_owner=worker_id, lease_expires_at=expires,
                              attempts=step.attempts + 1, error="")
        if steps:
            job_log(job, f"running {len(steps) + 1} checks in parallel on worker {worker_id}", step=own_step)
        return steps


def _record_other(run: PreflightRun, step: Step, worker_id: str, check: Check, result: CheckResult) -> None:
    """Record a claimed step's check under the job and step locks, if still ours."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=run.job_id)
        current = Step.objects.select_for_update().get(pk=step.pk)
        if current.status != Status.RUNNING or current.lease_owner != worker_id:
            job_log(job, f"{check.id}: finished after this worker lost the step (now {current.status}); "
                         f"its result was discarded", step=step, level="warning")
            return
        status_transition(current, Status.SUCCEEDED, result=_step_result(check, result), lease_expires_at=None)
        services.outcome_record(run=run, check=check, result=result, step=current)


def _record_own(run: PreflightRun, step: Step, worker_id: str, check: Check, result: CheckResult) -> None:
    """The step the engine claimed: its outcome row now; the engine marks the step."""
    with transaction.atomic():
        Job.objects.select_for_update().get(pk=run.job_id)
        current = Step.objects.select_for_update().get(pk=step.pk)
        if current.status == Status.RUNNING and current.lease_owner == worker_id:
            services.outcome_record(run=run, check=check, result=result, step=current)


def _step_result(check: Check, result: CheckResult) -> dict:
    return {"check": check.id, "status": result.status, "severity": check.result_severity(result),
            "measured": result.measured, "threshold": result.threshold, "message": result.message}


def _unknown(name: str) -> Check:
    def run(ctx):
        return CheckResult(status="error", message=f"this worker's catalogue has no check named {name!r}",
                           remediation="upgrade every worker to the same version")

    return Check(name, name, "error", False, run, lambda t: 1.0)


def run_checks_step(ctx) -> dict:
    """The run function of every step of the kind (see the module docstring)."""
    run = PreflightRun.objects.get(job_id=ctx.job.pk)
    context = PreflightContext.from_dict(run.context)
    others = _claim_others(ctx.job.pk, ctx.step, ctx.worker_id)
    steps = {ctx.step.name: ctx.step, **{s.name: s for s in others}}
    checks = [BY_ID.get(name) or _unknown(name) for name in steps]
    own_result: dict = {}

    def on_result(check: Check, result: CheckResult) -> None:
        step = steps[check.id]
        if step.pk == ctx.step.pk:
            _record_own(run, step, ctx.worker_id, check, result)
            own_result.update(_step_result(check, result))
        else:
            _record_other(run, step, ctx.worker_id, check, result)

    held = [s.pk for s in steps.values()]

    def renew() -> None:
        Step.objects.filter(pk__in=held, status=Status.RUNNING, lease_owner=ctx.worker_id).update(
            lease_expires_at=timezone.now() + _lease()
        )

    run_parallel(checks, context, on_result=on_result, tick=max(0.05, _lease().total_seconds() / 3), on_tick=renew)
    services.run_summarise(run)
    return own_result


KIND = register(
    JobKind(
        name=services.KIND,
        title="Preflight checks",
        steps=tuple(StepSpec(check.id, check.title, run_checks_step, max_attempts=2) for check in CATALOGUE),
    )
)
