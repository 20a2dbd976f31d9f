"""Moving a standalone node from its SQLite file onto its own one-member Patroni
PostgreSQL, losing nothing (``manage.py database_to_patroni``).

The order is what makes it safe to stop anywhere:

1. preconditions, each refused with what to do (nothing changed but the refusal's
   audit event);
2. the move's start is recorded in the SQLite chain (so it travels with the data);
3. the member is prepared and started, and leads; the schema is migrated on it;
4. under SQLite's write lock, every table's rows are copied, sequences reset, and
   the copy verified: the same rows in every table (users and licence by name), and
   the audit chain verified on both with the same head position and hash;
5. only then ``database.json`` is written (atomically: the switch), the SQLite file
   renamed ``pamportal.sqlite3.moved-<timestamp>`` (kept, never deleted), and the
   success recorded in the new database's chain with the head it was verified at.

A failure before step 5 stops and removes the member (and Patroni's keys in etcd) and
leaves the node on SQLite as it was, with the failure and its reason recorded there.
After the move the node's supervisor runs the member (``local.patroni_node_process``);
this command stops the one it started.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor

from pamportal.audit.actions import AuditAction, Outcome

from . import config, database, local, process

logger = logging.getLogger(__name__)

ALIAS = "patroni"  # the new database, beside "default" (SQLite) while the move runs
LEAD_TIMEOUT = 120.0
COPY_BATCH = 2000
_AUDIT_TABLE = "audit_auditevent"
_AUDIT_TRIGGERS = ("audit_event_no_update", "audit_event_no_delete", "audit_event_no_truncate")


class MoveRefused(Exception):
    """A precondition is not met: nothing was started. The message says what to do."""


class MoveFailed(Exception):
    """The move went wrong after it started and was undone: the node is on SQLite."""


@dataclass
class MoveResult:
    member: str
    host: str
    port: int
    head_position: int
    head_hash: str
    rows: dict[str, int]
    sqlite_kept: Path
    database_file: Path
    seconds: dict[str, float] = field(default_factory=dict)


# --- preconditions ----------------------------------------------------------------------
def _sqlite_path() -> Path:
    return Path(settings.DATABASES["default"]["NAME"])


_APP_PROGRAMS = (b"manage.py", b"gunicorn", b"celery")


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _opens(pid: str, wanted: set[str]) -> bool:
    try:
        fds = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd.path) in wanted:
                return True
        except OSError:
            continue
    return False


def _holders(path: Path, data_dir: Path) -> list[tuple[int, str]]:
    """The node's other app processes, from /proc: any process with the SQLite file
    (or its -wal/-shm) open, and any console, worker or manage.py command started for
    this data dir (an idle console may have no connection open right now, and would
    write to SQLite again on its next request). Its etcd member is not one of them."""
    wanted = {str(path), f"{path}-wal", f"{path}-shm"}
    ours = _ancestors()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        program = cmdline.split(b"\0")
        if program and Path(program[0].decode(errors="replace")).name == "etcd":
            continue
        mine = False
        if any(p in cmdline for p in _APP_PROGRAMS):
            try:
                environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
            except OSError:
                environ = []
            for item in environ:
                if item.startswith(b"PAM_DATA_DIR="):
                    mine = Path(item[len(b"PAM_DATA_DIR="):].decode(errors="replace")).resolve() == data_dir.resolve()
        if mine or _opens(entry.name, wanted):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:120]))
    return found


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def preconditions(*, base: Path | None = None) -> local.NodeMember:
    """Everything the move needs, checked before anything is started. Returns the node's
    member; raises MoveRefused saying what is missing and what to run."""
    from pamportal.cluster.etcd import EtcdClient
    from pamportal.nodes.selectors import node_is_finalised

    data_dir = Path(settings.PAM_DATA_DIR)
    if database.database_file_path(data_dir).exists():
        raise MoveRefused(f"this node already runs on PostgreSQL under Patroni ({database.database_file_path(data_dir)} "
                          f"exists): nothing to move")
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
        raise MoveRefused("this node's database is not the embedded SQLite (DATABASE_URL is set): this command moves "
                          "a SQLite node; unset DATABASE_URL only if the node's data is in its SQLite file")
    sqlite = _sqlite_path()
    if not sqlite.is_file():
        raise MoveRefused(f"no SQLite database at {sqlite}")
    if not node_is_finalised():
        raise MoveRefused("setup of this node is not finalised: finish it first (the cluster CA and the node "
                          "certificate that PostgreSQL's TLS needs are made when setup is finalised)")
    tls = local.node_tls_files()
    for what, path in (("cluster CA", tls.ca_file), ("node certificate", tls.cert_file), ("node key", tls.key_file)):
        if not path.is_file():
            raise MoveRefused(f"the {what} is missing ({path}): restore the node's TLS files before moving")
    executor = MigrationExecutor(connections["default"])
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        raise MoveRefused(f"the SQLite database has {len(pending)} unapplied migrations: run "
                          f"`manage.py migrate` first")
    if not os.access(config.POSTGRES_BIN_DIR / "postgres", os.X_OK):
        raise MoveRefused(f"PostgreSQL 15 is not installed ({config.POSTGRES_BIN_DIR}/postgres): run "
                          f"`apt-get install postgresql-15` (then `systemctl disable --now postgresql`: Patroni runs "
                          f"the node's member, not Debian's cluster)")
    try:
        process.patroni_binary()
    except process.PatroniNotInstalled as exc:
        raise MoveRefused(str(exc)) from None
    try:
        run_as = process.RunAs.for_this_process()
    except KeyError:
        raise MoveRefused("there is no postgres user to run PostgreSQL as (the postgresql-15 package creates "
                          "it)") from None
    try:
        member = local.node_member(base=base, run_as=run_as)
    except LookupError as exc:
        raise MoveRefused(f"{exc}: the move needs the node's etcd member, which Patroni uses") from None
    from pamportal.cluster.local_etcd import local_member_config

    etcd_cfg = local_member_config()
    client = EtcdClient([etcd_cfg.client_url], str(tls.ca_file), str(tls.cert_file), str(tls.key_file), timeout=5)
    healthy, why = client.health()
    if not healthy:
        raise MoveRefused(f"this node's etcd member at {etcd_cfg.client_url} is not answering ({why}): start it "
                          f"(`systemctl start pamportal-etcd`, or `manage.py run_etcd` beside `manage.py serve "
                          f"--no-etcd`) and run this again")
    members = client.member_list()
    if len(members) != 1:
        raise MoveRefused(f"this node's etcd has {len(members)} members: the move is for a standalone node; a "
                          f"cluster's followers get their database by joining")
    holders = _holders(sqlite, data_dir)
    if holders:
        listed = "; ".join(f"pid {pid}: {cmd}" for pid, cmd in holders)
        raise MoveRefused(f"other processes have the SQLite database open ({listed}): stop the console and the "
                          f"worker first (`systemctl stop pamportal.target`, or stop `manage.py serve` and run "
                          f"`manage.py run_etcd` alone), so that nothing is written after the copy")
    if member.paths.root.exists():
        raise MoveRefused(f"a PostgreSQL member directory already exists at {member.paths.root}: left by an "
                          f"interrupted move? Remove it (nothing of the node's data is in it before a move "
                          f"succeeds) and run this again")
    spec = member.spec
    for what, port in (("PostgreSQL", spec.postgres_port), ("Patroni's REST API", spec.patroni_port)):
        if _port_in_use(spec.address, port):
            raise MoveRefused(f"port {port} on {spec.address} ({what}: PAM_POSTGRES_PORT/PAM_PATRONI_PORT) is "
                              f"already in use: stop what listens there (Debian's own cluster: `systemctl disable "
                              f"--now postgresql`) or choose another port")
    stale = local.patroni_keys_count(client, spec.cluster_id)
    if stale:
        # etcd has this node alone and there is no member directory: an interrupted
        # move's leftovers, which would make Patroni wait for a leader that is gone.
        logger.warning("forgetting %d stale Patroni keys of %s in etcd", stale, spec.cluster_id)
        local.patroni_keys_forget(client, spec.cluster_id)
    return member


# --- the second database ----------------------------------------------------------------
def _member_settings(member: local.NodeMember) -> database.DatabaseFile:
    return database.DatabaseFile(hosts=(database.DatabaseHost(host=member.spec.address.strip("[]"),
                                                               port=member.spec.postgres_port),),
                                 member=member.name)


def _add_alias(db: database.DatabaseFile) -> None:
    tls = local.node_tls_files()
    entry = database.postgresql_settings(db, ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)
    alias_add(ALIAS, entry)


def alias_add(alias: str, entry: dict) -> None:
    """A second database beside ``default`` while this process runs (no persistent
    connection: it is opened for the work at hand and closed by ``alias_drop``)."""
    entry["CONN_MAX_AGE"] = 0
    configured = connections.configure_settings({"default": dict(settings.DATABASES["default"]), alias: entry})
    connections.settings[alias] = configured[alias]
    settings.DATABASES[alias] = configured[alias]


def alias_drop(alias: str) -> None:
    try:
        connections[alias].close()
    except Exception:  # noqa: BLE001 — closing a connection to a member being removed
        pass
    for holder in (connections.settings, settings.DATABASES):
        holder.pop(alias, None)
    try:
        delattr(connections._connections, alias)
    except AttributeError:
        pass


def _drop_alias() -> None:
    alias_drop(ALIAS)


@contextmanager
def default_is(alias: str) -> Iterator[None]:
    """Within the block (this thread), ``default`` is the ``alias`` connection: so the
    project's own services that use ``django.db.connection`` and unrouted queries (the
    migrations' data steps, ``audit_chain_verify``, ``audit_record``) run on the new
    database unchanged, rather than in a copy of them that could drift."""
    if alias == "default":
        yield
        return
    own = connections["default"]
    setattr(connections._connections, "default", connections[alias])
    try:
        yield
    finally:
        setattr(connections._connections, "default", own)


# --- copying ----------------------------------------------------------------------------------
def models_in_order() -> list:
    """Every table-backed model (auto-created many-to-many tables too), referenced
    before referencing (PostgreSQL checks foreign keys at commit anyway: Django makes
    them DEFERRABLE INITIALLY DEFERRED)."""
    candidates = [m for m in apps.get_models(include_auto_created=True)
                  if m._meta.managed and not m._meta.proxy and not m._meta.swapped]
    by_table: dict[str, object] = {}
    for model in candidates:
        by_table.setdefault(model._meta.db_table, model)
    ordered: list = []
    seen: set = set()

    def visit(model, stack=()):
        if model in seen or model in stack:
            return
        for f in model._meta.local_concrete_fields:
            target = getattr(f, "related_model", None)
            if target is not None and target is not model and target in by_table.values():
                visit(target, (*stack, model))
        seen.add(model)
        ordered.append(model)

    for model in sorted(by_table.values(), key=lambda m: m._meta.db_table):
        visit(model)
    return ordered


def _unknown_tables(models: list) -> list[str]:
    known = {m._meta.db_table for m in models} | {"django_migrations", "sqlite_sequence"}
    with connections["default"].cursor() as cursor:
        tables = connections["default"].introspection.table_names(cursor)
    return sorted(t for t in tables if t not in known and not t.startswith("sqlite_"))


def _batched(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _copy_model(model, dst) -> int:
    meta = model._meta
    fields = list(meta.local_concrete_fields)
    qn = dst.ops.quote_name
    sql = (f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    rows = (model._base_manager.using("default").order_by(meta.pk.attname)
            .values_list(*[f.attname for f in fields]).iterator(chunk_size=COPY_BATCH))
    copied = 0
    with dst.cursor() as cursor:
        for batch in _batched(rows, COPY_BATCH):
            # get_db_prep_save, never pre_save: auto_now fields keep their stored times
            cursor.executemany(sql, [[f.get_db_prep_save(v, connection=dst) for f, v in zip(fields, row)]
                                     for row in batch])
            copied += len(batch)
    return copied


def copy_rows(models: list) -> dict[str, int]:
    """Replace what the migrations left in the new database (content types,
    permissions, singleton rows) with SQLite's rows, every table, in one transaction;
    then reset the sequences. The audit table is empty there and only INSERTed into:
    its append-only triggers are neither disabled nor bypassed."""
    dst = connections[ALIAS]
    counts: dict[str, int] = {}
    with transaction.atomic(using=ALIAS):
        with dst.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {_AUDIT_TABLE}")
            if cursor.fetchone()[0]:
                raise MoveFailed("the new database already holds audit events before the copy")
            for model in reversed(models):
                if model._meta.db_table != _AUDIT_TABLE:
                    cursor.execute(f"DELETE FROM {dst.ops.quote_name(model._meta.db_table)}")
        for model in models:
            counts[model._meta.db_table] = _copy_model(model, dst)
        with dst.cursor() as cursor:
            for statement in dst.ops.sequence_reset_sql(no_style(), models):
                cursor.execute(statement)
    return counts


# --- verification ------------------------------------------------------------------------
def _normal(value):
    """A value as both databases give it back: jsonb keeps its own key order (dicts
    compare as JSON with sorted keys), bytea comes back as a memoryview."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _first_difference(model) -> str:
    meta = model._meta
    names = [f.attname for f in meta.local_concrete_fields]
    old = model._base_manager.using("default").order_by(meta.pk.attname).values_list(*names).iterator()
    new = model._base_manager.using(ALIAS).order_by(meta.pk.attname).values_list(*names).iterator()
    for a, b in zip(old, new):
        columns = [n for n, x, y in zip(names, a, b) if _normal(x) != _normal(y)]
        if columns:
            return f"first at {meta.pk.attname}={a[names.index(meta.pk.attname)]}: {', '.join(columns)}"
    return "in row order"


