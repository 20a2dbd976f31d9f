"""A join into a cluster whose database is replicated, as the follower carries it out
(the follow job, in its worker) once its etcd member votes:

1. **bootstrap the replica**: the node's Patroni member prepared and started as the
   job's child; Patroni finds the cluster (same scope, the cluster CA's id, on the same
   etcd) already led and makes the member a replica by ``pg_basebackup`` from the
   leader. Waited for (bounded) until Patroni's REST says it streams, then stopped:
   from now on ``serve`` runs it;
2. **seal the pre-join audit trail**: this node's own chain (its first administrator,
   its setup and join events) is about to be replaced by the cluster's, so the whole of
   it is written as a signed export (JSON Lines and its signed manifest, as any audit
   export, checked offline before it is trusted) into ``<data dir>/pre-join-audit/``;
   its head (position, hash) and the export's digests go into the cluster's chain (the
   leader records them when the follower reports, ``cluster.join_replica_ready``);
3. **switch**: ``database.json`` written last, listing the cluster's members leader
   first; ``serve`` notices it and moves the console and the worker onto it.

The bootstrap comes before the seal (not after, as one might order it): the sealed
trail then ends with the replica's own record, as close to the switch as it can, and a
bootstrap that fails leaves no export behind of a trail that goes on on SQLite.

Also here, for the leader: whether this node's database is replicated (its
``database.json``), and which hosts a joining follower should list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pamportal.core import config as core_config

from . import database, local, process
from .rest import PatroniAPIError

logger = logging.getLogger(__name__)

PRE_JOIN_DIR = "pre-join-audit"
BOOTSTRAP_SECONDS = 300.0
REPLICA_ROLES = ("replica", "sync_standby", "quorum_standby")
REPLICA_STATES = ("streaming", "running")


class ReplicaFailed(RuntimeError):
    """The replica could not be made; the message is the reason the join fails with."""


# --- the leader's side -------------------------------------------------------------------------
def database_replicated(data_dir: Path | str | None = None) -> bool:
    """This node's database is its Patroni member (``database.json``), so a node that
    joins becomes a replica of it."""
    return database.database_file_path(data_dir or settings.PAM_DATA_DIR).exists()


def database_hosts(data_dir: Path | str | None = None) -> list[dict]:
    """The hosts of this node's database.json, in its order, as JSON (what a joining
    follower lists, before itself). Empty when the database is not replicated."""
    current = database.read_database_file(data_dir or settings.PAM_DATA_DIR)
    if current is None:
        return []
    return [{"host": h.host, "port": h.port} for h in current.hosts]


def hosts_add(address: str, port: int, *, data_dir: Path | str | None = None) -> bool:
    """Append a joined member to this node's database.json (best effort: the list is
    what libpq tries when the primary moves). False when there was nothing to change."""
    data_dir = Path(data_dir or settings.PAM_DATA_DIR)
    current = database.read_database_file(data_dir)
    if current is None:
        return False
    new = database.DatabaseHost(host=address, port=int(port))
    if new in current.hosts:
        return False
    database.database_hosts_update(data_dir, [*current.hosts, new])
    return True


# --- 1. the replica -----------------------------------------------------------------------------
def bootstrap_seconds() -> float:
    return core_config.env("PAM_REPLICA_BOOTSTRAP_SECONDS", BOOTSTRAP_SECONDS, float)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in text if line.strip())


def member_paths() -> process.MemberPaths:
    """Where this node's member lives (it needs the node's etcd member configuration)."""
    return local.node_member().paths


def replica_forget(paths: process.MemberPaths | None = None) -> bool:
    """Remove the member's directory (data, configuration, TLS copies) after a join that
    did not finish: nothing of a half-made replica stays. False when there was none."""
    try:
        paths = paths or member_paths()
    except LookupError:
        return False
    if not paths.root.exists():
        return False
    process.member_remove(paths)
    return True


@dataclass(frozen=True)
class Replica:
    member: str
    postgres_port: int
    seconds: float
    state: str
    role: str


def replica_bootstrap(*, leader: str, log: Callable[[str], None], timeout: float | None = None,
                      base: Path | None = None) -> Replica:
    """Make this node's member a streaming replica of the cluster's database and stop it
    again (see the module docstring). Raises ReplicaFailed with the reason; the member's
    directory is then removed (a later try starts from nothing)."""
    timeout = bootstrap_seconds() if timeout is None else timeout
    started = time.monotonic()
    try:
        # never the synchronous standby while the join runs it: it is stopped again below
        member = local.node_member(base=base, nosync=True)
    except LookupError as exc:
        raise ReplicaFailed(str(exc)) from None
    paths = member.paths
    proc = None
    try:
        if paths.root.exists():
            log(f"removing what an earlier attempt left in {paths.root}")
            process.member_remove(paths)
        log(f"preparing PostgreSQL member {member.name} in {paths.root}")
        local.node_member_prepare(member)
        # The job's child, with the death signal member_start sets: it never outlives the worker.
        proc = process.member_start(name=member.name, paths=paths, run_as=member.run_as)
        log(f"basebackup from {leader}… (Patroni {member.name}, bounded to {timeout:g} s)")
        api = member.api(timeout=3.0)
        seen = ""
        deadline = started + timeout
        for _ in range(int(timeout) + 2):  # one second a round, and by the deadline too
            if not proc.alive():
                raise ReplicaFailed(f"Patroni exited (status {proc.popen.returncode}) before the replica streamed: "
                                    f"{_tail(paths.log_file)}")
            try:
                mine = api.cluster().member(member.name)
            except PatroniAPIError:
                mine = None
            now = f"{mine.role} / {mine.state}" if mine is not None else "not in the cluster yet"
            if now != seen:
                log(f"member {member.name}: {now}")
                seen = now
            if mine is not None and mine.role in REPLICA_ROLES and mine.state in REPLICA_STATES:
                log(f"streaming from {leader} after {time.monotonic() - started:.1f} s")
                return Replica(member=member.name, postgres_port=member.spec.postgres_port,
                               seconds=time.monotonic() - started, state=mine.state, role=mine.role)
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        raise ReplicaFailed(f"the replica did not stream from {leader} within {timeout:g} s (last seen: {seen}); "
                            f"{_tail(paths.log_file)}")
    except ReplicaFailed:
        _stop_and_forget(proc, paths)
        raise
    except Exception as exc:
        _stop_and_forget(proc, paths)
        raise ReplicaFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if proc is not None and proc.alive():
            log(f"stopping member {member.name}; the node's supervisor runs it from now on")
            process.member_stop(proc, timeout=30)


def _stop_and_forget(proc: process.PatroniProcess | None, paths: process.MemberPaths) -> None:
    if proc is not None:
        process.member_stop(proc, timeout=30)
    try:
        if paths.root.exists():
            process.member_remove(paths)
    except Exception:  # noqa: BLE001 — the reason already in hand is the one to report
        logger.exception("could not remove %s", paths.root)


# --- 2. the pre-join audit trail --------------------------------------------------------------
def pre_join_dir() -> Path:
    path = Path(settings.PAM_DATA_DIR) / PRE_JOIN_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pre_join_audit_seal(*, action: str, target: str, details: dict) -> dict:
    """Record ``action`` (the seal itself) in this node's chain, then write the whole
    chain up to it as a signed JSON Lines export with its manifest into
    ``<data dir>/pre-join-audit/`` and check it offline as anyone would. Returns the
    head and the export's names and digests (what the leader records)."""
    from pamportal.audit import exports, offline
    from pamportal.audit.models import AuditExport
    from pamportal.audit.selectors import audit_head
    from pamportal.audit.services import audit_record
    from pamportal.audit.signing import signing_key_load
    from pamportal.core.files import private_file, write_private

    key = signing_key_load()  # first: a key made now records its own event before the head is read
    with transaction.atomic():
        audit_record(action=action, target=target, details=details)
    position, head_hash = audit_head()
    now = timezone.now()
    export = AuditExport(id=uuid.uuid4(), created_at=now, created_by=None, created_by_name="pre-join seal",
                         format=AuditExport.Format.JSONL, filters={}, upto_position=position,
                         expected_count=position)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    export.file_name = f"pre-join-audit-{stamp}-{export.id.hex[:8]}.jsonl"
    folder = pre_join_dir()
    path, manifest_path = folder / export.file_name, folder / f"{export.file_name}.manifest.json"
    stats = exports.ExportStats()
    with transaction.atomic(), private_file(path) as handle:
        for chunk in exports.encode({}, position, "jsonl", stats):
            handle.write(chunk)
    manifest = exports.build_manifest(export, stats=stats, file_sha256=stats.file.hexdigest(), size=stats.size,
                                      contiguous=True)
    write_private(manifest_path, exports.manifest_text(manifest).encode())
    report = offline.verify(str(path), str(manifest_path), public_key=key.public_b64)
    if not report.ok:
        raise RuntimeError(f"the pre-join export {path} does not verify: {report.problem}")
    if stats.last is None or (stats.last["position"], stats.last["hash"]) != (position, head_hash):
        raise RuntimeError(f"the pre-join export ends at {stats.last}, not at the head {position}")
    return {
        "head": {"position": position, "hash": head_hash},
        "export": {"file": export.file_name, "manifest": manifest_path.name, "sha256": stats.file.hexdigest(),
                   "manifest_sha256": _sha256(manifest_path), "key_id": key.key_id, "events": stats.count},
        "path": str(path),
    }


