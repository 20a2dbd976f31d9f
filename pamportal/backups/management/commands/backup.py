"""``manage.py backup``: take a backup of this node now and prove it restores."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pamportal.backups.models import BackupState
from pamportal.backups.services import archive_path, backup_run


class Command(BaseCommand):
    help = "Write an encrypted backup archive of this node and prove it restores; exit non-zero on failure."

    def handle(self, *args, **options):
        backup = backup_run(log=lambda text: self.stderr.write(text))
        if backup.archive_name:
            self.stdout.write(f"archive: {archive_path(backup)}")
            self.stdout.write(f"size: {backup.size} bytes")
            self.stdout.write(f"sha256: {backup.sha256}")
            self.stdout.write(f"audit head: event {backup.audit_position}, {backup.audit_hash}")
            self.stdout.write(f"timings: written in {backup.write_seconds or 0:.2f}s, "
                              f"proven in {backup.proof_seconds or 0:.2f}s")
        if backup.state != BackupState.PROVEN:
            raise CommandError(f"proof: failed: {backup.failure_reason}", returncode=1)
        self.stdout.write(f"proof: passed ({backup.proof_details.get('verified_events')} audit events verified, "
                          f"head matches the manifest)")
