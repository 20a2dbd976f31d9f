"""Taking a backup: the database dumped consistently, the node files copied, the
manifest signed with the audit signing key, all streamed into one encrypted archive
under a temporary name that takes its final name only once complete and fsynced;
then the restore proof, and the outcome recorded on the ``Backup`` row and in the
audit trail."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import BinaryIO, Callable

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from pamportal.audit import chain
from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import Refused, audited_refusals
from pamportal.audit.services import audit_record
from pamportal.audit.signing import signing_key_load
from pamportal.cluster.leader_follow import this_node_leads
from pamportal.core.config import setting
from pamportal.core.files import private_file
from pamportal.crypto.ca import cluster_id_of
from pamportal.jobs.choices import ACTIVE
from pamportal.jobs.models import Job
from pamportal.jobs.services import job_create
from pamportal.nodes import keystore
from pamportal.nodes.selectors import node_address, node_is_finalised

from . import conf, database
from .archive import MANIFEST_FORMAT, VERSION, manifest_message
from .contents import archive_write, file_digest
from .models import Backup, BackupState
from .proof import proof_run, scratch_dir

# The node files a node is rebuilt from, relative to the data dir: its TLS files, the
# key that seals TOTP secrets, and the audit signing key while it is still a file.
# Never the MEK: the archive is useless without it, and the operator brings it.
NODE_FILES = ("tls/node.crt", "tls/node.key", "tls/cluster-ca.crt", "totp-seal.key", "audit-signing.key")
NEVER_BACKED_UP = ("mek.key",)
SUFFIX = ".pambak"

Log = Callable[[str], None]
logger = logging.getLogger(__name__)


def archive_target(name: str) -> str:
    """The audit target of a backup archive, by its file name."""
    return f"backup:{name}"


def backup_target(backup: Backup) -> str:
    """The audit target of a backup."""
    return archive_target(backup.archive_name or str(backup.pk))


def archive_path(backup: Backup) -> Path:
    return conf.backup_dir() / backup.archive_name


def _utc(moment: datetime) -> str:
    return moment.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def archive_name_for(cluster_id: str, moment: datetime, directory: Path) -> str:
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", cluster_id)[:80] or "node"
    stamp = moment.astimezone(dt_timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name, n = f"pamportal-backup-{safe}-{stamp}{SUFFIX}", 2
    while (directory / name).exists():
        name, n = f"pamportal-backup-{safe}-{stamp}-{n}{SUFFIX}", n + 1
    return name


def _cluster_id(facts: database.Facts, address: str) -> str:
    """The cluster's id (of its CA); a node not finalised yet has none: its own then."""
    return cluster_id_of(facts.cluster_ca_sha256) if facts.cluster_ca_sha256 else f"node-{address}"


def _node_files(staging: Path) -> list[tuple[str, Path, int]]:
    """Copies of the node files in ``staging`` (what is hashed is what is archived)."""
    data_dir = Path(settings.PAM_DATA_DIR)
    found = []
    for relative in NODE_FILES:
        source = data_dir / relative
        if not source.is_file():
            continue
        copy = staging / "node" / relative
        copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(source, copy)
        found.append((f"node/{relative}", copy, source.stat().st_mode & 0o777))
    return found


@transaction.atomic
def _backup_start(*, user, job_id: int | None) -> Backup:
    return Backup.objects.create(
        state=BackupState.RUNNING, node_address=node_address(), started_at=timezone.now(), job_id=job_id,
        created_by_name=getattr(user, "username", "") or "manage.py backup",
    )


def manifest_build(*, facts: database.Facts, engine: str, cluster_id: str, address: str, created: datetime,
                   files: list[dict]) -> dict:
    """The manifest, unsigned."""
    return {
        "format": MANIFEST_FORMAT,
        "version": VERSION,
        "created_at": _utc(created),
        "cluster_id": cluster_id,
        "node": {"address": address},
        "app_version": settings.PAM_VERSION,
        "members": [
            {"address": m["address"], "role": m["role"], "version": m["version"], "state": m["state"]}
            for m in facts.members
        ],
        "database": {"engine": engine, "file": database.DUMP_NAMES[engine], "row_counts": facts.row_counts},
        "migrations": facts.migrations,
        "audit_head": {"position": facts.audit_position, "hash": facts.audit_hash},
        "files": files,
    }


