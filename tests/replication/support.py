"""A lab of real processes for the replication tests: a cluster CA and node certificates
from pamportal.crypto.ca, three etcd members on 127.0.0.51-53 (started with the etcd
test support), and Patroni-managed PostgreSQL members on the same addresses, run as
``postgres``. Everything started is remembered and stopped by ``close()``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pamportal.cluster import etcd_process
from pamportal.cluster.etcd_process import MemberConfig
from pamportal.crypto import ca
from pamportal.replication import config, process
from pamportal.replication.config import FailoverTiming, MemberSpec, TLSFiles
from pamportal.replication.rest import PatroniClient
from tests.cluster import etcd_support
from tests.cluster.etcd_support import EtcdTestClient, pick_ports

# Other tests use 127.0.0.11-13 and others at the same time: these are ours.
ADDRESSES = {"n1": "127.0.0.51", "n2": "127.0.0.52", "n3": "127.0.0.53"}
PSQL = config.POSTGRES_BIN_DIR / "psql"


def missing_tools() -> str | None:
    """Why the replication process tests cannot run here, or None."""
    if not (shutil.which("etcd") or os.access("/usr/bin/etcd", os.X_OK)):
        return "etcd not installed (etcd-server)"
    if not os.access(config.POSTGRES_BIN_DIR / "postgres", os.X_OK):
        return "PostgreSQL 15 not installed (postgresql-15)"
    try:
        process.patroni_binary()
    except process.PatroniNotInstalled as exc:
        return str(exc)
    if os.geteuid() == 0:
        try:
            process.RunAs.for_this_process()
        except KeyError:
            return "no postgres user to run PostgreSQL as (postgresql-15 creates it)"
    return None


def wait_until(predicate, timeout: float, *, interval: float = 0.2, what: str = "condition", log=None):
    """Call ``predicate`` until it returns something true, at most ``timeout`` seconds
    (and so a bounded number of times). Exceptions count as "not yet"; the last one is
    reported with ``log()`` (a member's log tail) when time runs out."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 — "not yet", reported below
            value, last = None, exc
        if value:
            return value
        if time.monotonic() + interval > deadline:
            tail = f"\n--- log ---\n{log()}" if log else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r}){tail}")
        time.sleep(interval)


@dataclass(frozen=True)
class Cert:
    cert_file: Path
    key_file: Path


class Pki:
    """The cluster CA and what it issues, as files (keys 0600, root's)."""

    def __init__(self, root: Path, addresses: dict[str, str] | None = None):
        self.root = root
        self.addresses = addresses or ADDRESSES
        root.mkdir(parents=True, exist_ok=True)
        issued = ca.create_ca(name="pamportal replication test CA")
        self.ca_pem, self._ca_key = issued.cert_pem, issued.key_pem
        self.ca_file = self._write("ca.crt", issued.cert_pem)
        self.cluster_id = ca.cluster_id_of(ca.certificate_info(issued.cert_pem).sha256)
        # loopback node certificates also name 127.0.0.1 (etcd_process.certificate_addresses)
        self.nodes = {n: self.issue(n, etcd_process.certificate_addresses(a)) for n, a in self.addresses.items()}
        rogue = ca.create_ca(name="not the cluster CA")
        self.rogue_ca_file = self._write("rogue-ca.crt", rogue.cert_pem)
        node = ca.issue_node_certificate(ca_cert_pem=rogue.cert_pem, ca_key_pem=rogue.key_pem, names=["127.0.0.53"])
        self.rogue = Cert(self._write("rogue.crt", node.cert_pem), self._write("rogue.key", node.key_pem, 0o600))

    def _write(self, name: str, data: bytes, mode: int = 0o644) -> Path:
        path = self.root / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def issue(self, label: str, names: list[str]) -> Cert:
        node = ca.issue_node_certificate(ca_cert_pem=self.ca_pem, ca_key_pem=self._ca_key, names=names)
        return Cert(self._write(f"{label}.crt", node.cert_pem), self._write(f"{label}.key", node.key_pem, 0o600))

    def tls(self, name: str) -> TLSFiles:
        node = self.nodes[name]
        return TLSFiles(ca_file=self.ca_file, cert_file=node.cert_file, key_file=node.key_file)