def table_digest(model, alias: str) -> tuple[int, str]:
    """(rows, SHA-256 over every row's values in primary-key order), as Django reads
    them back on either database."""
    meta = model._meta
    names = [f.attname for f in meta.local_concrete_fields]
    digest = hashlib.sha256()
    count = 0
    for row in (model._base_manager.using(alias).order_by(meta.pk.attname).values_list(*names)
                .iterator(chunk_size=COPY_BATCH)):
        digest.update(repr(tuple(_normal(v) for v in row)).encode())
        count += 1
    return count, digest.hexdigest()


def _chain_head(alias: str):
    from pamportal.audit.selectors import audit_chain_verify

    with default_is(alias):
        result = audit_chain_verify()
    if not result.ok:
        raise MoveFailed(f"the audit chain on {'SQLite' if alias == 'default' else 'PostgreSQL'} does not verify: "
                         f"position {result.first_bad_position}: {result.reason}")
    return result.last_position, result.last_hash


def verify_copy(models: list) -> tuple[int, str]:
    """Same row count and contents in every table (users and the licence among them,
    named when they differ), the audit chain whole on both with the same head, and the
    append-only triggers in force. Returns the head (position, hash)."""
    differing = []
    for model in models:
        table = model._meta.db_table
        if table == _AUDIT_TABLE:  # the chain walk below covers every field of every event
            old = model._base_manager.using("default").count()
            new = model._base_manager.using(ALIAS).count()
            if old != new:
                differing.append(f"{table}: {old} rows on SQLite, {new} on PostgreSQL")
            continue
        old, new = table_digest(model, "default"), table_digest(model, ALIAS)
        if old != new:
            differing.append(f"{table}: {old[0]} rows on SQLite, {new[0]} on PostgreSQL"
                             + ("" if old[0] != new[0] else f" (contents differ, {_first_difference(model)})"))
    if differing:
        raise MoveFailed("the copy differs from SQLite: " + "; ".join(differing))
    old_head, new_head = _chain_head("default"), _chain_head(ALIAS)
    if old_head != new_head:
        raise MoveFailed(f"the audit chain heads differ: SQLite {old_head}, PostgreSQL {new_head}")
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                       [_AUDIT_TABLE])
        triggers = dict(cursor.fetchall())
    weak = [t for t in _AUDIT_TRIGGERS if triggers.get(t) != "A"]
    if weak:
        raise MoveFailed(f"the audit table's append-only triggers are not all ENABLE ALWAYS on PostgreSQL: {weak}")
    return old_head


