"""Starting preflight runs, recording what each check found, accepting warnings."""

from __future__ import annotations

import os
import socket
from typing import Iterable

from django.db import transaction
from django.utils import timezone

from pamportal.accounts.roles import has_capability
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import Refused, audited_refusals
from pamportal.audit.services import audit_record
from pamportal.jobs.choices import OutputLevel
from pamportal.jobs.engine import job_execute, job_log
from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create

from . import conf
from .checks import BY_ID, CATALOGUE, Check, CheckResult, CheckStatus, PreflightContext, Severity
from .models import CheckOutcome, PreflightRun, WarningAcceptance

KIND = "preflight"
REASON_MAX = 2000


class PreflightRefused(Refused):
    """An acceptance the rules do not allow; the message says why, for the operator.
    Recorded against the run with the check, why, and the reason the operator gave."""

    def __init__(self, message: str, *, outcome_id: int, run_id: int | None, reason: str):
        super().__init__(
            message, action=AuditAction.PREFLIGHT_ACCEPT_REFUSED, outcome=Outcome.DENIED, reason=reason[:REASON_MAX],
            target=f"preflight:{run_id}" if run_id else f"preflight-outcome:{outcome_id}",
            details={"outcome": outcome_id, "why": message},
        )


def _context(context: PreflightContext | None, skip: Iterable[str]) -> PreflightContext:
    context = context or conf.context_default()
    skip = tuple(skip)
    if skip:
        unknown = sorted(set(skip) - set(BY_ID))
        if unknown:
            raise ValueError(f"no preflight check named {', '.join(unknown)}")
        context = PreflightContext.from_dict({**context.to_dict(), "skip": sorted({*context.skip, *skip})})
    return context


@transaction.atomic
def _run_create(*, user, context: PreflightContext, enqueue: bool) -> PreflightRun:
    # The checks read their context from the job's params: they run where there is no database.
    job = job_create(kind=KIND, created_by=user, enqueue=enqueue, title=f"Preflight checks for {context.address}",
                     params={"context": context.to_dict()})
    run = PreflightRun.objects.create(job=job, context=context.to_dict(), created_by=user)
    CheckOutcome.objects.bulk_create(
        CheckOutcome(run=run, position=i, check_id=c.id, title=c.title, severity=c.severity, can_accept=c.can_accept)
        for i, c in enumerate(CATALOGUE)
    )
    return run


def preflight_run_start(*, user, context: PreflightContext | None = None, skip: Iterable[str] = ()) -> PreflightRun:
    """Create a run and its job (one step per check); a worker runs it once committed.

    ``context`` defaults to ``conf.context_default()``; ``skip`` names checks recorded
    as "not part of this run" (the wizard skips ``licence.valid`` before the licence
    step)."""
    return _run_create(user=user, context=_context(context, skip), enqueue=True)


def preflight_run_sync(
    *, user=None, context: PreflightContext | None = None, skip: Iterable[str] = (), worker_id: str | None = None
) -> PreflightRun:
    """Create a run and execute its job here and now (``manage.py preflight``)."""
    run = _run_create(user=user, context=_context(context, skip), enqueue=False)
    job_execute(job_id=run.job_id, worker_id=worker_id or f"console@{socket.gethostname()}:{os.getpid()}")
    run.refresh_from_db()
    return run


# --- recording (called by the job's step, in the worker's own thread) -------------------
def _outcome_fields(check: Check, result: CheckResult) -> dict:
    return dict(
        severity=check.result_severity(result),
        can_accept=check.can_accept,
        status=result.status,
        measured=result.measured[:255],
        threshold=result.threshold[:255],
        message=result.message,
        remediation=result.remediation,
        duration_ms=round(result.duration * 1000),
        checked_at=timezone.now(),
    )


def outcome_record(*, run: PreflightRun, check: Check, result: CheckResult, step=None) -> CheckOutcome:
    """Inside the caller's transaction: store a check's result, log it, audit a failure."""
    fields = _outcome_fields(check, result)
    outcome, _ = CheckOutcome.objects.update_or_create(
        run=run, check_id=check.id,
        defaults={**fields, "title": check.title, "position": [c.id for c in CATALOGUE].index(check.id)
                  if check.id in BY_ID else len(CATALOGUE)},
    )
    WarningAcceptance.objects.filter(outcome=outcome).delete()  # a re-run judges afresh
    label = CheckStatus(result.status).label.lower()
    line = f"{check.id}: {label}"
    if result.measured:
        line += f" ({result.measured}; wanted {result.threshold})" if result.threshold else f" ({result.measured})"
    if result.message:
        line += f" \u2014 {result.message}"
    level = OutputLevel.INFO
    if result.failing:
        level = OutputLevel.ERROR if fields["severity"] == Severity.ERROR else OutputLevel.WARNING
        line += f". Fix: {result.remediation}" if result.remediation else ""
        audit_record(
            action=AuditAction.PREFLIGHT_CHECK_FAILED, target=f"preflight:{run.pk}", outcome=Outcome.FAILED,
            details={"check": check.id, "severity": fields["severity"], "status": result.status,
                     "measured": result.measured, "threshold": result.threshold, "message": result.message},
        )
    job_log(run.job_id, line, step=step, level=level)
    return outcome


