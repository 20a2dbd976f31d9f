"""Patroni's configuration for one node's PostgreSQL member, built from explicit inputs.

Pure: no Django, no files. What goes over the network is TLS with cluster-CA
certificates on both sides, and nothing else:

* the Patroni REST API (``restapi``) serves TLS on the node address and requires a
  client certificate from the cluster CA (``verify_client: required``); Patroni
  presents the node's certificate when it calls the other members (``ctl``);
* the DCS is the node's own etcd over client TLS (``etcd3``, ``protocol: https``);
* PostgreSQL has ``ssl = on`` with the node certificate, trusts the cluster CA for
  client certificates, and ``pg_hba`` lets the network in only as ``hostssl ... cert``
  for the replication, rewind and application roles. The superuser comes in only
  through the member's private unix-socket directory, as its own OS user (``peer``).

Client certificate → role. With ``cert`` authentication PostgreSQL takes the
certificate's CN as the user name, and our node certificates (pamportal.crypto.ca) are
named after the node (``node1.example.com``, ``127.0.0.11``), not after a role. The map
:data:`CERT_MAP` (``pg_ident.conf``) lets *any* certificate the cluster CA signed log in
as ``replicator``, ``rewind`` or ``pamportal``: the cluster CA signs node certificates
only (nodes.keys at setup, cluster.jobs at a join), so "signed by the cluster CA" is
"a member of this cluster", and every member needs all three roles anyway (stream as a
replica, rewind after losing the lead, run the console on the primary). The other way,
a second client certificate per node with CN ``replicator``, would be one more key to
issue at the join, hand over and revoke, for no gain. Revoked node certificates are
refused once the caller passes the CA's CRL (``crl_file``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pamportal.cluster.etcd_process import listen_address

POSTGRES_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
NAMESPACE = "/patroni/"  # Patroni's keys in etcd, beside (not among) pamportal's own

REPLICATION_USER = "replicator"
REWIND_USER = "rewind"
APP_USER = "pamportal"
APP_DATABASE = "pamportal"
CERT_MAP = "cluster_cert"

# Patroni 4 refuses a TTL under 20 s (it raises it to 20 with a warning).
PATRONI_MIN_TTL = 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, kw_only=True)
class TLSFiles:
    """The cluster CA and a node's certificate and key, as paths the member's OS user
    can read (the key 0600, owned by that user: libpq and PostgreSQL insist)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class FailoverTiming:
    """How fast Patroni notices a dead leader, stored in etcd at bootstrap
    (``bootstrap.dcs``) and shared by every member.

    A leader that stops renewing its key loses it after ``ttl`` seconds; a replica then
    takes it at its next wake-up (at once, through its etcd watch) and promotes. So a
    SIGKILLed leader is replaced after about ``ttl - loop_wait/2`` seconds plus the
    promotion (~1 s). ``ttl`` is Patroni 4's floor, 20 s (it refuses less), so a crash
    fails over in about 20 s; a switchover does not wait for the TTL at all (~3-5 s).
    ``loop_wait`` 2 s (default 10) renews the leader key and looks at the cluster every
    2 s: cheap in etcd for a handful of members and it cuts detection by up to 8 s.
    ``retry_timeout`` 5 s rides out an etcd re-election (about 1 s with etcd's default
    1 s election timeout) or a slow fsync without demoting the primary, while
    ``loop_wait + 2 * retry_timeout <= ttl`` (Patroni's rule) guarantees that a primary
    cut off from etcd demotes itself before its key expires and another member can
    take over: never two primaries.
    """

    ttl: int = PATRONI_MIN_TTL
    loop_wait: int = 2
    retry_timeout: int = 5

    def __post_init__(self):
        if self.ttl < PATRONI_MIN_TTL:
            raise ValueError(f"Patroni refuses a TTL under {PATRONI_MIN_TTL} s (got {self.ttl})")
        if self.loop_wait < 1 or self.retry_timeout < 3:
            raise ValueError("loop_wait must be at least 1 s and retry_timeout at least 3 s")
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ValueError(
                f"loop_wait + 2 * retry_timeout must not exceed ttl ({self.loop_wait} + 2 * "
                f"{self.retry_timeout} > {self.ttl}): a primary cut off from etcd must demote before its key expires"
            )