# --- the member during the move -----------------------------------------------------------
def _wait_leading(member: local.NodeMember, proc: process.PatroniProcess, timeout: float) -> None:
    api = member.api(timeout=3)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if not proc.alive():
            raise MoveFailed(f"Patroni exited (status {proc.popen.returncode}) before its member led; its log "
                             f"({member.paths.log_file}) ends: {_tail(member.paths.log_file)}")
        try:
            leader = api.cluster().leader
            if leader is not None and leader.name == member.name and leader.state == "running":
                return
            last = f"leader {leader.name if leader else None}, state {leader.state if leader else None}"
        except Exception as exc:  # noqa: BLE001 — "not yet"; reported when time runs out
            last = str(exc)
        if time.monotonic() > deadline:
            raise MoveFailed(f"the PostgreSQL member did not lead within {timeout:g} s ({last}); its log "
                             f"({member.paths.log_file}) ends: {_tail(member.paths.log_file)}")
        time.sleep(0.5)


def _wait_app_role(db: database.DatabaseFile, timeout: float) -> None:
    """Patroni's post_bootstrap creates the application role and database: wait until
    the node's certificate logs in as it."""
    tls = local.node_tls_files()
    params = database.postgresql_settings(db, ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host=params["HOST"], port=params["PORT"], dbname=params["NAME"], user=params["USER"],
                                 **{k: v for k, v in params["OPTIONS"].items()}) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise MoveFailed(f"the node's certificate could not log in to the new database: {exc}") from None
        time.sleep(0.5)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:])


