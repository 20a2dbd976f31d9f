"""Reading backups for the Backups page: the list newest first with each backup's job,
one backup by id, whether a backup is under way, and the backup dir's free space."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from django.db.models import QuerySet

from pamportal.accounts.roles import has_capability
from pamportal.jobs.models import Job

from . import conf
from .models import Backup
from .services import backup_job_active

__all__ = ["BackupNotFound", "access_backup_by_id", "backup_job_active", "backup_jobs_attach", "backup_list",
           "backup_space"]


class BackupNotFound(Exception):
    """No such backup, or not one this user may see: the same answer for both."""


def backup_list(*, user) -> QuerySet[Backup]:
    """The backups ``user`` may see, newest first (none without ``backups.view``)."""
    if not has_capability(user, "backups.view"):
        return Backup.objects.none()
    return Backup.objects.order_by("-started_at", "-id")


def access_backup_by_id(user, backup_id: int) -> Backup:
    backup = backup_list(user=user).filter(pk=backup_id).first()
    if backup is None:
        raise BackupNotFound(f"no backup #{backup_id}")
    return backup


def backup_jobs_attach(backups) -> list[Backup]:
    """The backups, each with ``.job``: the job that took it (None for ``manage.py
    backup``, or a job since deleted: ``Backup.job_id`` is a plain number), in one query."""
    backups = list(backups)
    ids = {b.job_id for b in backups if b.job_id is not None}
    jobs = Job.objects.select_related("created_by").in_bulk(ids) if ids else {}
    for backup in backups:
        backup.job = jobs.get(backup.job_id)
    return backups


@dataclass(frozen=True)
class Space:
    directory: Path
    free: int
    total: int

    @property
    def used_percent(self) -> int:
        return round(100 * (self.total - self.free) / self.total) if self.total else 0


def backup_space() -> Space | None:
    """Free and total space of the file system the archives are written to (None when
    it cannot be read)."""
    try:
        directory = conf.backup_dir()
        usage = shutil.disk_usage(directory)
    except OSError:
        return None
    return Space(directory=directory, free=usage.free, total=usage.total)
