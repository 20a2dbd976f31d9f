"""The "audit export" job: large CSV/JSON Lines exports and every PDF report."""

from __future__ import annotations

from pamportal.jobs.registry import JobKind, StepSpec, register

KIND = "audit.export"


def _verify(ctx) -> dict:
    from .checkpoints import audit_chain_check

    result = audit_chain_check()
    if result.ok:
        ctx.log(f"audit chain verified up to event {result.last_position}")
    else:
        ctx.log(f"audit chain broken at event {result.first_bad_position}: {result.reason}", level="warning")
    return {"ok": result.ok, "verified_position": result.verified, "first_bad_position": result.first_bad_position}


def _write(ctx) -> dict:
    from .exports import audit_export_run

    export = audit_export_run(export_id=ctx.params["export_id"], log=ctx.log)
    return {"events": export.row_count, "bytes": export.size}


register(
    JobKind(
        name=KIND,
        title="Audit export",
        steps=(
            StepSpec("verify", "Verify the audit chain", _verify, max_attempts=2),
            StepSpec("write", "Write the file and sign its manifest", _write, max_attempts=2),
        ),
    )
)