def _undo(member: local.NodeMember, proc: process.PatroniProcess | None) -> list[str]:
    """Stop and remove the member and its keys in etcd. Returns what could not be done."""
    from pamportal.cluster.connections import tls_files
    from pamportal.cluster.etcd import EtcdClient
    from pamportal.cluster.local_etcd import local_member_config

    problems = []
    _drop_alias()
    if proc is not None:
        try:
            process.member_stop(proc, timeout=30)
        except Exception as exc:  # noqa: BLE001 — go on undoing
            problems.append(f"stopping Patroni: {exc}")
    try:
        etcd_cfg = local_member_config()
        if etcd_cfg is not None:
            ca, cert, key = tls_files()
            local.patroni_keys_forget(EtcdClient([etcd_cfg.client_url], ca, cert, key, timeout=5),
                                      member.spec.cluster_id)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"removing Patroni's keys from etcd: {exc}")
    try:
        process.member_remove(member.paths)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"removing {member.paths.root}: {exc}")
    return problems


def _record(action: AuditAction, *, outcome: Outcome = Outcome.SUCCEEDED, details: dict, target: str,
            alias: str = "default") -> None:
    from pamportal.audit.services import audit_record

    with default_is(alias):
        with transaction.atomic():
            audit_record(action=action, outcome=outcome, target=target, details=details)


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _keep_sqlite(sqlite: Path, stamp: str) -> Path:
    """Rename the SQLite file (and a WAL left behind, which it needs) out of the way:
    kept for as long as the operator wants, never deleted here."""
    kept = sqlite.with_name(f"{sqlite.name}.moved-{stamp}")
    for suffix in ("-wal", "-shm"):
        side = Path(f"{sqlite}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{kept}{suffix}"))
    os.replace(sqlite, kept)
    return kept