@dataclass(frozen=True, kw_only=True)
class MemberSpec:
    """Everything that makes one node's member: which cluster (Patroni's scope is the
    cluster id), which member (its name, unique in the cluster), where it listens (the
    node address, never a wildcard), its etcd, its files."""

    cluster_id: str
    name: str
    address: str
    etcd_hosts: tuple[str, ...]
    tls: TLSFiles
    data_dir: Path
    socket_dir: Path
    pgpass: Path
    postgres_port: int = 5432
    patroni_port: int = 8008
    superuser: str = "postgres"
    bin_dir: Path = POSTGRES_BIN_DIR
    timing: FailoverTiming = field(default_factory=FailoverTiming)
    # Never the synchronous standby (Patroni's ``nosync`` tag): a joining node's member
    # while the join makes it a replica, which the join stops again before ``serve``
    # runs it (without the tag), so that stopping it never holds the primary's commits.
    nosync: bool = False

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"bad member name {self.name!r}: letters, digits, '.', '_' and '-' only")
        if not self.cluster_id or not _NAME.match(self.cluster_id):
            raise ValueError(f"bad cluster id {self.cluster_id!r}")
        if not _NAME.match(self.superuser):
            raise ValueError(f"bad superuser name {self.superuser!r}")
        if not self.etcd_hosts:
            raise ValueError("Patroni needs at least one etcd endpoint (host:port)")
        for host in self.etcd_hosts:
            if "://" in host or ":" not in host:
                raise ValueError(f"etcd endpoints are host:port, not {host!r}")
        if len(str(self.socket_dir / ".s.PGSQL.00000")) > 100:
            raise ValueError(f"socket dir {self.socket_dir} is too long for a unix socket path")

    @property
    def host(self) -> str:
        """The address as it goes in a URL or ``host:port`` (IPv6 in brackets)."""
        bare = self.address.strip("[]")
        return f"[{bare}]" if ":" in bare else bare

    @property
    def api_url(self) -> str:
        return f"https://{self.host}:{self.patroni_port}"


def pg_hba(spec: MemberSpec) -> list[str]:
    """Who may connect, first match wins: the superuser through the private socket as
    its own OS user; over the network only TLS with a cluster-CA certificate (``cert``
    checks the chain and maps the CN through :data:`CERT_MAP`), each role to the
    databases it needs; everything else refused by name, so the refusal says so. The
    application's role also reaches the scratch database a backup's proof creates and
    drops (``pamportal_scratch_<random>``; PostgreSQL 15's pg_hba has no patterns, so
    any database: it has rights in its own and in what it creates alone)."""
    su = spec.superuser
    return [
        f"local   all          {su}   peer",
        f"local   replication  {su}   peer",
        f"hostssl replication  {REPLICATION_USER}  all  cert  map={CERT_MAP}",
        f"hostssl postgres     {REWIND_USER}       all  cert  map={CERT_MAP}",
        f"hostssl all          {APP_USER}    all  cert  map={CERT_MAP}",
        "host    all          all         all  reject",
        "local   all          all              reject",
    ]


def pg_ident() -> list[str]:
    """Any certificate that passed the CA check (any CN) may be the three network roles;
    see the module docstring for why a per-role certificate is not worth it."""
    return [f"{CERT_MAP}  /^.+$  {role}" for role in (REPLICATION_USER, REWIND_USER, APP_USER)]


def _client_tls(spec: MemberSpec, username: str) -> dict[str, Any]:
    """libpq parameters of a role that logs in with the node's certificate.
    verify-full: the other member's certificate names its address (IP SAN)."""
    auth: dict[str, Any] = {
        "username": username,
        "sslmode": "verify-full",
        "sslcert": str(spec.tls.cert_file),
        "sslkey": str(spec.tls.key_file),
        "sslrootcert": str(spec.tls.ca_file),
    }
    if spec.tls.crl_file:
        auth["sslcrl"] = str(spec.tls.crl_file)
    return auth


def post_bootstrap_command(spec: MemberSpec) -> str:
    """Run once by Patroni on the first member after initdb, with the superuser's
    connection string appended: the application's role (no password: it logs in with
    the node certificate) and its database. Patroni 4 no longer creates users. The role
    may create databases: a backup's proof restores into a scratch database it drops."""
    psql = spec.bin_dir / "psql"
    return (
        f"{psql} -X -q -v ON_ERROR_STOP=1"
        f" -c 'CREATE ROLE {APP_USER} LOGIN CREATEDB'"
        f" -c 'CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}'"
    )


