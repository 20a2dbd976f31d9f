"""Which database this node's console and worker use (decided when settings load) and,
for a cluster node, which PostgreSQL members they try (followed while they run).

Precedence, first match wins:

1. ``<PAM_DATA_DIR>/database.json`` (written by ``manage.py database_to_patroni``,
   0600): the cluster's PostgreSQL under Patroni, reached through libpq multi-host;
2. ``DATABASE_URL``: a PostgreSQL server of the operator's (CI, developers);
3. the embedded default: SQLite in the data dir.

A ``database.json`` that exists but cannot be used (not JSON, wrong version, a bad
host or port, the TLS files it needs missing) is an error that stops the process,
never a silent fall back to SQLite: after a move the node's data lives in PostgreSQL,
and a console that quietly came up on the old SQLite file (or an empty new one) would
serve stale users and licence and fork the audit trail. The operator gets the file's
path and what is wrong with it instead.

Why libpq multi-host rather than asking Patroni's REST API who leads:

* libpq does it on every new connection with nothing of ours in between: it tries the
  hosts in order and keeps the first one that accepts writes
  (``target_session_attrs=read-write``), so a replica, a member that is down, or a
  demoted primary is skipped, and the answer is PostgreSQL's own (``SHOW
  transaction_read_only``) at the moment of connecting, not Patroni's view from a
  moment ago;
* it needs no extra round trip, no cache to invalidate and no Django database router:
  Django's ordinary connection handling (``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``)
  already reconnects when the server ends the connection, which Patroni does when it
  demotes a primary (it restarts PostgreSQL as a replica);
* it works while the REST API of the member we would ask is down or partitioned, and
  it does not put port 8008 on the path of every console request.

What it does not do is tell the console *who* leads (for the cluster page): that
remains Patroni's REST API (``rest.PatroniClient.cluster()``).

``CONN_MAX_AGE`` keeps a connection for a while (opening one is a TLS handshake with
client-certificate authentication); ``CONN_HEALTH_CHECKS`` makes Django check a kept
connection before a request uses it, so the first request after a switchover finds
the old primary's connection closed, drops it and reconnects, and libpq lands on the
new primary. ``connect_timeout`` bounds each host tried, so a member that is down
costs seconds, not minutes.

Members come and go while processes run (a join adds one, a removal takes one away),
so the list is not frozen at start: the ENGINE of a database.json node is
``pamportal.replication.backend``, Django's PostgreSQL backend whose every new
connection takes HOST/PORT from the file as it is now (``live_hosts``: one ``stat``
per connection, a parse only when the file changed). A process picks up a new list at
its next connection, which Django opens after the health check dropped the old one;
no restart. ``database_hosts_update`` is how the list changes: validated, 0600,
write-then-rename, never empty, never without this node's own member.

A file that turns broken *while* a process runs is not the start-up case: the process
already holds a list that worked, so it keeps connecting with the last good list and
logs the problem once (per broken version of the file). Failing every request instead
would turn a bad edit into an outage of every console and worker on the node, and the
last good list still reaches the primary unless membership changed meanwhile. The
start-up refusal above is unchanged: the next process to start stops with the reason.

No Django at import time beyond its exceptions module: ``settings.py`` imports this.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

FILE_NAME = "database.json"
FORMAT = "pamportal-database"
VERSION = 1
POSTGRESQL_ENGINE = "django.db.backends.postgresql"
# PostgreSQL's backend that re-reads the member list at each new connection (backend/).
FOLLOWING_ENGINE = "pamportal.replication.backend"
# The key of a DATABASES entry that names the file FOLLOWING_ENGINE takes HOST/PORT from.
HOSTS_FILE = "HOSTS_FILE"
SQLITE_FILE = "pamportal.sqlite3"
# The role and database Patroni's post_bootstrap creates (replication.config).
APP_USER = "pamportal"
APP_DATABASE = "pamportal"
CONNECT_TIMEOUT = 3  # seconds per host tried
CONN_MAX_AGE = 60
MAX_FILE_SIZE = 64 * 1024
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
logger = logging.getLogger(__name__)


class DatabaseFileError(ImproperlyConfigured):
    """``database.json`` exists but cannot be used. Never answered by falling back to
    SQLite: the message names the file and what is wrong."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(
            f"{path}: {problem}. This node's database is the PostgreSQL this file describes (written by "
            f"`manage.py database_to_patroni`); pamportal will not start on SQLite instead. Restore or correct "
            f"the file (format {FORMAT!r}, version {VERSION}: hosts, member)."
        )