def database_to_patroni(*, base: Path | None = None, lead_timeout: float = LEAD_TIMEOUT,
                        say: Callable[[str], None] = print) -> MoveResult:
    """The whole move (see the module docstring). Raises MoveRefused (nothing started)
    or MoveFailed (undone; the node is on SQLite as it was, with the failure recorded)."""
    try:
        member = preconditions(base=base)
    except MoveRefused as exc:
        _record(AuditAction.DATABASE_MOVE_FAILED, outcome=Outcome.DENIED, target="database",
                details={"reason": str(exc), "stage": "preconditions"})
        raise
    spec = member.spec
    target = f"member {member.name} ({spec.address}:{spec.postgres_port})"
    db = _member_settings(member)
    sqlite = _sqlite_path()
    seconds: dict[str, float] = {}
    started = time.monotonic()
    _record(AuditAction.DATABASE_MOVE_STARTED, target=target,
            details={"member": member.name, "scope": spec.cluster_id, "sqlite": str(sqlite)})
    proc = None
    stage = "start the member"
    try:
        say(f"preparing the PostgreSQL member {member.name} under {member.paths.root}")
        local.node_member_prepare(member)
        proc = process.member_start(name=member.name, paths=member.paths, run_as=member.run_as)
        stage = "wait for the member to lead"
        _wait_leading(member, proc, lead_timeout)
        _wait_app_role(db, 30)
        seconds["member leading"] = time.monotonic() - started
        say(f"member {member.name} leads ({seconds['member leading']:.1f}s); migrating the new database")
        stage = "migrate the new database"
        _add_alias(db)
        mark = time.monotonic()
        with default_is(ALIAS):
            call_command("migrate", interactive=False, verbosity=0)
        seconds["migrate"] = time.monotonic() - mark
        models = models_in_order()
        unknown = _unknown_tables(models)
        if unknown:
            raise MoveFailed(f"SQLite has tables no model describes, which would not be copied: {unknown}")
        stage = "copy and verify"
        mark = time.monotonic()
        # SQLite's write lock (IMMEDIATE) from the first row read to the verified copy.
        with transaction.atomic(using="default"):
            counts = copy_rows(models)
            seconds["copy"] = time.monotonic() - mark
            say(f"copied {sum(counts.values())} rows from {len(counts)} tables ({seconds['copy']:.1f}s); verifying")
            mark = time.monotonic()
            head = verify_copy(models)
            seconds["verify"] = time.monotonic() - mark
    except Exception as exc:
        reason = str(exc) if isinstance(exc, (MoveFailed, process.PatroniNotInstalled)) else f"{type(exc).__name__}: {exc}"
        logger.exception("database_to_patroni failed at %r", stage)
        problems = _undo(member, proc)
        details = {"reason": reason, "stage": stage}
        if problems:
            details["undo_problems"] = problems
        _record(AuditAction.DATABASE_MOVE_FAILED, outcome=Outcome.FAILED, target=target, details=details)
        extra = f" (and undoing it: {'; '.join(problems)})" if problems else ""
        raise MoveFailed(f"the move failed ({stage}): {reason}{extra}. The node is still on SQLite, as before; the "
                         f"new member was stopped and removed") from exc

    # The switch: database.json first, then the SQLite file out of the way (a crash in
    # between leaves a node on PostgreSQL with its SQLite file still there, not one that
    # would start on an empty new SQLite).
    stamp = _stamp()
    kept = sqlite.with_name(f"{sqlite.name}.moved-{stamp}")
    from pamportal.nodes.selectors import node_current

    # This node's row in the database it now shares (``nodes.identity``): its address.
    db = database.DatabaseFile(hosts=db.hosts, member=db.member, moved_at=stamp, sqlite_kept=str(kept),
                               node_address=node_current().address or member.spec.address.strip("[]"))
    path = database.write_database_file(settings.PAM_DATA_DIR, db)
    connections["default"].close()
    kept = _keep_sqlite(sqlite, stamp)
    seconds["total"] = time.monotonic() - started
    try:
        _record(AuditAction.DATABASE_MOVED, target=target, alias=ALIAS, details={
            "member": member.name, "head_position": head[0], "head_hash": head[1], "tables": len(counts),
            "rows": sum(counts.values()), "sqlite_kept": str(kept), "seconds": round(seconds["total"], 1)})
    finally:
        _drop_alias()
        process.member_stop(proc, timeout=60)
    return MoveResult(member=member.name, host=spec.address, port=spec.postgres_port, head_position=head[0],
                      head_hash=head[1], rows=counts, sqlite_kept=kept, database_file=path, seconds=seconds)
