"""The "preflight" job kind: one step per check, all in one parallel step group.

The engine claims every check's step for one worker and runs them at once (see
``pamportal.jobs.engine``), so a run lasts as long as its slowest check and every
check is its own step with its own status and timestamps. A worker that dies mid-run
leaves leases that the reaper expires and re-queues (``max_attempts=2``): the next
worker claims what is left and runs only that.

A check runs in its own thread from the run's context (the job's params) and touches
no database; its outcome is stored by ``_record`` in the worker's thread, in the
transaction that marks its step succeeded. The licence check uses the database and
runs in the worker's thread.
"""

from __future__ import annotations

from dataclasses import asdict, fields

from pamportal.jobs.engine import StepContext
from pamportal.jobs.registry import JobKind, StepSpec, register

from . import services
from .checks import BY_ID, CATALOGUE, Check, CheckResult, PreflightContext, run_bounded
from .models import PreflightRun

GROUP = "checks"
_RESULT_FIELDS = {f.name for f in fields(CheckResult)}


def _step_result(check: Check, result: CheckResult) -> dict:
    return {"check": check.id, "status": result.status, "severity": check.result_severity(result),
            "measured": result.measured, "threshold": result.threshold, "message": result.message}


def _unknown(name: str) -> Check:
    def run(ctx):
        return CheckResult(status="error", message=f"this worker's catalogue has no check named {name!r}",
                           remediation="upgrade every worker to the same version")

    return Check(name, name, "error", False, run, lambda t: 1.0)


def _check_of(ctx: StepContext) -> Check:
    return BY_ID.get(ctx.step.name) or _unknown(ctx.step.name)


def run_check_step(ctx: StepContext) -> dict:
    """Run the step's check against the run's context; no database here."""
    context = PreflightContext.from_dict(ctx.params["context"])
    return asdict(run_bounded(_check_of(ctx), context))


def record_check_step(ctx: StepContext, result: dict) -> dict:
    """Store the check's outcome (and the run's summary so far); the step keeps a digest."""
    check = _check_of(ctx)
    check_result = CheckResult(**{k: v for k, v in result.items() if k in _RESULT_FIELDS})
    run = PreflightRun.objects.get(job_id=ctx.job.pk)
    services.outcome_record(run=run, check=check, result=check_result, step=ctx.step)
    services.run_summarise(run)
    return _step_result(check, check_result)


KIND = register(
    JobKind(
        name=services.KIND,
        title="Preflight checks",
        view_capability="preflight.view",
        steps=tuple(
            StepSpec(check.id, check.title, run_check_step, max_attempts=2, group=GROUP,
                     in_worker_thread=check.uses_database, record=record_check_step)
            for check in CATALOGUE
        ),
    )
)
