"""``manage.py restore ARCHIVE``: restore a backup onto this fresh node with the
cluster's MEK (from ``--mek-file`` or typed at a prompt). Refuses, changing nothing,
a node that is not fresh, a wrong MEK, a changed or cut archive, a forged manifest, an
archive of another cluster and one whose copy does not prove."""

from __future__ import annotations

import getpass
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from pamportal.audit.actions import AuditAction
from pamportal.audit.services import audit_record
from pamportal.backups import database
from pamportal.backups.archive import ArchiveError
from pamportal.backups.models import Backup, BackupState
from pamportal.backups.restore import restore_run
from pamportal.backups.services import archive_target
from pamportal.crypto import mek as mek_format


@sensitive_variables()
def mek_from_text(text: bytes) -> bytes:
    """The MEK from a key file: the 32 raw bytes of a node's key file, or the text file
    the console offers for download (the key in groups on one of its lines)."""
    if len(text) == mek_format.MEK_BYTES:
        return text
    problem = "it holds no Master Encryption Key"
    for line in text.decode("utf-8", "replace").splitlines():
        if line.count("-") < 5:
            continue
        try:
            return mek_format.decode(line)
        except mek_format.MekFormatError as error:
            problem = str(error)
    raise CommandError(f"The MEK file cannot be used: {problem}", returncode=2)


class Command(BaseCommand):
    help = "Restore a backup archive onto this fresh node (stop its console and worker first)."

    def add_arguments(self, parser):
        parser.add_argument("archive", type=Path)
        parser.add_argument("--mek-file", type=Path, help="The MEK: the file downloaded at setup (or a raw key file).")

    @sensitive_variables()
    def handle(self, *args, archive: Path, mek_file: Path | None = None, **options):
        if mek_file is not None:
            try:
                key = mek_from_text(mek_file.read_bytes())
            except OSError as error:
                raise CommandError(f"The MEK file cannot be read: {error.strerror or error}", returncode=2) from None
        else:
            try:
                key = mek_format.decode(getpass.getpass("Master Encryption Key: "))
            except mek_format.MekFormatError as error:
                raise CommandError(str(error), returncode=2) from None
        source = database.source_of(connection)
        connections.close_all()  # the restore replaces what the connection would read
        try:
            result = restore_run(archive, mek=key, data_dir=Path(settings.PAM_DATA_DIR), source=source)
        except ArchiveError as error:
            raise CommandError(f"refused ({error.code}): {error.message} Nothing on this node was changed.",
                               returncode=3) from None
        except database.DatabaseProblem as problem:
            raise CommandError(f"the restore failed: {problem}", returncode=4) from None
        connections.close_all()
        with transaction.atomic():
            # The backup that wrote this archive was still running when its dump was
            # taken: its outcome is on the node that wrote it, not "running" forever here.
            Backup.objects.filter(state=BackupState.RUNNING).update(
                state=BackupState.FAILED, finished_at=timezone.now(),
                failure_reason="Unfinished in the restored database: it was running when the archive was written "
                               "(its outcome is recorded on the node that wrote it).")
            audit_record(
                action=AuditAction.BACKUP_RESTORED, target=archive_target(result.archive),
                details={"archive": result.archive, "cluster_id": result.cluster_id, "created_at": result.created_at,
                         "audit_position": result.audit_position, "audit_hash": result.audit_hash,
                         "files": list(result.files)},
            )
        self.stdout.write(f"restored {result.archive} (cluster {result.cluster_id}, made {result.created_at})")
        self.stdout.write(f"audit head restored to event {result.audit_position}, {result.audit_hash}")
        self.stdout.write(f"node files: {', '.join(result.files) or 'none'}")
