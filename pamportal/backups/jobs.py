"""The backup job kind: a backup and its proof, run by a worker (started from the
console, or by ``manage.py backup`` in the foreground)."""

from __future__ import annotations

from pamportal.jobs.engine import StepContext
from pamportal.jobs.models import Job
from pamportal.jobs.registry import RUNS_ON_LEADER, JobKind, StepSpec, register
from pamportal.jobs.services import job_create

KIND = "backups.backup"


class BackupFailed(RuntimeError):
    """The backup was not written, or its proof failed (the Backup row says why)."""


def _backup(ctx: StepContext) -> dict:
    from .services import backup_run

    backup = backup_run(user=ctx.job.created_by, job_id=ctx.job.pk, log=ctx.log)
    if backup.state != "proven":
        raise BackupFailed(f"backup {backup.archive_name or backup.pk} failed: {backup.failure_reason}")
    return {"backup_id": backup.pk, "archive": backup.archive_name, "size": backup.size, "sha256": backup.sha256}


register(
    JobKind(
        name=KIND,
        title="Backup and restore proof",
        steps=(StepSpec("backup", "Write the archive and prove it restores", _backup),),
        runs_on=RUNS_ON_LEADER,  # the cluster's database is dumped where it is the primary
    )
)


def backup_job_start(*, user) -> Job:
    """Queue a backup (audited as the job's start); a worker takes and proves it."""
    return job_create(kind=KIND, created_by=user)