class Lab:
    """Three etcd members and up to three Patroni members, on 127.0.0.51-53 (or on the
    ``addresses`` given: one etcd voter and one Patroni member each)."""

    def __init__(self, root: Path, timing: FailoverTiming | None = None, addresses: dict[str, str] | None = None):
        self.root = root
        self.addresses = addresses or ADDRESSES
        self.pki = Pki(root / "pki", self.addresses)
        self.timing = timing or FailoverTiming()
        # PostgreSQL's files must be reachable by postgres: not under pytest's 0700 tmp.
        self.pg_base = Path(tempfile.mkdtemp(prefix="pamportal-repl-", dir="/var/tmp"))
        os.chmod(self.pg_base, 0o711)
        self.run_as = process.RunAs.for_this_process()
        self.etcd_procs: dict[str, subprocess.Popen] = {}
        self.etcd_ports = {n: pick_ports(a) for n, a in self.addresses.items()}
        self.pg_ports = {n: pick_ports(a, (5432, 8008)) for n, a in self.addresses.items()}
        self.members: dict[str, process.PatroniProcess] = {}
        self.specs: dict[str, MemberSpec] = {}
        # whose certificate the lab's own clients present (any cluster-CA one will do)
        self.client_node = "n3" if "n3" in self.addresses else list(self.addresses)[-1]

    # -- etcd -------------------------------------------------------------------------
    def etcd_config(self, name: str, initial_cluster: str) -> MemberConfig:
        cport, pport = self.etcd_ports[name]
        node = self.pki.nodes[name]
        return MemberConfig(
            name=name, address=self.addresses[name], client_port=cport, peer_port=pport,
            data_dir=self.root / "etcd" / name, ca_file=self.pki.ca_file, cert_file=node.cert_file,
            key_file=node.key_file, initial_cluster=initial_cluster, initial_state="new",
            initial_cluster_token="pamportal-repl-test",
        )

    def etcd_start(self) -> None:
        """Three voters at once (the etcd join is tested in tests/cluster)."""
        initial = ",".join(
            etcd_process.initial_cluster_entry(n, a, self.etcd_ports[n][1]) for n, a in self.addresses.items()
        )
        configs = {n: self.etcd_config(n, initial) for n in self.addresses}
        for name, cfg in configs.items():
            self.etcd_procs[name] = etcd_support.start(cfg, self.root / f"etcd-{name}.log")
        for name, cfg in configs.items():
            client = EtcdTestClient([cfg.client_url], str(self.pki.ca_file), str(self.pki.nodes[name].cert_file),
                                    str(self.pki.nodes[name].key_file))
            try:
                etcd_support.wait_healthy(client, timeout=30, proc=self.etcd_procs[name])
            except etcd_support.EtcdStartError as exc:
                raise AssertionError(f"{exc}\n{self.tail(self.root / f'etcd-{name}.log')}") from exc

    # -- PostgreSQL members ----------------------------------------------------------
    def paths(self, name: str) -> process.MemberPaths:
        return process.member_paths(self.pg_base, name)

    def spec(self, name: str, tls: TLSFiles) -> MemberSpec:
        paths = self.paths(name)
        pg_port, api_port = self.pg_ports[name]
        own_first = [name] + [n for n in self.addresses if n != name]
        return MemberSpec(
            cluster_id=self.pki.cluster_id, name=name, address=self.addresses[name],
            etcd_hosts=tuple(f"{self.addresses[n]}:{self.etcd_ports[n][0]}" for n in own_first),
            tls=tls, data_dir=paths.data_dir, socket_dir=paths.socket_dir, pgpass=paths.pgpass,
            postgres_port=pg_port, patroni_port=api_port, superuser=self.run_as.user, timing=self.timing,
        )

    def member_start(self, name: str) -> process.PatroniProcess:
        paths = self.paths(name)
        if name not in self.specs:
            tls = process.member_prepare(paths=paths, tls_source=self.pki.tls(name), run_as=self.run_as)
            self.specs[name] = self.spec(name, tls)
            process.member_config_write(paths=paths, text=config.render(config.patroni_config(self.specs[name])),
                                        run_as=self.run_as)
        proc = process.member_start(name=name, paths=paths, run_as=self.run_as)
        self.members[name] = proc
        return proc

    def member_stop(self, name: str) -> None:
        proc = self.members.pop(name, None)
        if proc is not None:
            process.member_stop(proc, timeout=30)

    def member_kill(self, name: str) -> None:
        proc = self.members.pop(name)
        process.member_kill(proc)

    def api(self, name: str, *, cert: Cert | None = None, ca_file: Path | None = None,
            timeout: float = 5.0) -> PatroniClient:
        """Patroni's REST API on ``name``, as the node ``n3`` would call it by default."""
        cert = cert or self.pki.nodes[self.client_node]
        return PatroniClient(self.specs[name].api_url, ca_file=ca_file or self.pki.ca_file,
                             cert_file=cert.cert_file, key_file=cert.key_file, timeout=timeout)

    def conninfo(self, name: str, **overrides) -> dict:
        """libpq parameters of the application role on ``name``: TLS, verify-full, and
        the node certificate of n3 (any cluster-CA certificate maps to the role)."""
        cert = self.pki.nodes[self.client_node]
        params = dict(
            host=self.addresses[name], port=self.pg_ports[name][0], dbname=config.APP_DATABASE, user=config.APP_USER,
            sslmode="verify-full", sslrootcert=str(self.pki.ca_file), sslcert=str(cert.cert_file),
            sslkey=str(cert.key_file), connect_timeout=5,
        )
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def connect(self, name: str, **overrides) -> psycopg.Connection:
        return psycopg.connect(autocommit=True, **self.conninfo(name, **overrides))

    def superuser_sql(self, name: str, sql: str, *, dbname: str = "postgres") -> str:
        """Run ``sql`` as the superuser through the member's private socket, as its OS
        user (``peer``): what only the node itself can do."""
        argv = [str(PSQL), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.paths(name).socket_dir),
                "-p", str(self.pg_ports[name][0]), "-U", self.run_as.user, "-d", dbname, "-c", sql]
        if self.run_as.switches_user:
            argv = ["runuser", "-u", self.run_as.user, "--", *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=15, cwd="/")
        if out.returncode != 0:
            raise RuntimeError(f"psql on {name}: {out.stderr.strip()}")
        return out.stdout.strip()

    # -- waiting -----------------------------------------------------------------------
    def log(self, name: str) -> str:
        return self.tail(self.paths(name).log_file)

    @staticmethod
    def tail(path: Path, size: int = 4000) -> str:
        try:
            return path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def wait_leader(self, asked: str, expected: str | None = None, *, timeout: float = 60.0) -> str:
        # Running and its timeline reported: Patroni leaves the timeline out of a member's
        # record while an action (the bootstrap's last steps, a promotion) is still
        # scheduled, so "running" alone can come one HA loop before the timeline does.
        def leader():
            view = self.api(asked).cluster()
            lead = view.leader
            if lead and lead.state == "running" and lead.timeline and (expected is None or lead.name == expected):
                return lead.name
            return None

        return wait_until(leader, timeout, what=f"a running leader{f' {expected}' if expected else ''}",
                          log=lambda: self.log(expected or asked))

    def wait_sync_standby(self, asked: str, standby: str, *, timeout: float = 60.0) -> None:
        def streaming_sync():
            m = self.api(asked).cluster().member(standby)
            return m is not None and m.is_sync_standby and m.state == "streaming"

        wait_until(streaming_sync, timeout, what=f"{standby} streaming as the sync standby", log=lambda: self.log(standby))

    # -- cleanup -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop every member, then etcd, then remove the PostgreSQL files. Each step runs
        even when an earlier one failed."""
        errors: list[str] = []
        for name in list(self.members):
            try:
                self.member_stop(name)
            except Exception as exc:  # noqa: BLE001 — keep stopping the others
                errors.append(f"{name}: {exc}")
        for proc in self.etcd_procs.values():
            try:
                etcd_support.stop(proc)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"etcd: {exc}")
        for name in self.addresses:
            try:
                process.member_remove(self.paths(name))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"remove {name}: {exc}")
        shutil.rmtree(self.pg_base, ignore_errors=True)
        if errors:
            raise AssertionError("replication lab cleanup: " + "; ".join(errors))