def manifest_sign(manifest: dict) -> dict:
    """The manifest with the audit signing key's public key and signature added."""
    key = signing_key_load()
    signed = {**manifest, "public_key": {"algorithm": "Ed25519", "key_id": key.key_id, "raw_base64": key.public_b64}}
    signed["signature"] = {"algorithm": "Ed25519", "key_id": key.key_id, "value": key.sign(manifest_message(signed))}
    return signed


def _summary(manifest: dict) -> dict:
    return {
        "created_at": manifest["created_at"], "cluster_id": manifest["cluster_id"],
        "app_version": manifest["app_version"], "members": [m["address"] for m in manifest["members"]],
        "engine": manifest["database"]["engine"], "audit_head": manifest["audit_head"],
        "files": [{k: f[k] for k in ("name", "size", "sha256")} for f in manifest["files"]],
        "rows": sum(manifest["database"]["row_counts"].values()),
    }


class BackupRefused(RuntimeError):
    """A backup that cannot start (no MEK yet, not enough free space)."""


# Beyond twice the database (the dump, then the archive beside the proof's copy).
SPACE_MARGIN = 64 * 1024 * 1024


def space_check(directory: Path, database_bytes: int) -> None:
    """Refuse to start a backup that would fill the disk of ``directory``: the dump and
    the archive, then the archive and the proof's copy, are on it at once."""
    needed = 2 * database_bytes + SPACE_MARGIN
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise BackupRefused(f"Not enough free space in {directory}: {free // 2**20} MiB free, about "
                            f"{needed // 2**20} MiB needed for a database of {database_bytes // 2**20} MiB.")


@sensitive_variables()
def _write(backup: Backup, log: Log) -> tuple[Path, bytes]:
    """Write the archive; returns its path and the MEK (for the proof)."""
    try:
        mek = keystore.mek_load()
    except keystore.MekMissing:
        raise BackupRefused("This node has no Master Encryption Key yet: finish setup before taking a backup.") from None
    signing_key_load()  # before the dump: a key made now would not be in it
    directory = conf.backup_dir()
    source = database.source_of(connection)
    space_check(directory, database.size_of(source))
    started = time.perf_counter()
    with scratch_dir(directory, "staging") as staging:
        log(f"dumping the {source.engine} database")
        dump_path, facts = database.dump(source, staging)
        address = backup.node_address
        cluster_id = _cluster_id(facts, address)
        files = [(database.DUMP_NAMES[source.engine], dump_path, 0o600)] + _node_files(staging)
        listed = []
        for name, path, mode in files:
            sha256, size = file_digest(path)
            listed.append({"name": name, "sha256": sha256, "size": size, "mode": mode,
                           "kind": "database" if name.startswith("database/") else "node-file"})
        created = timezone.now()
        manifest = manifest_sign(manifest_build(facts=facts, engine=source.engine, cluster_id=cluster_id,
                                                address=address, created=created, files=listed))
        name = archive_name_for(cluster_id, created, directory)
        log(f"writing {name}")
        # A temporary name until the archive is whole and fsynced: a killed worker never
        # leaves a partial archive under the final name.
        with private_file(directory / name, 0o600, exclusive=True) as out:
            written = archive_write(out, mek=mek, cluster_id=cluster_id, created=manifest["created_at"],
                                    manifest=manifest, files=[(n, p) for n, p, _ in files], mtime=int(created.timestamp()),
                                    chunk_size=conf.chunk_bytes())
    Backup.objects.filter(pk=backup.pk).update(
        archive_name=name, size=written.size, sha256=written.sha256, cluster_id=cluster_id,
        database_engine=source.engine, audit_position=facts.audit_position, audit_hash=facts.audit_hash,
        manifest_summary=_summary(manifest), written_at=timezone.now(), write_seconds=time.perf_counter() - started,
    )
    backup.refresh_from_db()
    log(f"wrote {written.size} bytes ({written.chunks} chunks), SHA-256 {written.sha256}")
    return directory / name, mek