def summary_of(outcomes: Iterable[CheckOutcome]) -> dict:
    outcomes = list(outcomes)
    counts = {status.value: 0 for status in CheckStatus}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    counts["blocking"] = sum(1 for o in outcomes if o.blocking)
    counts["total"] = len(outcomes)
    counts["done"] = len(outcomes) - counts[CheckStatus.PENDING.value]
    return counts


def run_summarise(run: PreflightRun) -> dict:
    outcomes = CheckOutcome.objects.filter(run=run).select_related("acceptance")
    run.summary = summary_of(outcomes)
    PreflightRun.objects.filter(pk=run.pk).update(summary=run.summary)
    return run.summary


# --- accepting a warning ----------------------------------------------------------------
def _refuse(outcome: CheckOutcome, why: str, reason: str) -> None:
    raise PreflightRefused(f"{outcome.check_id} cannot be accepted: {why}", outcome_id=outcome.pk,
                           run_id=outcome.run_id, reason=reason)


@audited_refusals
def _accept(*, outcome_id: int, user, reason: str) -> WarningAcceptance:
    outcome = CheckOutcome.objects.select_for_update().filter(pk=outcome_id).first()
    if outcome is None:
        raise PreflightRefused(f"there is no check result #{outcome_id}", outcome_id=outcome_id, run_id=None,
                               reason=reason)
    if not has_capability(user, "preflight.accept"):
        _refuse(outcome, f"{user.get_username()} may not accept preflight warnings", reason)
    if outcome.status in (CheckStatus.PASS, CheckStatus.SKIPPED):
        _refuse(outcome, "it did not fail, so there is nothing to accept", reason)
    if outcome.status == CheckStatus.PENDING:
        _refuse(outcome, "it has not run yet", reason)
    if outcome.severity == Severity.ERROR:
        _refuse(outcome, "it is an error, and errors block until they are fixed; fix it and run preflight again",
                reason)
    if not outcome.can_accept:
        _refuse(outcome, "version, key and quorum checks can never be accepted; fix it and run preflight again",
                reason)
    existing = WarningAcceptance.objects.filter(outcome=outcome).select_related("user").first()
    if existing is not None:
        _refuse(outcome, f"it was already accepted by {existing.user.get_username()} "
                         f"on {timezone.localtime(existing.accepted_at):%Y-%m-%d %H:%M}", reason)
    minimum = conf.accept_reason_min()
    if len(reason) < minimum:
        _refuse(outcome, f"write why it is acceptable (at least {minimum} characters)", reason)
    if len(reason) > REASON_MAX:
        _refuse(outcome, f"the reason is longer than {REASON_MAX} characters", reason)
    acceptance = WarningAcceptance.objects.create(outcome=outcome, user=user, reason=reason, accepted_at=timezone.now())
    run = PreflightRun.objects.get(pk=outcome.run_id)
    job_log(run.job_id, f"{outcome.check_id}: warning accepted by {user.get_username()}: {reason}")
    audit_record(
        action=AuditAction.PREFLIGHT_WARNING_ACCEPTED, target=f"preflight:{run.pk}",
        details={"check": outcome.check_id, "outcome": outcome.pk, "measured": outcome.measured,
                 "message": outcome.message, "reason": reason},
    )
    run_summarise(run)
    return acceptance


def preflight_warning_accept(*, outcome_id: int, user, reason: str) -> WarningAcceptance:
    """Accept a failed warning with a written reason, audited. Refused (and the refusal
    audited) for errors, for checks that can never be accepted, for passed or pending
    checks, for a second acceptance and for a reason shorter than the minimum."""
    return _accept(outcome_id=outcome_id, user=user, reason=(reason or "").strip())


def job_run_of(job: Job) -> PreflightRun:
    return PreflightRun.objects.get(job=job)
