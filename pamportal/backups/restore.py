"""Restoring a backup onto a fresh node: everything is checked before anything of the
node is touched (the node is fresh, the MEK opens the archive, every chunk and file
authenticates, the manifest signature holds, the archive is this cluster's, and the
restore proof passes on a scratch copy); only then are the database, the node files
and the MEK file put in place."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from pamportal.core.files import private_file, write_private
from pamportal.crypto import ca
from pamportal.crypto import mek as mek_format

from . import database
from .archive import ArchiveError
from .contents import COPY_BLOCK, archive_extract
from .proof import ProofFailed, database_prove, scratch_dir
from .services import NODE_FILES

MEK_FILE = "mek.key"


@dataclass(frozen=True)
class RestoreResult:
    archive: str
    cluster_id: str
    created_at: str
    audit_position: int
    audit_hash: str
    files: tuple[str, ...]
    engine: str


def _refused(code: str, message: str) -> ArchiveError:
    return ArchiveError(code, message)


def _target_finalised(source: database.Source) -> bool:
    if source.engine == database.SQLITE:
        path = source.sqlite_path
        if path is None or not path.exists() or path.stat().st_size == 0:
            return False
        with database.sqlite_readonly(path) as conn:
            has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nodes_node'").fetchone()
            if not has_table:
                return False
            return conn.execute("SELECT 1 FROM nodes_node WHERE finalised_at IS NOT NULL").fetchone() is not None
    import psycopg

    try:
        with psycopg.connect(database._conninfo(source.params)) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT to_regclass('public.nodes_node') IS NOT NULL")
            if not cursor.fetchone()[0]:
                return False
            cursor.execute("SELECT 1 FROM nodes_node WHERE finalised_at IS NOT NULL")
            return cursor.fetchone() is not None
    except psycopg.Error as error:
        raise database.DatabaseProblem(f"this node's database ({database.describe(source.params)}) cannot be read: "
                                       f"{str(error).strip()[:300]}") from None


def _target_cluster_id(data_dir: Path) -> str:
    """The cluster id the target node already has (from its cluster CA file), or ""."""
    path = data_dir / "tls" / "cluster-ca.crt"
    try:
        info = ca.certificate_info(path.read_bytes())
    except (OSError, ValueError):
        return ""
    return ca.cluster_id_of(info.sha256) if info.is_ca else ""


def refuse_unless_fresh(*, data_dir: Path, source: database.Source) -> None:
    if (data_dir / MEK_FILE).exists():
        raise _refused("not_fresh", f"This node already has a Master Encryption Key ({data_dir / MEK_FILE}): a backup "
                                    "is restored onto a fresh node only.")
    if _target_finalised(source):
        raise _refused("not_fresh", "This node's setup is finalised: a backup is restored onto a fresh node only.")


def _install_sqlite(copy: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in (Path(f"{target}-wal"), Path(f"{target}-shm"), Path(f"{target}-journal")):
        stale.unlink(missing_ok=True)  # a fresh node's: they would be applied to the restored file
    with private_file(target, 0o600) as out, open(copy, "rb") as source:
        while block := source.read(COPY_BLOCK):
            out.write(block)


def restore_run(archive: Path, *, mek: bytes, data_dir: Path, source: database.Source) -> RestoreResult:
    """Restore ``archive`` onto the fresh node whose data dir is ``data_dir`` and whose
    database is ``source``. Raises ``ArchiveError`` (each refusal with its code) before
    changing anything."""
    data_dir = Path(data_dir)
    refuse_unless_fresh(data_dir=data_dir, source=source)
    pg_params = source.params if source.engine == database.POSTGRESQL else None
    with scratch_dir(data_dir, "restore") as scratch:
        try:
            handle = open(archive, "rb")
        except OSError as error:
            raise _refused("not_an_archive", f"The archive cannot be read: {error.strerror or error}.") from None
        with handle:
            extracted = archive_extract(handle, mek=mek, dest=scratch)
        manifest = extracted.manifest
        own = _target_cluster_id(data_dir)
        if own and own != manifest.get("cluster_id"):
            raise _refused("wrong_cluster", f"This archive is from cluster {manifest.get('cluster_id')}, and this node "
                                            f"belongs to cluster {own}: it is not restored here.")
        if extracted.header.cluster_id != manifest.get("cluster_id"):
            raise _refused("forged_signature", "The archive's header and its signed manifest name different clusters.")
        engine = (manifest.get("database") or {}).get("engine")
        if engine != source.engine:
            raise _refused("wrong_database", f"The archive holds a {engine} database and this node runs on "
                                             f"{source.engine}: restore it onto a node of the same kind.")
        try:
            details = database_prove(extracted, pg_params=pg_params)
        except ProofFailed as failed:
            raise _refused("proof_failed", f"The archive's database copy does not prove: {failed}.") from None
        facts = details["facts"]
        fingerprint = mek_format.fingerprint(mek)
        recorded = [n["mek_fingerprint"] for n in facts.nodes if n.get("mek_fingerprint")]
        if recorded and not any(hmac.compare_digest(fingerprint, value) for value in recorded):
            raise _refused("wrong_mek", "The MEK opens the archive but is not the key the backed-up node recorded.")
        node_files = [entry for entry in manifest["files"] if entry.get("kind") == "node-file"]
        unexpected = [e["name"] for e in node_files if e["name"] not in {f"node/{n}" for n in NODE_FILES}]
        if unexpected:
            raise _refused("bad_contents", f"The archive opened with this MEK, but it would write "
                                           f"{unexpected[0][:80]!r}, which is not a node file a backup holds.")
        # Everything checked: from here on the node changes.
        dump = extracted.files[database.DUMP_NAMES[engine]]
        if engine == database.SQLITE:
            _install_sqlite(dump, source.sqlite_path)
        else:
            database.pg_restore(source.params, dump, clean=True)
        restored = []
        for entry in node_files:
            relative = Path(*Path(entry["name"]).parts[1:])
            target = data_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            mode = entry.get("mode") if type(entry.get("mode")) is int else 0o600
            write_private(target, extracted.files[entry["name"]].read_bytes(), mode & 0o644)
            restored.append(str(relative))
        write_private(data_dir / MEK_FILE, mek, exclusive=True)
    return RestoreResult(
        archive=Path(archive).name, cluster_id=manifest["cluster_id"], created_at=manifest.get("created_at", ""),
        audit_position=facts.audit_position, audit_hash=facts.audit_hash, files=tuple(restored), engine=engine,
    )
