"""The database side of a backup: a consistent dump (SQLite's online backup API, or
``pg_dump -Fc`` under an exported snapshot), the facts the manifest states about that
very dump (audit head, migrations, members, row counts), and reading a restored copy
(SQLite file opened read-only, or a scratch PostgreSQL database) for the proof.

The facts are read with plain SQL over a DB-API cursor, so the same code reads the
live snapshot, the SQLite copy and the scratch database.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pamportal.audit import chain

from . import conf

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
DUMP_NAMES = {SQLITE: "database/pamportal.sqlite3", POSTGRESQL: "database/pamportal.dump"}

# libpq's connection keywords and the environment variable each has (for pg_dump/pg_restore).
_LIBPQ_ENV = {
    "dbname": "PGDATABASE", "user": "PGUSER", "password": "PGPASSWORD", "host": "PGHOST", "port": "PGPORT",
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME", "options": "PGOPTIONS", "passfile": "PGPASSFILE",
}

_CHAIN_COLUMNS = ", ".join((*chain.FIELDS, "hash"))
_PG_CHAIN_SQL = (
    "SELECT position, to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), actor_id, actor_name, "
    "source_ip, request_id, action, target, outcome, details, prev_hash, hash FROM audit_auditevent ORDER BY position"
)


class DatabaseProblem(RuntimeError):
    """A dump, a restore or a read of a copy that did not work; the message says why
    (never a password: the tools' output is passed on, their environment is not)."""


@dataclass(frozen=True)
class Source:
    """The database Django uses: a SQLite file, or libpq parameters."""

    engine: str
    sqlite_path: Path | None = None
    params: dict[str, str] = field(default_factory=dict)


def source_of(connection) -> Source:
    """Where ``connection`` (a Django connection) reads and writes."""
    if connection.vendor == "sqlite":
        return Source(SQLITE, sqlite_path=Path(connection.settings_dict["NAME"]))
    if connection.vendor == "postgresql":
        raw = connection.get_connection_params()
        params = {key: str(value) for key, value in raw.items() if key in _LIBPQ_ENV and value not in (None, "")}
        return Source(POSTGRESQL, params=params)
    raise DatabaseProblem(f"backups support SQLite and PostgreSQL, not {connection.vendor}")


def _conninfo(params: dict[str, str]) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(**params)


def _tool_env(params: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({_LIBPQ_ENV[key]: value for key, value in params.items()})
    return env


def _run_tool(args: list[str], params: dict[str, str], what: str) -> None:
    try:
        result = subprocess.run(args, env=_tool_env(params), capture_output=True, text=True,
                                timeout=conf.tool_timeout())
    except FileNotFoundError:
        raise DatabaseProblem(f"{args[0]} is not installed (Debian's postgresql-client provides it)") from None
    except subprocess.TimeoutExpired:
        raise DatabaseProblem(f"{what} took longer than {conf.tool_timeout():.0f}s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DatabaseProblem(f"{what} failed: {' / '.join(detail[-3:])[:600] or f'exit {result.returncode}'}")


# --- Facts about a database (live snapshot or restored copy) ------------------------------


@dataclass
class Facts:
    audit_position: int
    audit_hash: str
    migrations: dict[str, list[str]]
    members: list[dict[str, str]]
    row_counts: dict[str, int]
    cluster_ca_sha256: str
    nodes: list[dict[str, str]]
    signing_keys: dict[str, str]  # key id -> public key (base64)


def _tables(cursor, engine: str) -> list[str]:
    if engine == SQLITE:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    else:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return [row[0] for row in cursor.fetchall()]


def facts_read(cursor, engine: str) -> Facts:
    cursor.execute("SELECT position, hash FROM audit_audithead WHERE id = 1")
    head = cursor.fetchone() or (0, chain.GENESIS_HASH)
    cursor.execute("SELECT app, name FROM django_migrations ORDER BY app, id")
    migrations: dict[str, list[str]] = {}
    for app, name in cursor.fetchall():
        migrations.setdefault(app, []).append(name)
    cursor.execute("SELECT address, role, version, state FROM cluster_clustermember ORDER BY address")
    members = [dict(zip(("address", "role", "version", "state"), row)) for row in cursor.fetchall()]
    cursor.execute("SELECT sha256 FROM nodes_certificate WHERE kind = 'cluster-ca' AND replaced_at IS NULL")
    ca = cursor.fetchone()
    cursor.execute("SELECT address, role, mek_fingerprint FROM nodes_node ORDER BY id")
    nodes = [dict(zip(("address", "role", "mek_fingerprint"), row)) for row in cursor.fetchall()]
    cursor.execute("SELECT key_id, public_key FROM audit_auditsigningkey")
    keys = {key_id: public for key_id, public in cursor.fetchall()}
    counts = {}
    for table in _tables(cursor, engine):
        cursor.execute(f'SELECT COUNT(*) FROM "{table}"')
        counts[table] = int(cursor.fetchone()[0])
    return Facts(audit_position=int(head[0]), audit_hash=str(head[1]), migrations=migrations, members=members,
                 row_counts=counts, cluster_ca_sha256=ca[0] if ca else "", nodes=nodes, signing_keys=keys)


# --- Dumping ------------------------------------------------------------------------------


def size_of(source: Source) -> int:
    """The database's size on disk, in bytes (what a dump of it is about the size of)."""
    if source.engine == SQLITE:
        return sum(p.stat().st_size for p in (source.sqlite_path, Path(f"{source.sqlite_path}-wal")) if p.exists())
    import psycopg

    with psycopg.connect(_conninfo(source.params)) as conn:
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])



def dump(source: Source, staging: Path) -> tuple[Path, Facts]:
    """A consistent copy of the database in ``staging`` and the facts of that copy."""
    if source.engine == SQLITE:
        return _sqlite_dump(source, staging)
    return _pg_dump(source, staging)


def _sqlite_dump(source: Source, staging: Path) -> tuple[Path, Facts]:
    target = staging / Path(DUMP_NAMES[SQLITE]).name
    live = sqlite3.connect(_readonly_uri(source.sqlite_path), uri=True, timeout=20)
    try:
        copy = sqlite3.connect(target)
        try:
            # In one step: in WAL mode a reader does not hold writers up, and a copy made in
            # steps starts again whenever another connection writes (on a busy node, forever).
            live.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            copy.close()
    finally:
        live.close()
    return target, sqlite_facts(target)


def _pg_dump(source: Source, staging: Path) -> tuple[Path, Facts]:
    import psycopg

    target = staging / Path(DUMP_NAMES[POSTGRESQL]).name
    # The facts and the dump from one exported snapshot: the manifest states exactly
    # what the dump holds, however busy the database is meanwhile.
    with psycopg.connect(_conninfo(source.params), autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        with conn.cursor() as cursor:
            facts = facts_read(cursor, POSTGRESQL)
        _run_tool(["pg_dump", "--format=custom", f"--snapshot={snapshot}", "--no-owner", "--no-privileges",
                   f"--file={target}"], source.params, "pg_dump")
        conn.rollback()
    return target, facts


# --- Reading a restored copy --------------------------------------------------------------


def _readonly_uri(path: Path) -> str:
    return Path(path).resolve().as_uri() + "?mode=ro"


@contextlib.contextmanager
def sqlite_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(_readonly_uri(path), uri=True)
    try:
        yield conn
    finally:
        conn.close()


def sqlite_facts(path: Path) -> Facts:
    with sqlite_readonly(path) as conn:
        return facts_read(conn.cursor(), SQLITE)


def sqlite_integrity(path: Path) -> str:
    """``PRAGMA integrity_check``'s answer: "ok", or its first problems."""
    try:
        with sqlite_readonly(path) as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchmany(5)
    except sqlite3.DatabaseError as error:
        return f"not a readable SQLite database ({error})"
    answer = "; ".join(str(row[0]) for row in rows)
    return answer or "no answer"


def _sqlite_canonical_time(text: str) -> str:
    # Django stores an aware time on SQLite as naive UTC text: "YYYY-MM-DD HH:MM:SS[.ffffff]".
    text = str(text).replace(" ", "T", 1)
    if "." not in text:
        text += ".000000"
    return text + "Z"


def chain_verify_sqlite(path: Path) -> chain.ChainResult:
    with sqlite_readonly(path) as conn:
        cursor = conn.execute(f"SELECT {_CHAIN_COLUMNS} FROM audit_auditevent ORDER BY position")
        rows = ((row[0], _sqlite_canonical_time(row[1]), *row[2:]) for row in cursor)
        return chain.verify_rows(rows)


@contextlib.contextmanager
def pg_scratch(params: dict[str, str]) -> Iterator[dict[str, str]]:
    """A new, uniquely named database on the same server for the time of the block,
    dropped after it (whatever happened)."""
    import psycopg
    from psycopg import sql

    name = f"pamportal_scratch_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(_conninfo(params), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as error:
        raise DatabaseProblem(f"could not create the scratch database {name}: {str(error).strip()[:300]}") from None
    try:
        yield {**params, "dbname": name}
    finally:
        with psycopg.connect(_conninfo(params), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pg_restore(params: dict[str, str], dump_path: Path, *, clean: bool = False) -> None:
    args = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
            f"--dbname={params['dbname']}"]
    if clean:
        args += ["--clean", "--if-exists"]
    _run_tool([*args, str(dump_path)], params, "pg_restore")


def pg_facts(params: dict[str, str]) -> Facts:
    import psycopg

    with psycopg.connect(_conninfo(params)) as conn, conn.cursor() as cursor:
        return facts_read(cursor, POSTGRESQL)


def chain_verify_pg(params: dict[str, str]) -> chain.ChainResult:
    import psycopg

    with psycopg.connect(_conninfo(params)) as conn:
        with conn.cursor(name="backup_proof_chain") as cursor:
            cursor.itersize = 20_000
            cursor.execute(_PG_CHAIN_SQL)
            return chain.verify_rows(cursor)


def pg_target_facts(params: dict[str, str]) -> Facts | None:
    """The facts of a restore's target database, or None while it has no tables of ours."""
    import psycopg

    with psycopg.connect(_conninfo(params)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT to_regclass('public.nodes_node') IS NOT NULL")
        if not cursor.fetchone()[0]:
            return None
        return facts_read(cursor, POSTGRESQL)


def describe(params: dict[str, Any]) -> str:
    """Where a PostgreSQL database is, for messages (never its password)."""
    return f"{params.get('dbname', '?')} on {params.get('host', 'localhost')}:{params.get('port', '5432')}"
