"""The restore proof: an archive decrypted into a scratch area, its database copy
opened (SQLite read-only with ``PRAGMA integrity_check``, or PostgreSQL restored into a
scratch database), its row counts compared with the manifest's, its audit chain
verified and its head compared with the manifest's, and the manifest's signing key
found among the copy's audit keys. Run after every backup and before every restore."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg

from . import database
from .archive import ArchiveError
from .contents import Extracted, archive_extract

logger = logging.getLogger(__name__)


class ProofFailed(Exception):
    """The database copy in the archive is not what its manifest says, or does not
    open; the message says what."""


@dataclass
class ProofResult:
    ok: bool
    reason: str = ""
    details: dict = field(default_factory=dict)
    seconds: float = 0.0


@contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new 0700 directory in ``parent``, removed with everything in it afterwards."""
    import secrets

    path = parent / f".{prefix}-{secrets.token_hex(6)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _compare(manifest: dict, facts: database.Facts, result, key_id: str, details: dict) -> None:
    details["verified_events"] = result.verified
    details["row_counts"] = facts.row_counts
    if not result.ok:
        raise ProofFailed(f"the audit chain of the restored copy is broken at event {result.first_bad_position}: "
                          f"{result.reason}")
    head = manifest.get("audit_head") or {}
    if (result.last_position, result.last_hash) != (facts.audit_position, facts.audit_hash):
        raise ProofFailed(f"the restored copy's audit chain ends at event {result.last_position}, but its head row "
                          f"says {facts.audit_position}")
    if (facts.audit_position, facts.audit_hash) != (head.get("position"), head.get("hash")):
        raise ProofFailed(f"the restored copy's audit head (event {facts.audit_position}, {facts.audit_hash[:16]}) is "
                          f"not the manifest's (event {head.get('position')}, {str(head.get('hash'))[:16]})")
    expected = (manifest.get("database") or {}).get("row_counts") or {}
    if expected != facts.row_counts:
        differing = sorted(name for name in set(expected) | set(facts.row_counts)
                           if expected.get(name) != facts.row_counts.get(name))
        first = differing[0]
        raise ProofFailed(f"the restored copy's row counts differ from the manifest's ({len(differing)} tables, first "
                          f"{first}: {facts.row_counts.get(first)} restored, {expected.get(first)} in the manifest)")
    public = (manifest.get("public_key") or {}).get("raw_base64")
    if facts.signing_keys.get(key_id) != public:
        raise ArchiveError("forged_signature",
                           f"The archive's manifest is signed with key {key_id}, which is not an audit signing key "
                           "of the backed-up database: the manifest was forged.")


def database_prove(extracted: Extracted, *, pg_params: dict[str, str] | None) -> dict:
    """Prove the database copy of ``extracted``; returns the details, raises
    ``ProofFailed`` (or ``ArchiveError("forged_signature")``). ``pg_params`` is the
    server that holds the scratch database of a PostgreSQL dump."""
    manifest = extracted.manifest
    engine = (manifest.get("database") or {}).get("engine")
    details: dict = {"engine": engine}
    if engine == database.SQLITE:
        path = extracted.files[database.DUMP_NAMES[database.SQLITE]]
        integrity = database.sqlite_integrity(path)
        details["integrity_check"] = integrity
        if integrity != "ok":
            raise ProofFailed(f"the SQLite copy fails PRAGMA integrity_check: {integrity[:300]}")
        try:
            facts = database.sqlite_facts(path)
            result = database.chain_verify_sqlite(path)
        except sqlite3.Error as error:  # a copy without our tables, or damaged where the check did not look
            raise ProofFailed(f"the SQLite copy cannot be read: {error}") from None
    elif engine == database.POSTGRESQL:
        if pg_params is None:
            raise ProofFailed("the archive holds a PostgreSQL dump and there is no PostgreSQL server to restore it into")
        path = extracted.files[database.DUMP_NAMES[database.POSTGRESQL]]
        try:
            with database.pg_scratch(pg_params) as scratch:
                details["scratch_database"] = scratch["dbname"]
                database.pg_restore(scratch, path)
                facts = database.pg_facts(scratch)
                result = database.chain_verify_pg(scratch)
        except database.DatabaseProblem as problem:
            raise ProofFailed(str(problem)) from None
        except psycopg.Error as error:  # restored, but without what a copy of ours holds
            raise ProofFailed(f"the restored PostgreSQL copy cannot be read: {str(error).strip()[:300]}") from None
    else:
        raise ProofFailed(f"the manifest names no database engine this console knows ({str(engine)[:20]!r})")
    _compare(manifest, facts, result, extracted.key_id, details)
    details["audit_head"] = {"position": facts.audit_position, "hash": facts.audit_hash}
    details["facts"] = facts
    return details


def proof_run(archive: Path, *, mek: bytes, scratch_parent: Path, pg_params: dict[str, str] | None) -> ProofResult:
    """Decrypt ``archive`` into a scratch area under ``scratch_parent`` and prove it."""
    started = time.perf_counter()
    try:
        with scratch_dir(scratch_parent, "proof") as scratch, open(archive, "rb") as handle:
            extracted = archive_extract(handle, mek=mek, dest=scratch)
            details = database_prove(extracted, pg_params=pg_params)
    except (ArchiveError, ProofFailed) as error:
        return ProofResult(ok=False, reason=str(error), seconds=time.perf_counter() - started)
    except Exception as error:  # a proof that cannot run proves nothing: the backup fails
        logger.exception("the proof of %s could not run", archive.name)
        return ProofResult(ok=False, reason=f"The proof could not run: {type(error).__name__}: {error}",
                           seconds=time.perf_counter() - started)
    details.pop("facts", None)
    details["chunks"] = extracted.chunks
    return ProofResult(ok=True, details=details, seconds=time.perf_counter() - started)