@dataclass(frozen=True, kw_only=True)
class DatabaseHost:
    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class DatabaseFile:
    """What ``database.json`` says: the members to try, in order (libpq keeps the first
    that accepts writes), and this node's own member (for the supervisor)."""

    hosts: tuple[DatabaseHost, ...]
    member: str
    moved_at: str = ""
    sqlite_kept: str = ""
    # This node's address: which of the shared database's node rows is this node's own
    # (``nodes.identity``). Empty in a file from before it was written.
    node_address: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "hosts": [{"host": h.host, "port": h.port} for h in self.hosts],
            "member": self.member,
            "moved_at": self.moved_at,
            "sqlite_kept": self.sqlite_kept,
            "node_address": self.node_address,
        }


def database_file_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / FILE_NAME


def _host(value: Any, path: Path) -> str:
    if not isinstance(value, str) or not value:
        raise DatabaseFileError(path, f"host {value!r} is not a host name or IP address")
    bare = value.strip("[]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise DatabaseFileError(path, f"host {value!r} is not a host name or IP address")
    return value


def _port(value: Any, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise DatabaseFileError(path, f"port {value!r} is not a TCP port (1-65535)")
    return value


def parse_database_file(raw: bytes, path: Path | str = FILE_NAME) -> DatabaseFile:
    """Strictly: exact fields, version checked, every host and port valid."""
    path = Path(path)
    if len(raw) > MAX_FILE_SIZE:
        raise DatabaseFileError(path, f"the file is larger than {MAX_FILE_SIZE} bytes")
    if not raw.strip():
        raise DatabaseFileError(path, "the file is empty")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatabaseFileError(path, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatabaseFileError(path, "not a JSON object")
    if data.get("format") != FORMAT:
        raise DatabaseFileError(path, f"format is {data.get('format')!r}, not {FORMAT!r}")
    if data.get("version") != VERSION:
        raise DatabaseFileError(path, f"version {data.get('version')!r} is not supported (this release reads {VERSION})")
    unknown = set(data) - {"format", "version", "hosts", "member", "moved_at", "sqlite_kept", "node_address"}
    if unknown:
        raise DatabaseFileError(path, f"unknown fields {sorted(unknown)}")
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise DatabaseFileError(path, "'hosts' must be a non-empty list of {\"host\", \"port\"}")
    if len(hosts) > 16:
        raise DatabaseFileError(path, "more than 16 hosts")
    parsed = []
    for entry in hosts:
        if not isinstance(entry, dict) or set(entry) != {"host", "port"}:
            raise DatabaseFileError(path, f"host entry {entry!r} is not {{\"host\": ..., \"port\": ...}}")
        parsed.append(DatabaseHost(host=_host(entry["host"], path), port=_port(entry["port"], path)))
    member = data.get("member")
    if not isinstance(member, str) or not _MEMBER.match(member):
        raise DatabaseFileError(path, f"member {member!r} is not a member name")
    moved_at, kept = data.get("moved_at", ""), data.get("sqlite_kept", "")
    if not isinstance(moved_at, str) or not isinstance(kept, str):
        raise DatabaseFileError(path, "'moved_at' and 'sqlite_kept' must be strings")
    node_address = data.get("node_address", "")
    if node_address != "":
        node_address = _host(node_address, path)
    return DatabaseFile(hosts=tuple(parsed), member=member, moved_at=moved_at, sqlite_kept=kept,
                        node_address=node_address)


def _signature(st: os.stat_result) -> tuple[int, ...]:
    # The rename of an update gives a new inode; size and both times catch an edit in place.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: Path) -> tuple[bytes, tuple[int, ...]]:
    """The file's bytes and the signature of exactly that version (fstat of the handle
    read, so a rename between the two cannot pair new bytes with an old signature).
    Raises FileNotFoundError, or DatabaseFileError for any other failure to read."""
    try:
        with open(path, "rb") as handle:
            signature = _signature(os.fstat(handle.fileno()))
            raw = handle.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DatabaseFileError(path, f"cannot be read ({exc.strerror})") from None
    return raw, signature


def read_database_file(data_dir: Path | str) -> DatabaseFile | None:
    """The node's database file, or None when there is none (a SQLite or
    ``DATABASE_URL`` node). A file that is there but unusable raises."""
    path = database_file_path(data_dir)
    try:
        raw, _signature_read = _read(path)
    except FileNotFoundError:
        return None
    return parse_database_file(raw, path)


def write_database_file(data_dir: Path | str, database: DatabaseFile) -> Path:
    """Atomically and durably, 0600: a reader sees no file or the whole file."""
    from pamportal.core.files import write_private

    path = database_file_path(data_dir)
    write_private(path, (json.dumps(database.to_json(), indent=2) + "\n").encode())
    return path


def _libpq_host(host: str) -> str:
    # libpq's host list is comma-separated; IPv6 literals go bare (no brackets).
    return host.strip("[]")


def libpq_hosts(hosts: Iterable[DatabaseHost]) -> tuple[str, str]:
    """HOST and PORT as libpq's multi-host lists: ("a,b", "5432,5432")."""
    hosts = tuple(hosts)
    return ",".join(_libpq_host(h.host) for h in hosts), ",".join(str(h.port) for h in hosts)


def postgresql_settings(database: DatabaseFile, *, ca_file: Path | str, cert_file: Path | str,
                        key_file: Path | str, path: Path | str = FILE_NAME,
                        hosts_file: Path | str | None = None) -> dict[str, Any]:
    """Django's ``default`` database for the cluster's PostgreSQL: libpq multi-host,
    the first member that accepts writes, TLS verify-full against the cluster CA, the
    node's certificate as the login (``cert`` authentication, no password).

    With ``hosts_file`` (the node's database.json) the ENGINE is FOLLOWING_ENGINE, which
    takes HOST/PORT from that file at each new connection (HOST/PORT here are the list
    read at start, its fallback); without it, Django's own PostgreSQL backend on exactly
    ``database.hosts`` (a connection to one known member, as the move opens)."""
    for what, tls_file in (("cluster CA", ca_file), ("node certificate", cert_file), ("node key", key_file)):
        if not Path(tls_file).is_file():
            raise DatabaseFileError(path, f"the {what} it needs to log in, {tls_file}, is missing")
    host, port = libpq_hosts(database.hosts)
    entry: dict[str, Any] = {
        "ENGINE": FOLLOWING_ENGINE if hosts_file is not None else POSTGRESQL_ENGINE,
        "NAME": APP_DATABASE,
        "USER": APP_USER,
        "PASSWORD": "",
        "HOST": host,
        "PORT": port,
        "OPTIONS": {
            "target_session_attrs": "read-write",
            "sslmode": "verify-full",
            "sslrootcert": str(ca_file),
            "sslcert": str(cert_file),
            "sslkey": str(key_file),
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": f"pamportal-{database.member}"[:63],
        },
        "CONN_MAX_AGE": CONN_MAX_AGE,
        "CONN_HEALTH_CHECKS": True,
        # The test runner makes test_<NAME> beside it: never on a node's cluster.
        "TEST": {"NAME": f"test_{APP_DATABASE}"},
    }
    if hosts_file is not None:
        entry[HOSTS_FILE] = str(hosts_file)
    return entry


def sqlite_settings(data_dir: Path | str) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(data_dir) / SQLITE_FILE),
        "USER": "", "PASSWORD": "", "HOST": "", "PORT": "",
        "CONN_HEALTH_CHECKS": True,
        # Persistent connections: opening a SQLite connection (and running the PRAGMAs
        # of init_command) on every request is a large part of a page's cost. The
        # health check replaces a connection that went bad before a request uses it.
        "CONN_MAX_AGE": 60,
        "OPTIONS": {
            # IMMEDIATE makes every transaction take the write lock at BEGIN, so two
            # writers queue behind the busy timeout instead of failing on a lock upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
        },
        "TEST": {"NAME": str(Path(data_dir) / "test.sqlite3")},
    }


def url_settings(database_url: str, data_dir: Path | str) -> dict[str, Any]:
    import dj_database_url

    db = dj_database_url.parse(database_url)
    if db["ENGINE"] == "django.db.backends.sqlite3":
        sqlite = sqlite_settings(data_dir)
        sqlite["NAME"] = db["NAME"]
        return sqlite
    db.setdefault("CONN_MAX_AGE", 60)
    db["CONN_HEALTH_CHECKS"] = True
    return db


def databases(*, data_dir: Path | str, database_url: str | None, ca_file: Path | str, cert_file: Path | str,
              key_file: Path | str) -> dict[str, dict[str, Any]]:
    """Django's DATABASES for this node: database.json, else DATABASE_URL, else SQLite
    (see the module docstring)."""
    path = database_file_path(data_dir)
    try:
        raw, signature = _read(path)
    except FileNotFoundError:
        database = None
    else:
        database = parse_database_file(raw, path)
    if database is not None:
        default = postgresql_settings(database, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                      path=path, hosts_file=path)
        # the version just parsed is the live list's first: the first connection costs a stat
        _remember(path, signature, libpq_hosts(database.hosts))
    elif database_url:
        default = url_settings(database_url, data_dir)
    else:
        default = sqlite_settings(data_dir)
    return {"default": default}


# --- the member list while processes run -------------------------------------------------
@dataclass
class _Seen:
    signature: tuple[int, ...] | str  # of the version last looked at, good or not
    hosts: tuple[str, str]  # the last good list, as (HOST, PORT)
    complained: tuple[int, ...] | str | None = None  # the broken version already logged


_seen: dict[str, _Seen] = {}
_seen_lock = threading.Lock()


def _remember(path: Path, signature: tuple[int, ...], hosts: tuple[str, str]) -> None:
    with _seen_lock:
        _seen[str(path)] = _Seen(signature=signature, hosts=hosts)


def live_hosts(path: Path | str, *, fallback: tuple[str, str]) -> tuple[str, str]:
    """The member list in ``path`` now, as libpq's (HOST, PORT), for a connection about to
    be opened. Costs one ``stat`` while the file is unchanged (device, inode, size,
    mtime and ctime); parses it only when it changed.

    Never raises: a file missing, unreadable or broken keeps the last good list
    (``fallback``, the list read at start, before any good read) and is logged once per
    broken version; the module docstring says why a running process does not stop."""
    key = str(path)
    seen = _seen.get(key)
    try:
        signature: tuple[int, ...] | str = _signature(os.stat(key))
    except FileNotFoundError:
        signature = "missing"
    except OSError as exc:
        signature = f"unreadable: {exc.strerror}"
    if seen is not None and seen.signature == signature:
        return seen.hosts
    with _seen_lock:
        seen = _seen.get(key)
        if seen is not None and seen.signature == signature:
            return seen.hosts  # another thread read this version meanwhile
        last_good = seen.hosts if seen is not None else fallback
        problem = None
        try:
            raw, signature = _read(Path(key))
            hosts = libpq_hosts(parse_database_file(raw, key).hosts)
        except FileNotFoundError:
            signature, problem = "missing", "it is missing"
        except DatabaseFileError as exc:
            problem = exc.problem
        except Exception as exc:  # noqa: BLE001 — a connection never fails for our bookkeeping
            problem = f"it could not be read ({exc!r})"
        if problem is not None:
            complained = seen.complained if seen is not None else None
            if complained != signature:
                logger.error("%s: %s; new connections keep using the last good member list %s (ports %s) "
                             "until the file is corrected (a process started now would refuse it)",
                             key, problem, last_good[0], last_good[1])
            _seen[key] = _Seen(signature=signature, hosts=last_good, complained=signature)
            return last_good
        if seen is not None and seen.complained is not None:
            logger.warning("%s is readable again", key)
        if hosts != last_good:
            logger.info("%s: the database member list changed from %s to %s; new connections use it",
                           key, last_good[0], hosts[0])
        _seen[key] = _Seen(signature=signature, hosts=hosts)
        return hosts


class HostsUpdateRefused(ValueError):
    """``database_hosts_update`` changed nothing; the message says why."""


def own_database_host() -> DatabaseHost | None:
    """This node's own member as the move listed it: the address of its etcd member and
    ``PAM_POSTGRES_PORT`` (None while the node has no etcd member). Needs Django."""
    from django.conf import settings

    from pamportal.cluster.local_etcd import local_member_config

    etcd = local_member_config()
    if etcd is None:
        return None
    return DatabaseHost(host=_host(etcd.address, Path(FILE_NAME)), port=int(settings.PAM_POSTGRES_PORT))


def _as_host(entry: Any, path: Path) -> DatabaseHost:
    if isinstance(entry, DatabaseHost):
        host, port = entry.host, entry.port
    elif isinstance(entry, (tuple, list)) and len(entry) == 2:
        host, port = entry
    else:
        raise DatabaseFileError(path, f"member {entry!r} is not a DatabaseHost or (host, port)")
    return DatabaseHost(host=_host(host, path), port=_port(port, path))


@contextlib.contextmanager
def _update_lock(data_dir: Path):
    import fcntl

    fd = os.open(data_dir / f".{FILE_NAME}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def database_hosts_update(data_dir: Path | str, hosts: Iterable[DatabaseHost | tuple[str, int]], *,
                          own: DatabaseHost | None = None) -> DatabaseFile:
    """Replace the member list of this node's database.json with ``hosts`` (in the
    order libpq should try them), keeping every other field; what the join and the
    removal call. Running processes follow it at their next connection (``live_hosts``).

    Refused (HostsUpdateRefused, the file untouched) when: the node has no
    database.json or it is broken; the list is empty, has an invalid or repeated
    member, or more than the file allows; or it lacks this node's own member (``own``,
    by default ``own_database_host()``), since the node's own member is the one this
    node can always vouch for. Written 0600, temporary file then rename (a reader sees
    the old list or the new one, never part of one), serialised with other updates by
    a lock file so two concurrent updates cannot lose one another."""
    data_dir = Path(data_dir)
    path = database_file_path(data_dir)
    wanted = list(hosts)
    try:
        if not wanted:
            raise DatabaseFileError(path, "an empty member list would leave the node without a database")
        new_hosts = tuple(_as_host(entry, path) for entry in wanted)
        repeated = sorted({f"{h.host}:{h.port}" for h in new_hosts if new_hosts.count(h) > 1})
        if repeated:
            raise DatabaseFileError(path, f"members listed twice: {', '.join(repeated)}")
        own = own if own is not None else own_database_host()
        if own is None:
            raise DatabaseFileError(path, "this node has no etcd member, so its own database member is unknown")
        own = _as_host(own, path)
        if own not in new_hosts:
            raise DatabaseFileError(path, f"the list lacks this node's own member {own.host}:{own.port}")
        with _update_lock(data_dir):
            current = read_database_file(data_dir)
            if current is None:
                raise DatabaseFileError(path, "there is no such file: this node does not run on PostgreSQL under "
                                              "Patroni (manage.py database_to_patroni)")
            updated = DatabaseFile(hosts=new_hosts, member=current.member, moved_at=current.moved_at,
                                   sqlite_kept=current.sqlite_kept, node_address=current.node_address)
            text = (json.dumps(updated.to_json(), indent=2) + "\n").encode()
            parse_database_file(text, path)  # what every reader will accept, checked before it is written
            from pamportal.core.files import write_private

            write_private(path, text)
    except DatabaseFileError as exc:
        raise HostsUpdateRefused(f"{path}: member list not changed: {exc.problem}") from None
    logger.info("%s: database member list set to %s", path, ", ".join(f"{h.host}:{h.port}" for h in new_hosts))
    return updated