@transaction.atomic
def _backup_finish(backup: Backup, *, state: str, reason: str = "", proof=None) -> Backup:
    backup = Backup.objects.select_for_update().get(pk=backup.pk)
    backup.state = state
    backup.finished_at = timezone.now()
    if proof is not None:
        backup.proof_ok, backup.proof_reason = proof.ok, proof.reason
        backup.proof_details, backup.proof_seconds = chain.storable(proof.details), proof.seconds
    if state == BackupState.FAILED:
        backup.failure_reason = reason or (proof.reason if proof is not None else "")
    backup.save()
    details = {"archive": backup.archive_name, "size": backup.size, "sha256": backup.sha256,
               "cluster_id": backup.cluster_id, "audit_position": backup.audit_position,
               "audit_hash": backup.audit_hash}
    if state == BackupState.PROVEN:
        audit_record(action=AuditAction.BACKUP_CREATED, target=backup_target(backup),
                     details={**details, "proof_seconds": round(backup.proof_seconds or 0, 3)})
    else:
        audit_record(action=AuditAction.BACKUP_FAILED, target=backup_target(backup), outcome=Outcome.FAILED,
                     details={**details, "reason": backup.failure_reason[:500]})
    return backup


def backup_run(*, user=None, job_id: int | None = None, log: Log | None = None) -> Backup:
    """Take a backup and prove it. Never raises for the backup's own failures: the
    returned row says ``proven`` or ``failed`` (with the reason), and the audit trail
    has ``backup.created`` or ``backup.failed``."""
    log = log or (lambda text: None)
    with _backup_lock(conf.backup_dir()) as held:
        backup = _backup_start(user=user, job_id=job_id)
        if not held:
            log("another backup is running on this node")
            return _backup_finish(backup, state=BackupState.FAILED,
                                  reason="Another backup is running on this node; this one did not start.")
        for stale in _interrupted_mark(current=backup):
            log(f"backup {stale.pk} was interrupted (its process stopped); marked failed")
        _leftovers_remove(conf.backup_dir())
        return _backup_take(backup, log)


LOCK_NAME = ".lock"


