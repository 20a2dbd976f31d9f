"""Which database this node's console and worker use, decided once when settings load.

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

No Django at import time beyond its exceptions module: ``settings.py`` imports this.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

FILE_NAME = "database.json"
FORMAT = "pamportal-database"
VERSION = 1
POSTGRESQL_ENGINE = "django.db.backends.postgresql"
SQLITE_FILE = "pamportal.sqlite3"
# The role and database Patroni's post_bootstrap creates (replication.config).
APP_USER = "pamportal"
APP_DATABASE = "pamportal"
CONNECT_TIMEOUT = 3  # seconds per host tried
CONN_MAX_AGE = 60
MAX_FILE_SIZE = 64 * 1024
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "hosts": [{"host": h.host, "port": h.port} for h in self.hosts],
            "member": self.member,
            "moved_at": self.moved_at,
            "sqlite_kept": self.sqlite_kept,
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
    unknown = set(data) - {"format", "version", "hosts", "member", "moved_at", "sqlite_kept"}
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
    return DatabaseFile(hosts=tuple(parsed), member=member, moved_at=moved_at, sqlite_kept=kept)


def read_database_file(data_dir: Path | str) -> DatabaseFile | None:
    """The node's database file, or None when there is none (a SQLite or
    ``DATABASE_URL`` node). A file that is there but unusable raises."""
    path = database_file_path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatabaseFileError(path, f"cannot be read ({exc.strerror})") from None
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


def postgresql_settings(database: DatabaseFile, *, ca_file: Path | str, cert_file: Path | str,
                        key_file: Path | str, path: Path | str = FILE_NAME) -> dict[str, Any]:
    """Django's ``default`` database for the cluster's PostgreSQL: libpq multi-host,
    the first member that accepts writes, TLS verify-full against the cluster CA, the
    node's certificate as the login (``cert`` authentication, no password)."""
    for what, tls_file in (("cluster CA", ca_file), ("node certificate", cert_file), ("node key", key_file)):
        if not Path(tls_file).is_file():
            raise DatabaseFileError(path, f"the {what} it needs to log in, {tls_file}, is missing")
    return {
        "ENGINE": POSTGRESQL_ENGINE,
        "NAME": APP_DATABASE,
        "USER": APP_USER,
        "PASSWORD": "",
        "HOST": ",".join(_libpq_host(h.host) for h in database.hosts),
        "PORT": ",".join(str(h.port) for h in database.hosts),
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
    database = read_database_file(data_dir)
    if database is not None:
        default = postgresql_settings(database, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                      path=database_file_path(data_dir))
    elif database_url:
        default = url_settings(database_url, data_dir)
    else:
        default = sqlite_settings(data_dir)
    return {"default": default}