# --- 3. the switch --------------------------------------------------------------------------------
def member_config_for_serve(*, base: Path | None = None) -> Path:
    """The member's configuration as ``serve`` runs it (written again without the join's
    ``nosync`` tag): before ``database.json``, which makes ``serve`` start it."""
    return local.node_member_prepare(local.node_member(base=base))


def database_switch(*, hosts: list[dict], member: str, node_address: str) -> database.DatabaseFile:
    """Write ``database.json``: the cluster's hosts as the leader listed them (leader
    first), then this node's own member; ``node_address`` names this node's row in the
    cluster's database (the leader made it when the replica was reported ready). Checked as every reader will read it, written
    atomically 0600. The SQLite file stays where it is (processes still have it open
    until serve moves them); the file names it as kept."""
    own = database.own_database_host()
    if own is None:
        raise RuntimeError("this node has no etcd member, so its own database member is unknown")
    listed = [database.DatabaseHost(host=str(h["host"]), port=int(h["port"])) for h in hosts]
    if own not in listed:
        listed.append(own)
    default = settings.DATABASES["default"]
    kept = str(default["NAME"]) if default["ENGINE"].endswith("sqlite3") else ""
    new = database.DatabaseFile(hosts=tuple(listed), member=member, moved_at=timezone.now().isoformat(),
                                sqlite_kept=kept, node_address=node_address)
    database.parse_database_file((json.dumps(new.to_json()) + "\n").encode())
    database.write_database_file(settings.PAM_DATA_DIR, new)
    return new