@contextlib.contextmanager
def _backup_lock(directory: Path):
    """One backup at a time on a node: an exclusive ``flock`` on a file in the backup
    dir, released by the kernel if the process dies. Yields whether it was taken."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _interrupted_mark(*, current: Backup) -> list[Backup]:
    """Under the lock, this node's other backups still "running" belong to a process
    that died (a killed worker): each is marked failed and audited."""
    stale = Backup.objects.filter(node_address=current.node_address, state=BackupState.RUNNING).exclude(pk=current.pk)
    return [
        _backup_finish(backup, state=BackupState.FAILED,
                       reason="Interrupted: the process taking this backup stopped before it finished; no archive "
                              "was completed under its name.")
        for backup in stale
    ]


def _leftovers_remove(directory: Path) -> None:
    """Under the lock: what a killed backup left (its staging copy, its proof's scratch
    area, its archive under the temporary name) goes."""
    for path in directory.iterdir():
        if not path.name.startswith(".") or path.name == LOCK_NAME:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@sensitive_variables()
def _backup_take(backup: Backup, log: Log) -> Backup:
    try:
        path, mek = _write(backup, log)
    except Exception as error:  # whatever stopped it, the row must not stay "running"
        if isinstance(error, (BackupRefused, database.DatabaseProblem, OSError)):
            what = str(error)
        else:
            what = f"{type(error).__name__}: {error}"
            logger.exception("backup %s failed", backup.pk)
        log(f"backup failed: {what}")
        return _backup_finish(backup, state=BackupState.FAILED, reason=f"The archive was not written: {what}")
    log("proving the backup: restoring it into a scratch area")
    source = database.source_of(connection)
    proof = proof_run(path, mek=mek, scratch_parent=conf.backup_dir(),
                      pg_params=source.params if source.engine == database.POSTGRESQL else None)
    if proof.ok:
        log(f"proof passed in {proof.seconds:.2f}s: {proof.details.get('verified_events')} audit events verified")
        backup = _backup_finish(backup, state=BackupState.PROVEN, proof=proof)
        for pruned in backups_prune():
            log(f"retention: removed {pruned.archive_name}")
        return backup
    log(f"proof failed: {proof.reason}")
    return _backup_finish(backup, state=BackupState.FAILED, proof=proof)


def backups_prune(*, keep: int | None = None) -> list[Backup]:
    """Remove this node's archives beyond the newest ``keep`` proven ones (the setting
    ``PAM_BACKUP_KEEP`` unless given), and the archives of failed backups older than the
    newest proven one: never while no newer proven backup exists. Each removal is
    audited (``backup.pruned``); the row stays, with ``pruned_at``."""
    keep = max(1, conf.keep() if keep is None else keep)
    ours = (Backup.objects.filter(node_address=node_address(), pruned_at__isnull=True).exclude(archive_name="")
            .exclude(state=BackupState.RUNNING).order_by("-started_at", "-id"))
    proven = [b for b in ours if b.state == BackupState.PROVEN]
    if not proven:
        return []
    newest = proven[0]
    doomed = proven[keep:] + [b for b in ours if b.state == BackupState.FAILED and b.started_at < newest.started_at]
    pruned = []
    for backup in doomed:
        pruned.append(_backup_prune_one(backup, newest=newest))
    return pruned


@transaction.atomic
def _backup_prune_one(backup: Backup, *, newest: Backup) -> Backup:
    backup = Backup.objects.select_for_update().get(pk=backup.pk)
    backup.pruned_at = timezone.now()
    backup.save(update_fields=["pruned_at"])
    audit_record(action=AuditAction.BACKUP_PRUNED, target=backup_target(backup),
                 details={"archive": backup.archive_name, "state": backup.state, "sha256": backup.sha256,
                          "newest_proven": newest.archive_name})
    path = archive_path(backup)
    # The file goes once the row says so: a failed commit leaves the archive, not a row without one.
    transaction.on_commit(lambda: path.unlink(missing_ok=True))
    return backup


# --- the console: starting a backup, downloading an archive, the daily schedule ----------
class BackupActionRefused(Refused):
    """A backup start or an archive download that is refused; ``message`` is for the
    operator, the refusal is recorded as ``backup.refused``."""

    def __init__(self, message: str, *, target: str, reason: str, **details):
        super().__init__(message, action=AuditAction.BACKUP_REFUSED, target=target, reason=reason, details=details)


def backup_job_active() -> Job | None:
    """The backup job queued or running in the cluster, if there is one."""
    from .jobs import KIND

    return Job.objects.filter(kind=KIND, status__in=ACTIVE).order_by("-created_at", "-id").first()


@audited_refusals
def backup_start(*, user, title: str | None = None) -> Job:
    """Queue a backup job (audited as the job's start); refused while one is queued or
    running, or before setup is finalised (there is no MEK to encrypt with)."""
    from .jobs import KIND

    if not node_is_finalised():
        raise BackupActionRefused("This node's setup is not finalised: finish it before taking a backup.",
                                  target="backup:start", reason="node not finalised")
    running = backup_job_active()
    if running is not None:
        raise BackupActionRefused(f"A backup is already under way (job #{running.pk}); wait for it to finish.",
                                  target="backup:start", reason="a backup is already under way", job=running.pk)
    return job_create(kind=KIND, created_by=user, title=title)


@dataclass(frozen=True)
class ArchiveDownload:
    """An archive handed to a download: its open file, name and size."""

    handle: BinaryIO
    name: str
    size: int


@audited_refusals
def backup_download(*, user, backup_id: int) -> ArchiveDownload:
    """The archive of a proven backup, opened for download and audited
    (``backup.downloaded``); a backup that is not proven, whose archive retention removed,
    that another node wrote, or whose file is gone or changed in size is refused, audited
    as ``backup.refused``. The caller closes the handle (a ``FileResponse`` does)."""
    backup = Backup.objects.select_for_update().filter(pk=backup_id).first()
    if backup is None:
        raise BackupActionRefused("There is no such backup.", target=archive_target(str(backup_id)),
                                  reason="no such backup")
    target = backup_target(backup)
    if backup.state != BackupState.PROVEN or not backup.archive_name:
        raise BackupActionRefused(
            f"Backup {backup.archive_name or backup.pk} is {backup.get_state_display().lower()}, not proven: "
            "only a backup whose restore proof passed can be downloaded.",
            target=target, reason=f"backup {backup.state}")
    if backup.pruned_at is not None:
        raise BackupActionRefused(f"{backup.archive_name} was removed by retention; it can no longer be downloaded.",
                                  target=target, reason="archive pruned")
    if backup.node_address and backup.node_address != node_address():
        raise BackupActionRefused(
            f"{backup.archive_name} was written on {backup.node_address}; download it from that node's console.",
            target=target, reason="archive on another node", node=backup.node_address)
    path = archive_path(backup)
    try:
        handle = open(path, "rb")  # noqa: SIM115 -- handed to the response, which closes it
    except OSError as error:
        raise BackupActionRefused(f"The archive {backup.archive_name} is no longer in {path.parent}.",
                                  target=target, reason="archive file missing", error=type(error).__name__) from None
    try:
        size = os.fstat(handle.fileno()).st_size
        if size != backup.size:
            raise BackupActionRefused(
                f"The archive {backup.archive_name} is {size} bytes, not the {backup.size} that were written and "
                "proven: it was changed on disk and is not handed out.",
                target=target, reason="archive size differs", size=size, recorded_size=backup.size)
        audit_record(action=AuditAction.BACKUP_DOWNLOADED, target=target,
                     details={"archive": backup.archive_name, "size": backup.size, "sha256": backup.sha256})
    except BaseException:
        handle.close()
        raise
    return ArchiveDownload(handle=handle, name=backup.archive_name, size=size)


def backup_interval() -> int:
    """Seconds between scheduled backups (``PAM_BACKUP_INTERVAL_SECONDS``; 0: none)."""
    return max(0, setting("PAM_BACKUP_INTERVAL_SECONDS", 86400, int))


def backup_schedule_blocker(*, now: datetime | None = None) -> str:
    """Why the schedule starts no backup now; "" when one is due. A backup is due on a
    finalised node that leads its cluster (or stands alone), with no backup under way
    and none started (by the schedule, a person or ``manage.py backup``) within the
    interval: what counts is the record in the database, so a restarted beat or a new
    leader neither skips a backup nor takes an extra one."""
    from .jobs import KIND

    now = now or timezone.now()
    interval = backup_interval()
    if interval <= 0:
        return "scheduled backups are off (PAM_BACKUP_INTERVAL_SECONDS=0)"
    if not node_is_finalised():
        return "this node's setup is not finalised"
    if not this_node_leads():
        return "this node does not lead the cluster: the leader takes the backups"
    running = backup_job_active()
    if running is not None:
        return f"a backup is already under way (job #{running.pk})"
    since = now - timedelta(seconds=interval)
    last_job = Job.objects.filter(kind=KIND, created_at__gt=since).order_by("-created_at").first()
    last_backup = Backup.objects.filter(started_at__gt=since).order_by("-started_at").first()
    started = max([t for t in (last_job and last_job.created_at, last_backup and last_backup.started_at) if t],
                  default=None)
    if started is not None:
        return f"the last backup started at {_utc(started)}; the next is due at {_utc(started + timedelta(seconds=interval))}"
    return ""


SCHEDULED_TITLE = "Scheduled backup and restore proof"


def backup_scheduled_start(*, now: datetime | None = None) -> Job | None:
    """Start the scheduled backup job when one is due (see ``backup_schedule_blocker``);
    the caller acts as the system. Returns the job, or None when none was due."""
    blocker = backup_schedule_blocker(now=now)
    if blocker:
        logger.debug("no scheduled backup: %s", blocker)
        return None
    try:
        return backup_start(user=None, title=SCHEDULED_TITLE)
    except BackupActionRefused as refused:  # a start that raced this check: recorded, nothing to do
        logger.info("no scheduled backup: %s", refused.message)
        return None