def patroni_config(spec: MemberSpec) -> dict[str, Any]:
    """The member's whole Patroni configuration (what ``patroni <file>`` reads)."""
    listen = listen_address(spec.address.strip("[]"))
    listen_host = f"[{listen}]" if ":" in listen else listen
    tls = spec.tls
    ssl_parameters: dict[str, Any] = {
        "ssl": "on",
        "ssl_cert_file": str(tls.cert_file),
        "ssl_key_file": str(tls.key_file),
        "ssl_ca_file": str(tls.ca_file),  # asks clients for a certificate from the cluster CA
        "ssl_min_protocol_version": "TLSv1.2",
    }
    if tls.crl_file:
        ssl_parameters["ssl_crl_file"] = str(tls.crl_file)
    timing = spec.timing
    return {
        "scope": spec.cluster_id,
        "namespace": NAMESPACE,
        "name": spec.name,
        "log": {"level": "INFO"},
        "restapi": {
            "listen": f"{listen_host}:{spec.patroni_port}",
            "connect_address": f"{spec.host}:{spec.patroni_port}",
            "certfile": str(tls.cert_file),
            "keyfile": str(tls.key_file),
            "cafile": str(tls.ca_file),
            "verify_client": "required",
        },
        # Patroni calls the other members' REST APIs (switchover, failover checks):
        # with the node's certificate, checking theirs against the cluster CA.
        "ctl": {
            "certfile": str(tls.cert_file),
            "keyfile": str(tls.key_file),
            "cacert": str(tls.ca_file),
            "insecure": False,
        },
        "etcd3": {
            "hosts": list(spec.etcd_hosts),
            "protocol": "https",
            "cacert": str(tls.ca_file),
            "cert": str(tls.cert_file),
            "key": str(tls.key_file),
        },
        "bootstrap": {
            "dcs": {
                "ttl": timing.ttl,
                "loop_wait": timing.loop_wait,
                "retry_timeout": timing.retry_timeout,
                "maximum_lag_on_failover": 1024 * 1024,
                # Only a synchronous standby may be promoted, so nothing acknowledged is
                # lost; not strict, so a lone primary still takes writes.
                "synchronous_mode": True,
                "synchronous_mode_strict": False,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_log_hints": "on",
                        "wal_keep_size": "128MB",
                    },
                },
            },
            # initdb's own pg_hba.conf says trust until Patroni writes ours: not even then.
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums",
                       {"auth-local": "peer"}, {"auth-host": "reject"}],
            "post_bootstrap": post_bootstrap_command(spec),
        },
        "postgresql": {
            "listen": f"{listen_host}:{spec.postgres_port}",
            "connect_address": f"{spec.host}:{spec.postgres_port}",
            "data_dir": str(spec.data_dir),
            "bin_dir": str(spec.bin_dir),
            "pgpass": str(spec.pgpass),
            # A replica's first copy starts with a checkpoint on the primary: at once,
            # not spread over checkpoint_timeout (minutes of a join spent waiting).
            "basebackup": [{"checkpoint": "fast"}],
            # Patroni's own superuser connection goes through the private socket dir.
            "use_unix_socket": True,
            "use_unix_socket_repl": False,
            "authentication": {
                "superuser": {"username": spec.superuser},
                "replication": _client_tls(spec, REPLICATION_USER),
                "rewind": _client_tls(spec, REWIND_USER),
            },
            "parameters": {
                # never the system cluster's /var/run/postgresql
                "unix_socket_directories": str(spec.socket_dir),
                "password_encryption": "scram-sha-256",
                **ssl_parameters,
            },
            "pg_hba": pg_hba(spec),
            "pg_ident": pg_ident(),
        },
        # No hardware watchdog on these machines; Patroni would warn on every loop.
        "watchdog": {"mode": "off"},
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": spec.nosync},
    }


def render(config: dict[str, Any]) -> str:
    """The configuration as Patroni's YAML file. JSON is YAML (flow style), which keeps
    PyYAML out of the project's own environment."""
    return json.dumps(config, indent=2, sort_keys=False) + "\n"
