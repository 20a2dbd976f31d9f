"""The audit job kinds: large CSV/JSON Lines exports and every PDF report, and SIEM
forwarding on an administrator's request (thousands of events over the network: a
worker's work, not a request's)."""

from __future__ import annotations

from pamportal.jobs.engine import StepContext
from pamportal.jobs.models import Job
from pamportal.jobs.registry import JobKind, StepSpec, register
from pamportal.jobs.services import job_create

from .checkpoints import audit_chain_check
from .exports import audit_export_run
from .siem import siem_forward

KIND = "audit.export"
SIEM_FORWARD_KIND = "audit.siem-forward"
# Whoever may read the trail may see these jobs and their output; nobody else.
VIEW_CAPABILITY = "audit.view"


class SiemForwardStopped(RuntimeError):
    """Forwarding stopped part way (the collector went away, the cursor moved)."""


def _verify(ctx: StepContext) -> dict:
    result = audit_chain_check()
    if result.ok:
        ctx.log(f"audit chain verified up to event {result.last_position}")
    else:
        ctx.log(f"audit chain broken at event {result.first_bad_position}: {result.reason}", level="warning")
    return {"ok": result.ok, "verified_position": result.verified, "first_bad_position": result.first_bad_position}


def _write(ctx: StepContext) -> dict:
    export = audit_export_run(export_id=ctx.params["export_id"], log=ctx.log)
    return {"events": export.row_count, "bytes": export.size}


def _forward(ctx: StepContext) -> dict:
    outcome = siem_forward()
    if outcome.get("error"):
        raise SiemForwardStopped(f"forwarding stopped after {outcome['sent']} events: {outcome['error']}")
    if outcome.get("skipped"):
        ctx.log(f"nothing sent: {outcome['skipped']}", level="warning")
    else:
        ctx.log(f"{outcome['sent']} events sent; the cursor is at {outcome['cursor']}")
    return outcome


register(
    JobKind(
        name=KIND,
        title="Audit export",
        steps=(
            StepSpec("verify", "Verify the audit chain", _verify, max_attempts=2),
            StepSpec("write", "Write the file and sign its manifest", _write, max_attempts=2),
        ),
        view_capability=VIEW_CAPABILITY,
    )
)
register(
    JobKind(
        name=SIEM_FORWARD_KIND,
        title="Forward audit events to the SIEM",
        steps=(StepSpec("forward", "Send the events after the cursor", _forward),),
        view_capability=VIEW_CAPABILITY,
    )
)


def siem_forward_start(*, user) -> Job:
    """Queue a forwarding run now (audited as the job's start); a worker sends the events."""
    return job_create(kind=SIEM_FORWARD_KIND, created_by=user)
