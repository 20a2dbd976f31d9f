"""This node's own PostgreSQL member: its Patroni configuration built from the node's
settings and files (cluster CA, node certificate, etcd member), and what the node's
supervisor needs to run it once the node's database is the member
(``<data dir>/database.json``).

The member is named as the node's etcd member is (``node-127-0-0-11``), so etcd and
Patroni list the node under one name; Patroni's scope is the cluster id, derived from
the cluster CA, as every member of the cluster derives it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from . import config, process
from .config import MemberSpec, TLSFiles
from .database import database_file_path, read_database_file
from .rest import PatroniClient


@dataclass(frozen=True)
class NodeMember:
    """The node's member: its specification (as Patroni will run it) and its files."""

    spec: MemberSpec
    paths: process.MemberPaths
    run_as: process.RunAs
    node_tls: TLSFiles  # the node's own files (data dir), which the member's are copies of

    @property
    def name(self) -> str:
        return self.spec.name

    def api(self, *, timeout: float = 5.0) -> PatroniClient:
        """Patroni's REST API of this member, called with the node's certificate."""
        return PatroniClient(self.spec.api_url, ca_file=self.node_tls.ca_file, cert_file=self.node_tls.cert_file,
                             key_file=self.node_tls.key_file, timeout=timeout)


def node_tls_files() -> TLSFiles:
    from pamportal.nodes.services import ca_cert_path

    return TLSFiles(ca_file=ca_cert_path(), cert_file=Path(settings.PAM_TLS_CERT), key_file=Path(settings.PAM_TLS_KEY))


def cluster_id() -> str:
    """Patroni's scope: the cluster id of the cluster CA in the data dir."""
    from pamportal.crypto.ca import certificate_info, cluster_id_of

    return cluster_id_of(certificate_info(node_tls_files().ca_file.read_bytes()).sha256)


def node_member(*, base: Path | None = None, run_as: process.RunAs | None = None, nosync: bool = False) -> NodeMember:
    """The node's member from its settings: address and name of its etcd member, the
    cluster CA's id, the node's TLS files, ``PAM_POSTGRES_PORT``/``PAM_PATRONI_PORT``,
    ``PAM_POSTGRES_BASE``. Raises LookupError when the node has no etcd member.
    ``nosync``: never the synchronous standby (the join's own run, ``MemberSpec.nosync``)."""
    from pamportal.cluster.local_etcd import local_member_config

    etcd = local_member_config()
    if etcd is None:
        raise LookupError("this node has no etcd member (setup not finalised, or the node left its cluster)")
    run_as = run_as or process.RunAs.for_this_process()
    paths = process.member_paths(base or process.default_base(), etcd.name)
    tls = node_tls_files()
    etcd_host = etcd.client_url.split("://", 1)[1]
    spec = MemberSpec(
        cluster_id=cluster_id(), name=etcd.name, address=etcd.address, etcd_hosts=(etcd_host,),
        tls=paths.tls, data_dir=paths.data_dir, socket_dir=paths.socket_dir, pgpass=paths.pgpass,
        postgres_port=settings.PAM_POSTGRES_PORT, patroni_port=settings.PAM_PATRONI_PORT,
        superuser=run_as.user, nosync=nosync,
    )
    return NodeMember(spec=spec, paths=paths, run_as=run_as, node_tls=tls)


def node_member_prepare(member: NodeMember) -> Path:
    """Directories, copies of the TLS files (owned by the member's user) and the
    configuration file. Safe to run again (renewed certificates are copied again)."""
    process.member_prepare(paths=member.paths, tls_source=member.node_tls, run_as=member.run_as)
    text = config.render(config.patroni_config(member.spec))
    return process.member_config_write(paths=member.paths, text=text, run_as=member.run_as)


# --- what the node's supervisor runs ------------------------------------------------------
PROCESS_NAME = "patroni"


@dataclass(frozen=True, kw_only=True)
class MemberProcess:
    """The node's Patroni member as the supervisor (``serve``) and the systemd units
    (``install_units``) need it, in ``pamportal.core.units.NodeProcess``'s shape plus
    the OS user it must run as (PostgreSQL refuses root) and where its output goes.

    ``requires_files``: the node's database is the member (database.json) and the member
    is configured (patroni.yml); until both exist there is nothing to run."""

    name: str = PROCESS_NAME
    description: str = "pamportal PostgreSQL member (Patroni)"
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    requires_files: tuple[Path, ...] = ()
    user: str
    working_dir: Path
    log_file: Path
    member: str = ""


def patroni_node_process(*, data_dir: Path | None = None, base: Path | None = None,
                         run_as: process.RunAs | None = None) -> MemberProcess | None:
    """The Patroni member this node runs, or None when its database is not a member
    (no ``database.json``: SQLite or ``DATABASE_URL``). Reads only the database file and
    settings, so it works for another node's data dir (``install_units``). The binary is
    not checked here: a missing venv shows as the process failing to start, with
    ``tools/patroni_env.sh`` named by ``database_to_patroni``'s precondition."""
    data_dir = Path(data_dir or settings.PAM_DATA_DIR)
    database = read_database_file(data_dir)
    if database is None:
        return None
    run_as = run_as or process.RunAs.for_this_process()
    paths = process.member_paths(base or process.default_base(), database.member)
    binary = process.patroni_venv() / "bin" / "patroni"
    return MemberProcess(
        argv=[str(binary), str(paths.config_file)],
        # and the node's etcd member (its DCS): once the node learns it was removed, the
        # member's configuration is moved aside and the PostgreSQL member stops with it.
        requires_files=(database_file_path(data_dir), paths.config_file, data_dir / "etcd" / "member.json"),
        user=run_as.user, working_dir=paths.root, log_file=paths.log_file, member=database.member,
    )


def node_member_start(member_process: MemberProcess, *, run_as: process.RunAs | None = None) -> process.PatroniProcess:
    """Start the member exactly as ``member_process`` describes it (the supervisor's
    command line, as its user), for ``database_to_patroni`` and the tests."""
    missing = [str(p) for p in member_process.requires_files if not p.exists()]
    if missing:
        raise FileNotFoundError(f"the Patroni member cannot start yet: missing {', '.join(missing)}")
    run_as = run_as or process.RunAs.for_this_process()
    if run_as.user != member_process.user:
        raise ValueError(f"the member runs as {member_process.user}, not {run_as.user}")
    binary, config_file = Path(member_process.argv[0]), Path(member_process.argv[1])
    paths = process.MemberPaths(config_file.parent)
    return process.member_start(name=member_process.member, paths=paths, run_as=run_as, patroni=binary)


# --- Patroni's keys in etcd -------------------------------------------------------------------
def patroni_prefix(scope: str) -> str:
    return f"{config.NAMESPACE}{scope}/"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # the prefix ends in "/", never 0xff
    return base64.b64encode(bytes(raw)).decode()


def patroni_keys_count(client, scope: str) -> int:
    """How many keys Patroni holds in etcd for ``scope`` (``/patroni/<scope>/...``)."""
    prefix = patroni_prefix(scope)
    data = client._call("POST", "/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix),
                                                 "count_only": True})
    return int(data.get("count") or 0)


def patroni_keys_forget(client, scope: str) -> int:
    """Delete Patroni's keys of ``scope`` (a move undone: without this, a later try
    would find the cluster "initialized" and wait for a leader that no longer exists).
    ``client`` is a ``pamportal.cluster.etcd.EtcdClient``; returns how many went."""
    prefix = patroni_prefix(scope)
    data = client._call("POST", "/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _prefix_end(prefix)},
                        idempotent=True)
    return int(data.get("deleted") or 0)
